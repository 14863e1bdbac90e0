/* lookup.c — the exact-match flow table: full-key hash lookup with the whole batch's
 * buckets prefetched first, per-flow stats on hits, pending entries for upcalled flows. */
#include <stdlib.h>
#include <string.h>
#include "lookup.h"

int vp_flows_init(struct vp_dp *dp, uint32_t limit) {
    uint32_t cap = 1024;
    if (limit == 0 || limit > (1u << 26)) return -1;
    while (cap < limit * 2u) cap <<= 1;          /* load factor stays under 1/2 */
    dp->flows.slots = aligned_alloc(64, (size_t)cap * sizeof(struct vp_flow));
    if (!dp->flows.slots) return -1;
    for (uint32_t i = 0; i < cap; i++) dp->flows.slots[i].action = VP_ACT_EMPTY;
    dp->flows.mask = cap - 1;
    dp->flows.count = 0;
    dp->flows.limit = limit;
    return 0;
}

static inline int key_eq(const struct vp_flow_key *a, const struct vp_flow_key *b) {
    const uint64_t *x = (const uint64_t *)a, *y = (const uint64_t *)b;
    uint64_t d = 0;
    for (size_t i = 0; i < sizeof(*a) / 8; i++) d |= x[i] ^ y[i];
    return d == 0;
}

static int32_t find(struct vp_flow_table *t, const struct vp_flow_key *k, uint32_t h) {
    for (uint32_t i = h & t->mask;; i = (i + 1) & t->mask) {
        struct vp_flow *f = &t->slots[i];
        if (f->action == VP_ACT_EMPTY) return -1;
        if (f->hash == h && key_eq(&f->key, k)) return (int32_t)i;
    }
}

int32_t vp_flow_find(struct vp_dp *dp, const struct vp_flow_key *k) {
    return find(&dp->flows, k, vp_key_hash(k));
}

uint32_t vp_lookup(struct vp_dp *dp, struct vp_batch *b) {
    VP_TIME_BEGIN(dp);
    struct vp_flow_table *t = &dp->flows;
    uint32_t nmiss = 0;
    uint64_t now = dp->now_ns;
    for (uint32_t i = 0; i < b->n; i++) __builtin_prefetch(&t->slots[b->pkt[i].hash & t->mask]);
    for (uint32_t i = 0; i < b->n; i++) {
        struct vp_pkt *pk = &b->pkt[i];
        int32_t e = find(t, &b->key[i], pk->hash);
        if (e >= 0 && t->slots[e].action >= 0) {
            struct vp_flow *f = &t->slots[e];
            pk->action = f->action;
            pk->flow = (uint32_t)e;
            f->packets++;
            f->bytes += pk->len;
            f->used_ns = now;
            f->tcp_flags |= b->key[i].tcp_flags;
        } else {
            pk->action = e >= 0 ? VP_ACT_PENDING : VP_ACT_MISS;
            pk->flow = (uint32_t)e;
            nmiss++;
        }
    }
    b->nmiss = nmiss;
    dp->st.hits += b->n - nmiss;
    dp->st.misses += nmiss;
    VP_TIME_END(dp, VP_ST_LOOKUP, b->n);
    return nmiss;
}

static struct vp_flow *insert(struct vp_dp *dp, const struct vp_flow_key *k, uint32_t h) {
    struct vp_flow_table *t = &dp->flows;
    uint32_t i;
    if (t->count >= t->limit) return NULL;
    for (i = h & t->mask; t->slots[i].action != VP_ACT_EMPTY; i = (i + 1) & t->mask) {}
    t->count++;
    memset(&t->slots[i], 0, sizeof(t->slots[i]));
    t->slots[i].key = *k;
    t->slots[i].hash = h;
    t->slots[i].created_ns = t->slots[i].used_ns = dp->now_ns;
    return &t->slots[i];
}

int vp_flow_insert_pending(struct vp_dp *dp, const struct vp_flow_key *k, uint32_t hash, uint32_t upcall_id) {
    struct vp_flow *f = insert(dp, k, hash);
    if (!f) return -1;
    f->action = VP_ACT_PENDING;
    f->upcall_id = upcall_id;
    return 0;
}

/* 0 installed over a pending entry, 1 inserted new, -1 flow limit reached */
int vp_flow_install(struct vp_dp *dp, const struct vp_flow_key *k, int32_t action) {
    uint32_t h = vp_key_hash(k);
    int32_t e = find(&dp->flows, k, h);
    struct vp_flow *f;
    if (e >= 0) {
        f = &dp->flows.slots[e];
        if (f->action == VP_ACT_PENDING) f->packets = 0;   /* it counted queued upcall packets */
        f->action = action;
        f->used_ns = dp->now_ns;
        return 0;
    }
    f = insert(dp, k, h);
    if (!f) return -1;
    f->action = action;
    return 1;
}

/* backward-shift deletion keeps every probe sequence unbroken without tombstones */
static void delete_at(struct vp_flow_table *t, uint32_t i) {
    uint32_t j = i;
    for (;;) {
        j = (j + 1) & t->mask;
        if (t->slots[j].action == VP_ACT_EMPTY) break;
        uint32_t home = t->slots[j].hash & t->mask;
        if (((j - home) & t->mask) >= ((j - i) & t->mask)) {
            t->slots[i] = t->slots[j];
            i = j;
        }
    }
    t->slots[i].action = VP_ACT_EMPTY;
    t->count--;
}

int vp_flow_remove(struct vp_dp *dp, const struct vp_flow_key *k) {
    int32_t e = find(&dp->flows, k, vp_key_hash(k));
    if (e < 0) return -1;
    delete_at(&dp->flows, (uint32_t)e);
    return 0;
}

uint32_t vp_flow_sweep(struct vp_dp *dp, uint64_t idle_ns, uint64_t pending_ns, uint32_t *expired_pending) {
    struct vp_flow_table *t = &dp->flows;
    uint64_t now = dp->now_ns;
    uint32_t removed = 0, pend = 0;
    for (uint32_t i = 0; i <= t->mask; i++) {
        struct vp_flow *f = &t->slots[i];
        if (f->action == VP_ACT_EMPTY) continue;
        uint64_t age = now > f->used_ns ? now - f->used_ns : 0;
        if ((f->action == VP_ACT_PENDING && age > pending_ns) || (f->action >= 0 && idle_ns && age > idle_ns)) {
            if (f->action == VP_ACT_PENDING) pend++;
            delete_at(t, i);
            removed++;
            i--;                    /* a shifted entry may now sit at i */
        }
    }
    if (expired_pending) *expired_pending = pend;
    return removed;
}
