#!/usr/bin/env python3
"""Per-frame latency through the pipeline on shm: ports: the generator stamps each frame
with its send time, the sink takes each frame's time in flight. For each batch size and flow
count, the maximum rate is measured first (as perf/bench_shm.py does), then latency at
--loads percent of it: p50, p99 and p99.9 in microseconds. Frames go on time or not at
all: what the generator misses while it is itself held up is skipped (and the share
printed), not sent late in a burst, which would measure the generator's stall rather than
the pipeline. Prints a table; --markdown prints rows for perf/RESULTS.md."""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools.shmbench import BenchPipeline  # noqa: E402

COLUMNS = ("p50_us", "p99_us", "p99_9_us")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batches", default="32,256")
    ap.add_argument("--flows", default="1,100000")
    ap.add_argument("--loads", default="10,50,90", help="percent of the measured maximum rate")
    ap.add_argument("--seconds", type=float, default=3.0, help="per measured phase")
    ap.add_argument("--runs", type=int, default=1, help="maximum-rate phases per case (median taken)")
    ap.add_argument("--rt", action="store_true", help="pipeline and traffic SCHED_FIFO (root): the machine's "
                                                       "other work no longer preempts them")
    ap.add_argument("--pipeline-from", metavar="DIR", help="run the worker of the checkout DIR (built there with "
                                                             "`make native`), e.g. main's, with this checkout's gen and sink")
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    loads = [int(x) for x in a.loads.split(",")]
    rows = []
    for batch in map(int, a.batches.split(",")):
        for flows in map(int, a.flows.split(",")):
            with BenchPipeline(flows=flows, batch=batch, rt=a.rt, pipeline_root=a.pipeline_from) as b:
                top = statistics.median(b.run(a.seconds)["mpps"] for _ in range(a.runs))
                print(f"  batch {batch} flows {flows}: maximum {top:.2f} Mpps", file=sys.stderr)
                for load in loads:
                    r = b.run(a.seconds, rate=top * 1e6 * load / 100, latency=True)
                    lat = r["latency"] or {}
                    drops = sum(r["stats"]["drops"].values())
                    skipped = r["gen"]["pace_skipped"] / max(1, r["gen"]["sent"] + r["gen"]["pace_skipped"])
                    rows.append((batch, flows, top, load, r["mpps"], lat, drops))
                    print(f"  batch {batch} flows {flows} load {load}%: {r['mpps']:.2f} Mpps "
                          f"({100 * skipped:.1f}% of sends skipped: the generator held up) "
                          + ", ".join(f"{k} {lat.get(k)}" for k in COLUMNS), file=sys.stderr)
    print(f"{'batch':>5} {'flows':>7} {'max Mpps':>9} {'load':>5} {'Mpps':>7} " + " ".join(f"{c:>10}" for c in COLUMNS)
          + "  drops")
    for batch, flows, top, load, mpps, lat, drops in rows:
        print(f"{batch:>5} {flows:>7} {top:>9.2f} {load:>4}% {mpps:>7.2f} "
              + " ".join(f"{lat.get(c, float('nan')):>10.2f}" for c in COLUMNS) + f"  {drops}")
    if a.markdown:
        print()
        for batch, flows, top, load, mpps, lat, drops in rows:
            print(f"| {batch} | {flows} | {top:.2f} | {load}% | {mpps:.2f} | "
                  + " | ".join(f"{lat.get(c, float('nan')):.2f}" for c in COLUMNS) + f" | {drops} |")


if __name__ == "__main__":
    main()
