/* transmit.c — per output port: swap buffer indexes when the packet's buffer lives in
 * the same region as the out ring (zero copy), else copy once; a super-frame or partial
 * checksum bound for a port that takes none is segmented or completed on the way
 * (bindings/vnet.c), one that takes them keeps its virtio_net_hdr. The frames are
 * published at the batch's commit (pipeline/journal.c), not here. */
#include <string.h>
#include "transmit.h"
#include "../journal.h"

/* memcpy of a frame, the common small ones inline: overlapping copies that read and write
 * only [0, len) (a call into libc and its dispatch cost more than a 64-byte frame's copy) */
static inline void copy_frame(uint8_t *d, const uint8_t *s, uint32_t len) {
    if (len >= 32 && len <= 64) {
        __builtin_memcpy(d, s, 32);
        __builtin_memcpy(d + len - 32, s + len - 32, 32);
    } else if (len > 64 && len <= 128) {
        __builtin_memcpy(d, s, 64);
        __builtin_memcpy(d + len - 64, s + len - 64, 64);
    } else {
        memcpy(d, s, len);
    }
}

static inline void produced(struct vp_port *p, struct vp_ring *r, struct netmap_slot *ts, const uint8_t *frame,
                     uint32_t len, uint32_t hdr) {
    VP_WRITE_ONCE(ts->len, (uint16_t)(len + hdr));
    VP_WRITE_ONCE(ts->flags, 0);
    if (p->mirror) p->mirror_frame(p->mirror, (const char *)frame, len);
    vp_ring_produced(r);
    r->st.packets++;
    r->st.bytes += len;
}

/* the out ring's next slot names no buffer of its region: the peer wrote it */
static void bad_slot(struct vp_dp *dp, struct vp_ring *r, uint32_t in_port) {
    r->st.bad_buf++;
    r->faulty = 1;
    VP_DROP(dp, VP_DROP_TX_BAD_SLOT, in_port, 1);
}

/* A super-frame for a port that takes none: one segment per slot, all or nothing. An
 * emulated adapter's ring too full for it is handed on first (its txsync), as one frame
 * may need dozens of slots. */
static uint32_t put_segments(struct vp_dp *dp, struct vp_port *p, struct vp_ring *r, const uint8_t *data,
                             uint32_t len, const struct vp_offload *ol, uint32_t space, uint32_t in_port) {
    uint8_t *bufs[VP_GSO_MAX_SEGS];
    uint16_t lens[VP_GSO_MAX_SEGS];
    uint32_t hdr = p->vnet_hdr, n = vp_gso_count(data, len, ol, r->buf_size - hdr), si;
    if (!n) {
        VP_DROP(dp, vp_gso_count(data, len, ol, 65535) ? VP_DROP_TOO_BIG : VP_DROP_BAD_OFFLOAD, in_port, 1);
        return 0;
    }
    if (n > space && p->txsync) {
        vp_ring_publish(r);
        p->txsync(p);
        space = vp_ring_space(r);
    }
    if (n > space) {
        r->st.full++;
        VP_DROP(dp, VP_DROP_TX_FULL, in_port, 1);
        return 0;
    }
    si = vp_ring_produce(r);
    for (uint32_t i = 0; i < n; i++, si = nm_ring_next(r->nslots, si)) {
        /* the peer can rewrite a slot at any time: its index is read once, checked, and
         * only this private copy is used */
        uint32_t idx = VP_READ_ONCE(vp_slot(r, si)->buf_idx);
        if (!vp_buf_ok(r, idx)) { bad_slot(dp, r, in_port); return 0; }
        bufs[i] = (uint8_t *)vp_buf(r, idx) + hdr;
    }
    vp_gso_segment(data, len, ol, bufs, lens, n);
    for (uint32_t i = 0; i < n; i++) {
        if (hdr) memset(bufs[i] - hdr, 0, hdr);
        produced(p, r, vp_slot(r, vp_ring_produce(r)), bufs[i], lens[i], hdr);
    }
    dp->st.tx_segmented++;
    dp->st.tx_segments += n;
    return n;
}

/* One frame copied into port p's out ring r (space > 0 slots free): with its metadata
 * for a port that takes it, else segmented / checksum completed. Returns slots used;
 * 0 when it was dropped (counted). */
