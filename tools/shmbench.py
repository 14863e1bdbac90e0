"""One measured run: a pipeline (its own process, pinned to one core) between a generator and
a sink (their own processes, sharing the other core), on shm: ports or, on a netmap host,
between two VALE switches. A paced warm-up sends every flow once so the measured phase sees
installed flows, as in steady state. Used by `valepipe demo`, perf/bench_shm.py and
perf/bench_vale.py."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib

from pipeline import control

WARMUP_PPS = 20_000          # well under the slow path's flow setup rate


def _cpus():
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[-1]) if len(cpus) > 1 else (cpus[0], cpus[0])


def _delta(after, before):
    if isinstance(after, dict):
        return {k: _delta(v, before.get(k)) if isinstance(before, dict) else v for k, v in after.items()}
    if isinstance(after, (int, float)) and not isinstance(after, bool) and isinstance(before, (int, float)):
        return after - before
    return after


def _traffic(cmd, cpu):
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *cmd, "--json", "--cpu", str(cpu)],
                            stdout=subprocess.PIPE, text=True)


def _finish(p, timeout):
    out, _ = p.communicate(timeout=timeout)
    if p.returncode:
        raise RuntimeError(f"{' '.join(p.args[3:5])} exited with status {p.returncode}")
    return json.loads(out)


DEFAULT_RULES = ["in_port=1,actions=output:2", "in_port=2,actions=output:1"]


def shm_ports(tag, share_region=False):
    """(pipeline's two ports, generator's port, sink's port): the generator and the sink are
    the other ends of the pipeline's own shm: ports."""
    a, b = f"shm:{tag}a", (f"shm:{tag}b@share={tag}a" if share_region else f"shm:{tag}b")
    return (a, b), a, b


def vale_ports(tag, share_region=False):
    """Two VALE switches: the generator and the pipeline's port 1 on the first, the
    pipeline's port 2 and the sink on the second (a switch name fits in IFNAMSIZ)."""
    sw = f"vale{zlib.crc32(tag.encode()) % 100000}"
    a, b = f"{sw}a:vp", (f"{sw}b:vp@share={sw}a:vp" if share_region else f"{sw}b:vp")
    return (a, b), f"{sw}a:gen", f"{sw}b:sink"


def measure(flows=1, size=60, batch=256, seconds=5.0, slots=1024, tag=None, share_region=False,
            rules=None, emc_limit=0, flow_limit=None, warmup_pps=WARMUP_PPS, gen_batch=None, vale=False):
    """Returns {"mpps": delivered Mpps, "gen", "sink", "stats": pipeline counters of the
    measured phase only, "warmup_s"}. gen_batch: slots per generator publish (default: the
    pipeline's batch). vale=True: between two VALE switches (slots unused: VALE ports have
    the module's ring size)."""
    gen_batch = gen_batch or batch
    tag = tag or f"b{os.getpid()}x{int(time.time() * 1000) % 100000}"
    pipe_cpu, traffic_cpu = _cpus()
    tmp = tempfile.mkdtemp(prefix="valepipe-bench-")
    (uri_a, uri_b), gen_uri, sink_uri = (vale_ports if vale else shm_ports)(tag, share_region)
    ring = "" if vale else f"slots = {slots}\n"
    cfg = os.path.join(tmp, "bench.toml")
    with open(cfg, "w") as f:
        f.write(f'[pipeline]\nname = "{tag}"\nbatch = {batch}\nflow_limit = {flow_limit or max(2 * flows, 1024)}\n'
                f'emc_limit = {emc_limit}\nupcall_rate = 0\nidle_timeout = 0\nrevalidate_interval = 0\nrun_dir = "{tmp}/run"\n\n'
                f'[[port]]\nuri = "{uri_a}"\n{ring}\n[[port]]\nuri = "{uri_b}"\n{ring}\n'
                f'[slowpath]\nflows = {json.dumps(rules or DEFAULT_RULES)}\n')
    ctl = os.path.join(tmp, "run", "worker.ctl")
    pipe = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", cfg, "--quiet", "--cpu", str(pipe_cpu)])
    procs = []
    try:
        t0 = time.monotonic()
        if vale:      # a VALE sender does not wait for the pipeline: its switch exists without it
            control.wait_ready(ctl, pipe, timeout=60)
        warm = _traffic(["gen", gen_uri, "--rx", sink_uri, "--flows", str(flows), "--size", str(size),
                         "--count", str(flows), "--rate", str(warmup_pps)], traffic_cpu)
        procs.append(warm)
        _finish(warm, 60 + 2 * flows / warmup_pps)
        warmup_s = time.monotonic() - t0
        before = control.request(ctl, "stats")
        if before["flows"] + before["megaflows"] < min(flows, before["flow_limit"]):
            raise RuntimeError(f"warm-up installed {before['flows']} flows, {before['megaflows']} megaflows "
                               f"for {flows} flows")
        gen = _traffic(["gen", gen_uri, "--rx", sink_uri, "--flows", str(flows), "--size", str(size),
                        "--duration", str(seconds), "--batch", str(gen_batch)], traffic_cpu)
        procs.append(gen)
        g = _finish(gen, seconds + 60)
        s = g.pop("rx")
        after = control.request(ctl, "stats")
        st = _delta(after, before)
        st["stage_ns_per_packet"] = {k: round(v / st["stage_packets"][k], 2) if st["stage_packets"][k] else None
                                     for k, v in st["stage_ns_total"].items()}
        return {"flows": flows, "size": size, "batch": batch, "gen_batch": gen_batch, "mpps": s["mpps"], "gen": g, "sink": s,
                "stats": st, "after": after, "warmup_s": round(warmup_s, 2)}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        pipe.terminate()
        try:
            pipe.wait(10)
        except subprocess.TimeoutExpired:
            pipe.kill()
            pipe.wait()
        shutil.rmtree(tmp, ignore_errors=True)
