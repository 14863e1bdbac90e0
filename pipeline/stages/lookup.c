/* lookup.c — the exact-match flow table. A batch is looked up in three passes so the
 * memory latency of many flows overlaps: prefetch every index bucket, pick each
 * candidate by hash and prefetch its entry, then compare full keys. */
#include <stdlib.h>
#include <string.h>
#include "lookup.h"

#define IDX(h, e) (((uint64_t)(h) << 32) | ((uint64_t)(e) + 1))
#define IDX_HASH(w) ((uint32_t)((w) >> 32))
#define IDX_ENTRY(w) ((uint32_t)(w) - 1)
#define EVICT_LOOK 64           /* entries the eviction clock passes looking for a megaflow's cache */

static int table_init(struct vp_flow_table *t, uint32_t limit) {
    uint32_t cap = 1024;
    if (limit == 0 || limit > (1u << 26)) return -1;
    while (cap < limit * 2u) cap <<= 1;          /* index load factor stays under 1/2 */
    t->index = calloc(cap, sizeof(uint64_t));
    t->entries = aligned_alloc(64, (size_t)limit * sizeof(struct vp_flow));
    t->free = malloc((size_t)limit * sizeof(uint32_t));
    if (!t->index || !t->entries || !t->free) return -1;
    for (uint32_t i = 0; i < limit; i++) {
        t->entries[i].action = VP_ACT_EMPTY;
        t->free[i] = limit - 1 - i;
    }
    t->nfree = limit;
    t->mask = cap - 1;
    t->count = 0;
    t->limit = limit;
    return 0;
}

int vp_flows_init(struct vp_dp *dp, uint32_t limit) { return table_init(&dp->flows, limit); }
int vp_megaflows_init(struct vp_dp *dp, uint32_t limit) { return table_init(&dp->mflows, limit); }

static inline int key_eq(const struct vp_flow_key *a, const struct vp_flow_key *b) {
    const uint64_t *x = (const uint64_t *)a, *y = (const uint64_t *)b;
    uint64_t d = 0;
    for (size_t i = 0; i < sizeof(*a) / 8; i++) d |= x[i] ^ y[i];
    return d == 0;
}

/* index position holding key k, or -1 */
static int64_t find_pos(const struct vp_flow_table *t, const struct vp_flow_key *k, uint32_t h) {
    for (uint32_t i = h & t->mask;; i = (i + 1) & t->mask) {
        uint64_t w = t->index[i];
        if (!w) return -1;
        if (IDX_HASH(w) == h && key_eq(&t->entries[IDX_ENTRY(w)].key, k)) return i;
    }
}

static int32_t find(const struct vp_flow_table *t, const struct vp_flow_key *k, uint32_t h) {
    int64_t pos = find_pos(t, k, h);
    return pos < 0 ? -1 : (int32_t)IDX_ENTRY(t->index[pos]);
}

static struct vp_flow *insert(struct vp_dp *dp, const struct vp_flow_key *k, uint32_t h);
static struct vp_flow *insert_free(struct vp_flow_table *t, uint64_t now, const struct vp_flow_key *k, uint32_t h);
static void delete_at(struct vp_flow_table *t, uint32_t i);
static void delete_entry(struct vp_flow_table *t, uint32_t e) {
    int64_t pos = find_pos(t, &t->entries[e].key, t->entries[e].hash);
    if (pos >= 0) delete_at(t, (uint32_t)pos);
}

int32_t vp_flow_find(struct vp_dp *dp, const struct vp_flow_key *k) {
    return find(&dp->flows, k, vp_key_hash(k));
}

static void mask_key(struct vp_flow_key *out, const struct vp_flow_key *k, const struct vp_flow_key *m, uint32_t id) {
    const uint64_t *x = (const uint64_t *)k, *y = (const uint64_t *)m;
    uint64_t *o = (uint64_t *)out;
    for (size_t i = 0; i < sizeof(*k) / 8; i++) o[i] = x[i] & y[i];
    out->pad3 = id + 1;             /* the same masked bits under two masks are two flows */
}

