#!/usr/bin/env python3
"""The extract stage (parse + flow hash) alone, in this process, on both CRC32C paths:
the crc32 instruction where the CPU has it, and the portable tables (VALEPIPE_CRC32C=
portable, in a child process, since the path is chosen when the extension loads).
Prints ns per packet, best of --reps runs of --iters batches of 256 UDP/IPv4 frames."""
import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def measure(reps, iters):
    from pipeline._native import ffi, lib
    from tests.test_e2e import frame
    b = ffi.new("struct vp_batch *")
    b.cap = b.n = 256
    keep = [ffi.new("char[]", frame(i % 64, i)) for i in range(256)]
    for i, f in enumerate(keep):
        b.pkt[i].data, b.pkt[i].len = f, len(f) - 1
    dp = ffi.new("struct vp_dp *")
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter_ns()
        for _ in range(iters):
            lib.vp_extract(dp, b)
        best = min(best, (time.perf_counter_ns() - t) / (iters * 256))
    return ("crc32c-sse4.2" if lib.vp_crc32c_used() else "crc32c-portable"), best


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        path, ns = measure(a.reps, a.iters)
        print(f"{path:16} extract ns/packet {ns:.2f}")
        return
    for env in ({}, {"VALEPIPE_CRC32C": "portable"}):
        subprocess.run([sys.executable, __file__, "--one", "--reps", str(a.reps), "--iters", str(a.iters)],
                       env=dict(os.environ, **env), check=True)


if __name__ == "__main__":
    main()
