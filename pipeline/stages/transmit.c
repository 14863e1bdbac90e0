/* transmit.c — per output port: swap buffer indexes when the packet's buffer lives in
 * the same region as the out ring (zero copy), else copy once; then publish the ring. */
#include <string.h>
#include "transmit.h"
#include "../../bindings/adapter.h"
#include "../../bindings/netmap/port.h"
#include "../../bindings/pcap/pcap.h"

/* the ring the pipeline produces into: a shm user's RX ring, or our own netmap TX ring */
static inline struct vp_ring *out_ring(struct vp_port *p) {
    return p->rx[0].role == VP_ROLE_KERNEL ? &p->rx[0] : &p->tx[0];
}
static inline struct vp_ring *in_ring(struct vp_port *p, uint32_t i) {
    return p->tx[0].role == VP_ROLE_KERNEL ? &p->tx[i] : &p->rx[i];
}

/* After frames were put in a port's out ring: hand them on (netmap's txsync, for an
 * emulated adapter or a real netmap port) and write out its mirror. */
static void tx_sync(struct vp_port *p) {
    if (p->io) vp_io_txsync(p->io);
    if (p->fd >= 0) vp_netmap_port_sync(p, 1);
    if (p->mirror) vp_pcap_flush(p->mirror);
}

uint32_t vp_transmit(struct vp_dp *dp, struct vp_batch *b) {
    VP_TIME_BEGIN(dp);
    uint32_t sent = 0;
    for (uint32_t port = 0; port < dp->nports; port++) {
        struct vp_outq *q = &dp->outq[port];
        if (q->n == 0) continue;
        struct vp_ring *r = out_ring(dp->ports[port]);
        uint32_t space = vp_ring_space(r), i;
        for (i = 0; i < q->n && space; i++) {
            struct vp_pkt *pk = &b->pkt[q->pkt[i]];
            struct netmap_slot *ts = vp_slot(r, vp_ring_produce(r));
            /* the peer can rewrite the slot at any time: its index is read once, checked,
             * and only this private copy is used (the mirror copies the packet itself) */
            uint32_t tidx = VP_READ_ONCE(ts->buf_idx);
            if (!vp_buf_ok(r, tidx)) { r->st.bad_buf++; r->faulty = 1; continue; }
            if (pk->len > r->buf_size) { dp->st.drops[VP_DROP_TOO_BIG]++; continue; }
            struct vp_ring *ir = in_ring(dp->ports[pk->port], pk->ring);
            if (pk->nout == 1 && ir->bufs == r->bufs && ir->buf_size == r->buf_size && ir->mem_id == r->mem_id) {
                /* same region: hand the buffer over, give the rx slot the empty one */
                struct netmap_slot *rs = vp_slot(ir, pk->slot);
                uint32_t ridx = (uint32_t)((pk->data - ir->bufs) / ir->buf_size);
                VP_WRITE_ONCE(rs->buf_idx, tidx);
                VP_WRITE_ONCE(rs->flags, NS_BUF_CHANGED);
                VP_WRITE_ONCE(ts->buf_idx, ridx);
                VP_WRITE_ONCE(ts->flags, NS_BUF_CHANGED);
                dp->st.tx_swapped++;
            } else {
                memcpy(vp_buf(r, tidx), pk->data, pk->len);
                VP_WRITE_ONCE(ts->flags, 0);
                dp->st.tx_copied++;
            }
            VP_WRITE_ONCE(ts->len, pk->len);
            if (dp->ports[port]->mirror) vp_pcap_mirror(dp->ports[port]->mirror, pk->data, pk->len);
            vp_ring_produced(r);
            r->st.packets++;
            r->st.bytes += pk->len;
            space--;
            sent++;
        }
        if (i < q->n) {
            r->st.full += q->n - i;
            dp->st.drops[VP_DROP_TX_FULL] += q->n - i;
        }
        vp_ring_publish(r);
        tx_sync(dp->ports[port]);
        q->n = 0;
    }
    VP_TIME_END(dp, VP_ST_TRANSMIT, sent);
    return sent;
}

uint32_t vp_inject(struct vp_dp *dp, uint32_t port, const uint8_t *blob, const uint16_t *lens, uint32_t n) {
    struct vp_ring *r;
    uint32_t sent;
    uint64_t full0;
    if (port >= dp->nports) { dp->st.drops[VP_DROP_NO_PORT] += n; return 0; }
    r = out_ring(dp->ports[port]);
    full0 = r->st.full;
    sent = vp_ring_send(r, blob, lens, n);
    if (dp->ports[port]->mirror) {
        /* the frames the ring took: the first `sent` with a length it accepts */
        size_t off = 0;
        for (uint32_t i = 0, m = 0; i < n && m < sent; off += lens[i], i++)
            if (lens[i] && lens[i] <= r->buf_size) { vp_pcap_mirror(dp->ports[port]->mirror, (const char *)blob + off, lens[i]); m++; }
    }
    tx_sync(dp->ports[port]);
    dp->st.drops[VP_DROP_TX_FULL] += r->st.full - full0;
    return sent;
}
