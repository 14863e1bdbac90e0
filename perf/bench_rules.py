#!/usr/bin/env python3
"""Large rule sets: how long `valepipe add-flows` of N rules takes on a running pipeline,
how many new flows its slow path set up meanwhile (a new flow per packet keeps arriving),
and how long a slow path killed with the N rules loaded takes to answer again."""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline import control  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rule(i):
    return f"table=0,priority=5,tcp,nw_dst=10.{i >> 16}.{(i >> 8) & 255}.{i & 255},tp_dst={1 + i % 60000},actions=drop"


def run(n, rate):
    tag = f"r{os.getpid()}"
    tmp = tempfile.mkdtemp(prefix="valepipe-rules-")
    cfg, rules = os.path.join(tmp, "r.toml"), os.path.join(tmp, "many.flows")
    with open(cfg, "w") as f:
        f.write(f'[pipeline]\nname = "{tag}"\nupcall_rate = 0\nrun_dir = "{tmp}/run"\n'
                f'[[port]]\nuri = "shm:{tag}a"\n[[port]]\nuri = "shm:{tag}b"\n[slowpath]\nflows = '
                '["priority=20,udp,nw_src=198.18.255.255,actions=drop", "priority=10,in_port=1,actions=output:2"]\n')
    with open(rules, "w") as f:
        f.writelines(rule(i) + "\n" for i in range(n))
    cli = [sys.executable, "-m", "pipeline.cli"]
    pipe = subprocess.Popen(cli + ["run", cfg, "--quiet"], cwd=ROOT)
    ctl = os.path.join(tmp, "run", "worker.ctl")
    gen = None
    try:
        control.wait_ready(ctl, pipe, timeout=20)
        gen = subprocess.Popen(cli + ["gen", f"shm:{tag}a", "--flows", "1000000", "--rate", str(rate),
                                      "--duration", "3600"], cwd=ROOT, stdout=subprocess.DEVNULL)
        time.sleep(2)
        u0, t0 = control.request(ctl, "stats")["upcall"], time.monotonic()
        add = subprocess.run(cli + ["add-flows", rules, "--name", tag, "--run-dir", os.path.join(tmp, "run")],
                             cwd=ROOT, capture_output=True, text=True, timeout=600)
        load_s = time.monotonic() - t0
        u1 = control.request(ctl, "stats")["upcall"]
        assert add.returncode == 0, add.stderr
        old = control.request(ctl, "stats")["upcall"]["slowpath_pid"]
        os.kill(old, signal.SIGKILL)
        t1 = time.monotonic()
        while True:
            st = control.request(ctl, "stats")["upcall"]
            if st["slowpath_pid"] != old and st["channel_up"]:
                break
            time.sleep(0.05)
        restart_s = time.monotonic() - t1
        return {"rules": n, "add_flows_s": round(load_s, 2), "rules_per_s": round(n / load_s),
                "offered_new_flows_per_s": rate, "new_flows_set_up_while_loading": u1["installed"] - u0["installed"],
                "upcall_replies_while_loading": u1["replies"] - u0["replies"],
                "slowpath_restart_with_rules_s": round(restart_s, 2)}
    finally:
        if gen:
            gen.kill()
            gen.wait()
        pipe.terminate()
        pipe.wait(20)
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rules", type=int, default=100_000)
    ap.add_argument("--rate", type=int, default=1000, help="new flows per second offered meanwhile")
    print(json.dumps(run(**{"n": ap.parse_args().rules, "rate": ap.parse_args().rate})))


if __name__ == "__main__":
    main()
