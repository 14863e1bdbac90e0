/* packet.c — AF_PACKET: the kernel fills TPACKET_V3 blocks in a mapped ring, rx copies
 * frames from them into the port's netmap slots; tx sends a batch with one sendmmsg. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include "packet.h"

#define BLOCK_SIZE (1u << 20)
#define NBLOCKS 16
#define FRAME_SIZE 2048
#define TX_BATCH 256

struct pq {                        /* one socket's rx ring walk */
    uint8_t *map;
    uint32_t blk;                  /* block being read */
    uint32_t left;                 /* frames left in it; 0 = not entered yet */
    uint8_t *pkt;
};
struct vp_packet {
    struct pq q[4];
    struct mmsghdr msg[TX_BATCH];
    struct iovec iov[TX_BATCH];
};

int vp_packet_open(struct vp_io *io, uint32_t q, int ifindex, int fanout, char *err, size_t errlen) {
    struct vp_packet *pk = io->priv;
    struct tpacket_req3 req = {0};
    struct sockaddr_ll sll = {0};
    int fd, e, one = 1, v = TPACKET_V3;
    const char *what;
    char group[48];
    if (!pk) {
        pk = io->priv = calloc(1, sizeof(*pk));
        if (!pk) { snprintf(err, errlen, "out of memory"); return -ENOMEM; }
    }
    fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errlen, e == EPERM ? "permission denied: AF_PACKET sockets need CAP_NET_RAW (run as root)"
                                         : "socket(AF_PACKET): %s", strerror(e));
        return -e;
    }
    req.tp_block_size = BLOCK_SIZE;
    req.tp_block_nr = NBLOCKS;
    req.tp_frame_size = FRAME_SIZE;
    req.tp_frame_nr = BLOCK_SIZE / FRAME_SIZE * NBLOCKS;
    req.tp_retire_blk_tov = 1;     /* ms: a partly filled block reaches us this soon */
    if (setsockopt(fd, SOL_PACKET, PACKET_VERSION, &v, sizeof(v)) < 0 ||
        setsockopt(fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof(req)) < 0) {
        what = "TPACKET_V3 rx ring";
        goto fail;
    }
    /* our own transmissions must not come back as receptions; skipping the qdisc is
     * what a switch port wants (the pipeline does its own queueing) */
    setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof(one));
    setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one));
    pk->q[q].map = mmap(NULL, (size_t)BLOCK_SIZE * NBLOCKS, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_LOCKED, fd, 0);
    if (pk->q[q].map == MAP_FAILED)
        pk->q[q].map = mmap(NULL, (size_t)BLOCK_SIZE * NBLOCKS, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (pk->q[q].map == MAP_FAILED) {
        pk->q[q].map = NULL;
        what = "mmap of the rx ring";
        goto fail;
    }
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(ETH_P_ALL);
    sll.sll_ifindex = ifindex;
    if (bind(fd, (struct sockaddr *)&sll, sizeof(sll)) < 0) {
        what = "bind";
        goto fail;
    }
    if (fanout >= 0) {
        int arg = (fanout & 0xffff) | (PACKET_FANOUT_HASH << 16);
        if (setsockopt(fd, SOL_PACKET, PACKET_FANOUT, &arg, sizeof(arg)) < 0) {
            snprintf(group, sizeof(group), "PACKET_FANOUT group %d", fanout);
            what = group;
            goto fail;
        }
    }
    io->fd[q] = fd;
    return fd;
fail:
    e = errno;
    snprintf(err, errlen, "%s on interface %d: %s", what, ifindex, strerror(e));
    if (pk->q[q].map) munmap(pk->q[q].map, (size_t)BLOCK_SIZE * NBLOCKS);
    pk->q[q].map = NULL;
    close(fd);
    return -e;
}

/* The stack hands a veth's peer frames whose L4 checksum is left to "hardware"
 * (TP_STATUS_CSUMNOTREADY); nothing downstream of a switch would finish it, so we do. */
