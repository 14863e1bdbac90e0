/* journal.c — the commit point of the worker. Nothing a batch does is visible outside the
 * worker before its commit: frames go into out rings unpublished, taken slots stay
 * unreleased, buffer swaps are noted first. The commit writes counters and cursors into the
 * spare record and flips `seq` (one store: the commit), then publishes and releases. A
 * worker started after a crash takes the last record over: a batch that never committed is
 * taken again from its rings, one that did is never repeated, and every count survives. */
#include <string.h>
#include "journal.h"
#include "stages/receive.h"

#define LOAD(p)     __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

uint64_t vp_journal_size(void) { return sizeof(struct vp_journal); }

static uint32_t cursor(const struct vp_ring *r) {
    if (vp_ring_consumed(r)) return r->cons;
    return r->role == VP_ROLE_KERNEL ? r->hwtail : r->hwcur;
}

static struct vp_ring *ring_at(struct vp_port *p, uint32_t k) {
    if (k < VP_MAX_RINGS) return k < p->ntx ? &p->tx[k] : NULL;
    return k - VP_MAX_RINGS < p->nrx ? &p->rx[k - VP_MAX_RINGS] : NULL;
}

void vp_commit(struct vp_dp *dp) {
    struct vp_journal *j = dp->journal;
    if (j) {
        uint64_t seq = j->seq + 1;
        struct vp_jrec *r = &j->rec[seq & 1];
        r->st = dp->st;
        r->nports = dp->nports;
        memcpy(r->port_drops, dp->port_drops, dp->nports * sizeof(dp->port_drops[0]));
        memcpy(r->upcall_inflight, dp->upcall_inflight, dp->nports * sizeof(dp->upcall_inflight[0]));
        for (uint32_t i = 0; i < dp->nports; i++) {
            r->mem_id[i] = dp->ports[i]->mem_id;
            for (uint32_t k = 0; k < VP_JOURNAL_RINGS; k++) {
                struct vp_ring *rg = ring_at(dp->ports[i], k);
                if (!rg) continue;
                r->rings[i][k] = rg->st;
                r->pos[i][k] = cursor(rg);
            }
        }
        r->seq = seq;
        STORE(&j->seq, seq);                    /* the commit */
    }
    vp_receive_release(dp);
    for (uint32_t i = 0; i < dp->nports && dp->tx_dirty; i++) {
        struct vp_port *p = dp->ports[i];
        if (!(dp->tx_dirty & (1ull << i))) continue;
        vp_ring_publish(vp_out_ring(p));
        if (p->txsync) p->txsync(p);           /* the port's kind hands them on */
        if (p->mirror) p->mirror_flush(p->mirror);
    }
    dp->tx_dirty = 0;
}

int vp_journal_swap(struct vp_dp *dp, uint32_t in_port, uint32_t in_ring, uint32_t in_slot, uint32_t in_buf,
                    uint32_t out_port, uint32_t out_slot, uint32_t out_buf) {
    struct vp_journal *j = dp->journal;
    uint64_t next;
    struct vp_jswap *s;
    if (!j) return 0;
    next = j->seq + 1;
    if (j->swap_seq != next) {
        STORE(&j->nswaps, 0);
        STORE(&j->swap_seq, next);
    }
    if (j->nswaps >= VP_JOURNAL_SWAPS) return -1;
    s = &j->swaps[j->nswaps];
    s->in_port = (uint16_t)in_port;
    s->in_ring = (uint16_t)in_ring;
    s->out_port = (uint16_t)out_port;
    s->in_slot = in_slot;
    s->in_buf = in_buf;
    s->out_slot = out_slot;
    s->out_buf = out_buf;
    STORE(&j->nswaps, j->nswaps + 1);           /* noted before the swap is made */
    return 0;
}

/* give back the buffers a batch that never committed swapped, newest first */
static void undo_swaps(struct vp_dp *dp, struct vp_journal *j, uint64_t resume) {
    for (uint32_t k = j->nswaps < VP_JOURNAL_SWAPS ? j->nswaps : VP_JOURNAL_SWAPS; k-- > 0;) {
        const struct vp_jswap *s = &j->swaps[k];
        struct vp_ring *ir, *orr;
        if (s->in_port >= dp->nports || s->out_port >= dp->nports ||
            !(resume >> s->in_port & 1) || !(resume >> s->out_port & 1))
            continue;
        ir = ring_at(dp->ports[s->in_port], s->in_ring);
        orr = ring_at(dp->ports[s->out_port], VP_MAX_RINGS);
        if (!ir || !orr || s->in_slot >= ir->nslots || s->out_slot >= orr->nslots) continue;
        vp_slot(ir, s->in_slot)->buf_idx = s->in_buf;
        vp_slot(orr, s->out_slot)->buf_idx = s->out_buf;
    }
}

/* the cursors of a ring whose region outlived the worker, as the last commit left them */
static void resume_ring(struct vp_ring *r, uint32_t pos) {
    uint32_t n = r->nslots;
    if (pos >= n || r->role != VP_ROLE_KERNEL) return;
    if (vp_ring_consumed(r)) {
        r->hwcur = r->cons = pos;
        r->hwtail = pos == 0 ? n - 1 : pos - 1;
    } else {
        uint32_t h = LOAD(&r->ring->head);
        r->hwtail = pos;
        r->hwcur = h < n ? h : pos;
    }
    STORE(&r->ring->tail, r->hwtail);
}

int vp_journal_takeover(struct vp_dp *dp, uint64_t resume_ports) {
    struct vp_journal *j = dp->journal;
    const struct vp_jrec *r;
    if (!j) return 0;
    if (j->magic != VP_JOURNAL_MAGIC || j->nports != dp->nports || j->seq == 0 ||
        j->rec[j->seq & 1].nports < dp->nports) {
        memset(j, 0, sizeof(*j));
        j->magic = VP_JOURNAL_MAGIC;
        j->nports = dp->nports;
        return 0;
    }
    r = &j->rec[j->seq & 1];
    if (j->swap_seq == j->seq + 1) undo_swaps(dp, j, resume_ports);
    j->swap_seq = 0;
    j->nswaps = 0;
    dp->st = r->st;
    memcpy(dp->port_drops, r->port_drops, dp->nports * sizeof(dp->port_drops[0]));
    memcpy(dp->upcall_inflight, r->upcall_inflight, dp->nports * sizeof(dp->upcall_inflight[0]));
    for (uint32_t i = 0; i < dp->nports; i++) {
        /* the cursors are of this port's ring only if it was the same region then (not a
         * placeholder for a port that was down) */
        int resume = (resume_ports >> i & 1) && i < r->nports && r->mem_id[i] == dp->ports[i]->mem_id;
        for (uint32_t k = 0; k < VP_JOURNAL_RINGS; k++) {
            struct vp_ring *rg = ring_at(dp->ports[i], k);
            if (!rg) continue;
            rg->st = r->rings[i][k];
            if (resume) resume_ring(rg, r->pos[i][k]);
        }
        /* what the old worker had handed to its slow path went with that channel */
        if (dp->upcall_inflight[i]) {
            VP_DROP(dp, VP_DROP_WORKER_RESTART, i, dp->upcall_inflight[i]);
            dp->upcall_inflight[i] = 0;
        }
    }
    /* ports added at run time are not in the config the new worker starts from: what
     * they had with the slow path is counted in the totals */
    for (uint32_t i = dp->nports; i < r->nports && i < VP_MAX_PORTS; i++)
        dp->st.drops[VP_DROP_WORKER_RESTART] += r->upcall_inflight[i];
    j->takeovers++;
    vp_commit(dp);
    return 1;
}
