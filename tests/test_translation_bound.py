"""A rule set whose translation would take 2^40 steps (40 tables, each resubmitting twice to
the next): translation stops after 4,096 resubmits, as Open vSwitch's does, and the packet
is dropped and counted; the control socket answers throughout, so the rules can be deleted;
a slow path restarted with them loaded does not hang. A slow path that stops answering
(SIGSTOP) is killed and replaced by the worker: it hears from its slow path every second."""
import os
import signal
import subprocess
import sys

from pipeline import control
from tests.conftest import ROOT, wait_for
from tests.test_e2e import cfg, frame, peers

EXPONENTIAL = [f"table={k},priority=1,actions=resubmit(,{k + 1}),resubmit(,{k + 1})" for k in range(40)] + \
              ["table=40,priority=1,actions=output:2"]


def _cli(pipe, uniq, *args):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args, "--name", uniq,
                           "--run-dir", os.path.join(pipe.dir, "run")], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_exponential_translation_is_bounded(uniq, pipeline_factory, tmp_path):
    pipe = pipeline_factory(cfg(uniq, ["priority=10,in_port=1,actions=output:2"], ports=("a", "b")))
    slowctl = os.path.join(pipe.dir, "run", "slowpath.ctl")
    rules = tmp_path / "exp.flows"
    rules.write_text("\n".join(["table=0,priority=100,udp,actions=resubmit(,1),resubmit(,1)"] + EXPONENTIAL[1:]) + "\n")
    r = _cli(pipe, uniq, "add-flows", str(rules))
    assert r.returncode == 0 and "added 41 rule(s)" in r.stdout, r.stderr
    with peers(uniq, "ab") as ps:
        a, b = ps["a"], ps["b"]
        for rnd in range(2):
            # new flows: each a translation that would never end; dropped, counted, on port 1
            before = pipe.stats()["drops"]["action_drop"]
            a.send_all([frame(100 * rnd + i, i) for i in range(20)])
            assert wait_for(lambda: pipe.stats()["drops"]["action_drop"] == before + 20, timeout=30)
            # it answers, and has counted the translations it cut short (after the restart:
            # the revalidation of the cached drop)
            assert control.request(slowctl, "stats", timeout=10)["errors"] >= 1
            assert pipe.stats()["ports"][0]["in_drops"]["action_drop"] == before + 20
            assert "over 4096 resubmit actions" in _cli(pipe, uniq, "trace", "in_port=1,udp").stdout
            assert b.drain() == 0
            if rnd == 0:
                # a slow path that starts with these rules (kept in rules.flows) does not hang
                old = pipe.stats()["upcall"]["slowpath_pid"]
                os.kill(old, signal.SIGKILL)
                assert wait_for(lambda: pipe.stats()["upcall"]["slowpath_pid"] != old and
                                pipe.stats()["upcall"]["channel_up"], timeout=30)
        # and they can be deleted: traffic takes the config's rule again
        r = _cli(pipe, uniq, "del-flows", "udp")
        assert r.returncode == 0 and "deleted 1 rule(s)" in r.stdout, r.stderr
        a.send_all([frame(300 + i, i) for i in range(20)], others=(b,))
        assert wait_for(lambda: b.drain() >= 20, timeout=20)


def test_slow_path_that_stops_answering_is_replaced(uniq, pipeline_factory):
    pipe = pipeline_factory(cfg(uniq, ["in_port=1,actions=output:2"], ports=("a", "b")))
    old = pipe.stats()["upcall"]["slowpath_pid"]
    os.kill(old, signal.SIGSTOP)
    try:
        assert wait_for(lambda: pipe.stats()["upcall"]["slowpath_pid"] != old and
                        pipe.stats()["upcall"]["channel_up"], timeout=40, step=0.2)
        assert not os.path.exists(f"/proc/{old}")         # killed (and reaped), not left stopped
        assert pipe.stats()["upcall"]["slowpath_hangs"] == 1
        with peers(uniq, "ab") as ps:                    # the new one sets up new flows
            ps["a"].send_all([frame(i, i) for i in range(10)], others=(ps["b"],))
            assert wait_for(lambda: ps["b"].drain() >= 10, timeout=20)
        assert "silent for" in _stderr_so_far(pipe)
    finally:
        try:
            os.kill(old, signal.SIGCONT)
        except ProcessLookupError:
            pass


def _stderr_so_far(pipe):
    pipe.stop()
    return pipe.proc.stderr.read()