/* Tuple-space search for the packets todo[0..n), subtable by subtable, most used first.
 * Each subtable pass works on the packets still unanswered in three sweeps — hash under
 * the mask and prefetch the index buckets, pick each candidate and prefetch its entry,
 * compare — so the memory latency of 100,000 megaflows overlaps as in the exact-match pass.
 * Sets pk->action (or VP_ACT_MISS); returns how many a megaflow answered. */
static uint32_t megaflow_batch(struct vp_dp *dp, struct vp_batch *b, const uint32_t *todo, uint32_t n) {
    struct vp_flow_table *t = &dp->mflows;
    uint32_t left[VP_BATCH_MAX], hash[VP_BATCH_MAX], cand[VP_BATCH_MAX], nleft = n, hits = 0;
    struct vp_flow_key mk;
    for (uint32_t k = 0; k < n; k++) {
        left[k] = todo[k];
        b->pkt[todo[k]].action = VP_ACT_MISS;
    }
    for (uint32_t j = 0; j < dp->nmasks && nleft; j++) {
        uint32_t id = dp->mask_order[j], keep = 0;
        const struct vp_flow_key *m = &dp->masks[id];
        if (!dp->mask_refs[id]) continue;
        for (uint32_t k = 0; k < nleft; k++) {
            mask_key(&mk, &b->key[left[k]], m, id);
            hash[k] = vp_masked_key_hash(&mk);
            __builtin_prefetch(&t->index[hash[k] & t->mask]);
        }
        for (uint32_t k = 0; k < nleft; k++) {
            cand[k] = UINT32_MAX;
            for (uint32_t p = hash[k] & t->mask;; p = (p + 1) & t->mask) {
                uint64_t w = t->index[p];
                if (!w) break;
                if (IDX_HASH(w) == hash[k]) { cand[k] = IDX_ENTRY(w); break; }
            }
            if (cand[k] != UINT32_MAX) {
                __builtin_prefetch(&t->entries[cand[k]]);
                __builtin_prefetch((const char *)&t->entries[cand[k]] + 64);
                __builtin_prefetch((const char *)&t->entries[cand[k]] + 128);
            }
        }
        for (uint32_t k = 0; k < nleft; k++) {
            struct vp_pkt *pk = &b->pkt[left[k]];
            int32_t e = (int32_t)cand[k];
            mask_key(&mk, &b->key[left[k]], m, id);
            if (cand[k] == UINT32_MAX) e = -1;
            else if (!key_eq(&t->entries[e].key, &mk)) e = find(t, &mk, hash[k]);
            if (e >= 0 && t->entries[e].action >= 0) {
                struct vp_flow *f = &t->entries[e];
                f->packets++;
                f->bytes += pk->len;
                f->used_ns = dp->now_ns;
                dp->mask_hits[id]++;
                pk->action = f->action;
                pk->flow = (uint32_t)e;
                hits++;
            } else {
                left[keep++] = left[k];
            }
        }
        nleft = keep;
    }
    return hits;
}

