/* afxdp.c — per queue: the kernel writes frames into UMEM and posts descriptors on the rx
 * ring; rx copies them into netmap slots and gives the frames back on the fill ring. tx
 * copies netmap slots into free UMEM frames, posts them and kicks the socket; completions
 * return the frames. The XDP program is attached with a bpf_link owned by this process,
 * so it goes away with the process however it ends: nothing is left on the interface. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <net/if.h>
#include <sys/socket.h>
#include <linux/bpf.h>
#include <linux/if_link.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <xdp/xsk.h>
#include "afxdp.h"

#ifndef XDP_USE_SG                 /* multi-buffer AF_XDP: Linux 6.6 */
#define XDP_USE_SG (1 << 4)
#endif
#ifndef XDP_PKT_CONTD
#define XDP_PKT_CONTD (1 << 0)
#endif
#ifndef BPF_F_XDP_HAS_FRAGS
#define BPF_F_XDP_HAS_FRAGS (1U << 5)
#endif

#define FRAME 2048u
#define NRX 2048u                 /* frames owned by the fill/rx side of a queue */
#define NTX 2048u                 /* frames for transmission */

struct xq {
    struct xsk_socket *xsk;
    struct xsk_umem *umem;
    struct xsk_ring_cons rx, comp;
    struct xsk_ring_prod tx, fill;
    char *area;
    uint32_t nfree;
    uint64_t free[NTX];           /* tx frames not in flight */
};
struct vp_afxdp {
    int prog_fd, map_fd, link_fd;
    uint32_t nq;
    uint32_t sg;                  /* multi-buffer: a frame may span several descriptors */
    uint64_t kernel_drops;        /* the sockets' drop counters when last read */
    struct xq q[4];
};

/* r2 = ctx->rx_queue_index; return bpf_redirect_map(&xsks, r2, XDP_PASS): frames of a queue
 * with no socket in the map go on to the stack */
#define INSN(c, d, s, o, i) ((struct bpf_insn){.code = (c), .dst_reg = (d), .src_reg = (s), .off = (o), .imm = (i)})
static int load_prog(int map_fd, int frags, char *log, size_t loglen) {
    struct bpf_insn prog[] = {
        INSN(BPF_LDX | BPF_MEM | BPF_W, BPF_REG_2, BPF_REG_1, 16, 0),
        INSN(BPF_LD | BPF_DW | BPF_IMM, BPF_REG_1, BPF_PSEUDO_MAP_FD, 0, map_fd),
        INSN(0, 0, 0, 0, 0),
        INSN(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_3, 0, 0, XDP_PASS),
        INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_redirect_map),
        INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
    };
    /* frags: frames longer than a UMEM frame (a guest's 64 KB super-frames) arrive as
     * several descriptors instead of being dropped */
    LIBBPF_OPTS(bpf_prog_load_opts, opts, .log_buf = log, .log_size = (uint32_t)loglen, .log_level = 0,
                .prog_flags = frags ? BPF_F_XDP_HAS_FRAGS : 0);
    return bpf_prog_load(BPF_PROG_TYPE_XDP, "valepipe_xsk", "GPL", prog, sizeof(prog) / sizeof(prog[0]), &opts);
}

static int fail(char *err, size_t errlen, int e, const char *fmt, const char *what) {
    snprintf(err, errlen, fmt, what, strerror(e));
    return -e;
}

