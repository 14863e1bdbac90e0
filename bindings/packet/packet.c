/* packet.c — AF_PACKET: the kernel fills TPACKET_V2 frames in a mapped ring, rx copies
 * them into the port's netmap slots; tx sends a batch with one sendmmsg. V2, not V3: a
 * V3 block reaches user space only when full or after its timer (1 ms at least), which
 * adds up to a millisecond to every frame of a quiet flow (a guest's TCP, a ping); a V2
 * frame is handed over as it arrives. */
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

#define TX_BATCH 256
/* frames of the rx ring: 2 KB (4096 of them), or with the virtio-net header one 64 KB
 * super-frame each (17 pages; 512 of them) */
#define SMALL_FRAME 2048u
#define SMALL_BLOCK (1u << 20)
#define SMALL_FRAMES 8192u
#define BIG_FRAME (17u * 4096u)
#define BIG_FRAMES 512u

struct pq {                        /* one socket's rx ring walk */
    uint8_t *map;
    size_t size;
    uint32_t frame_size, block_size, per_block, nframes;
    uint32_t cur;                  /* next frame to read */
};
struct vp_packet {
    struct pq q[4];
    struct mmsghdr msg[TX_BATCH];
    struct iovec iov[TX_BATCH];
};

int vp_packet_open(struct vp_io *io, uint32_t q, int ifindex, int fanout, int vnet, char *err, size_t errlen) {
    struct vp_packet *pk = io->priv;
    struct tpacket_req req = {0};
    struct sockaddr_ll sll = {0};
    struct pq *pq;
    int fd, e, one = 1, v = TPACKET_V2;
    const char *what;
    char group[48];
    if (!pk) {
        pk = io->priv = calloc(1, sizeof(*pk));
        if (!pk) { snprintf(err, errlen, "out of memory"); return -ENOMEM; }
    }
    pq = &pk->q[q];
    fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errlen, e == EPERM ? "permission denied: AF_PACKET sockets need CAP_NET_RAW (run as root)"
                                         : "socket(AF_PACKET): %s", strerror(e));
        return -e;
    }
    pq->frame_size = vnet ? BIG_FRAME : SMALL_FRAME;
    pq->block_size = vnet ? BIG_FRAME : SMALL_BLOCK;
    pq->per_block = pq->block_size / pq->frame_size;
    pq->nframes = vnet ? BIG_FRAMES : SMALL_FRAMES;
    pq->size = (size_t)pq->block_size * (pq->nframes / pq->per_block);
    pq->cur = 0;
    req.tp_block_size = pq->block_size;
    req.tp_block_nr = pq->nframes / pq->per_block;
    req.tp_frame_size = pq->frame_size;
    req.tp_frame_nr = pq->nframes;
    /* frames come and go with a virtio_net_hdr: super-frames (GSO) and partial checksums
     * stay whole; it must be asked for before the ring exists */
    if (vnet && setsockopt(fd, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof(one)) < 0) {
        what = "PACKET_VNET_HDR";
        goto fail;
    }
    if (setsockopt(fd, SOL_PACKET, PACKET_VERSION, &v, sizeof(v)) < 0 ||
        setsockopt(fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof(req)) < 0) {
        what = "TPACKET_V2 rx ring";
        goto fail;
    }
    /* our own transmissions must not come back as receptions; skipping the qdisc is
     * what a switch port wants (the pipeline does its own queueing) */
    setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof(one));
    setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one));
    pq->map = mmap(NULL, pq->size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_LOCKED, fd, 0);
    if (pq->map == MAP_FAILED)
        pq->map = mmap(NULL, pq->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (pq->map == MAP_FAILED) {
        pq->map = NULL;
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
    if (pq->map) munmap(pq->map, pq->size);
    pq->map = NULL;
    close(fd);
    return -e;
}

static uint32_t packet_rx(struct vp_io *io, uint32_t qi, struct vp_ring *k, uint32_t space) {
    struct pq *q = &((struct vp_packet *)io->priv)->q[qi];
    uint32_t n = 0;
    while (n < space) {
        uint8_t *fp = q->map + (size_t)(q->cur / q->per_block) * q->block_size + (size_t)(q->cur % q->per_block) * q->frame_size;
        struct tpacket2_hdr *h = (struct tpacket2_hdr *)fp;
        uint32_t status = VP_LOAD_ACQUIRE(h->tp_status);
        if (!(status & TP_STATUS_USER)) break;
        /* the frame header is in memory the kernel shares: each field read once */
        uint32_t snap = VP_READ_ONCE(h->tp_snaplen), mac = VP_READ_ONCE(h->tp_mac), wire = VP_READ_ONCE(h->tp_len);
        uint32_t vlan = (status & TP_STATUS_VLAN_VALID) ? 4 : 0, hl = io->vnet_hdr;
        const uint8_t *fr = fp + mac;
        char *buf = vp_io_rx_buf(k);
        if (!buf) { k->st.bad_buf++; k->faulty = 1; break; }
        if ((size_t)mac + snap > q->frame_size || snap < 14 || mac < hl + sizeof(*h)) {
            io->st->rx_errors++;
        } else if (wire > snap || hl + snap + vlan > k->buf_size) {
            io->st->rx_truncated++;        /* a super-frame without PACKET_VNET_HDR, or a jumbo frame */
        } else {
            /* the virtio_net_hdr the kernel put in front of the frame */
            if (hl) {
                struct vp_offload ol;
                memcpy(buf, fr - hl, hl);
                vp_vnet_parse((const uint8_t *)buf, snap + vlan, &ol);   /* checked by receive */
                if (vlan && ol.flags & VP_OL_CSUM) {
                    ol.csum_start += 4;
                    vp_vnet_write((uint8_t *)buf, &ol);
                }
                io->st->rx_gso += ol.gso_type != VP_GSO_NONE;
                io->st->rx_csum_partial += (ol.flags & VP_OL_CSUM) != 0;
                buf += hl;
            }
            /* the kernel took the VLAN tag off into metadata: put it back on the wire */
            memcpy(buf, fr, 12);
            if (vlan) {
                uint16_t tpid = (status & TP_STATUS_VLAN_TPID_VALID) ? VP_READ_ONCE(h->tp_vlan_tpid) : 0x8100;
                uint16_t tci = VP_READ_ONCE(h->tp_vlan_tci);
                buf[12] = tpid >> 8; buf[13] = tpid & 0xff;
                buf[14] = tci >> 8; buf[15] = tci & 0xff;
            }
            memcpy(buf + 12 + vlan, fr + 12, snap - 12);
            if (!hl && status & TP_STATUS_CSUMNOTREADY) {
                /* a partial checksum and no header to say so: nothing downstream of a
                 * switch would finish it, so we do */
                struct vp_offload ol;
                if (vp_vnet_infer((uint8_t *)buf, snap + vlan, 0, &ol) && ol.flags & VP_OL_CSUM) {
                    vp_csum_complete((uint8_t *)buf, snap + vlan, &ol);
                    io->st->rx_csum_partial++;
                }
            }
            vp_io_rx_commit(io, k, hl + snap + vlan);
            n++;
        }
        VP_STORE_RELEASE(h->tp_status, TP_STATUS_KERNEL);
        q->cur = (q->cur + 1) % q->nframes;
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
        io->st->syscalls++;
        if (sent < 0 && (errno == ENETDOWN || errno == ENXIO) && !io->link_down) {
            /* maybe an error the socket kept from when its link went down (the kernel hands
             * it to the next send, which it then refuses): it is read now, so try again */
            sent = sendmmsg(io->fd[0], pk->msg, m, MSG_DONTWAIT);
            io->st->syscalls++;
        }
        if (sent < 0) {
            int e = errno;
            if (e == EAGAIN || e == ENOBUFS || e == EINTR) { io->st->tx_again++; break; }
            /* the interface refuses (down, gone, frame over its MTU): drop that frame,
             * count it, go on with the rest */
            if (e == ENETDOWN || e == ENXIO || e == ENODEV) {
                vp_io_tx_refused(io, e);       /* the link went: settled by the next look at it */
            } else {
                vp_io_error(io, e);
                io->st->tx_errors++;
            }
            sent = 1;
        } else {
            for (int i = 0; i < sent; i++) { io->st->tx_packets++; io->st->tx_bytes += pk->iov[i].iov_len - io->vnet_hdr; }
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
        struct tpacket_stats st;
        socklen_t len = sizeof(st);
        if (io->fd[q] >= 0 && getsockopt(io->fd[q], SOL_PACKET, PACKET_STATISTICS, &st, &len) == 0)
            io->st->rx_kernel_drops += st.tp_drops;
    }
}

void vp_packet_close(struct vp_io *io) {
    struct vp_packet *pk = io->priv;
    for (uint32_t q = 0; q < 4; q++) {
        if (pk && pk->q[q].map) munmap(pk->q[q].map, pk->q[q].size);
        if (io->fd[q] >= 0) close(io->fd[q]);
        io->fd[q] = -1;
    }
    free(pk);
    io->priv = NULL;
}
