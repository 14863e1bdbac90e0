/* traffic.h — pkt-gen-style generator and sink kernels for a port's user side: shm: rings,
 * or real netmap rings (fd >= 0: NIOCTXSYNC/NIOCRXSYNC once per batch). */
#include "../pipeline/stages/batch.h"
/* cdef-begin */
#define VP_LAT_BUCKETS 1024
#define VP_LAT_MAX_NS 60000000000      /* a frame "sent" longer ago than this carries no stamp of ours */
#define VP_STAMP_AT 42                 /* where a stamp goes: the UDP payload of the frames vp_gen_build makes */
/* per-frame latency (receive time - the generator's stamp): a log-linear histogram, exact
 * below 64 ns, then 32 buckets per power of two (within 1.6%) up to ~68 s */
struct vp_latency {
    uint64_t count;
    uint64_t unstamped;       /* frames too short for a stamp, or holding none of ours */
    uint64_t min_ns;
    uint64_t max_ns;
    uint64_t sum_ns;
    uint64_t hist[VP_LAT_BUCKETS];
};
struct vp_gen {
    struct vp_ring *ring;
    int fd;                   /* /dev/netmap fd of a real netmap port, else -1 */
    uint32_t done;            /* sending is over (vp_gen_settle): a sink beside it drains on */
    uint8_t *frames;          /* nframes prebuilt frames, `stride` bytes apart */
    uint32_t nframes;
    uint32_t stride;
    uint32_t frame_len;
    uint32_t next;
    uint32_t batch;
    double rate_pps;          /* packets per second (fractions too); 0 = as fast as the ring drains */
    uint64_t count;           /* 0 = no limit */
    uint64_t sent;
    uint64_t bytes;
    uint64_t start_ns;
    uint64_t ring_full;       /* polls that found no room */
    uint64_t sync_errors;     /* sync ioctls the kernel refused */
    uint64_t pace_ns;         /* paced: the schedule's origin: slot k is due k/rate after it */
    uint64_t pace_sent;       /* sent + pace_skipped at the origin */
    uint64_t last_send_ns;
    uint32_t stamp_at;        /* > 0: each frame carries its send time (vp_now_ns) at this offset */
    uint32_t pad2;
    uint64_t pace_skipped;    /* paced: sends given up (the sender too far behind, or its end
                               * came first): sent + pace_skipped is the schedule */
    uint64_t end_ns;          /* > 0: nothing is sent from this vp_now_ns() on (--duration) */
};
struct vp_sink {
    struct vp_ring *ring;
    int fd;                   /* /dev/netmap fd of a real netmap port, else -1 */
    uint32_t batch;
    uint64_t count;           /* stop after this many; 0 = no limit */
    uint64_t packets;
    uint64_t bytes;
    uint64_t first_ns;
    uint64_t last_ns;
    uint64_t empty_polls;
    uint64_t sync_errors;
    struct vp_latency *lat;   /* non-NULL: each frame's latency from the stamp at stamp_at */
    uint32_t stamp_at;
    uint32_t pad;
};
int vp_gen_build(uint8_t *frames, uint32_t stride, uint32_t nflows, uint32_t len, const uint8_t *dst_mac, const uint8_t *src_mac);
uint64_t vp_gen_run(struct vp_gen *g, uint64_t max_ns);
uint64_t vp_sink_run(struct vp_sink *s, uint64_t max_ns);
uint64_t vp_gen_sink_run(struct vp_gen *g, struct vp_sink *s, uint64_t max_ns);
void vp_gen_settle(struct vp_gen *g, uint64_t end_ns);
/* cdef-end */
