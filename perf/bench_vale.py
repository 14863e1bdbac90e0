#!/usr/bin/env python3
"""On a netmap host: `valepipe gen` on VALE switch A -> valepipe joining A and B -> `valepipe
sink` on B, for 60- and 1514-byte frames and several batch sizes, copying and zero-copy
(@share=), next to VALE alone (sender and receiver on one switch) and valepipe on shm:
ports, all interleaved in one run; medians of --runs. Needs /dev/netmap."""
import argparse
import os
import statistics
import subprocess
import sys
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools.shmbench import _cpus, _finish, _traffic, measure  # noqa: E402

PATHS = ("vale", "vale-zerocopy", "shm", "vale-direct")
ABOUT = {"vale": "VALE A -> valepipe (copy) -> VALE B", "vale-zerocopy": "VALE A -> valepipe (@share=, buffer swaps) -> VALE B",
         "shm": "valepipe on its own shm: ports (same generator and sink)",
         "vale-direct": "VALE alone: sender and receiver on one switch (the ceiling)"}


def direct(size, batch, seconds):
    """VALE's own rate on this host: gen and sink on one switch, no pipeline in between."""
    sw = f"vale{uuid.uuid4().hex[:6]}"
    g = _finish(_traffic(["gen", f"{sw}:gen", "--rx", f"{sw}:sink", "--size", str(size), "--duration",
                          str(seconds), "--batch", str(batch)], _cpus()[1]), seconds + 60)
    return {"mpps": g["rx"]["mpps"], "sent": g["sent"], "received": g["rx"]["received"]}


def run_case(path, size, batch, seconds):
    if path == "vale-direct":
        return direct(size, batch, seconds)
    r = measure(size=size, batch=batch, seconds=seconds, vale=path.startswith("vale"),
                share_region=path == "vale-zerocopy")
    st = r["stats"]
    return {"mpps": r["mpps"], "sent": r["gen"]["sent"], "received": r["sink"]["received"],
            "drops": sum(st["drops"].values()), "swapped": st.get("tx_swapped", 0), "copied": st.get("tx_copied", 0)}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3, help="repetitions per case (median reported)")
    ap.add_argument("--seconds", type=float, default=4.0, help="generator time per run")
    ap.add_argument("--sizes", default="60,1514", help="frame lengths without FCS")
    ap.add_argument("--batches", default="32,256", help="pipeline and generator batch sizes")
    ap.add_argument("--paths", default=",".join(PATHS), help=f"which of {', '.join(PATHS)}")
    ap.add_argument("--markdown", action="store_true", help="also print rows for perf/RESULTS.md")
    a = ap.parse_args()
    paths = a.paths.split(",")
    if any(p not in PATHS for p in paths):
        ap.error(f"--paths: choose from {', '.join(PATHS)}")
    if any(p != "shm" for p in paths) and not os.path.exists("/dev/netmap"):
        sys.exit("bench_vale: /dev/netmap does not exist: load the netmap module (FreeBSD: built in; "
                 "Linux: insmod netmap.ko), or run --paths shm")
    cases = [(p, s, b) for s in map(int, a.sizes.split(",")) for b in map(int, a.batches.split(",")) for p in paths]
    results = {c: [] for c in cases}
    for r in range(a.runs):                      # interleaved: each round runs every case once
        for case in cases:
            try:
                res = run_case(*case, a.seconds)
            except (RuntimeError, subprocess.SubprocessError) as e:
                sys.exit(f"bench_vale: {case[0]} size {case[1]} batch {case[2]}: {e}")
            results[case].append(res)
            print(f"  run {r + 1}/{a.runs} {case[0]:<14} size={case[1]:<5} batch={case[2]:<4} "
                  f"{res['mpps']:.3f} Mpps", file=sys.stderr)
    for p in paths:
        print(f"# {p}: {ABOUT[p]}")
    print(f"{'path':<14} {'size':>5} {'batch':>5} {'Mpps':>8} {'Gbit/s':>7}  {'runs':<24} {'x shm':>6} {'x VALE':>6}")
    rows = []
    for (path, size, batch), rs in results.items():
        mpps = statistics.median(r["mpps"] for r in rs)
        ref = {q: statistics.median(r["mpps"] for r in results[(q, size, batch)]) if (q, size, batch) in results else None
               for q in ("shm", "vale-direct")}
        ratio = {q: f"{mpps / v:.2f}" if v else "-" for q, v in ref.items()}
        runs = ", ".join(f"{r['mpps']:.3f}" for r in rs)
        gbit = mpps * (size + 24) * 8 / 1000        # + FCS, preamble and gap, as on a wire
        print(f"{path:<14} {size:>5} {batch:>5} {mpps:>8.3f} {gbit:>7.2f}  {runs:<24} {ratio['shm']:>6} "
              f"{ratio['vale-direct']:>6}")
        rows.append(f"| {path} | {size} | {batch} | {mpps:.3f} | {runs} | {ratio['shm']} | {ratio['vale-direct']} |")
    if a.markdown:
        print("\n| path | size | batch | Mpps (median) | runs | × shm | × VALE alone |\n|---|---|---|---|---|---|---|")
        print("\n".join(rows))


if __name__ == "__main__":
    main()
