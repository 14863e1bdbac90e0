"""The stage chain a config composes: run by C when every stage has a C kernel (each stage
counted on its own counters), batch by batch from Python when one is written in Python,
forwarding the same either way; stage names refused with their place; the lists of names
the C side declares, read from the built module; an idle worker that sleeps and still
wakes for the next frame; a forwarding worker that returns to Python only for its input and
timers, with its slow path off its core; per-frame latency from `gen --latency`."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from pipeline import control, hostos
from pipeline._native import ffi, lib
from pipeline.names import DROPS, OPS, PARSE_ERRORS, SET_FIELDS, STAGES
from tests.conftest import ROOT, GenRunning, wait_for

N = 3000
FLOWS = 40


def cfg(tag, stages=None, extra=""):
    st = f"stages = {json.dumps(stages)}\n" if stages is not None else ""
    return (f'[pipeline]\nname = "{tag}"\nrun_dir = "@RUN@"\n{st}{extra}\n'
            # the out ring holds every frame a test sends: a sink held up by a loaded machine
            # makes no tx_ring_full drop
            f'[[port]]\nuri = "shm:{tag}a"\n[[port]]\nuri = "shm:{tag}b"\nslots = 4096\n'
            '[slowpath]\nflows = ["in_port=1,actions=output:2"]\n')


def gen(tag, *args, timeout=120):
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "gen", f"shm:{tag}a", "--rx", f"shm:{tag}b",
                        "--json", "-q", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def settled(pipe):
    """the stats once the slow path answered every upcall (its megaflows installed)"""
    return wait_for(lambda: (lambda s: s if s["upcall"]["upcalls_unanswered"] == 0 and s["upcall"]["pending"] == 0
                             else None)(pipe.stats()), 60) or pipe.stats()


def send_through(pipe, tag, count=N):
    """One frame of each of FLOWS flows (the slow path sets them up), then count frames of
    them; returns (what the generator and sink said of those, the stats before and after)."""
    warm = gen(tag, "--count", str(FLOWS), "--flows", str(FLOWS), "--rate", "2000")
    assert warm["rx"]["received"] == FLOWS, warm
    before = settled(pipe)
    g = gen(tag, "--count", str(count), "--flows", str(FLOWS), "--rate", "20000", "--latency")
    st = wait_for(lambda: (lambda s: s if s["ports"][1]["tx_packets"] - before["ports"][1]["tx_packets"] >= count
                           else None)(pipe.stats()), 30) or pipe.stats()
    return g, st, before


@pytest.mark.parametrize("python", [False, True], ids=["C chain", "a stage in Python"])
def test_the_chain_forwards_whoever_runs_it(uniq, pipeline_factory, python):
    stages = ["receive", "extract", "lookup", "tests.chain_stages:PythonExecute" if python else "execute", "transmit"]
    pipe = pipeline_factory(cfg(uniq, stages))
    g, st, before = send_through(pipe, uniq)
    assert st["chain"]["runs_in"] == ("Python" if python else "C"), st["chain"]
    assert st["chain"]["stages"] == ["Receive", "Extract", "Lookup", "PythonExecute" if python else "Execute",
                                     "Transmit"]
    # every frame was delivered, each by the fast path, and each stage counted it
    assert g["sent"] == N and g["rx"]["received"] == N, g
    assert sum(st["drops"].values()) == 0, {k: v for k, v in st["drops"].items() if v}
    assert st["upcall"]["upcall_packets"] == before["upcall"]["upcall_packets"], st["upcall"]
    counted = {k: st["stage_packets"][k] - before["stage_packets"][k] for k in STAGES}
    assert counted["receive"] == counted["extract"] == counted["lookup"] == counted["transmit"] == N, counted
    # a stage of one's own is not on a C stage's counters
    assert counted["execute"] == (0 if python else N)
    assert all(st["stage_ns_total"][k] > 0 for k in STAGES if counted[k]), st["stage_ns_total"]
    lat = g["rx"]["latency"]
    assert lat["frames"] == N and lat["unstamped"] == 0
    assert 0 < lat["min_us"] <= lat["p50_us"] <= lat["p99_us"] <= lat["p99_9_us"] <= lat["max_us"], lat


def test_a_stream_of_new_flows_gets_the_slow_paths_answers(uniq, pipeline_factory):
    """Every frame a new flow, faster than the chain looks at its fds between batches: each
    batch hands its misses to Python, and the chain still looks for the slow path's answers
    before its next batch, so the first answer (one megaflow for all of them) ends the misses
    and the rest go by the fast path. (Before, the answers waited for the stream to end.)"""
    n = 30000                                   # all of them fit the out ring
    pipe = pipeline_factory(cfg(uniq, extra="upcall_rate = 0").replace('slots = 4096', 'slots = 32768'))
    g = gen(uniq, "--count", str(n), "--flows", str(n))     # as fast as the pipeline takes them
    st = settled(pipe)
    assert g["sent"] == n and g["rx"]["received"] == n, g
    assert sum(st["drops"].values()) == 0, {k: v for k, v in st["drops"].items() if v}
    # the answers were applied while the stream went on: most frames never went up (here: about
    # one ring, 768-1,024 of them; 4,094-30,000 when the answers waited for a gap in the stream)
    assert st["upcall"]["upcall_flows"] < n // 4, st["upcall"]
    assert st["megaflows"] == 1 and st["flows"] == n, (st["megaflows"], st["flows"])


def test_stages_refused_with_their_place(uniq, tmp_path):
    bad = {"nosuch": "unknown stage 'nosuch'", "tests.chain_stages:NotAStage": "is not a pipeline.stages.Stage",
           "tests.nosuchmodule:X": "cannot import tests.nosuchmodule", "tests.chain_stages:Nope": "has no Nope"}
    for name, why in bad.items():
        p = tmp_path / "c.toml"
        p.write_text(cfg(uniq, ["receive", name]).replace("@RUN@", str(tmp_path / "run")))
        r = subprocess.run([sys.executable, "-m", "pipeline.cli", "check", str(p)], cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode != 0 and "[pipeline].stages[1]" in r.stderr and why in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    for text, why in ((cfg(uniq, []), "1..16 stages"), (cfg(uniq, extra="idle_sleep_us = 0"), "idle_sleep_us"),
                      (cfg(uniq, extra="idle_poll_us = -1"), "idle_poll_us"),
                      (cfg(uniq, extra='idle_poll_us = "soon"'), '"auto" or 0..1000000')):
        p = tmp_path / "c.toml"
        p.write_text(text.replace("@RUN@", str(tmp_path / "run")))
        r = subprocess.run([sys.executable, "-m", "pipeline.cli", "check", str(p)], cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode != 0 and why in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_names_are_the_modules(uniq, pipeline_factory):
    """One list each in C (batch.h): its count, numbers and names are what Python uses."""
    assert (len(STAGES), len(PARSE_ERRORS), len(DROPS), len(OPS)) == (lib.VP_STAGE_N, lib.VP_PERR_N, lib.VP_DROP_N,
                                                                     lib.VP_OP_N)
    assert STAGES == ("receive", "extract", "lookup", "execute", "transmit")
    assert DROPS[lib.VP_DROP_TX_FULL] == "tx_ring_full" and DROPS[lib.VP_DROP_BAD_REPLY] == "bad_reply"
    assert OPS[lib.VP_OP_OUTPUT] == "output" and OPS[lib.VP_OP_POP_VLAN] == "pop_vlan"
    assert SET_FIELDS["ipv6_src"] == (lib.VP_F_IPV6_SRC, 16) and SET_FIELDS["tp_dst"] == (lib.VP_F_TP_DST, 2)
    assert lib.vp_drop_name(lib.VP_DROP_N) == ffi.NULL and lib.vp_stage_name(lib.VP_STAGE_N) == ffi.NULL
    st = pipeline_factory(cfg(uniq)).stats()
    assert list(st["drops"]) == list(DROPS) and list(st["parse_errors"]) == list(PARSE_ERRORS)
    assert list(st["stage_packets"]) == list(STAGES) and list(st["ports"][0]["in_drops"]) == list(DROPS)


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads a process's CPU time from /proc")
def test_an_idle_worker_sleeps_and_wakes_for_the_next_frame(uniq, pipeline_factory):
    pipe = pipeline_factory(cfg(uniq, extra="idle_poll_us = 200\nidle_sleep_us = 2000"))
    gen(uniq, "--count", "1")                      # the flow is set up; then nothing comes
    st = pipe.stats()
    assert st["chain"]["idle_poll_us"] == 200, st["chain"]        # as configured, not 199
    pid, naps = st["pid"], st["chain"]["idle_naps"]
    cpu0, t0 = hostos.cpu_seconds(pid), time.monotonic()
    time.sleep(3)
    cpu, wall = hostos.cpu_seconds(pid) - cpu0, time.monotonic() - t0
    # polling the rings all along would take the whole 3 s of CPU
    assert cpu < 0.5 * wall, (cpu, wall)
    assert pipe.stats()["chain"]["idle_naps"] > naps
    # a frame arriving while it sleeps is forwarded all the same (the nap ends, then it polls)
    for _ in range(3):
        g = gen(uniq, "--count", "1", "--latency")
        assert g["rx"]["received"] == 1 and g["rx"]["latency"]["frames"] == 1, g
        time.sleep(0.5)
    # and it still answers at once when asked
    assert control.request(pipe.ctl, "stats", timeout=5)["chain"]["runs_in"] == "C"


@pytest.mark.parametrize("slots", [2, 65536])
def test_every_slot_count_the_config_takes_can_be_attached(uniq, pipeline_factory, slots):
    """The extremes of `slots` (2..65536): the pipeline makes the region and a peer can map
    it and forward through it (a 65536-slot ring is over 1 MiB: peers refused it once)."""
    text = cfg(uniq).replace('uri = "shm:' + uniq + 'a"\n', f'uri = "shm:{uniq}a"\nslots = {slots}\n')
    pipeline_factory(text)
    g = gen(uniq, "--count", "500", "--rate", "20000")
    assert g["rx"]["received"] == 500, g


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs two CPUs to keep a slow path off the worker's")
def test_a_forwarding_worker_leaves_python_alone(uniq, pipeline_factory):
    """Under steady traffic the chain returns to Python for input (answers, requests,
    signals) and timers only: each return stops forwarding for 10-200 us of Python, so a
    return every 10 ms (as before) put p99 latency at 30 us. And a pinned worker's slow path
    runs on the other CPUs: its wake-ups on the worker's core stopped forwarding too."""
    cpu = min(os.sched_getaffinity(0))
    pipe = pipeline_factory(cfg(uniq), args=("--cpu", str(cpu)))
    st = pipe.stats()
    slow = st["upcall"]["slowpath_pid"]
    assert os.sched_getaffinity(st["pid"]) == {cpu}
    assert cpu not in os.sched_getaffinity(slow) and os.sched_getaffinity(slow), os.sched_getaffinity(slow)
    count, rate = 60000, 20000              # 3 s of frames
    with GenRunning(uniq, "--count", str(count), "--rate", str(rate)) as g:
        assert wait_for(lambda: pipe.stats()["hits"] > 0, 30)
        a, t0 = pipe.stats(), time.monotonic()
        time.sleep(2)
        b, t1 = pipe.stats(), time.monotonic()
        r = g.result()
    assert r["sent"] == count and r["rx"]["received"] + sum(pipe.stats()["drops"].values()) == count, r
    forwarded = b["hits"] - a["hits"]
    turns = (b["chain"]["python_turns"] - a["chain"]["python_turns"]) / (t1 - t0)
    assert forwarded > 0
    # the supervision timer (10 a second), the stats tick, and the stats request itself;
    # a turn every 10 ms would be 100 a second and more
    assert turns < 40, (turns, b["chain"])


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or not shutil.which("taskset"),
                    reason="sets a CPU mask with taskset")
