/* execute.c — datapath actions "output:PORT" (any number) and "drop". Packets are
 * grouped per output port so transmit handles each ring once per batch. */
#include "execute.h"

int vp_actions_set(struct vp_dp *dp, uint32_t id, const uint16_t *out, uint32_t nout) {
    if (id >= dp->max_actions || nout > VP_MAX_OUTPUTS) return -1;
    dp->actions[id].nout = (uint16_t)nout;
    for (uint32_t i = 0; i < nout; i++) dp->actions[id].out[i] = out[i];
    if (id >= dp->nactions) dp->nactions = id + 1;
    return 0;
}

void vp_execute(struct vp_dp *dp, struct vp_batch *b) {
    VP_TIME_BEGIN(dp);
    for (uint32_t i = 0; i < b->n; i++) {
        struct vp_pkt *pk = &b->pkt[i];
        const struct vp_actions *a;
        pk->nout = 0;
        if (pk->action < 0) continue;              /* miss: the upcall owns it */
        if ((uint32_t)pk->action >= dp->nactions) { dp->st.drops[VP_DROP_ACTION]++; continue; }
        a = &dp->actions[pk->action];
        if (a->nout == 0) { dp->st.drops[VP_DROP_ACTION]++; continue; }
        for (uint32_t o = 0; o < a->nout; o++) {
            uint16_t port = a->out[o];
            if (port >= dp->nports) { dp->st.drops[VP_DROP_NO_PORT]++; continue; }
            struct vp_outq *q = &dp->outq[port];
            q->pkt[q->n++] = i;
            pk->nout++;
        }
    }
    VP_TIME_END(dp, VP_ST_EXECUTE, b->n);
}
