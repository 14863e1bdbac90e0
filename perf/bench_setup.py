#!/usr/bin/env python3
"""Flow setup rate: every packet a new flow (64-byte UDP, distinct source address/port),
sent through a pipeline on shm: ports; reports flows installed per second by the fast
path (upcall -> slow-path translation -> install), how many new flows a megaflow answered
without the slow path, and what happened to the rest."""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline import control  # noqa: E402
from tools.shmbench import _cpus  # noqa: E402


def run(flows, rate, rules):
    tag = f"s{os.getpid()}"
    tmp = tempfile.mkdtemp(prefix="valepipe-setup-")
    cfg = os.path.join(tmp, "s.toml")
    with open(cfg, "w") as f:
        f.write(f'[pipeline]\nname = "{tag}"\nflow_limit = {flows * 2}\nupcall_rate = 0\nidle_timeout = 0\nrevalidate_interval = 0\n'
                f'run_dir = "{tmp}/run"\n[[port]]\nuri = "shm:{tag}a"\nslots = 4096\n[[port]]\nuri = "shm:{tag}b"\n'
                f'slots = 4096\n[slowpath]\nflows = {json.dumps(rules)}\n')
    pc, tc = _cpus()
    pipe = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", cfg, "--quiet", "--cpu", str(pc)])
    ctl = os.path.join(tmp, "run", "worker.ctl")
    try:
        control.wait_ready(ctl, pipe, timeout=10)
        g = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "gen", f"shm:{tag}a", "--rx", f"shm:{tag}b",
                              "--flows", str(flows), "--count", str(flows), "--rate", str(rate), "--json",
                              "--cpu", str(tc), "--idle-stop", "2"], stdout=subprocess.PIPE, text=True)
        samples = []                                   # (time, flows installed)
        while g.poll() is None:
            samples.append((time.monotonic(), control.request(ctl, "stats")["upcall"]["installed"]))
            time.sleep(0.1)
        res = json.loads(g.stdout.read())
        st = control.request(ctl, "stats")
        moving = [(t, n) for t, n in samples if 0 < n < flows]
        span = moving[-1][0] - moving[0][0] if len(moving) > 1 else 0
        rate_ = (moving[-1][1] - moving[0][1]) / span if span else 0
        return {"offered_flows_per_s": rate, "flows": flows, "installed": st["upcall"]["installed"],
                "setup_flows_per_s": round(rate_), "megaflow_hits": st["megaflow_hits"],
                "upcalled_flows": st["upcall"]["upcall_flows"], "delivered": res["rx"]["received"],
                "misses": st["misses"], "drops": {k: v for k, v in st["drops"].items() if v}}
    finally:
        pipe.terminate()
        pipe.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--flows", type=int, default=100_000)
    ap.add_argument("--rates", default="20000,50000,100000,200000", help="offered new flows per second")
    a = ap.parse_args()
    rules = ["table=0,priority=10,udp,nw_dst=198.19.0.0/16,actions=resubmit(,1)",
             "table=0,priority=0,actions=drop", "table=1,in_port=1,actions=output:2"]
    for r in map(int, a.rates.split(",")):
        res = run(a.flows, r, rules)
        print(json.dumps(res))


if __name__ == "__main__":
    main()