def test_the_slow_path_stays_within_the_cpus_run_was_given(uniq, pipeline_factory):
    """`taskset -c N valepipe run --cpu N`: the slow path goes where it may, N here (before,
    it was put on every CPU, then on the others: outside the mask)."""
    cpu = min(os.sched_getaffinity(0))
    pipe = pipeline_factory(cfg(uniq), args=("--cpu", str(cpu)), prefix=("taskset", "-c", str(cpu)))
    st = pipe.stats()
    assert os.sched_getaffinity(st["upcall"]["slowpath_pid"]) == {cpu}
    assert gen(uniq, "--count", "10")["rx"]["received"] == 10           # and it answers
    # a --cpu outside the mask is refused, not escaped to
    other = max(os.sched_getaffinity(0))
    if other != cpu:
        r = subprocess.run(["taskset", "-c", str(cpu), sys.executable, "-m", "pipeline.cli", "run", pipe.cfg,
                            "--cpu", str(other)], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and f"--cpu must be one of the CPUs this process may use, {cpu} here" in r.stderr, \
            r.stderr


@pytest.mark.parametrize("stage", ["PythonExecute", "SlowExecute"])
def test_a_chain_run_from_python_answers_under_a_stream(uniq, pipeline_factory, stage):
    """A chain with a stage in Python returns to Python every few batches: its requests and
    answers are looked at then too, not only when the stream pauses for 200 us (which a
    frame every 50 us never does); and every millisecond while a slow stage makes those
    batches long (3 ms each: 32 of them were 100 ms)."""
    stages = ["receive", "extract", "lookup", f"tests.chain_stages:{stage}", "transmit"]
    pipe = pipeline_factory(cfg(uniq, stages))
    gen(uniq, "--count", "1")                      # the flow is set up
    with GenRunning(uniq, "--duration", "6", "--rate", "20000") as g:
        assert wait_for(lambda: pipe.stats()["hits"] > 0, 30)
        took = []
        for _ in range(11):
            time.sleep(0.1)                        # one request at a time, none left connected
            t0 = time.monotonic()
            pipe.stats()
            took.append(time.monotonic() - t0)
        r = g.result()
    assert r["rx"]["received"] + sum(pipe.stats()["drops"].values()) == r["sent"], r
    # milliseconds each (answers that waited for a pause took 30-650 ms)
    assert sorted(took)[len(took) // 2] < 0.025, took