static int open_queue(struct vp_afxdp *x, uint32_t i, const char *ifname, uint32_t queue, uint32_t zc,
                      uint32_t sg, char *err, size_t errlen) {
    struct xq *q = &x->q[i];
    struct xsk_umem_config ucfg = {.fill_size = NRX, .comp_size = NTX, .frame_size = FRAME, .frame_headroom = 0};
    struct xsk_socket_config scfg = {.rx_size = NRX, .tx_size = NTX,
                                     .libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD};
    size_t len = (size_t)(NRX + NTX) * FRAME;
    uint32_t idx;
    int rc, fd;
    q->area = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (q->area == MAP_FAILED) { q->area = NULL; return fail(err, errlen, errno, "%s: UMEM: %s", ifname); }
    rc = xsk_umem__create(&q->umem, q->area, len, &q->fill, &q->comp, &ucfg);
    if (rc) return fail(err, errlen, -rc, "%s: UMEM registration: %s", ifname);
    for (int attempt = 0; attempt < 2; attempt++) {
        int want_zc = zc == VP_ZC_ON || (zc == VP_ZC_AUTO && attempt == 0);
        scfg.bind_flags = XDP_USE_NEED_WAKEUP | (want_zc ? XDP_ZEROCOPY : XDP_COPY) | (sg ? XDP_USE_SG : 0);
        rc = xsk_socket__create(&q->xsk, ifname, queue, q->umem, &q->rx, &q->tx, &scfg);
        if (rc && sg && want_zc) {            /* a zero-copy driver without multi-buffer */
            scfg.bind_flags &= ~XDP_USE_SG;
            rc = xsk_socket__create(&q->xsk, ifname, queue, q->umem, &q->rx, &q->tx, &scfg);
            if (rc == 0) x->sg = 0;
        }
        if (rc == 0 || zc != VP_ZC_AUTO) break;
    }
    if (rc) {
        int e = -rc;
        if (e == EINVAL && queue > 0)
            snprintf(err, errlen, "%s has no queue %u: %s", ifname, queue, strerror(e));
        else if (zc == VP_ZC_ON && (e == EOPNOTSUPP || e == EPROTONOSUPPORT))
            snprintf(err, errlen, "%s: the driver has no zero-copy AF_XDP (use zerocopy=auto or no)", ifname);
        else if (e == EBUSY)
            snprintf(err, errlen, "%s queue %u already has an AF_XDP socket (another switch?)", ifname, queue);
        else
            snprintf(err, errlen, "%s queue %u: AF_XDP socket: %s", ifname, queue, strerror(e));
        return -e;
    }
    fd = xsk_socket__fd(q->xsk);
    if (bpf_map_update_elem(x->map_fd, &queue, &fd, 0))
        return fail(err, errlen, errno, "%s: xsk map update: %s", ifname);
    if (xsk_ring_prod__reserve(&q->fill, NRX, &idx) != NRX) return fail(err, errlen, EIO, "%s: fill ring: %s", ifname);
    for (uint32_t f = 0; f < NRX; f++) *xsk_ring_prod__fill_addr(&q->fill, idx + f) = (uint64_t)f * FRAME;
    xsk_ring_prod__submit(&q->fill, NRX);
    for (uint32_t f = 0; f < NTX; f++) q->free[f] = (uint64_t)(NRX + f) * FRAME;
    q->nfree = NTX;
    return fd;
}

/* One frame (descriptors first..end-1 of the peeked ones) into the next rx slot: after a
 * virtio_net_hdr inferred from the frame (partial checksum, super-frame) when the port
 * has one; else partial checksums are completed here. */
static void rx_frame(struct vp_io *io, struct xq *q, struct vp_ring *k, uint32_t idx_rx, uint32_t first, uint32_t end) {
    uint32_t hl = io->vnet_hdr, total = 0;
    char *buf = vp_io_rx_buf(k);
    struct vp_offload ol;
    if (!buf) { k->st.bad_buf++; k->faulty = 1; return; }
    for (uint32_t i = first; i < end; i++) {
        /* the descriptor lives in memory the kernel shares: each field read once */
        const struct xdp_desc *d = xsk_ring_cons__rx_desc(&q->rx, idx_rx + i);
        uint64_t addr = xsk_umem__extract_addr(VP_READ_ONCE(d->addr)), base = addr & ~(uint64_t)(FRAME - 1);
        uint32_t len = VP_READ_ONCE(d->len);
        if (base >= (uint64_t)NRX * FRAME || addr + len > base + FRAME) { io->st->rx_errors++; return; }
        if (hl + total + len > k->buf_size) { io->st->rx_truncated++; return; }
        memcpy(buf + hl + total, q->area + addr, len);
        total += len;
    }
    if (total == 0) { io->st->rx_truncated++; return; }
    if (vp_vnet_infer((uint8_t *)buf + hl, total, hl ? io->mtu : 0, &ol)) {
        io->st->rx_gso += ol.gso_type != VP_GSO_NONE;
        io->st->rx_csum_partial += (ol.flags & VP_OL_CSUM) != 0;
        if (!hl) vp_csum_complete((uint8_t *)buf, total, &ol);
    }
    if (hl) vp_vnet_write((uint8_t *)buf, &ol);
    vp_io_rx_commit(io, k, hl + total);
}

