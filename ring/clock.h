/* clock.h — the one clock of the C side: vp_now_ns() (CLOCK_MONOTONIC, what Python's
 * time.monotonic_ns() reads) for times that mean something outside a process (flow ages,
 * deadlines, latency stamps), and vp_cycles() for counting where the time of a batch goes
 * (the CPU's time-stamp counter where there is one: half the cost of a clock read). */
#ifndef VP_CLOCK_H
#define VP_CLOCK_H
#include <stdint.h>
#include <time.h>

/* cdef-begin */
#ifdef VP_CDEF
uint64_t vp_now_ns(void);
uint64_t vp_cycles(void);
#endif
/* cdef-end */

static inline uint64_t vp_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Counts at a constant rate (an invariant TSC on x86-64; elsewhere nanoseconds): stage
 * counters divide by the rate pipeline/datapath.py measures against vp_now_ns(). */
static inline uint64_t vp_cycles(void) {
#if defined(__x86_64__)
    uint32_t lo, hi;
    __asm__ __volatile__("rdtsc" : "=a"(lo), "=d"(hi));
    return (uint64_t)hi << 32 | lo;
#else
    return vp_now_ns();
#endif
}
#endif