uint32_t vp_lookup(struct vp_dp *dp, struct vp_batch *b) {
    struct vp_flow_table *t = &dp->flows;
    uint32_t nmiss = 0, nmf = 0, n = b->n, ntodo = 0;
    uint32_t todo[VP_BATCH_MAX];
    uint64_t now = dp->now_ns;
    for (uint32_t i = 0; i < n; i++) __builtin_prefetch(&t->index[b->pkt[i].hash & t->mask]);
    for (uint32_t i = 0; i < n; i++) {          /* first index word with the same hash */
        uint32_t h = b->pkt[i].hash, e = UINT32_MAX;
        for (uint32_t j = h & t->mask;; j = (j + 1) & t->mask) {
            uint64_t w = t->index[j];
            if (!w) break;
            if (IDX_HASH(w) == h) { e = IDX_ENTRY(w); break; }
        }
        b->pkt[i].flow = e;
        if (e != UINT32_MAX) {
            const char *p = (const char *)&t->entries[e];
            __builtin_prefetch(p);
            __builtin_prefetch(p + 64);
            __builtin_prefetch(p + 128);
        }
    }
    for (uint32_t i = 0; i < n; i++) {
        struct vp_pkt *pk = &b->pkt[i];
        int32_t e = (int32_t)pk->flow;
        if (pk->flow == UINT32_MAX) e = -1;
        else if (!key_eq(&t->entries[e].key, &b->key[i])) e = find(t, &b->key[i], pk->hash);
        if (e >= 0 && t->entries[e].mf) {
            /* cached from a megaflow: valid while that megaflow is (as OVS's EMC entries
             * check their dpcls rule), and its hits are the megaflow's, so rule stats and
             * idle timeouts see them and revalidation has one entry to check, not one per
             * exact flow */
            struct vp_flow *f = &t->entries[e], *m = &dp->mflows.entries[f->mf - 1];
            if (m->gen == f->gen && m->action >= 0) {
                pk->action = m->action;
                pk->flow = (uint32_t)e;
                f->used_ns = now;
                m->packets++;
                m->bytes += pk->len;
                m->used_ns = now;
                continue;
            }
            delete_entry(t, (uint32_t)e);
            e = -1;
        }
        if (e >= 0 && t->entries[e].action >= 0) {
            struct vp_flow *f = &t->entries[e];
            pk->action = f->action;
            pk->flow = (uint32_t)e;
            f->packets++;
            f->bytes += pk->len;
            f->used_ns = now;
            f->tcp_flags |= b->key[i].tcp_flags;
        } else if (e < 0 && dp->nmasks) {
            todo[ntodo++] = i;                  /* to the megaflows, all together below */
        } else {
            pk->action = e >= 0 ? VP_ACT_PENDING : VP_ACT_MISS;
            pk->flow = (uint32_t)e;
            nmiss++;
        }
    }
    if (ntodo) {
        nmf = megaflow_batch(dp, b, todo, ntodo);
        for (uint32_t k = 0; k < ntodo; k++) {
            struct vp_pkt *pk = &b->pkt[todo[k]];
            if (pk->action >= 0) {
                /* answered by a megaflow: cache the exact key so the next packet hits above;
                 * once the cache is at its cap only now and then (as OVS's EMC does), or
                 * churn would cost an eviction per packet for traffic not coming back soon */
                if (!t->cap || t->count < t->cap || (dp->st.mf_hits + k) % 64 == 0) {
                    struct vp_flow *f = insert(dp, &b->key[todo[k]], pk->hash);
                    if (f) {
                        f->action = pk->action;
                        f->mf = pk->flow + 1;
                        f->gen = dp->mflows.entries[pk->flow].gen;
                    }
                }
            } else {
                pk->flow = (uint32_t)-1;
                nmiss++;
            }
        }
    }
    b->nmiss = nmiss;
    b->handoff = nmiss != 0;                    /* the upcall (lookup.py) sends them up */
    dp->st.hits += n - nmiss - nmf;
    dp->st.mf_hits += nmf;
    dp->st.misses += nmiss;
    return n;
}

static struct vp_flow *insert_in(struct vp_flow_table *t, uint64_t now, const struct vp_flow_key *k, uint32_t h) {
    if (t->count >= t->limit || t->nfree == 0) return NULL;
    return insert_free(t, now, k, h);
}

/* the exact-match table is a cache in front of the megaflows: past its cap (or full), an
 * installed entry makes room (clock order); pending entries, which wait for the slow path,
 * are never evicted and may use the table up to its full size */