static uint32_t sum16(const uint8_t *p, uint32_t n, uint32_t s) {
    for (; n > 1; p += 2, n -= 2) s += (uint32_t)p[0] << 8 | p[1];
    if (n) s += (uint32_t)p[0] << 8;
    return s;
}
static void complete_csum(uint8_t *f, uint32_t len) {
    uint32_t off = 12, s = 0, l4, l4len;
    uint16_t type;
    uint8_t proto;
    if (len < 14) return;
    type = f[12] << 8 | f[13];
    while ((type == 0x8100 || type == 0x88a8) && off + 6 <= len) { off += 4; type = f[off] << 8 | f[off + 1]; }
    off += 2;
    if (type == 0x0800 && off + 20 <= len) {
        uint32_t ihl = (f[off] & 15) * 4, tot = f[off + 2] << 8 | f[off + 3];
        if (ihl < 20 || tot < ihl || off + tot > len) return;
        proto = f[off + 9];
        l4 = off + ihl; l4len = tot - ihl;
        s = sum16(f + off + 12, 8, 0);
    } else if (type == 0x86dd && off + 40 <= len) {
        uint32_t pl = f[off + 4] << 8 | f[off + 5];
        proto = f[off + 6];
        l4 = off + 40; l4len = pl;
        if (l4 + l4len > len) return;
        s = sum16(f + off + 8, 32, 0);
    } else {
        return;
    }
    uint32_t at = proto == 6 ? 16 : proto == 17 ? 6 : 0;
    if (!at || l4len < at + 2) return;
    s += proto + l4len;
    f[l4 + at] = f[l4 + at + 1] = 0;
    s = sum16(f + l4, l4len, s);
    while (s >> 16) s = (s & 0xffff) + (s >> 16);
    s = ~s & 0xffff;
    if (proto == 17 && s == 0) s = 0xffff;
    f[l4 + at] = s >> 8;
    f[l4 + at + 1] = s & 0xff;
}

static uint32_t packet_rx(struct vp_io *io, uint32_t qi, struct vp_ring *k, uint32_t space) {
    struct pq *q = &((struct vp_packet *)io->priv)->q[qi];
    uint32_t n = 0;
    while (n < space) {
        struct tpacket_block_desc *bd = (void *)(q->map + (size_t)q->blk * BLOCK_SIZE);
        struct tpacket3_hdr *h;
        if (!q->left) {
            uint32_t first;
            if (!(VP_LOAD_ACQUIRE(bd->hdr.bh1.block_status) & TP_STATUS_USER)) break;
            q->left = VP_READ_ONCE(bd->hdr.bh1.num_pkts);
            first = VP_READ_ONCE(bd->hdr.bh1.offset_to_first_pkt);
            q->pkt = (uint8_t *)bd + first;
            if (!q->left || first >= BLOCK_SIZE - sizeof(*h)) goto next_block;
        }
        h = (struct tpacket3_hdr *)q->pkt;
        /* the frame header is in memory the kernel shares: each field read once */
        uint32_t next = VP_READ_ONCE(h->tp_next_offset);
        {
            uint32_t snap = VP_READ_ONCE(h->tp_snaplen), status = VP_READ_ONCE(h->tp_status);
            uint32_t mac = VP_READ_ONCE(h->tp_mac), wire = VP_READ_ONCE(h->tp_len);
            uint32_t vlan = (status & TP_STATUS_VLAN_VALID) ? 4 : 0;
            const uint8_t *fr = q->pkt + mac;
            char *buf = vp_io_rx_buf(k);
            if ((size_t)(q->pkt - (uint8_t *)bd) + mac + snap > BLOCK_SIZE || snap < 14) {
                io->st.rx_errors++;
            } else if (wire > snap || snap + vlan > k->buf_size) {
                io->st.rx_truncated++;        /* a GSO/GRO super-frame or a jumbo frame */
            } else if (!buf) {
                k->st.bad_buf++;
                k->faulty = 1;
                break;
            } else {
                /* the kernel took the VLAN tag off into metadata: put it back on the wire */
                memcpy(buf, fr, 12);
                if (vlan) {
                    uint16_t tpid = (status & TP_STATUS_VLAN_TPID_VALID) ? VP_READ_ONCE(h->hv1.tp_vlan_tpid) : 0x8100;
                    uint16_t tci = VP_READ_ONCE(h->hv1.tp_vlan_tci);
                    buf[12] = tpid >> 8; buf[13] = tpid & 0xff;
                    buf[14] = tci >> 8; buf[15] = tci & 0xff;
                }
                memcpy(buf + 12 + vlan, fr + 12, snap - 12);
                if (status & TP_STATUS_CSUMNOTREADY) complete_csum((uint8_t *)buf, snap + vlan);
                vp_io_rx_commit(io, k, snap + vlan);
                n++;
            }
        }
        if (--q->left) {
            q->pkt += next;
            if (next == 0 || (size_t)(q->pkt - (uint8_t *)bd) >= BLOCK_SIZE - sizeof(*h)) {
                io->st.rx_errors++;
                goto next_block;
            }
            continue;
        }
    next_block:
        q->left = 0;
        VP_STORE_RELEASE(bd->hdr.bh1.block_status, TP_STATUS_KERNEL);
        q->blk = (q->blk + 1) % NBLOCKS;
    }
    return n;
}

