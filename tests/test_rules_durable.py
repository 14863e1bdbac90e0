"""Rules that survive slow-path restarts, with what they counted: a change that cannot be
made durable (the run directory's filesystem is full) fails and is undone, so what the
CLI reported is what a restarted slow path has; rule counters, durations and timeouts
carry on across restarts instead of starting again."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, wait_for
from tests.test_e2e import cfg, frame, peers


def _cli(pipe, *args):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args, "--name", "x", "--run-dir", pipe.run_dir],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)


def _rules(pipe):
    r = _cli(pipe, "dump-flows")
    assert r.returncode == 0, r.stderr
    out = {}
    for line in r.stdout.splitlines():
        m = re.search(r"duration=([\d.]+)s, table=\d+, n_packets=(\d+), n_bytes=(\d+), (.*)$", line)
        out[m.group(4)] = (float(m.group(1)), int(m.group(2)), int(m.group(3)))
    return out


def _restart_slow_path(pipe):
    st = pipe.stats()["upcall"]
    os.kill(st["slowpath_pid"], signal.SIGKILL)
    assert wait_for(lambda: _slow_back(pipe, st), timeout=20, step=0.05)


def _slow_back(pipe, before):
    st = pipe.stats()["upcall"]
    return st["slowpath_restarts"] > before["slowpath_restarts"] and st["channel_up"]


@pytest.fixture
def small_fs(tmp_path):
    """A 64 KB tmpfs (owner-only), unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "valepipe-test", str(d)], check=True)
    yield str(d)
    subprocess.run(["umount", "-l", str(d)], check=False)


def _fill(path):
    """Write a file in `path` until its filesystem refuses another byte."""
    with open(os.path.join(path, "filler"), "wb", buffering=0) as f:
        while True:
            try:
                f.write(b"\0" * 512)
            except OSError:
                break
        while True:
            try:
                f.write(b"\0")
            except OSError:
                return


def test_a_change_that_cannot_be_saved_fails_and_is_undone(uniq, pipeline_factory, small_fs):
    pipe = pipeline_factory(cfg(uniq, ["in_port=1,actions=output:2", "priority=10,in_port=2,actions=output:1"]),
                            run_dir=small_fs)
    try:
        before = set(_rules(pipe))
        more = os.path.join(pipe.dir, "more.flows")
        with open(more, "w") as f:
            f.write("priority=3,in_port=3,actions=output:1\npriority=10,in_port=2,actions=output:3\n")
        _fill(small_fs)
        for args in (("add-flow", "priority=40000,in_port=1,actions=output:3"),
                     ("add-flow", "in_port=1,actions=output:3"),          # replaces a rule
                     ("add-flows", more), ("del-flows", "in_port=2"), ("mod-flows", "in_port=1,actions=output:3")):
            r = _cli(pipe, *args)
            assert r.returncode != 0, (args, r.stdout)
            err = r.stderr.strip().splitlines()
            assert len(err) == 1 and "No space left on device" in err[0] and "not made" in err[0], r.stderr
            assert set(_rules(pipe)) == before, args
        # the tables did not change: traffic still follows the original rules
        with peers(uniq) as ps:
            ps["a"].send_all([frame(1, i) for i in range(20)], others=(ps["b"], ps["c"]))
            assert wait_for(lambda: ps["b"].drain() >= 20)
            assert ps["c"].drain() == 0
        assert pipe.stats()["upcall"]["channel_up"]
        _restart_slow_path(pipe)
        assert set(_rules(pipe)) == before
        # room again: the same change is made, and kept
        os.unlink(os.path.join(small_fs, "filler"))
        r = _cli(pipe, "add-flow", "priority=40000,in_port=1,actions=output:3")
        assert r.returncode == 0, r.stderr
        _restart_slow_path(pipe)
        assert set(_rules(pipe)) == before | {"priority=40000,in_port=1 actions=output:3"}
    finally:
        pipe.stop()                                    # before the tmpfs goes


def test_counters_durations_and_timeouts_survive_restarts(uniq, pipeline_factory):
    pipe = pipeline_factory(cfg(uniq, ["in_port=1,actions=output:2"]).replace(
        "[pipeline]\n", "[pipeline]\nrevalidate_interval = 0\n"))
    r = _cli(pipe, "add-flow", "priority=40000,in_port=1,udp,actions=output:3")
    assert r.returncode == 0, r.stderr
    added = time.monotonic()
    with peers(uniq) as ps:
        ps["a"].send_all([frame(i % 4, i) for i in range(40)], others=(ps["c"],))
        assert wait_for(lambda: ps["c"].drain() >= 40)
    counted = _rules(pipe)["priority=40000,udp,in_port=1 actions=output:3"]
    assert counted[1:] == (40, 40 * len(frame(0, 0)))
    _restart_slow_path(pipe)
    asked = time.monotonic()
    duration, n_packets, n_bytes = _rules(pipe)["priority=40000,udp,in_port=1 actions=output:3"]
    assert (n_packets, n_bytes) == counted[1:]
    assert duration >= asked - added - 0.001          # counted from when it was added, not restarted
    # a hard_timeout counts from the rule's addition: restarts that come more often than
    # the timeout do not keep it alive
    r = _cli(pipe, "add-flow", "hard_timeout=3,priority=40001,in_port=1,udp,actions=drop")
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 60
    while any("hard_timeout=3" in k for k in _rules(pipe)):
        assert time.monotonic() < deadline, "the hard_timeout rule outlived its time across restarts"
        _restart_slow_path(pipe)
        time.sleep(1.0)
