#!/usr/bin/env python3
"""generator -> pipeline -> sink on shm: ports: Mpps for 64-byte frames at 1, 1,000 and
100,000 flows and for batch sizes 32/64/256 (median of repeated, interleaved runs),
with ns/packet per stage. Prints a table; --markdown prints rows for perf/RESULTS.md."""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools.shmbench import measure  # noqa: E402
import charts  # noqa: E402  (perf/charts.py, beside this script)

STAGES = ("receive", "extract", "lookup", "execute", "transmit")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3, help="repetitions per case (median reported)")
    ap.add_argument("--seconds", type=float, default=4.0, help="generator time per run")
    ap.add_argument("--flows", default="1,1000,100000")
    ap.add_argument("--batches", default="32,64,256")
    ap.add_argument("--size", type=int, default=60, help="frame length without FCS (60 = 64-byte frames)")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--chart", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "shm_mpps.png"),
                    help="PNG chart of the medians and ns/packet by stage (matplotlib)")
    a = ap.parse_args()
    cases = [(f, 256) for f in map(int, a.flows.split(","))]
    cases += [(1, b) for b in map(int, a.batches.split(",")) if b != 256]
    results = {c: [] for c in cases}
    for r in range(a.runs):                      # interleaved: each round runs every case once
        for flows, batch in cases:
            res = measure(flows=flows, size=a.size, batch=batch, seconds=a.seconds)
            results[(flows, batch)].append(res)
            print(f"  run {r + 1}/{a.runs} flows={flows:<6} batch={batch:<4} {res['mpps']:.2f} Mpps", file=sys.stderr)
    print(f"{'flows':>7} {'batch':>5} {'Mpps':>7}  (runs)                 " + " ".join(f"{s:>9}" for s in STAGES)
          + "  ns/pkt")
    rows = []
    for (flows, batch), rs in results.items():
        mpps = statistics.median(r["mpps"] for r in rs)
        ns = {s: statistics.median(r["stats"]["stage_ns_per_packet"][s] or 0 for r in rs) for s in STAGES}
        runs = ", ".join(f"{r['mpps']:.2f}" for r in rs)
        drops = statistics.median(sum(r["stats"]["drops"].values()) for r in rs)
        print(f"{flows:>7} {batch:>5} {mpps:>7.2f}  ({runs:<20}) " + " ".join(f"{ns[s]:>9.1f}" for s in STAGES)
              + f"  {sum(ns.values()):.1f} (+{1000 / mpps - sum(ns.values()):.1f} outside stages), drops {drops:.0f}")
        rows.append((flows, batch, mpps, runs, ns))
    if a.markdown:
        print()
        for flows, batch, mpps, runs, ns in rows:
            print(f"| {flows} | {batch} | {mpps:.2f} | {runs} | " + " | ".join(f"{ns[s]:.1f}" for s in STAGES) + " |")
    charts.draw(lambda: charts.shm_mpps([(f, b, m, ns) for f, b, m, _, ns in rows], a.chart))


if __name__ == "__main__":
    main()
