/* receive.c — fill a batch with descriptors pointing into the ports' buffers.
 * The slots stay owned by the pipeline until the next call releases them. */
#include <string.h>
#include <time.h>
#include "receive.h"
#include "../../bindings/adapter.h"
#include "../../bindings/netmap/port.h"

uint64_t vp_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

/* The ring the pipeline consumes: a shm user's TX ring (we are its kernel side) or,
 * for a real netmap port, our own RX ring. */
static inline struct vp_ring *in_ring(struct vp_port *p, uint32_t i) {
    return p->tx[0].role == VP_ROLE_KERNEL ? &p->tx[i] : &p->rx[i];
}
static inline uint32_t in_rings(struct vp_port *p) {
    return p->tx[0].role == VP_ROLE_KERNEL ? p->ntx : p->nrx;
}

void vp_receive_release(struct vp_dp *dp) {
    for (uint32_t i = 0; i < dp->nports; i++) {
        struct vp_port *p = dp->ports[i];
        for (uint32_t r = 0; r < in_rings(p); r++) vp_ring_release(in_ring(p, r));
    }
}

uint32_t vp_receive(struct vp_dp *dp, struct vp_batch *b, uint32_t budget) {
    VP_TIME_BEGIN(dp);
    uint32_t n = 0;
    if (budget > b->cap) budget = b->cap;
    vp_receive_release(dp);
    /* emulated adapters: the binding refills what was just released (netmap's rxsync),
     * and retries frames an earlier txsync could not hand to the interface */
    for (uint32_t i = 0; i < dp->nports; i++) {
        struct vp_io *io = dp->ports[i]->io;
        if (dp->ports[i]->fd >= 0) vp_netmap_port_sync(dp->ports[i], 0);    /* a real netmap port */
        if (!io) continue;
        if (io->tx_backlog) vp_io_txsync(io);
        vp_io_rxsync(io);
    }
    for (uint32_t k = 0; k < dp->nports && n < budget; k++) {
        uint32_t pi = (dp->rr + k) % dp->nports;
        struct vp_port *p = dp->ports[pi];
        /* an adapter whose frames carry a virtio_net_hdr (GSO, partial checksums) */
        uint32_t hdr = p->io ? ((struct vp_io *)p->io)->vnet_hdr : 0;
        for (uint32_t ri = 0; ri < in_rings(p) && n < budget; ri++) {
            struct vp_ring *r = in_ring(p, ri);
            uint32_t avail = vp_ring_avail(r);
            while (avail-- && n < budget) {
                uint32_t si = r->cons, idx;
                uint16_t len;
                r->cons = nm_ring_next(r->nslots, si);
                if (!vp_slot_take(r, si, &idx, &len)) continue;
                struct vp_pkt *pk = &b->pkt[n];
                pk->data = vp_buf(r, idx);
                /* the peer just wrote this buffer from another core: start the transfer now */
                __builtin_prefetch(pk->data);
                if (hdr) {
                    if (len < hdr + 14 || vp_vnet_parse((const uint8_t *)pk->data, len - hdr, &pk->ol)) {
                        VP_DROP(dp, VP_DROP_BAD_OFFLOAD, pi, 1);     /* in the port's ledger too */
                        continue;
                    }
                    pk->data += hdr;
                    len -= hdr;
                } else {
                    memset(&pk->ol, 0, sizeof(pk->ol));
                }
                n++;
                pk->len = len;
                pk->port = (uint16_t)pi;
                pk->ring = (uint16_t)ri;
                pk->slot = si;
                pk->nout = 0;
                r->st.packets++;
                r->st.bytes += len;
            }
        }
    }
    dp->rr = dp->nports ? (dp->rr + 1) % dp->nports : 0;
    b->n = n;
    b->nmiss = 0;
    if (n) { dp->st.batches++; dp->st.packets += n; }
    /* a poll that found nothing is idle time, not the cost of receiving: at a low rate
     * it would swamp ns/packet, so only calls that took packets are timed */
    if (n) VP_TIME_END(dp, VP_ST_RECEIVE, n);
    else dp->now_ns = vp_now_ns();
    return n;
}
