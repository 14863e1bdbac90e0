/* journal.h — the worker's commit point: after each batch (and each slow-path answer) the
 * counters and ring cursors are recorded in memory that outlives the worker, then the rings
 * are released and published. A worker started after a crash takes over from the record. */
#include "stages/batch.h"
/* cdef-begin */
#define VP_JOURNAL_MAGIC 0x314c4e524a5056
#define VP_JOURNAL_SWAPS 1024
#define VP_JOURNAL_RINGS 8              /* 2 x VP_MAX_RINGS: tx, then rx */
/* a buffer swap made before its batch committed: undone if the batch never commits */
struct vp_jswap {
    uint16_t in_port;
    uint16_t in_ring;
    uint16_t out_port;
    uint16_t pad;
    uint32_t in_slot;
    uint32_t in_buf;
    uint32_t out_slot;
    uint32_t out_buf;
};
struct vp_jrec {
    uint64_t seq;
    uint32_t nports;                     /* the worker's ports then (run-time ones included) */
    uint32_t pad;
    uint32_t mem_id[VP_MAX_PORTS];                 /* per port: the region its cursors are of */
    struct vp_dp_stats st;
    uint64_t port_drops[VP_MAX_PORTS][VP_DROP_N];
    uint64_t upcall_inflight[VP_MAX_PORTS];
    struct vp_ring_stats rings[VP_MAX_PORTS][VP_JOURNAL_RINGS]; /* per port: tx[], then rx[] */
    uint32_t pos[VP_MAX_PORTS][VP_JOURNAL_RINGS]; /* per ring: consumer cursor (rings read), tail (rings written) */
};
struct vp_journal {
    uint64_t magic;
    uint64_t seq;                        /* the last complete record: rec[seq & 1] */
    uint32_t nports;
    uint32_t nswaps;
    uint64_t swap_seq;                   /* the record the swaps below were made for */
    uint64_t takeovers;                  /* workers that started from this journal */
    struct vp_jrec rec[2];
    struct vp_jswap swaps[VP_JOURNAL_SWAPS];
};
uint64_t vp_journal_size(void);
void vp_commit(struct vp_dp *dp);
int vp_journal_takeover(struct vp_dp *dp, uint64_t resume_ports);
/* cdef-end */
/* note a buffer swap of the batch being made; -1 when there is no room (then copy instead) */
int vp_journal_swap(struct vp_dp *dp, uint32_t in_port, uint32_t in_ring, uint32_t in_slot, uint32_t in_buf,
                     uint32_t out_port, uint32_t out_slot, uint32_t out_buf);
