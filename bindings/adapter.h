/* adapter.h — emulated netmap adapters: a packet interface (TAP, AF_PACKET, AF_XDP on
 * Linux; a pcap file anywhere) presented to the pipeline as a netmap port, as netmap's own
 * emulated adapters do. The pipeline holds the port's user side; a binding's rx/tx
 * functions play the kernel side of the same rings, called from rxsync/txsync. */
#ifndef VP_ADAPTER_H
#define VP_ADAPTER_H
#include "../ring/region.h"
#include "vnet.h"

/* cdef-begin */
struct vp_io_stats {
    uint64_t rx_packets;      /* from the interface into the rx rings */
    uint64_t rx_bytes;
    uint64_t tx_packets;      /* from the tx ring out of the interface */
    uint64_t tx_bytes;
    uint64_t rx_truncated;    /* longer than a ring buffer: dropped */
    uint64_t rx_kernel_drops; /* the kernel's own count: its ring was full before we read */
    uint64_t rx_errors;       /* malformed input (bad pcap record, bad descriptor) */
    uint64_t tx_errors;       /* the interface refused a frame: dropped */
    uint64_t tx_again;        /* the interface was busy: frames kept and retried */
    uint64_t tx_discarded;    /* sent to a port that cannot transmit (a pcap being read) */
    uint64_t syscalls;
    uint64_t rx_gso;          /* super-frames received (virtio-net header, or longer than the MTU) */
    uint64_t rx_csum_partial; /* frames received with a checksum left to complete */
    uint64_t tx_link_down;    /* dropped: the link was down, gone or without carrier (a dead guest) */
    uint64_t rx_worker_restart; /* lost: the interface received them while its worker was dead
                                 * (in the dead worker's socket, or before the new one opened) */
    int32_t last_errno;       /* most recent error, 0 if none since it was read */
    uint32_t errors_seen;     /* bumps on every new error, for the worker's log */
};

#define VP_LINK_DOWN 1
#define VP_LINK_GONE 2
struct vp_io {
    uint32_t nq;              /* queues: rings per direction */
    uint32_t tx_backlog;      /* the last txsync left frames to push: txsync again soon */
    uint32_t tx_inflight;     /* set by a binding whose kernel queue still holds frames */
    uint32_t vnet_hdr;        /* bytes of virtio_net_hdr in front of each frame in the rings (0 or 10) */
    uint32_t mtu;             /* the interface's MTU when opened (0: unknown) */
    uint32_t link_down;       /* set by the worker while the link is not up (VP_LINK_DOWN): frames
                               * to send are dropped (tx_link_down), not retried until it returns;
                               * VP_LINK_GONE: the interface went and the fds are closed */
    uint32_t tx_unsure;       /* of tx_errors: frames the device refused while the link looked up
                               * (EBUSY, ENETDOWN, ENXIO); the worker's next look at the link makes
                               * them tx_link_down if it is not up, else reports them as errors */
    int tx_unsure_errno;
    int fd[4];                /* one per queue; -1 when the kind has none */
    uint32_t (*rx)(struct vp_io *io, uint32_t q, struct vp_ring *k, uint32_t space);
    uint32_t (*tx)(struct vp_io *io, struct vp_ring *k, uint32_t avail);
    void *priv;               /* the binding's own state */
    struct vp_port kport;     /* the pipeline's rings, kernel side */
    struct vp_io_stats *st;   /* the counters: in memory the supervisor keeps, so they go on
                               * after a worker crash (bindings/adapter.py KEEP), or own */
    struct vp_io_stats own;
};

/* what a port keeps across workers, in memory the supervisor shares with each: its binding's
 * counters, and where they stood against the interface's own when the last worker opened it */
struct vp_io_keep {
    struct vp_io_stats st;
    uint64_t if_rx_base;      /* the interface's rx_packets then */
    uint64_t seen_base;       /* what the port had accounted for of them then */
    uint32_t used;            /* a worker has opened the port */
    uint32_t ifindex;         /* of the interface it opened (a new one of the name starts anew) */
};

void vp_io_rxsync(struct vp_io *io);
void vp_io_txsync(struct vp_io *io);
void vp_io_attach(struct vp_port *p, struct vp_io *io);
/* cdef-end */

/* for the bindings' rx: the next free rx slot's buffer (NULL when it is not ours to fill) */
static inline char *vp_io_rx_buf(struct vp_ring *k) {
    uint32_t idx = VP_READ_ONCE(vp_slot(k, vp_ring_produce(k))->buf_idx);
    return vp_buf_ok(k, idx) ? vp_buf(k, idx) : NULL;
}
/* len counts the virtio_net_hdr in front of the frame, if the port has one */
static inline void vp_io_rx_commit(struct vp_io *io, struct vp_ring *k, uint32_t len) {
    struct netmap_slot *s = vp_slot(k, vp_ring_produce(k));
    VP_WRITE_ONCE(s->len, (uint16_t)len);
    VP_WRITE_ONCE(s->flags, 0);
    vp_ring_produced(k);
    io->st->rx_packets++;
    io->st->rx_bytes += len - io->vnet_hdr;
}
static inline void vp_io_error(struct vp_io *io, int err) {
    io->st->last_errno = err;
    io->st->errors_seen++;
}
/* a frame refused in a way a link going down also causes: counted at once (tx_errors), its
 * reason settled by the worker's next look at the link (bindings/adapter.py follow_link) */
static inline void vp_io_tx_refused(struct vp_io *io, int err) {
    if (io->link_down) {
        io->st->tx_link_down++;
        return;
    }
    io->st->tx_errors++;
    io->tx_unsure++;
    io->tx_unsure_errno = err;
}
#endif
