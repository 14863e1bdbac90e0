"""One measured run on shm: ports: a pipeline (its own process, pinned to one core) between
a generator and a sink (their own processes, sharing the other core). Used by
`valepipe demo` and perf/bench_shm.py."""
import json
import os
import subprocess
import sys
import tempfile
import time

from pipeline import control


def _cpus():
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[-1]) if len(cpus) > 1 else (cpus[0], cpus[0])


def measure(flows=1, size=60, batch=256, seconds=5.0, slots=1024, tag=None, share_region=False):
    """Returns {"mpps": delivered Mpps, "gen": ..., "sink": ..., "stats": pipeline stats}."""
    tag = tag or f"b{os.getpid()}x{int(time.time() * 1000) % 100000}"
    pipe_cpu, traffic_cpu = _cpus()
    tmp = tempfile.mkdtemp(prefix="valepipe-bench-")
    a, b = f"{tag}a", f"{tag}b"
    uri_a, uri_b = f"shm:{a}", (f"shm:{b}@share={a}" if share_region else f"shm:{b}")
    cfg = os.path.join(tmp, "bench.toml")
    with open(cfg, "w") as f:
        f.write(f"""[pipeline]
name = "{tag}"
batch = {batch}
flow_limit = {max(2 * flows, 1024)}
run_dir = "{tmp}/run"

[[port]]
uri = "{uri_a}"
slots = {slots}

[[port]]
uri = "{uri_b}"
slots = {slots}

[slowpath]
flows = ["in_port=1,actions=output:2", "in_port=2,actions=output:1"]
""")
    py = sys.executable
    pipe = subprocess.Popen([py, "-m", "pipeline.cli", "run", cfg, "--quiet", "--cpu", str(pipe_cpu)])
    sink = gen = None
    try:
        sink = subprocess.Popen([py, "-m", "pipeline.cli", "sink", uri_b, "--duration", str(seconds + 30),
                                 "--idle-stop", "1.0", "--json", "--cpu", str(traffic_cpu)],
                                stdout=subprocess.PIPE, text=True)
        gen = subprocess.Popen([py, "-m", "pipeline.cli", "gen", uri_a, "--flows", str(flows), "--size", str(size),
                                "--duration", str(seconds), "--batch", str(batch), "--json",
                                "--cpu", str(traffic_cpu)], stdout=subprocess.PIPE, text=True)
        gen_out, _ = gen.communicate(timeout=seconds + 60)
        sink_out, _ = sink.communicate(timeout=60)
        if gen.returncode or sink.returncode:
            raise RuntimeError(f"generator exited {gen.returncode}, sink exited {sink.returncode}")
        stats = control.request(os.path.join(tmp, "run", "worker.ctl"), "stats")
        g, s = json.loads(gen_out), json.loads(sink_out)
        return {"flows": flows, "size": size, "batch": batch, "mpps": s["mpps"], "gen": g, "sink": s,
                "stats": stats}
    finally:
        for p in (gen, sink):
            if p and p.poll() is None:
                p.kill()
                p.wait()
        pipe.terminate()
        try:
            pipe.wait(10)
        except subprocess.TimeoutExpired:
            pipe.kill()
            pipe.wait()