static uint32_t packet_tx(struct vp_io *io, struct vp_ring *k, uint32_t avail) {
    struct vp_packet *pk = io->priv;
    uint32_t done = 0;
    while (done < avail) {
        uint32_t m = 0, si = k->cons, scanned = 0, upto[TX_BATCH];
        int sent;
        while (done + scanned < avail && m < TX_BATCH) {
            uint32_t idx;
            uint16_t len;
            int ok = vp_slot_take(k, si, &idx, &len);
            si = nm_ring_next(k->nslots, si);
            scanned++;
            if (!ok) continue;                  /* counted on the ring; skipped */
            pk->iov[m] = (struct iovec){vp_buf(k, idx), len};
            memset(&pk->msg[m], 0, sizeof(pk->msg[m]));
            pk->msg[m].msg_hdr.msg_iov = &pk->iov[m];
            pk->msg[m].msg_hdr.msg_iovlen = 1;
            upto[m++] = scanned;
        }
        if (m == 0) { k->cons = si; done += scanned; continue; }
        sent = sendmmsg(io->fd[0], pk->msg, m, MSG_DONTWAIT);
        io->st.syscalls++;
        if (sent < 0) {
            int e = errno;
            if (e == EAGAIN || e == ENOBUFS || e == EINTR) { io->st.tx_again++; break; }
            /* the interface refuses (down, gone, frame over its MTU): drop that frame,
             * count it, go on with the rest */
            vp_io_error(io, e);
            io->st.tx_errors++;
            sent = 1;
        } else {
            for (int i = 0; i < sent; i++) { io->st.tx_packets++; io->st.tx_bytes += pk->iov[i].iov_len; }
        }
        {
            uint32_t adv = (uint32_t)sent == m ? scanned : upto[sent - 1];
            for (uint32_t i = 0; i < adv; i++) k->cons = nm_ring_next(k->nslots, k->cons);
            done += adv;
        }
    }
    return done;
}

void vp_packet_init(struct vp_io *io) {
    io->rx = packet_rx;
    io->tx = packet_tx;
}

/* the kernel's drop count for frames it had no block for (read-and-reset by the kernel) */
void vp_packet_poll_stats(struct vp_io *io) {
    for (uint32_t q = 0; q < io->nq; q++) {
        struct tpacket_stats_v3 st;
        socklen_t len = sizeof(st);
        if (io->fd[q] >= 0 && getsockopt(io->fd[q], SOL_PACKET, PACKET_STATISTICS, &st, &len) == 0)
            io->st.rx_kernel_drops += st.tp_drops;
    }
}

void vp_packet_close(struct vp_io *io) {
    struct vp_packet *pk = io->priv;
    for (uint32_t q = 0; q < 4; q++) {
        if (pk && pk->q[q].map) munmap(pk->q[q].map, (size_t)BLOCK_SIZE * NBLOCKS);
        if (io->fd[q] >= 0) close(io->fd[q]);
        io->fd[q] = -1;
    }
    free(pk);
    io->priv = NULL;
}
