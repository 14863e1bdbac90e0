/* chain.c — the stage chain run in C. Per batch: each stage's kernel in order, its cycles
 * and packets counted on its own counters, then the commit (pipeline/journal.c: nothing the
 * batch did is visible before it). Between batches: back to Python only when it has work —
 * a stage's Python side (misses to send up: mid-batch, resumed by the next call), input on
 * its fds (slow-path answers, control requests, a signal), a timer, or max_batches. With
 * nothing to receive it polls the rings for idle_poll_ns (latency stays low), then sleeps
 * in growing naps woken by any of the fds (the ports' too, where they have one). */
#define _GNU_SOURCE            /* ppoll (glibc; FreeBSD has it by default) */
#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include "chain.h"
#include "../journal.h"

#define NAP_MIN_NS 10000ull        /* the first nap when idle; each next one twice as long */

enum { DONE, EMPTY, HANDOFF };

static inline void count(struct vp_dp *dp, const struct vp_stage *s, uint64_t cycles, uint32_t n) {
    uint32_t c = s->counter < VP_STAGE_N ? s->counter : 0;
    dp->st.stage_cycles[c] += cycles;
    dp->st.stage_pkts[c] += n;
}

/* the current batch from stage k on, and its commit */
static int run_from(struct vp_dp *dp, struct vp_batch *b, struct vp_chain *c, uint32_t k) {
    uint64_t t0 = vp_cycles(), start = t0;
    for (; k < c->n; k++) {
        const struct vp_stage *s = &c->stage[k];
        uint32_t n;
        b->handoff = 0;
        n = s->kernel(dp, b);
        if (k == 0 && n == 0) return EMPTY;        /* polling empty rings is not a stage's work */
        uint64_t t1 = vp_cycles();
        count(dp, s, t1 - t0, n);
        t0 = t1;
        if (b->handoff) {
            c->at = k;
            return HANDOFF;
        }
    }
    vp_commit(dp);
    dp->st.batch_cycles += vp_cycles() - start;
    return DONE;
}

/* fds[0, n) readable within timeout_ns (0: just look); -1 on a signal */
static int readable(struct vp_chain *c, uint32_t n, uint64_t timeout_ns, int *python) {
    struct pollfd p[VP_WAKE_MAX];
    struct timespec ts = { (time_t)(timeout_ns / 1000000000ull), (long)(timeout_ns % 1000000000ull) };
    int r;
    *python = 0;
    if (n > VP_WAKE_MAX) n = VP_WAKE_MAX;
    for (uint32_t i = 0; i < n; i++) {
        p[i].fd = c->fds[i];
        p[i].events = POLLIN;
        p[i].revents = 0;
    }
    r = ppoll(p, n, &ts, NULL);
    if (r < 0) return errno == EINTR ? -1 : 0;
    for (uint32_t i = 0; i < n && i < c->nwake; i++)
        if (p[i].revents) *python = 1;
    for (uint32_t i = c->nwake; i < n; i++) {
        /* a port's socket with an error pending (an AF_PACKET socket whose interface went
         * down: ENETDOWN) is readable for ever until the error is read: read it, or an idle
         * worker spins, and the next frame sent after the link is back fails with it */
        if (p[i].revents & POLLERR) {
            int e = 0;
            socklen_t len = sizeof(e);
            (void)getsockopt(p[i].fd, SOL_SOCKET, SO_ERROR, &e, &len);
        }
    }
    return r;
}

/* a port's kind holds frames it could not hand on: rxsync retries them, so naps stay short */
static int tx_pending(const struct vp_dp *dp) {
    for (uint32_t i = 0; i < dp->nports; i++)
        if (dp->ports[i]->tx_pending) return 1;
    return 0;
}

static inline void relax(void) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
}

uint32_t vp_chain_run(struct vp_dp *dp, struct vp_batch *b, struct vp_chain *c) {
    uint64_t now, next_check, nap = 0;
    int python;
    c->batches = 0;
    if (c->n == 0 || c->n > VP_CHAIN_MAX) return VP_RUN_BATCHES;
    if (c->nfds > VP_WAKE_MAX) c->nfds = VP_WAKE_MAX;
    if (c->nwake > c->nfds) c->nwake = c->nfds;
    if (c->resume) {                                  /* finish the batch a handoff left */
        uint32_t k = c->resume;
        c->resume = 0;
        if (run_from(dp, b, c, k) == HANDOFF) {
            c->resume = c->at + 1;
            return VP_RUN_HANDOFF;
        }
        c->batches++;
        /* back from Python's part of the batch: its input, the deadline and the bound are
         * looked at before the next one, or a stream of misses (a handoff every batch) would
         * keep the slow path's answers, which end the misses, and the timers waiting */
        now = vp_now_ns();
        if (c->batches >= c->max_batches) return VP_RUN_BATCHES;
        if (c->deadline_ns && now >= c->deadline_ns) return VP_RUN_DEADLINE;
        if (readable(c, c->nwake, 0, &python) < 0 || python) return VP_RUN_WAKE;
    }
    now = vp_now_ns();
    next_check = now + c->wake_check_ns;
    for (;;) {
        int r;
        dp->now_ns = now;
        r = run_from(dp, b, c, 0);
        if (r == HANDOFF) {
            c->resume = c->at + 1;
            return VP_RUN_HANDOFF;
        }
        if (r == DONE) {
            c->batches++;
            c->last_rx_ns = now;
            nap = 0;
        }
        now = vp_now_ns();
        if (c->batches >= c->max_batches) return VP_RUN_BATCHES;
        if (c->deadline_ns && now >= c->deadline_ns) return VP_RUN_DEADLINE;
        if (r == EMPTY && now - c->last_rx_ns >= c->idle_poll_ns) {
            /* idle for real: sleep until a frame (ports with an fd), Python's input or the
             * nap's end (shm: rings have nothing to wake us), whichever comes first */
            uint64_t left = c->deadline_ns ? c->deadline_ns - now : UINT64_MAX;
            nap = nap ? nap * 2 : NAP_MIN_NS;
            if (nap > c->idle_sleep_ns) nap = c->idle_sleep_ns;
            /* every port wakes us with its fd: naps that end on their own would only cost
             * wake-ups (a guest's frame every few hundred us meant 7 timer wake-ups each) */
            if (c->ports_wake && !tx_pending(dp)) nap = left;
            if (nap > left) nap = left;
            c->naps++;
            r = readable(c, c->nfds, nap, &python);
            if (r < 0 || python) return VP_RUN_WAKE;
            now = vp_now_ns();
            next_check = now + c->wake_check_ns;
            continue;
        }
        if (now >= next_check) {
            next_check = now + c->wake_check_ns;
            if (readable(c, c->nwake, 0, &python) < 0 || python) return VP_RUN_WAKE;
        }
        if (r == EMPTY) relax();
    }
}

/* one stage on its own (a stage's process_batch), counted as in the chain */
uint32_t vp_stage_run(struct vp_dp *dp, struct vp_batch *b, const struct vp_stage *s) {
    uint64_t t0 = vp_cycles();
    uint32_t n;
    dp->now_ns = vp_now_ns();
    b->handoff = 0;
    n = s->kernel(dp, b);
    if (n) count(dp, s, vp_cycles() - t0, n);
    return n;
}
