#!/usr/bin/env python3
"""The fast path carrying 100,000 megaflows over ~10 masks, next to the single-flow case,
in one run. Ten rules on different /20 source blocks, each also matching a different set
of other fields, rewrite source address and port, so every flow gets its own megaflow
(full source and port un-wildcarded) and each block its own mask. With --emc 4096 the
exact-match cache holds only a few of them and the megaflow classifier carries the load."""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools.shmbench import measure  # noqa: E402

# A packet of block j also consults the subtables of rules 0..j-1 (their L3 stage, where
# the source block differs), so its mask holds the union of what those looked at: with
# rule j matching the (common) destination by a /(16+j) prefix, that union is /(16+j) —
# a different mask per block. Rewriting source address and port un-wildcards both (as
# Open vSwitch does), so each of the 100,000 flows has a megaflow of its own.
def rules():
    out = []
    for j in range(10):
        out.append(f"priority={200 - j},udp,nw_src=198.18.{16 * j}.0/20,nw_dst=198.19.0.0/{16 + j},"
                   f"actions=mod_nw_src:10.0.0.{j + 1},mod_tp_src:{2000 + j},output:2")
    out.append("priority=1,udp,actions=mod_nw_src:10.0.0.99,mod_tp_src:2999,output:2")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--flows", type=int, default=100_000)
    ap.add_argument("--emc", type=int, default=4096, help="exact-match cache entries")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--warmup", type=int, default=4000, help="new flows/s in the warm-up (below the setup rate)")
    a = ap.parse_args()
    cases = {"1 flow, exact-match hit": dict(flows=1),
             f"{a.flows} flows, megaflows (emc {a.emc})": dict(flows=a.flows, rules=rules(), emc_limit=a.emc,
                                                              flow_limit=2 * a.flows, warmup_pps=a.warmup),
             f"{a.flows} flows, exact-match (emc {2 * a.flows})": dict(flows=a.flows, rules=rules(),
                                                                       flow_limit=2 * a.flows, warmup_pps=a.warmup)}
    res = {k: [] for k in cases}
    for r in range(a.runs):
        for name, kw in cases.items():
            m = measure(seconds=a.seconds, **kw)
            res[name].append(m)
            st = m["stats"]
            print(f"  run {r + 1}: {name}: {m['mpps']:.2f} Mpps, megaflow hits {st['megaflow_hits']}, "
                  f"exact hits {st['hits']}, misses {st['misses']}", file=sys.stderr)
    for name, ms in res.items():
        st = ms[-1]["after"]
        runs = ", ".join("%.2f" % m["mpps"] for m in ms)
        lookup = statistics.median(m["stats"]["stage_ns_per_packet"]["lookup"] for m in ms)
        print(f"{name:<42} {statistics.median(m['mpps'] for m in ms):6.2f} Mpps  (runs {runs})  "
              f"megaflows {st['megaflows']} masks {st['masks']}  lookup {lookup:.1f} ns/pkt")


if __name__ == "__main__":
    main()
