#!/usr/bin/env python3
"""How often this machine stops a core under a running process: a loop on each CPU in turn
reads the clock and counts the gaps (interrupts, the hypervisor taking the vCPU). What
pipeline latency percentiles can show on this machine is bounded by these stops; see
perf/RESULTS.md. Prints per CPU the gaps over 5, 10, 20, 50, 100 us and 1 ms per second and
the share of time lost in gaps over 2 us."""
import argparse
import os
import time

LIMITS_NS = (5_000, 10_000, 20_000, 50_000, 100_000, 1_000_000)


def measure(seconds):
    """(gaps over each limit, ns lost in gaps over 2 us, ns measured) on the current CPU."""
    clock = time.perf_counter_ns
    counts = [0] * len(LIMITS_NS)
    lost = 0
    start = prev = clock()
    end = start + int(seconds * 1e9)
    while prev < end:
        t = clock()
        d = t - prev
        prev = t
        if d > 2000:            # a Python iteration takes ~0.1 us: anything longer is a stop
            lost += d
            for i, lim in enumerate(LIMITS_NS):
                if d > lim:
                    counts[i] += 1
    return counts, lost, prev - start


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=2.0, help="per CPU")
    a = ap.parse_args()
    print("cpu  " + "  ".join(f">{lim / 1000:g}us/s".rjust(10) for lim in LIMITS_NS) + "   lost")
    for cpu in sorted(os.sched_getaffinity(0)):
        os.sched_setaffinity(0, {cpu})
        counts, lost, span = measure(a.seconds)
        per_s = [c / (span / 1e9) for c in counts]
        print(f"{cpu:<4} " + "  ".join(f"{x:10.1f}" for x in per_s) + f"   {100 * lost / span:.2f}%")


if __name__ == "__main__":
    main()
