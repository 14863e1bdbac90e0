/* region.c — build and validate netmap-layout regions, and move slots in and out of
 * their rings with netmap's head/cur/tail rules, trusting nothing the peer wrote. */
#include <string.h>
#include <stdio.h>
#include "region.h"

#define ALIGN_UP(x, a) (((x) + (a) - 1) & ~((uint64_t)(a) - 1))
/* the ring's const fields are written once, by whoever formats the region */
#define SETC(field, v) do { __typeof__(field) _v = (v); memcpy((void *)&(field), &_v, sizeof(_v)); } while (0)

#define GUARD 4096

/* Map a region (fd >= 0) or anonymous memory (fd < 0) between two PROT_NONE pages, so
 * an access past either end faults at once instead of touching a neighbour mapping. */
char *vp_map_guarded(int fd, uint64_t size) {
    uint64_t len = ALIGN_UP(size, GUARD);
    char *base = mmap(NULL, len + 2 * GUARD, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    void *p;
    if (base == MAP_FAILED) return NULL;
    p = fd >= 0 ? mmap(base + GUARD, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0)
                : mmap(base + GUARD, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (p == MAP_FAILED) { munmap(base, len + 2 * GUARD); return NULL; }
    return base + GUARD;
}

int vp_unmap_guarded(char *p, uint64_t size) {
    return munmap(p - GUARD, ALIGN_UP(size, GUARD) + 2 * GUARD);
}

static uint64_t ring_objsize(uint32_t slots) {
    return ALIGN_UP(sizeof(struct netmap_ring) + (uint64_t)slots * sizeof(struct netmap_slot), NM_CACHE_ALIGN);
}

static void pools_for(const struct vp_geom *g, struct nmreq_pools_info *p) {
    uint32_t nrings = g->nports * (g->tx_rings + g->rx_rings);
    memset(p, 0, sizeof(*p));
    p->nr_if_pool_offset = 0;
    p->nr_if_pool_objtotal = g->nports;
    p->nr_if_pool_objsize = VP_IF_OBJSIZE;
    p->nr_ring_pool_offset = ALIGN_UP((uint64_t)g->nports * VP_IF_OBJSIZE, 4096);
    p->nr_ring_pool_objtotal = nrings;
    p->nr_ring_pool_objsize = (uint32_t)ring_objsize(g->slots);
    p->nr_buf_pool_offset = ALIGN_UP(p->nr_ring_pool_offset + (uint64_t)nrings * p->nr_ring_pool_objsize, 4096);
    p->nr_buf_pool_objtotal = 2 + nrings * g->slots + g->extra_bufs;
    p->nr_buf_pool_objsize = g->buf_size;
    p->nr_memsize = p->nr_buf_pool_offset + (uint64_t)p->nr_buf_pool_objtotal * g->buf_size;
}

static int geom_ok(const struct vp_geom *g) {
    return g->nports >= 1 && g->nports <= VP_REGION_MAXPORTS &&
           g->tx_rings >= 1 && g->tx_rings <= VP_MAX_RINGS &&
           g->rx_rings >= 1 && g->rx_rings <= VP_MAX_RINGS &&
           g->slots >= 2 && g->slots <= 65536 &&
           g->buf_size >= 64 && g->buf_size <= 65536 && g->buf_size % 64 == 0 &&
           g->extra_bufs <= (1u << 20);
}

uint64_t vp_region_size(const struct vp_geom *g) {
    struct nmreq_pools_info p;
    if (!geom_ok(g)) return 0;
    pools_for(g, &p);
    return VP_REGION_HDR_SIZE + p.nr_memsize;
}

int vp_region_format(char *base, uint64_t size, const struct vp_geom *g,
                     char **names, uint32_t mem_id, uint64_t generation, uint32_t pid) {
    struct vp_region_hdr *h = (struct vp_region_hdr *)base;
    char *nm = base + VP_REGION_HDR_SIZE;
    uint32_t nrings_if = g->tx_rings + 1 + g->rx_rings + 1, next_buf = 2, r = 0;
    if (!geom_ok(g) || size != vp_region_size(g)) return -1;
    if (56 + 8 * nrings_if > VP_IF_OBJSIZE) return -1;
    memset(h, 0, sizeof(*h));
    pools_for(g, &h->pools);
    h->pools.nr_mem_id = (uint16_t)mem_id;
    h->version = VP_REGION_VERSION;
    h->hdr_size = VP_REGION_HDR_SIZE;
    h->total_size = size;
    h->nm_offset = VP_REGION_HDR_SIZE;
    h->nports = g->nports;
    h->owner_pid = pid;
    h->generation = generation;
    h->slots = g->slots;
    for (uint32_t p = 0; p < g->nports; p++) {
        uint64_t if_off = h->pools.nr_if_pool_offset + (uint64_t)p * VP_IF_OBJSIZE;
        struct netmap_if *nifp = (struct netmap_if *)(nm + if_off);
        ssize_t *ofs = (ssize_t *)nifp->ring_ofs;
        snprintf(h->port[p].name, sizeof(h->port[p].name), "%s", names[p]);
        h->port[p].nr_offset = if_off;
        snprintf(nifp->ni_name, sizeof(nifp->ni_name), "%s", names[p]);
        SETC(nifp->ni_flags, NI_PRIV_MEM);
        SETC(nifp->ni_tx_rings, g->tx_rings);
        SETC(nifp->ni_rx_rings, g->rx_rings);
        /* netmap reports one (unbound, ring_ofs 0) host ring per direction */
        SETC(nifp->ni_host_tx_rings, 1);
        SETC(nifp->ni_host_rx_rings, 1);
        for (uint32_t k = 0; k < g->tx_rings + g->rx_rings; k++, r++) {
            int is_tx = k < g->tx_rings;
            uint64_t roff = h->pools.nr_ring_pool_offset + (uint64_t)r * h->pools.nr_ring_pool_objsize;
            struct netmap_ring *ring = (struct netmap_ring *)(nm + roff);
            uint32_t slot_pos = is_tx ? k : g->tx_rings + 1 + (k - g->tx_rings);
            ofs[slot_pos] = (ssize_t)(roff - if_off);
            SETC(ring->buf_ofs, (int64_t)(h->pools.nr_buf_pool_offset - roff));
            SETC(ring->num_slots, g->slots);
            SETC(ring->nr_buf_size, g->buf_size);
            SETC(ring->ringid, (uint16_t)(is_tx ? k : k - g->tx_rings));
            SETC(ring->dir, (uint16_t)(is_tx ? 1 : 0));
            ring->head = ring->cur = 0;
            ring->tail = is_tx ? g->slots - 1 : 0;
            for (uint32_t s = 0; s < g->slots; s++) {
                ring->slot[s].buf_idx = next_buf++;
                ring->slot[s].len = 0;
                ring->slot[s].flags = 0;
                ring->slot[s].ptr = 0;
            }
        }
    }
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    VP_STORE_RELEASE(h->state, 1);
    VP_STORE_RELEASE(h->magic, (uint64_t)VP_REGION_MAGIC);
    return 0;
}

#define FAIL(...) do { if (err) snprintf(err, errlen, __VA_ARGS__); return -1; } while (0)

/* objects as large as a creator makes: a ring of 65536 slots is a little over 1 MiB */
static int pool_fits(uint64_t off, uint64_t n, uint64_t objsize, uint64_t memsize) {
    return n <= (1u << 24) && objsize <= ring_objsize(65536) && off <= memsize && n * objsize <= memsize - off;
}

/* Peers claim a port's ring by swapping their pid into its slot of the descriptor page
 * atomically, so two peers starting at once cannot both win. The page is shared with
 * every peer of the region: the pids are what peers say, used only to keep honest peers
 * from sharing a ring; the pipeline never trusts them. */
int vp_region_claim(struct vp_region_hdr *h, uint32_t port, uint32_t rx, uint32_t old, uint32_t pid) {
    if (port >= VP_REGION_MAXPORTS) return 0;
    uint32_t *slot = rx ? &h->port[port].rx_peer_pid : &h->port[port].peer_pid;
    return __atomic_compare_exchange_n(slot, &old, pid, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}

int vp_region_check(const char *base, uint64_t size, char *err, size_t errlen) {
    /* copy first: the creator may rewrite the header while we look at it */
    struct vp_region_hdr h;
    if (size < VP_REGION_HDR_SIZE) FAIL("region is %llu bytes, smaller than its header", (unsigned long long)size);
    memcpy(&h, base, sizeof(h));
    if (h.magic != (uint64_t)VP_REGION_MAGIC) FAIL("not a valepipe region (bad magic)");
    if (h.version != VP_REGION_VERSION) FAIL("region layout version %u, expected %u", h.version, VP_REGION_VERSION);
    if (h.hdr_size != VP_REGION_HDR_SIZE || h.nm_offset != VP_REGION_HDR_SIZE) FAIL("bad header size");
    if (h.total_size != size) FAIL("header says %llu bytes, object has %llu", (unsigned long long)h.total_size, (unsigned long long)size);
    if (h.pools.nr_memsize != size - VP_REGION_HDR_SIZE) FAIL("netmap region size does not match the object");
    if (h.nports < 1 || h.nports > VP_REGION_MAXPORTS) FAIL("bad port count %u", h.nports);
    if (h.pools.nr_if_pool_objsize != VP_IF_OBJSIZE || h.pools.nr_if_pool_objtotal != h.nports ||
        !pool_fits(h.pools.nr_if_pool_offset, h.pools.nr_if_pool_objtotal, h.pools.nr_if_pool_objsize, h.pools.nr_memsize))
        FAIL("netmap_if pool does not fit the region");
    if (!pool_fits(h.pools.nr_ring_pool_offset, h.pools.nr_ring_pool_objtotal, h.pools.nr_ring_pool_objsize, h.pools.nr_memsize))
        FAIL("ring pool does not fit the region");
    if (h.pools.nr_buf_pool_objsize < 64 ||
        !pool_fits(h.pools.nr_buf_pool_offset, h.pools.nr_buf_pool_objtotal, h.pools.nr_buf_pool_objsize, h.pools.nr_memsize))
        FAIL("buffer pool does not fit the region");
    for (uint32_t p = 0; p < h.nports; p++) {
        if (memchr(h.port[p].name, 0, sizeof(h.port[p].name)) == NULL) FAIL("port %u name not terminated", p);
        if (h.port[p].nr_offset % 8 || h.port[p].nr_offset > h.pools.nr_memsize - VP_IF_OBJSIZE)
            FAIL("port %u netmap_if offset out of the region", p);
    }
    return 0;
}

static void ring_reset_cursors(struct vp_ring *r) {
    if (r->role == VP_ROLE_KERNEL) {
        r->hwcur = 0;
        r->hwtail = r->kind == VP_KIND_TX ? r->nslots - 1 : 0;
        r->cons = 0;
    } else {
        r->hwcur = r->cons = VP_LOAD_ACQUIRE(r->ring->head);
        r->hwtail = VP_LOAD_ACQUIRE(r->ring->tail);
    }
}

static int bind_ring(struct vp_ring *r, char *nm_base, uint64_t nm_size, int64_t roff,
                     uint32_t role, uint32_t kind, uint32_t mem_id, char *err, size_t errlen) {
    struct netmap_ring *ring;
    uint32_t nslots, bsize;
    int64_t bofs, pool;
    if (roff < 0 || roff % 8 || (uint64_t)roff > nm_size || nm_size - roff < sizeof(struct netmap_ring))
        FAIL("ring header out of the region");
    ring = (struct netmap_ring *)(nm_base + roff);
    /* the geometry is read once here and only the private copy in r is used after */
    nslots = VP_READ_ONCE(ring->num_slots);
    bsize = VP_READ_ONCE(ring->nr_buf_size);
    bofs = VP_READ_ONCE(ring->buf_ofs);
    if (nslots < 2 || nslots > 65536) FAIL("ring has %u slots", nslots);
    if (nm_size - roff - sizeof(struct netmap_ring) < (uint64_t)nslots * sizeof(struct netmap_slot))
        FAIL("ring slots run past the region");
    if (bsize < 64 || bsize > 65536) FAIL("buffer size %u", bsize);
    pool = roff + bofs;
    if (bofs < INT32_MIN || bofs > (int64_t)nm_size || pool < 0 || (uint64_t)pool > nm_size)
        FAIL("buffer pool offset out of the region");
    memset(r, 0, sizeof(*r));
    r->ring = ring;
    r->bufs = nm_base + pool;
    r->nslots = nslots;
    r->buf_size = bsize;
    r->nbufs = (uint32_t)((nm_size - (uint64_t)pool) / bsize);
    r->role = role;
    r->kind = kind;
    r->mem_id = mem_id;
    if (r->nbufs < 3) FAIL("buffer pool has no room for buffers");
    ring_reset_cursors(r);
    if (r->hwcur >= nslots || r->hwtail >= nslots) FAIL("ring cursors out of range");
    return 0;
}

int vp_port_bind(struct vp_port *p, char *nm_base, uint64_t nm_size, uint64_t if_off,
                 uint32_t role, uint32_t mem_id, char *err, size_t errlen) {
    struct netmap_if *nifp;
    uint32_t ntx, nrx, nhtx, nhrx, total;
    if (if_off > nm_size || nm_size - if_off < sizeof(struct netmap_if)) FAIL("netmap_if out of the region");
    nifp = (struct netmap_if *)(nm_base + if_off);
    ntx = VP_READ_ONCE(nifp->ni_tx_rings); nrx = VP_READ_ONCE(nifp->ni_rx_rings);
    nhtx = VP_READ_ONCE(nifp->ni_host_tx_rings); nhrx = VP_READ_ONCE(nifp->ni_host_rx_rings);
    if (ntx > 64 || nrx > 64 || nhtx > 64 || nhrx > 64) FAIL("implausible ring counts");
    total = ntx + nhtx + nrx + nhrx;
    if (nm_size - if_off - sizeof(struct netmap_if) < (uint64_t)total * sizeof(ssize_t)) FAIL("ring_ofs[] past the region");
    p->ntx = p->nrx = 0;
    p->mem_id = mem_id;
    for (uint32_t i = 0; i < total; i++) {
        ssize_t ofs = VP_READ_ONCE(nifp->ring_ofs[i]);
        int is_tx = i < ntx + nhtx;
        if (ofs == 0) continue;              /* ring not bound to this port */
        if (is_tx ? p->ntx >= VP_MAX_RINGS : p->nrx >= VP_MAX_RINGS) FAIL("more than %d rings", VP_MAX_RINGS);
        if (bind_ring(is_tx ? &p->tx[p->ntx] : &p->rx[p->nrx], nm_base, nm_size, (int64_t)if_off + ofs,
                      role, is_tx ? VP_KIND_TX : VP_KIND_RX, mem_id, err, errlen))
            return -1;
        if (is_tx) p->ntx++; else p->nrx++;
    }
    if (p->ntx == 0 || p->nrx == 0) FAIL("port has no bound rings");
    return 0;
}

static inline uint32_t prev(uint32_t n, uint32_t i) { return i == 0 ? n - 1 : i - 1; }

static void fault(struct vp_ring *r) { r->st.bad_index++; r->faulty = 1; }

/* User side, either direction: the kernel side may only move tail forward, up to the slot
 * before our head. Anything else is counted and ignored (we keep the last valid tail). */
static void user_refresh_tail(struct vp_ring *r) {
    uint32_t n = r->nslots, t = VP_LOAD_ACQUIRE(r->ring->tail);
    if (t >= n || nm_dist(n, r->hwtail, t) > nm_dist(n, r->hwtail, prev(n, r->hwcur)))
        fault(r);
    else
        r->hwtail = t;
}

uint32_t vp_ring_avail(struct vp_ring *r) {
    uint32_t n = r->nslots;
    if (r->role == VP_ROLE_KERNEL) {     /* a user's TX ring: new packets in [cons, head) */
        uint32_t h = VP_LOAD_ACQUIRE(r->ring->head);
        if (h >= n || nm_dist(n, r->hwcur, h) < nm_dist(n, r->hwcur, r->cons) ||
            nm_dist(n, r->hwcur, h) > nm_dist(n, r->hwcur, r->hwtail)) {
            fault(r);                     /* netmap reinitialises the ring; so do we */
            VP_STORE_RELEASE(r->ring->cur, r->cons);
            VP_STORE_RELEASE(r->ring->head, r->cons);
            VP_STORE_RELEASE(r->ring->tail, r->hwtail);
            return 0;
        }
        return nm_dist(n, r->cons, h);
    } else {                              /* our RX ring: packets in [cons, tail) */
        user_refresh_tail(r);
        return nm_dist(n, r->cons, r->hwtail);
    }
}

void vp_ring_release(struct vp_ring *r) {
    if (r->role == VP_ROLE_KERNEL) {
        if (r->cons == r->hwcur) return;
        r->hwcur = r->cons;
        r->hwtail = prev(r->nslots, r->hwcur);
        VP_STORE_RELEASE(r->ring->tail, r->hwtail);
    } else {
        if (r->cons == r->hwcur) return;
        r->hwcur = r->cons;
        VP_STORE_RELEASE(r->ring->cur, r->hwcur);
        VP_STORE_RELEASE(r->ring->head, r->hwcur);
    }
}

uint32_t vp_ring_space(struct vp_ring *r) {
    uint32_t n = r->nslots;
    if (r->role == VP_ROLE_KERNEL) {      /* a user's RX ring: free slots [hwtail, head-1) */
        uint32_t h = VP_LOAD_ACQUIRE(r->ring->head);
        if (h >= n || nm_dist(n, r->hwcur, h) > nm_dist(n, r->hwcur, r->hwtail)) {
            fault(r);
            VP_STORE_RELEASE(r->ring->cur, r->hwcur);
            VP_STORE_RELEASE(r->ring->head, r->hwcur);
        } else {
            r->hwcur = h;
        }
        return n - 1 - nm_dist(n, r->hwcur, r->hwtail);
    } else {                              /* our TX ring: free slots [head, tail) */
        user_refresh_tail(r);
        return nm_dist(n, r->hwcur, r->hwtail);
    }
}

void vp_ring_publish(struct vp_ring *r) {
    if (r->role == VP_ROLE_KERNEL) {
        VP_STORE_RELEASE(r->ring->tail, r->hwtail);
    } else {
        VP_STORE_RELEASE(r->ring->cur, r->hwcur);
        VP_STORE_RELEASE(r->ring->head, r->hwcur);
    }
}

uint32_t vp_ring_send(struct vp_ring *r, const uint8_t *blob, const uint16_t *lens, uint32_t n) {
    uint32_t space = vp_ring_space(r), sent = 0;
    size_t off = 0;
    for (uint32_t i = 0; i < n; off += lens[i], i++) {
        struct netmap_slot *s;
        uint32_t idx;
        if (sent == space) { r->st.full += n - i; break; }
        s = vp_slot(r, vp_ring_produce(r));
        idx = VP_READ_ONCE(s->buf_idx);
        if (!vp_buf_ok(r, idx)) { r->st.bad_buf++; r->faulty = 1; continue; }
        if (lens[i] > r->buf_size || lens[i] == 0) { r->st.bad_len++; continue; }
        memcpy(vp_buf(r, idx), blob + off, lens[i]);
        VP_WRITE_ONCE(s->len, lens[i]);
        VP_WRITE_ONCE(s->flags, 0);
        vp_ring_produced(r);
        r->st.packets++;
        r->st.bytes += lens[i];
        sent++;
    }
    vp_ring_publish(r);
    return sent;
}

uint32_t vp_ring_recv(struct vp_ring *r, uint8_t *blob, uint32_t blob_cap, uint16_t *lens, uint32_t max) {
    uint32_t avail = vp_ring_avail(r), got = 0;
    size_t off = 0;
    while (avail-- && got < max) {
        uint32_t idx, si = r->cons;
        uint16_t len;
        if (off + r->buf_size > blob_cap) break;          /* room for any valid packet */
        r->cons = nm_ring_next(r->nslots, si);
        if (!vp_slot_take(r, si, &idx, &len)) continue;
        memcpy(blob + off, vp_buf(r, idx), len);
        lens[got++] = len;
        off += len;
        r->st.packets++;
        r->st.bytes += len;
    }
    vp_ring_release(r);
    return got;
}