static uint32_t afxdp_rx(struct vp_io *io, uint32_t qi, struct vp_ring *k, uint32_t space) {
    struct xq *q = &((struct vp_afxdp *)io->priv)->q[qi];
    uint32_t idx_rx, idx_fill, got = xsk_ring_cons__peek(&q->rx, NRX, &idx_rx), used = 0, n = 0;
    if (!got) {
        if (xsk_ring_prod__needs_wakeup(&q->fill)) {
            recvfrom(io->fd[qi], NULL, 0, MSG_DONTWAIT, NULL, NULL);
            io->st->syscalls++;
        }
        return 0;
    }
    while (used < got && n < space) {
        uint32_t end = used;
        /* a frame ends at the descriptor without XDP_PKT_CONTD; the kernel posts whole frames */
        while (end < got && VP_READ_ONCE(xsk_ring_cons__rx_desc(&q->rx, idx_rx + end)->options) & XDP_PKT_CONTD) end++;
        if (end == got) break;
        end++;
        uint64_t before = io->st->rx_packets;
        rx_frame(io, q, k, idx_rx, used, end);
        n += io->st->rx_packets != before;
        used = end;
    }
    /* every frame the rx ring hands us was on the fill ring, which is as large as the
     * frames it can hold: there is always room to give them back */
    if (used && xsk_ring_prod__reserve(&q->fill, used, &idx_fill) == used) {
        for (uint32_t i = 0; i < used; i++) {
            uint64_t base = xsk_umem__extract_addr(VP_READ_ONCE(xsk_ring_cons__rx_desc(&q->rx, idx_rx + i)->addr)) &
                            ~(uint64_t)(FRAME - 1);
            *xsk_ring_prod__fill_addr(&q->fill, idx_fill + i) = base < (uint64_t)NRX * FRAME ? base : 0;
        }
        xsk_ring_prod__submit(&q->fill, used);
    } else if (used) {
        io->st->rx_errors++;
    }
    xsk_ring_cons__release(&q->rx, used);
    xsk_ring_cons__cancel(&q->rx, got - used);       /* left for the next call */
    return n;
}

static void reclaim(struct xq *q) {
    uint32_t idx, n = xsk_ring_cons__peek(&q->comp, NTX, &idx);
    for (uint32_t i = 0; i < n; i++) {
        uint64_t a = VP_READ_ONCE(*xsk_ring_cons__comp_addr(&q->comp, idx + i)) & ~(uint64_t)(FRAME - 1);
        if (a >= (uint64_t)NRX * FRAME && a < (uint64_t)(NRX + NTX) * FRAME && q->nfree < NTX) q->free[q->nfree++] = a;
    }
    xsk_ring_cons__release(&q->comp, n);
}

