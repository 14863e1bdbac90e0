/* upcall.c — choose what a batch sends to the slow path. A miss on a new flow inserts
 * a pending entry (bounded by the flow limit and by its port's rate) and sends its key;
 * a miss on a pending flow sends only the packet (bounded per flow). Everything refused
 * is counted. */
#include "upcall.h"
#include <string.h>
#include "stages/lookup.h"

uint32_t vp_upcall_collect(struct vp_dp *dp, struct vp_batch *b, struct vp_upcall_batch *u, int chan) {
    u->nflows = u->npkts = 0;
    memset(u->port_pkts, 0, sizeof(u->port_pkts));
    for (uint32_t i = 0; i < b->n; i++) {
        struct vp_pkt *pk = &b->pkt[i];
        struct vp_flow *f;
        int32_t e;
        if (pk->action >= 0) continue;
        if (chan != VP_CHAN_UP) { VP_DROP(dp, chan == VP_CHAN_FULL ? VP_DROP_UPCALL_QUEUE : VP_DROP_UPCALL_LOST, pk->port, 1); continue; }
        /* an earlier packet of this batch may have made the flow pending already */
        e = pk->action == VP_ACT_PENDING ? (int32_t)pk->flow : vp_flow_find(dp, &b->key[i]);
        if (e < 0) {
            uint32_t id;
            if (u->rate_interval_ns && pk->port < 64) {
                /* one port flooding new flows must not use up the slow path for all */
                uint64_t now = dp->now_ns, tat = u->tat[pk->port] > now ? u->tat[pk->port] : now;
                if (tat - now > u->rate_burst_ns) {
                    VP_DROP(dp, VP_DROP_UPCALL_RATE, pk->port, 1);
                    u->rate_limited[pk->port]++;
                    continue;
                }
                u->tat[pk->port] = tat + u->rate_interval_ns;
            }
            id = ++u->next_id;
            if (vp_flow_insert_pending(dp, &b->key[i], pk->hash, id) < 0) {
                VP_DROP(dp, VP_DROP_FLOW_LIMIT, pk->port, 1);
                continue;
            }
            u->flow_pkt[u->nflows] = i;
            u->flow_id[u->nflows++] = id;
            e = vp_flow_find(dp, &b->key[i]);
        }
        f = &dp->flows.entries[e];
        if (f->action >= 0) {           /* installed meanwhile: not a miss any more */
            pk->action = f->action;
            continue;
        }
        if (f->packets >= VP_PENDING_MAX_PKTS) { VP_DROP(dp, VP_DROP_UPCALL_QUEUE, pk->port, 1); continue; }
        f->packets++;
        u->pkt_idx[u->npkts] = i;
        u->pkt_upcall[u->npkts++] = f->upcall_id;
        /* the slow path has it now: its answer (or the channel's loss) settles it */
        u->port_pkts[pk->port & (VP_MAX_PORTS - 1)]++;
        dp->upcall_inflight[pk->port & (VP_MAX_PORTS - 1)]++;
    }
    return u->npkts;
}
