/* receive.c — fill a batch with descriptors pointing into the ports' buffers. The slots
 * stay the pipeline's until the batch commits (pipeline/journal.c releases them). */
#include <string.h>
#include "receive.h"

void vp_receive_release(struct vp_dp *dp) {
    for (uint32_t i = 0; i < dp->nports; i++) {
        struct vp_port *p = dp->ports[i];
        for (uint32_t r = 0; r < vp_in_rings(p); r++) vp_ring_release(vp_in_ring(p, r));
    }
}

uint32_t vp_receive(struct vp_dp *dp, struct vp_batch *b) {
    uint32_t n = 0, budget = b->cap < VP_BATCH_MAX ? b->cap : VP_BATCH_MAX;
    vp_receive_release(dp);
    /* each port's kind brings in what arrived (netmap's rxsync: an emulated adapter refills
     * what was just released, a real netmap port asks the kernel) */
    for (uint32_t i = 0; i < dp->nports; i++)
        if (dp->ports[i]->rxsync) dp->ports[i]->rxsync(dp->ports[i]);
    for (uint32_t k = 0; k < dp->nports && n < budget; k++) {
        uint32_t pi = (dp->rr + k) % dp->nports;
        struct vp_port *p = dp->ports[pi];
        uint32_t hdr = p->vnet_hdr;        /* frames carry a virtio_net_hdr (GSO, partial checksums) */
        for (uint32_t ri = 0; ri < vp_in_rings(p) && n < budget; ri++) {
            struct vp_ring *r = vp_in_ring(p, ri);
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
                pk->parsed = 0;
                r->st.packets++;
                r->st.bytes += len;
            }
        }
    }
    dp->rr = dp->nports ? (dp->rr + 1) % dp->nports : 0;
    b->n = n;
    b->nmiss = 0;
    if (n) { dp->st.batches++; dp->st.packets += n; }
    return n;
}