static uint32_t afxdp_tx(struct vp_io *io, struct vp_ring *k, uint32_t avail) {
    struct xq *q = &((struct vp_afxdp *)io->priv)->q[0];
    uint32_t done = 0, room, idx, j = 0;
    reclaim(q);
    /* link down: what is posted would wait in the kernel's ring and go out stale when the
     * link is back; txsync drops it (tx_link_down) instead */
    if (io->link_down) { io->tx_inflight = q->nfree < NTX; return 0; }
    room = xsk_prod_nb_free(&q->tx, avail);
    if (room > avail) room = avail;
    if (room > q->nfree) room = q->nfree;
    if (room && xsk_ring_prod__reserve(&q->tx, room, &idx) == room) {
        while (done < avail && j < room) {
            uint32_t bi;
            uint16_t len;
            int ok = vp_slot_take(k, k->cons, &bi, &len);
            if (ok && (len <= io->vnet_hdr || len - io->vnet_hdr > (int)FRAME)) {
                io->st->tx_errors++;               /* longer than a UMEM frame: not sent */
                vp_io_error(io, EMSGSIZE);
            } else if (ok) {
                /* the pipeline segmented and completed what the header described */
                struct xdp_desc *d = xsk_ring_prod__tx_desc(&q->tx, idx + j++);
                uint64_t addr = q->free[--q->nfree];
                uint32_t flen = len - io->vnet_hdr;
                memcpy(q->area + addr, vp_buf(k, bi) + io->vnet_hdr, flen);
                VP_WRITE_ONCE(d->addr, addr);
                VP_WRITE_ONCE(d->len, flen);
                VP_WRITE_ONCE(d->options, 0);
                io->st->tx_packets++;
                io->st->tx_bytes += flen;
            }
            k->cons = nm_ring_next(k->nslots, k->cons);
            done++;
        }
        q->tx.cached_prod -= room - j;       /* reserved for frames that turned out bad */
        xsk_ring_prod__submit(&q->tx, j);
    }
    if (done < avail) io->st->tx_again++;
    /* In copy mode the kernel sends inside the kick, at most 32 frames a call: kick until
     * it has taken every posted descriptor (or says it is busy). EBUSY means the device
     * dropped one frame (completed, not sent): count it and go on. */
    for (int kick = 0; kick < 64 && xsk_ring_prod__needs_wakeup(&q->tx) &&
                       VP_LOAD_ACQUIRE(*q->tx.consumer) != VP_READ_ONCE(*q->tx.producer); kick++) {
        int rc = (int)sendto(io->fd[0], NULL, 0, MSG_DONTWAIT, NULL, 0);
        io->st->syscalls++;
        if (rc >= 0) continue;
        if (errno == EAGAIN || errno == ENOBUFS || errno == EINTR) break;
        if (errno == ENETDOWN || errno == ENXIO) {
            /* link down: the kernel keeps the frames in the tx ring; they go when it is up */
            io->st->tx_again++;
            if (io->st->last_errno != errno) vp_io_error(io, errno);
            break;
        }
        if (errno == EBUSY) {
            /* the dropped frame is the last one the kernel consumed: its descriptor is ours
             * (the kernel never writes the tx ring), so its length is what we posted */
            uint32_t last = VP_LOAD_ACQUIRE(*q->tx.consumer) - 1;
            uint32_t blen = VP_READ_ONCE(xsk_ring_prod__tx_desc(&q->tx, last)->len);
            io->st->tx_packets--;
            io->st->tx_bytes -= blen <= io->st->tx_bytes ? blen : io->st->tx_bytes;
            vp_io_tx_refused(io, EBUSY);      /* a dead guest's TAP, or a device error */
            continue;
        }
        io->st->tx_errors++;
        vp_io_error(io, errno);
        break;
    }
    /* until all posted frames have completed, the next receive calls txsync again, so
     * none is left sitting in the tx ring (a zero-copy driver sends after the kick) */
    reclaim(q);
    io->tx_inflight = q->nfree < NTX;
    return done;
}

void vp_afxdp_close(struct vp_io *io) {
    struct vp_afxdp *x = io->priv;
    if (!x) return;
    for (uint32_t i = 0; i < 4; i++) {
        struct xq *q = &x->q[i];
        if (q->xsk) xsk_socket__delete(q->xsk);
        if (q->umem) xsk_umem__delete(q->umem);
        if (q->area) munmap(q->area, (size_t)(NRX + NTX) * FRAME);
        io->fd[i] = -1;
    }
    if (x->link_fd >= 0) close(x->link_fd);    /* detaches the program */
    if (x->prog_fd >= 0) close(x->prog_fd);
    if (x->map_fd >= 0) close(x->map_fd);
    free(x);
    io->priv = NULL;
}

