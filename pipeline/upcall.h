/* upcall.h — pick the missed packets of a batch that go to the slow path, marking
 * their flows pending so a flow is sent up once while its answer is outstanding. */
#include "stages/batch.h"
/* cdef-begin */
#define VP_PENDING_MAX_PKTS 64
#define VP_CHAN_DOWN 0
#define VP_CHAN_UP 1
#define VP_CHAN_FULL 2
struct vp_upcall_batch {
    uint32_t nflows;
    uint32_t npkts;
    uint32_t next_id;
    uint32_t pad;
    uint32_t flow_pkt[VP_BATCH_MAX];      /* batch index whose key describes each new flow */
    uint32_t flow_id[VP_BATCH_MAX];       /* upcall id given to it */
    uint32_t pkt_idx[VP_BATCH_MAX];       /* batch index of each packet going up */
    uint32_t pkt_upcall[VP_BATCH_MAX];    /* upcall id of the flow each packet belongs to */
    /* new flows each input port may send up: a GCRA per port (0 = no limit) */
    uint64_t rate_interval_ns;    /* 1e9 / flows per second */
    uint64_t rate_burst_ns;       /* burst flows x interval */
    uint64_t tat[VP_MAX_PORTS];             /* per port: when its bucket is next empty */
    uint64_t rate_limited[VP_MAX_PORTS];    /* per port: new flows refused */
    uint32_t port_pkts[VP_MAX_PORTS];       /* per port: packets of this call going up */
};
uint32_t vp_upcall_collect(struct vp_dp *dp, struct vp_batch *b, struct vp_upcall_batch *u, int chan);
/* cdef-end */