static struct vp_flow *insert_evicting(struct vp_dp *dp, const struct vp_flow_key *k, uint32_t h) {
    struct vp_flow_table *t = &dp->flows;
    if (dp->nmasks && ((t->cap && t->count >= t->cap) || t->nfree == 0)) {
        /* rather an entry a megaflow backs (its flow still hits there) than one that exists
         * only here: those are looked for a little way round the clock first */
        int64_t victim = -1;
        for (uint32_t tries = 0; tries < t->limit; tries++) {
            uint32_t e = t->hand;
            t->hand = t->hand + 1 == t->limit ? 0 : t->hand + 1;
            if (t->entries[e].action < 0) continue;            /* free, or waiting for the slow path */
            if (t->entries[e].mf) { victim = e; break; }
            if (victim < 0) victim = e;
            if (tries >= EVICT_LOOK) break;
        }
        if (victim >= 0) {
            int64_t pos = find_pos(t, &t->entries[victim].key, t->entries[victim].hash);
            if (pos >= 0) { delete_at(t, (uint32_t)pos); t->evictions++; }
        }
    }
    return insert_in(t, dp->now_ns, k, h);
}

static struct vp_flow *insert_free(struct vp_flow_table *t, uint64_t now, const struct vp_flow_key *k, uint32_t h) {
    uint32_t i, e;
    e = t->free[--t->nfree];
    for (i = h & t->mask; t->index[i]; i = (i + 1) & t->mask) {}
    t->index[i] = IDX(h, e);
    t->count++;
    uint32_t gen = t->entries[e].gen;
    memset(&t->entries[e], 0, sizeof(t->entries[e]));
    t->entries[e].gen = gen;
    t->entries[e].key = *k;
    t->entries[e].hash = h;
    t->entries[e].created_ns = t->entries[e].used_ns = now;
    return &t->entries[e];
}

static struct vp_flow *insert(struct vp_dp *dp, const struct vp_flow_key *k, uint32_t h) {
    return insert_evicting(dp, k, h);
}

int vp_flow_insert_pending(struct vp_dp *dp, const struct vp_flow_key *k, uint32_t hash, uint32_t upcall_id) {
    struct vp_flow *f = insert(dp, k, hash);
    if (!f) return -1;
    f->action = VP_ACT_PENDING;
    f->upcall_id = upcall_id;
    return 0;
}

/* Install the slow path's answer for a flow: with mf_entry >= 0 as a cache of that
 * megaflow (its hits are the megaflow's, so an active flow keeps its megaflow alive and a
 * flow evicted from here still hits there), else as an entry of its own.
 * 0 installed over a pending entry, 1 inserted new, -1 flow limit reached */
int vp_flow_install(struct vp_dp *dp, const struct vp_flow_key *k, int32_t action, int32_t mf_entry) {
    uint32_t h = vp_key_hash(k);
    int32_t e = find(&dp->flows, k, h);
    struct vp_flow *f;
    int rc = 0;
    if (e >= 0) {
        f = &dp->flows.entries[e];
        if (f->action == VP_ACT_PENDING) f->packets = 0;   /* it counted queued upcall packets */
        f->used_ns = dp->now_ns;
    } else {
        f = insert(dp, k, h);
        if (!f) return -1;
        rc = 1;
    }
    f->action = action;
    f->mf = 0;
    if (mf_entry >= 0 && (uint32_t)mf_entry < dp->mflows.limit && dp->mflows.entries[mf_entry].action == action) {
        f->mf = (uint32_t)mf_entry + 1;
        f->gen = dp->mflows.entries[mf_entry].gen;
    }
    return rc;
}

/* backward-shift deletion keeps every probe sequence unbroken without tombstones */
static void delete_at(struct vp_flow_table *t, uint32_t i) {
    uint32_t e = IDX_ENTRY(t->index[i]), j = i;
    t->entries[e].action = VP_ACT_EMPTY;
    t->entries[e].gen++;
    t->free[t->nfree++] = e;
    for (;;) {
        j = (j + 1) & t->mask;
        uint64_t w = t->index[j];
        if (!w) break;
        uint32_t home = IDX_HASH(w) & t->mask;
        if (((j - home) & t->mask) >= ((j - i) & t->mask)) {
            t->index[i] = w;
            i = j;
        }
    }
    t->index[i] = 0;
    t->count--;
}