int vp_afxdp_open(struct vp_io *io, const char *ifname, uint32_t first_queue, uint32_t nq,
                  uint32_t mode, uint32_t zc, uint32_t sg, struct vp_afxdp_info *info, char *err, size_t errlen) {
    struct vp_afxdp *x = calloc(1, sizeof(*x));
    struct bpf_prog_info pinfo = {0};
    uint32_t plen = sizeof(pinfo), zc_all = 1;
    char log[512] = "";
    int ifindex = (int)if_nametoindex(ifname), rc = 0;
    if (!x) return fail(err, errlen, ENOMEM, "%s: %s", ifname);
    x->prog_fd = x->map_fd = x->link_fd = -1;
    io->priv = x;
    if (!ifindex) { rc = fail(err, errlen, ENODEV, "no interface %s: %s", ifname); goto out; }
    if (nq < 1 || nq > 4) { rc = fail(err, errlen, EINVAL, "%s: 1 to 4 queues: %s", ifname); goto out; }
    x->map_fd = bpf_map_create(BPF_MAP_TYPE_XSKMAP, "valepipe_xsks", 4, 4, 256, NULL);
    if (x->map_fd < 0) {
        rc = errno == EPERM ? fail(err, errlen, EPERM, "%s: permission denied creating BPF maps: AF_XDP needs "
                                   "CAP_BPF and CAP_NET_ADMIN (run as root) (%s)", ifname)
                            : fail(err, errlen, errno, "%s: XSKMAP: %s", ifname);
        goto out;
    }
    x->sg = sg;
    x->prog_fd = load_prog(x->map_fd, sg, log, sizeof(log));
    if (x->prog_fd < 0 && sg) {               /* a kernel without XDP frags */
        x->sg = 0;
        x->prog_fd = load_prog(x->map_fd, 0, log, sizeof(log));
    }
    if (x->prog_fd < 0) { rc = fail(err, errlen, errno, "%s: loading the XDP program: %s", ifname); goto out; }
    for (int attempt = 0; attempt < 3; attempt++) {
        uint32_t m = mode == VP_XDP_AUTO ? (attempt == 0 ? VP_XDP_NATIVE : VP_XDP_GENERIC) : mode;
        LIBBPF_OPTS(bpf_link_create_opts, lopts, .flags = m == VP_XDP_NATIVE ? XDP_FLAGS_DRV_MODE : XDP_FLAGS_SKB_MODE);
        x->link_fd = bpf_link_create(x->prog_fd, ifindex, BPF_XDP, &lopts);
        info->mode = m;
        if (x->link_fd >= 0 || errno == EBUSY || errno == EEXIST) break;
        if (x->sg && m == VP_XDP_NATIVE && (errno == EOPNOTSUPP || errno == EINVAL)) {
            /* a driver whose native XDP has no multi-buffer: a program without frags */
            close(x->prog_fd);
            x->sg = 0;
            x->prog_fd = load_prog(x->map_fd, 0, log, sizeof(log));
            if (x->prog_fd < 0) { rc = fail(err, errlen, errno, "%s: loading the XDP program: %s", ifname); goto out; }
            attempt--;
            continue;
        }
        if (mode != VP_XDP_AUTO) break;
    }
    if (x->link_fd < 0) {
        int e = errno;
        uint32_t other = 0;
        bpf_xdp_query_id(ifindex, 0, &other);
        if (e == EBUSY || e == EEXIST || other)
            snprintf(err, errlen, "%s already has an XDP program attached (id %u); "
                     "remove it first (ip link set dev %s xdp off) or use packet:%s", ifname, other, ifname, ifname);
        else if (e == EPERM)
            snprintf(err, errlen, "%s: permission denied attaching XDP: needs CAP_NET_ADMIN (run as root)", ifname);
        else
            snprintf(err, errlen, "%s: cannot attach XDP in %s mode: %s", ifname,
                     info->mode == VP_XDP_NATIVE ? "native" : "generic", strerror(e));
        rc = -e;
        goto out;
    }
    if (bpf_obj_get_info_by_fd(x->prog_fd, &pinfo, &plen) == 0) info->prog_id = pinfo.id;
    info->ifindex = ifindex;
    x->nq = nq;
    io->nq = nq;
    for (uint32_t i = 0; i < nq; i++) {
        struct xdp_options opt;
        socklen_t ol = sizeof(opt);
        rc = open_queue(x, i, ifname, first_queue + i, zc, x->sg, err, errlen);
        if (rc < 0) goto out;
        io->fd[i] = rc;
        if (getsockopt(rc, SOL_XDP, XDP_OPTIONS, &opt, &ol) == 0 && !(opt.flags & XDP_OPTIONS_ZEROCOPY)) zc_all = 0;
    }
    info->zerocopy = zc_all;
    info->sg = x->sg;
    io->rx = afxdp_rx;
    io->tx = afxdp_tx;
    return 0;
out:
    vp_afxdp_close(io);
    return rc;
}

/* the kernel's drops for this port's sockets */
void vp_afxdp_poll_stats(struct vp_io *io) {
    uint64_t drops = 0;
    for (uint32_t i = 0; i < io->nq; i++) {
        struct xdp_statistics st;
        socklen_t len = sizeof(st);
        if (io->fd[i] >= 0 && getsockopt(io->fd[i], SOL_XDP, XDP_STATISTICS, &st, &len) == 0)
            drops += st.rx_dropped + st.rx_ring_full + st.rx_fill_ring_empty_descs;
    }
    /* the sockets' counters start at zero again when the port re-opens: add what is new */
    if (io->priv) {
        struct vp_afxdp *x = io->priv;
        if (drops > x->kernel_drops) io->st->rx_kernel_drops += drops - x->kernel_drops;
        x->kernel_drops = drops;
    }
}
