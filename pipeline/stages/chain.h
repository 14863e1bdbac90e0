/* chain.h — the dispatcher: runs the stages Python composed (a list of C kernels), batch
 * after batch, committing each, and returns to Python only when Python has work. */
#include "batch.h"
/* cdef-begin */
#define VP_CHAIN_MAX 16
#define VP_WAKE_MAX 96
/* why vp_chain_run returned */
#define VP_RUN_HANDOFF 1        /* stage `at` left the batch work for its Python side; the next call goes on */
#define VP_RUN_WAKE 2           /* one of Python's fds is readable (a request, an answer, a signal) */
#define VP_RUN_DEADLINE 3       /* deadline_ns passed (a timer) */
#define VP_RUN_BATCHES 4        /* max_batches committed (housekeeping never starves) */

/* one stage: its C kernel (one call per batch, returns the packets it handled) and the
 * VP_STAGE_* counters its cycles and packets go to */
struct vp_stage {
    uint32_t (*kernel)(struct vp_dp *dp, struct vp_batch *b);
    uint32_t counter;
    uint32_t pad;
};

struct vp_chain {
    uint32_t n;                 /* stages; the first is the source (receive): 0 packets, no batch */
    uint32_t resume;            /* > 0: the batch in hand goes on from this stage (after a handoff) */
    uint32_t at;                /* out, HANDOFF: the stage whose Python side has work */
    uint32_t max_batches;       /* return after committing this many */
    uint32_t batches;           /* out: batches committed by this call */
    uint32_t nwake;             /* fds[0, nwake): Python's: readable -> return WAKE */
    uint32_t nfds;              /* fds[nwake, nfds): the ports': readable -> a frame to receive */
    uint32_t ports_wake;        /* every port has an fd among fds[nwake, nfds): an idle nap lasts
                                 * until the deadline (no port needs looking at in between) */
    uint64_t deadline_ns;       /* return at this vp_now_ns() (0: no deadline) */
    uint64_t idle_poll_ns;      /* nothing received: keep polling the rings this long... */
    uint64_t idle_sleep_ns;     /* ...then sleep in naps of up to this (any fd wakes it) */
    uint64_t wake_check_ns;     /* while busy: how often Python's fds are looked at */
    uint64_t last_rx_ns;        /* when a batch last had packets (kept across calls) */
    uint64_t naps;              /* out, counted: naps taken */
    int fds[VP_WAKE_MAX];
    struct vp_stage stage[VP_CHAIN_MAX];
};
uint32_t vp_chain_run(struct vp_dp *dp, struct vp_batch *b, struct vp_chain *c);
uint32_t vp_stage_run(struct vp_dp *dp, struct vp_batch *b, const struct vp_stage *s);
/* cdef-end */