int vp_flow_remove(struct vp_dp *dp, const struct vp_flow_key *k) {
    int64_t pos = find_pos(&dp->flows, k, vp_key_hash(k));
    if (pos < 0) return -1;
    delete_at(&dp->flows, (uint32_t)pos);
    return 0;
}

uint32_t vp_flow_sweep(struct vp_dp *dp, uint64_t idle_ns, uint64_t pending_ns, uint32_t *expired_pending) {
    struct vp_flow_table *t = &dp->flows;
    uint64_t now = dp->now_ns;
    uint32_t removed = 0, pend = 0;
    for (uint32_t i = 0; i <= t->mask; i++) {
        uint64_t w = t->index[i];
        if (!w) continue;
        struct vp_flow *f = &t->entries[IDX_ENTRY(w)];
        uint64_t age = now > f->used_ns ? now - f->used_ns : 0;
        if ((f->action == VP_ACT_PENDING && age >= pending_ns) || (f->action >= 0 && idle_ns && age > idle_ns)) {
            if (f->action == VP_ACT_PENDING) pend++;
            delete_at(t, i);
            removed++;
            i--;                    /* a shifted word may now sit at i (wraps to 0 safely) */
        }
    }
    if (expired_pending) *expired_pending = pend;
    return removed;
}

/* installed (non-pending) entries from pool position `start` on, for revalidation */
static uint32_t dump(const struct vp_flow_table *t, uint32_t start, uint32_t *entries, uint32_t max, uint32_t *next) {
    uint32_t n = 0, i;
    for (i = start; i < t->limit && n < max; i++)
        if (t->entries[i].action >= 0) entries[n++] = i;
    *next = i;
    return n;
}

/* exact flows the slow path installed itself; those cached from megaflows follow them */
uint32_t vp_flow_dump(struct vp_dp *dp, uint32_t start, uint32_t *entries, uint32_t max, uint32_t *next) {
    const struct vp_flow_table *t = &dp->flows;
    uint32_t n = 0, i;
    for (i = start; i < t->limit && n < max; i++)
        if (t->entries[i].action >= 0 && !t->entries[i].mf) entries[n++] = i;
    *next = i;
    return n;
}

/* --- megaflows ------------------------------------------------------------------------ */

int vp_megaflow_install(struct vp_dp *dp, const struct vp_flow_key *k, const struct vp_flow_key *mask, int32_t action) {
    uint32_t id;
    struct vp_flow_key mk;
    int32_t e;
    struct vp_flow *f;
    for (id = 0; id < dp->nmasks; id++)
        if (key_eq(&dp->masks[id], mask)) break;
    if (id == dp->nmasks) {
        for (id = 0; id < dp->nmasks && dp->mask_refs[id]; id++) {}   /* reuse an empty subtable */
        if (id == VP_MAX_MASKS) return -2;
        if (id == dp->nmasks) { dp->mask_order[dp->nmasks] = (uint8_t)id; dp->nmasks++; }
        dp->masks[id] = *mask;
        dp->mask_hits[id] = 0;
    }
    mask_key(&mk, k, mask, id);
    uint32_t h = vp_masked_key_hash(&mk);
    e = find(&dp->mflows, &mk, h);
    if (e >= 0) {
        if (dp->mflows.entries[e].action != action) dp->mflows.entries[e].gen++;
        dp->mflows.entries[e].action = action;
        return e;
    }
    f = insert_in(&dp->mflows, dp->now_ns, &mk, h);
    if (!f) return -1;
    f->action = action;
    f->upcall_id = id;            /* which subtable, for removal */
    dp->mask_refs[id]++;
    return (int)(f - dp->mflows.entries);
}

