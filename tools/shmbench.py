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


class BenchPipeline:
    """A pipeline (its own process, pinned to one core) between a generator and a sink (their
    own processes, sharing the other core), with every flow installed by a paced warm-up:
    run() as many measured phases against it as wanted, then close() (or use `with`).
    rt: the pipeline and the traffic run SCHED_FIFO (root; other work on their cores waits).
    pipeline_root: the worker of another checkout (its own .venv, e.g. main's, to compare
    with; its shm: regions must be this one's), driven by this checkout's gen and sink."""

    def __init__(self, flows=1, size=60, batch=256, slots=1024, tag=None, share_region=False, rules=None,
                 emc_limit=0, flow_limit=None, warmup_pps=WARMUP_PPS, gen_batch=None, vale=False, rt=False,
                 pipeline_root=None):
        self.flows, self.size, self.batch, self.gen_batch = flows, size, batch, gen_batch or batch
        self.rt = rt
        tag = tag or f"b{os.getpid()}x{int(time.time() * 1000) % 100000}"
        self.pipe_cpu, self.traffic_cpu = _cpus()
        self.tmp = tempfile.mkdtemp(prefix="valepipe-bench-")
        (uri_a, uri_b), self.gen_uri, self.sink_uri = (vale_ports if vale else shm_ports)(tag, share_region)
        ring = "" if vale else f"slots = {slots}\n"
        cfg = os.path.join(self.tmp, "bench.toml")
        with open(cfg, "w") as f:
            f.write(f'[pipeline]\nname = "{tag}"\nbatch = {batch}\nflow_limit = {flow_limit or max(2 * flows, 1024)}\n'
                    f'emc_limit = {emc_limit}\nupcall_rate = 0\nidle_timeout = 0\nrevalidate_interval = 0\nrun_dir = "{self.tmp}/run"\n\n'
                    f'[[port]]\nuri = "{uri_a}"\n{ring}\n[[port]]\nuri = "{uri_b}"\n{ring}\n'
                    f'[slowpath]\nflows = {json.dumps(rules or DEFAULT_RULES)}\n')
        self.ctl = os.path.join(self.tmp, "run", "worker.ctl")
        self.procs = []
        python = os.path.join(pipeline_root, ".venv", "bin", "python") if pipeline_root else sys.executable
        self.pipe = subprocess.Popen(self._rt() + [python, "-m", "pipeline.cli", "run", cfg, "--quiet",
                                                   "--cpu", str(self.pipe_cpu)], cwd=pipeline_root)
        try:
            t0 = time.monotonic()
            if vale:      # a VALE sender does not wait for the pipeline: its switch exists without it
                control.wait_ready(self.ctl, self.pipe, timeout=60)
            _finish(self._traffic(["--count", str(flows), "--rate", str(warmup_pps)]), 60 + 2 * flows / warmup_pps)
            self.warmup_s = time.monotonic() - t0
            st = control.request(self.ctl, "stats")
            if st["flows"] + st["megaflows"] < min(flows, st["flow_limit"]):
                raise RuntimeError(f"warm-up installed {st['flows']} flows, {st['megaflows']} megaflows "
                                   f"for {flows} flows")
        except BaseException:
            self.close()
            raise

    def _rt(self):
        return ["chrt", "-f", "10"] if self.rt else []

    def _traffic(self, args):
        p = subprocess.Popen(self._rt() + [sys.executable, "-m", "pipeline.cli", "gen", self.gen_uri, "--rx", self.sink_uri,
                                           "--flows", str(self.flows), "--size", str(self.size), *args, "--json",
                                           "--cpu", str(self.traffic_cpu)], stdout=subprocess.PIPE, text=True)
        self.procs.append(p)
        return p

    def run(self, seconds=5.0, rate=0, latency=False):
        """One measured phase: the generator as fast as it can (rate 0) or at `rate` packets/s,
        stamping frames with latency. Returns {"mpps": delivered Mpps, "gen", "sink", "stats":
        pipeline counters of this phase only, "latency" (with latency)}."""
        before = control.request(self.ctl, "stats")
        args = ["--duration", str(seconds), "--batch", str(self.gen_batch)]
        args += ["--rate", str(int(rate))] if rate else []
        g = _finish(self._traffic(args + (["--latency"] if latency else [])), seconds + 60)
        s = g.pop("rx")
        after = control.request(self.ctl, "stats")
        st = _delta(after, before)
        st["stage_ns_per_packet"] = {k: round(v / st["stage_packets"][k], 2) if st["stage_packets"][k] else None
                                     for k, v in st["stage_ns_total"].items()}
        npk = st["stage_packets"].get("receive")
        st["batch_ns_per_packet"] = round(st["batch_ns_total"] / npk, 2) if npk and "batch_ns_total" in st else None
        out = {"flows": self.flows, "size": self.size, "batch": self.batch, "gen_batch": self.gen_batch,
               "mpps": s["mpps"], "gen": g, "sink": s, "stats": st, "after": after, "warmup_s": round(self.warmup_s, 2)}
        if latency:
            out["latency"] = s.get("latency")
        return out

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.pipe.terminate()
        try:
            self.pipe.wait(10)
        except subprocess.TimeoutExpired:
            self.pipe.kill()
            self.pipe.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def measure(flows=1, size=60, batch=256, seconds=5.0, **kw):
    """One pipeline, one measured phase as fast as the generator goes (BenchPipeline's
    arguments): {"mpps": delivered Mpps, "gen", "sink", "stats", "warmup_s"}."""
    with BenchPipeline(flows=flows, size=size, batch=batch, **kw) as b:
        return b.run(seconds)
