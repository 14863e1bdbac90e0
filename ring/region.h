/* region.h — netmap memory regions in POSIX shared memory, and a private, validated
 * view of each ring ("vp_ring") that both the pipeline and peer tools use. */
#ifndef VP_REGION_H
#define VP_REGION_H
#include "netmap.h"
#include "shared.h"
#include "clock.h"
#include <sys/mman.h>
#include <fcntl.h>

/* cdef-begin */
#define VP_REGION_MAGIC 0x314745524d4e5056
#define VP_REGION_VERSION 1
#define VP_REGION_HDR_SIZE 4096
#define VP_REGION_MAXPORTS 32
#define VP_MAX_RINGS 4
#define VP_IF_OBJSIZE 1024

#define VP_ROLE_KERNEL 1
#define VP_ROLE_USER 2
#define VP_KIND_TX 1
#define VP_KIND_RX 0

/* The descriptor page in front of the netmap region: what NIOCCTRL/REGISTER and
 * POOLS_INFO_GET would tell a netmap user, written once by the creator. */
struct vp_region_port {
    char name[64];
    uint64_t nr_offset;       /* netmap_if of this port, from the netmap region start */
    uint32_t peer_pid;        /* the process that sends on its TX ring (user side), 0: none */
    uint32_t rx_peer_pid;     /* the process that receives on its RX ring, 0: none */
};
struct vp_region_hdr {
    uint64_t magic;
    uint32_t version;
    uint32_t hdr_size;
    uint64_t total_size;      /* whole shm object */
    uint64_t nm_offset;       /* where the netmap region starts (= hdr_size) */
    struct nmreq_pools_info pools;   /* offsets relative to the netmap region */
    uint32_t nports;
    uint32_t owner_pid;
    uint64_t generation;
    uint32_t state;           /* 1 ready, 2 closing */
    uint32_t slots;
    struct vp_region_port port[32];
};

struct vp_geom {
    uint32_t nports;
    uint32_t tx_rings;
    uint32_t rx_rings;
    uint32_t slots;
    uint32_t buf_size;
    uint32_t extra_bufs;
};

struct vp_ring_stats {
    uint64_t packets;
    uint64_t bytes;
    uint64_t bad_index;       /* head/cur/tail outside what netmap allows (ring repaired) */
    uint64_t bad_buf;         /* slot buffer index 0, 1 or past the pool */
    uint64_t bad_len;         /* slot length 0 or larger than a buffer */
    uint64_t bad_flags;       /* NS_MOREFRAG / NS_INDIRECT, unsupported on this ring */
    uint64_t full;            /* producer found no room: packet dropped */
};

/* Private state of one ring. Nothing in here is read back from shared memory:
 * geometry is copied once after validation, cursors are our own. */
struct vp_ring {
    struct netmap_ring *ring;
    char *bufs;               /* buffer pool start (buffer 0) */
    uint32_t nslots;
    uint32_t buf_size;
    uint32_t nbufs;
    uint32_t role;
    uint32_t kind;
    uint32_t hwcur;           /* kernel role: netmap's hwcur;  user role: our head */
    uint32_t hwtail;          /* kernel role: netmap's hwtail; user role: last valid tail */
    uint32_t cons;            /* consumer: first slot not yet taken */
    uint32_t mem_id;
    uint32_t faulty;
    struct vp_ring_stats st;
};

struct vp_port {
    char name[64];
    uint32_t index;
    uint32_t ofport;
    uint32_t mem_id;
    uint32_t ntx;
    uint32_t nrx;
    int fd;                   /* /dev/netmap fd for sync ioctls; -1 for shm */
    uint32_t faulty;
    uint64_t sync_errors;     /* syncs the port's kind refused (netmap's ioctls) */
    int sync_errno;           /* the last one's errno */
    uint16_t vnet_hdr;        /* bytes of virtio_net_hdr in front of each frame in its rings (0 or 10) */
    uint16_t tx_offload;      /* frames sent to it keep super-frames and partial checksums as they are */
    /* The one seam between a port's kind and the stages, as netmap's nm_sync: rxsync runs
     * before receive takes from the port's rings (bring in what arrived), txsync after the
     * commit published frames in them (hand them on). NULL: nothing to do (shm:, whose
     * peer reads and writes the rings itself). The kinds set them (bindings/). */
    void (*rxsync)(struct vp_port *p);
    void (*txsync)(struct vp_port *p);
    void *io;                 /* the kind's own state (struct vp_io of an emulated adapter), or NULL */
    uint32_t tx_pending;      /* set by txsync: the kind holds frames it could not hand on yet (a
                               * full socket); the idle chain naps short so rxsync retries them */
    /* a copy of every frame sent through the port (bindings/pcap: --mirror), or NULL */
    void *mirror;
    void (*mirror_frame)(void *mirror, const char *data, uint32_t len);
    void (*mirror_flush)(void *mirror);
    struct vp_ring tx[VP_MAX_RINGS];
    struct vp_ring rx[VP_MAX_RINGS];
};