int vp_megaflow_remove_entry(struct vp_dp *dp, uint32_t e) {
    struct vp_flow_table *t = &dp->mflows;
    if (e >= t->limit || t->entries[e].action == VP_ACT_EMPTY) return -1;
    int64_t pos = find_pos(t, &t->entries[e].key, t->entries[e].hash);
    if (pos < 0) return -1;
    dp->mask_refs[t->entries[e].upcall_id]--;
    delete_at(t, (uint32_t)pos);
    return 0;
}

uint32_t vp_megaflow_dump(struct vp_dp *dp, uint32_t start, uint32_t *entries, uint32_t max, uint32_t *next) {
    return dump(&dp->mflows, start, entries, max, next);
}

uint32_t vp_megaflow_sweep(struct vp_dp *dp, uint64_t idle_ns) {
    struct vp_flow_table *t = &dp->mflows;
    uint32_t removed = 0;
    if (!idle_ns) return 0;
    for (uint32_t e = 0; e < t->limit; e++) {
        struct vp_flow *f = &t->entries[e];
        if (f->action >= 0 && dp->now_ns > f->used_ns && dp->now_ns - f->used_ns > idle_ns)
            removed += vp_megaflow_remove_entry(dp, e) == 0;
    }
    return removed;
}

void vp_megaflow_rerank(struct vp_dp *dp) {
    /* insertion sort of a few dozen subtables by hits, then age the counts */
    for (uint32_t i = 1; i < dp->nmasks; i++) {
        uint8_t x = dp->mask_order[i];
        uint32_t j = i;
        while (j > 0 && dp->mask_hits[dp->mask_order[j - 1]] < dp->mask_hits[x]) {
            dp->mask_order[j] = dp->mask_order[j - 1];
            j--;
        }
        dp->mask_order[j] = x;
    }
    for (uint32_t i = 0; i < dp->nmasks; i++) dp->mask_hits[i] /= 2;
}

/* Forget the cached flows to `mac`, and from it on any port but `home` (exact entries, and
 * megaflows that match that whole address): NORMAL just learned that the MAC is on port
 * `home` (a datapath index; VP_MAX_PORTS: nowhere, it aged out), so what flows to it did
 * (flood, or its old port) is stale, and packets from it on another port must reach NORMAL
 * to be learned again (a MAC moving back). The next packet of each asks the slow path.
 * mac NULL: every cached flow (the MAC table was flushed). */
static int full6(const uint8_t *m) { return (m[0] & m[1] & m[2] & m[3] & m[4] & m[5]) == 0xff; }

static uint32_t forget(struct vp_dp *dp, struct vp_flow_table *t, const uint8_t *mac, uint32_t home, int mega) {
    uint32_t removed = 0;
    for (uint32_t i = 0; i <= t->mask; i++) {
        uint64_t w = t->index[i];
        if (!w) continue;
        struct vp_flow *f = &t->entries[IDX_ENTRY(w)];
        if (f->action < 0) continue;
        const struct vp_flow_key *m = mega ? &dp->masks[f->upcall_id] : NULL;
        int dst = !mac || (!memcmp(f->key.dl_dst, mac, 6) && (!m || full6(m->dl_dst)));
        int src = !mac || (!memcmp(f->key.dl_src, mac, 6) && (!m || full6(m->dl_src)) && f->key.in_port != home);
        if (!dst && !src) continue;
        if (mega) dp->mask_refs[f->upcall_id]--;
        delete_at(t, i);
        removed++;
        i--;                        /* a shifted word may now sit at i (wraps to 0 safely) */
    }
    return removed;
}

uint32_t vp_flows_forget_mac(struct vp_dp *dp, const uint8_t *mac, uint32_t home) {
    return forget(dp, &dp->flows, mac, home, 0) + forget(dp, &dp->mflows, mac, home, 1);
}
