/* netmap.h — netmap's user ABI (API 14), restated from ../shared/netmap-abi.md.
 * The same structs describe a real /dev/netmap mapping and a valepipe shm: region. */
#ifndef VP_NETMAP_H
#define VP_NETMAP_H
#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/time.h>

#define NM_CACHE_ALIGN 128

/* cdef-begin */
#define NETMAP_API 14
#define NS_BUF_CHANGED 1
#define NS_REPORT 2
#define NS_FORWARD 4
#define NS_NO_LEARN 8
#define NS_INDIRECT 16
#define NS_MOREFRAG 32
#define NI_PRIV_MEM 1

struct netmap_slot {
    uint32_t buf_idx;
    uint16_t len;
    uint16_t flags;
    uint64_t ptr;
};

#ifdef VP_CDEF
struct timeval { long tv_sec; long tv_usec; ...; };
/* cffi takes the layout from the compiler ("...") because of the aligned sem[] */
struct netmap_ring {
    int64_t buf_ofs; uint32_t num_slots; uint32_t nr_buf_size;
    uint16_t ringid; uint16_t dir; uint32_t head; uint32_t cur; uint32_t tail;
    uint32_t flags; struct timeval ts; uint64_t offset_mask; uint64_t buf_align;
    uint8_t sem[128]; struct netmap_slot slot[]; ...;
};
struct netmap_if {
    char ni_name[16]; uint32_t ni_version; uint32_t ni_flags;
    uint32_t ni_tx_rings; uint32_t ni_rx_rings; uint32_t ni_bufs_head;
    uint32_t ni_host_tx_rings; uint32_t ni_host_rx_rings; uint32_t ni_spare1[3];
    ssize_t ring_ofs[]; ...;
};
#else
struct netmap_ring {
    const int64_t buf_ofs;      /* from this header to the buffer pool */
    const uint32_t num_slots;
    const uint32_t nr_buf_size;
    const uint16_t ringid;
    const uint16_t dir;         /* 1 = TX, 0 = RX, as the kernel really writes it */
    uint32_t head;              /* written by the user */
    uint32_t cur;               /* written by the user */
    uint32_t tail;              /* written by the kernel side */
    uint32_t flags;
    struct timeval ts;
    const uint64_t offset_mask;
    const uint64_t buf_align;
    uint8_t sem[128] __attribute__((__aligned__(NM_CACHE_ALIGN)));
    struct netmap_slot slot[0];
};
struct netmap_if {
    char ni_name[16];
    const uint32_t ni_version;
    const uint32_t ni_flags;
    const uint32_t ni_tx_rings;
    const uint32_t ni_rx_rings;
    uint32_t ni_bufs_head;
    const uint32_t ni_host_tx_rings;
    const uint32_t ni_host_rx_rings;
    uint32_t ni_spare1[3];
    ssize_t ring_ofs[0];  /* TX, host TX, RX, host RX; 0 = not bound */
};
#endif

struct nmreq_pools_info {
    uint64_t nr_memsize;
    uint16_t nr_mem_id;
    uint16_t pad1[3];
    uint64_t nr_if_pool_offset;
    uint32_t nr_if_pool_objtotal;
    uint32_t nr_if_pool_objsize;
    uint64_t nr_ring_pool_offset;
    uint32_t nr_ring_pool_objtotal;
    uint32_t nr_ring_pool_objsize;
    uint64_t nr_buf_pool_offset;
    uint32_t nr_buf_pool_objtotal;
    uint32_t nr_buf_pool_objsize;
};
/* cdef-end */

/* Address arithmetic of netmap_user.h; every user of a mapping goes through these. */
#define NETMAP_IF(base, ofs)   ((struct netmap_if *)((char *)(base) + (ofs)))
#define NETMAP_TXRING(nifp, i) ((struct netmap_ring *)((char *)(nifp) + (nifp)->ring_ofs[i]))
#define NETMAP_RXRING(nifp, i) ((struct netmap_ring *)((char *)(nifp) + \
        (nifp)->ring_ofs[(i) + (nifp)->ni_tx_rings + (nifp)->ni_host_tx_rings]))
#define NETMAP_BUF(ring, idx)  ((char *)(ring) + (ring)->buf_ofs + ((size_t)(idx)) * (ring)->nr_buf_size)

static inline uint32_t nm_ring_next(uint32_t n, uint32_t i) { return i + 1 == n ? 0 : i + 1; }
/* circular distance from a forward to b in a ring of n slots */
static inline uint32_t nm_dist(uint32_t n, uint32_t a, uint32_t b) { return b >= a ? b - a : b + n - a; }
#endif