static inline uint32_t put_copy(struct vp_dp *dp, struct vp_port *p, struct vp_ring *r, const uint8_t *data,
                         uint32_t len, const struct vp_offload *ol, uint32_t space, uint32_t in_port) {
    static const struct vp_offload none;
    uint32_t hdr = p->vnet_hdr, idx;
    struct netmap_slot *ts;
    uint8_t *o;
    if (!ol) ol = &none;
    if (ol->gso_type != VP_GSO_NONE && !p->tx_offload) return put_segments(dp, p, r, data, len, ol, space, in_port);
    ts = vp_slot(r, vp_ring_produce(r));
    idx = VP_READ_ONCE(ts->buf_idx);
    if (!vp_buf_ok(r, idx)) { bad_slot(dp, r, in_port); return 0; }
    if (len + hdr > r->buf_size) { VP_DROP(dp, VP_DROP_TOO_BIG, in_port, 1); return 0; }
    o = (uint8_t *)vp_buf(r, idx) + hdr;
    copy_frame(o, data, len);
    if (p->tx_offload) {
        vp_vnet_write(o - hdr, ol);
    } else {
        if (ol->flags & VP_OL_CSUM) {
            vp_csum_complete(o, len, ol);
            dp->st.csum_completed++;
        }
        if (hdr) memset(o - hdr, 0, hdr);
    }
    produced(p, r, ts, o, len, hdr);
    return 1;
}

uint32_t vp_transmit(struct vp_dp *dp, struct vp_batch *b) {
    uint32_t sent = 0;
    for (uint32_t port = 0; port < dp->nports; port++) {
        struct vp_outq *q = &dp->outq[port];
        if (q->n == 0) continue;
        struct vp_port *op = dp->ports[port];
        struct vp_ring *r = vp_out_ring(op);
        uint32_t space = vp_ring_space(r), i;
        for (i = 0; i < q->n && space; i++) {
            struct vp_pkt *pk = &b->pkt[q->pkt[i]];
            struct vp_port *ip = dp->ports[pk->port];
            struct vp_ring *ir;
            if (pk->nout == 1 && ip->mem_id == op->mem_id && (ir = vp_in_ring(ip, pk->ring))->bufs == r->bufs &&
                ir->buf_size == r->buf_size && ir->mem_id == r->mem_id && !op->vnet_hdr && !ip->vnet_hdr) {
                /* same region: hand the buffer over, give the rx slot the empty one */
                struct netmap_slot *ts = vp_slot(r, vp_ring_produce(r)), *rs = vp_slot(ir, pk->slot);
                uint32_t tidx = VP_READ_ONCE(ts->buf_idx), ridx = (uint32_t)((pk->data - ir->bufs) / ir->buf_size);
                if (!vp_buf_ok(r, tidx)) { bad_slot(dp, r, pk->port); continue; }
                if (pk->len > r->buf_size) { VP_DROP(dp, VP_DROP_TOO_BIG, pk->port, 1); continue; }
                /* noted first: a batch that never commits gets its buffers back */
                if (vp_journal_swap(dp, pk->port, pk->ring, pk->slot, ridx, port, vp_ring_produce(r), tidx) != 0)
                    goto copy;
                VP_WRITE_ONCE(rs->buf_idx, tidx);
                VP_WRITE_ONCE(rs->flags, NS_BUF_CHANGED);
                VP_WRITE_ONCE(ts->buf_idx, ridx);
                produced(op, r, ts, (const uint8_t *)pk->data, pk->len, 0);
                VP_WRITE_ONCE(ts->flags, NS_BUF_CHANGED);
                dp->st.tx_swapped++;
                space--;
                sent++;
                continue;
            }
        copy:;
            uint32_t used = put_copy(dp, op, r, (const uint8_t *)pk->data, pk->len, &pk->ol, space, pk->port);
            dp->st.tx_copied += used != 0;
            /* segmenting may have handed the ring on to make room */
            space = pk->ol.gso_type != VP_GSO_NONE ? vp_ring_space(r) : space - used;
            sent += used;
        }
        if (i < q->n) {
            r->st.full += q->n - i;
            for (; i < q->n; i++) VP_DROP(dp, VP_DROP_TX_FULL, b->pkt[q->pkt[i]].port, 1);
        }
        dp->tx_dirty |= 1ull << port;
        q->n = 0;
    }
    return sent;
}

/* A frame from outside the batch (the slow path's packet-outs, an action program's
 * outputs) with its metadata (ol may be NULL: none), for the port it came in on; it is
 * published at the commit. */
uint32_t vp_emit(struct vp_dp *dp, uint32_t port, const uint8_t *data, uint32_t len, const struct vp_offload *ol,
                 uint32_t in_port) {
    struct vp_ring *r;
    uint32_t space;
    if (port >= dp->nports) { VP_DROP(dp, VP_DROP_NO_PORT, in_port, 1); return 0; }
    r = vp_out_ring(dp->ports[port]);
    if (len == 0) { VP_DROP(dp, VP_DROP_TOO_BIG, in_port, 1); return 0; }
    space = vp_ring_space(r);
    if (!space) {
        r->st.full++;
        VP_DROP(dp, VP_DROP_TX_FULL, in_port, 1);
        return 0;
    }
    dp->tx_dirty |= 1ull << port;
    return put_copy(dp, dp->ports[port], r, data, len, ol, space, in_port);
}