uint64_t vp_region_size(const struct vp_geom *g);
char *vp_map_guarded(int fd, uint64_t size);
int vp_unmap_guarded(char *p, uint64_t size);
int vp_region_format(char *base, uint64_t size, const struct vp_geom *g,
                     char **names, uint32_t mem_id, uint64_t generation, uint32_t pid);
int vp_region_check(const char *base, uint64_t size, char *err, size_t errlen);
/* a ring's peer claim: compare-and-swap of a pid in the descriptor page (1 if swapped) */
int vp_region_claim(struct vp_region_hdr *h, uint32_t port, uint32_t rx, uint32_t old, uint32_t pid);
int vp_port_bind(struct vp_port *p, char *nm_base, uint64_t nm_size, uint64_t if_off,
                 uint32_t role, uint32_t mem_id, char *err, size_t errlen);

uint32_t vp_ring_avail(struct vp_ring *r);
uint32_t vp_ring_space(struct vp_ring *r);
void vp_ring_release(struct vp_ring *r);
void vp_ring_publish(struct vp_ring *r);

/* user-side helpers for tools and tests (copying, one call per batch) */
uint32_t vp_ring_send(struct vp_ring *r, const uint8_t *blob, const uint16_t *lens, uint32_t n);
uint32_t vp_ring_recv(struct vp_ring *r, uint8_t *blob, uint32_t blob_cap, uint16_t *lens, uint32_t max);
/* cdef-end */

/* inline slot accessors for the C kernels */
static inline struct netmap_slot *vp_slot(struct vp_ring *r, uint32_t i) { return &r->ring->slot[i]; }
static inline char *vp_buf(struct vp_ring *r, uint32_t idx) { return r->bufs + (size_t)idx * r->buf_size; }
static inline int vp_buf_ok(const struct vp_ring *r, uint32_t idx) { return idx >= 2 && idx < r->nbufs; }
/* Ask for a cache line about to be written (its owner is another core: the peer read it last).
 * PREFETCHW by hand: gcc emits it only for a -m flag, and the module is built without any;
 * CPUs that lack it run the opcode as a NOP. */
static inline void vp_prefetch_write(const void *p) {
#if defined(__x86_64__)
    __asm__ __volatile__("prefetchw %0" : : "m"(*(const char *)p));
#else
    __builtin_prefetch(p, 1);
#endif
}

/* A slot the peer filled, as a consumer takes it: each field is read once (the peer may
 * rewrite it meanwhile) and checked; a bad one is counted by reason and the ring marked
 * faulty. Returns 1 with idx and len set when the packet may be used. */
static inline int vp_slot_take(struct vp_ring *r, uint32_t si, uint32_t *idx, uint16_t *len) {
    const struct netmap_slot *s = &r->ring->slot[si];
    uint32_t i = VP_READ_ONCE(s->buf_idx);
    uint16_t l = VP_READ_ONCE(s->len), f = VP_READ_ONCE(s->flags);
    if (!vp_buf_ok(r, i)) { r->st.bad_buf++; r->faulty = 1; return 0; }
    if (l == 0 || l > r->buf_size) { r->st.bad_len++; r->faulty = 1; return 0; }
    if (f & (NS_MOREFRAG | NS_INDIRECT)) { r->st.bad_flags++; return 0; }   /* not supported here */
    *idx = i;
    *len = l;
    return 1;
}
/* the producer's next slot, and the step past it once filled (per packet: inline) */
static inline uint32_t vp_ring_produce(const struct vp_ring *r) {
    return r->role == VP_ROLE_KERNEL ? r->hwtail : r->hwcur;
}
static inline void vp_ring_produced(struct vp_ring *r) {
    if (r->role == VP_ROLE_KERNEL) r->hwtail = nm_ring_next(r->nslots, r->hwtail);
    else r->hwcur = nm_ring_next(r->nslots, r->hwcur);
}

/* The rings the pipeline reads from and writes into. On a port whose kernel side it plays
 * (shm:) those are the peer's TX rings and its RX ring; on a port whose user it is (an
 * emulated adapter, real netmap) its own RX rings and its TX ring. */
static inline int vp_port_kernel_side(const struct vp_port *p) { return p->tx[0].role == VP_ROLE_KERNEL; }
static inline uint32_t vp_in_rings(const struct vp_port *p) { return vp_port_kernel_side(p) ? p->ntx : p->nrx; }
static inline struct vp_ring *vp_in_ring(struct vp_port *p, uint32_t i) {
    return vp_port_kernel_side(p) ? &p->tx[i] : &p->rx[i];
}
static inline struct vp_ring *vp_out_ring(struct vp_port *p) {
    return vp_port_kernel_side(p) ? &p->rx[0] : &p->tx[0];
}
/* a ring the pipeline reads from (the other end produces into it) */
static inline int vp_ring_consumed(const struct vp_ring *r) {
    return (r->role == VP_ROLE_KERNEL) == (r->kind == VP_KIND_TX);
}
#endif
