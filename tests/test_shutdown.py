"""SIGTERM ends a pipeline cleanly: its shm regions, sockets, run directory, TAP devices,
XDP programs and slow path are gone; after a kill -9, a restart replaces what the dead run
left behind and comes up as usual."""
import glob
import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import ROOT, wait_for
from tests.netlab import VETH_LAB, Lab
from tests.test_e2e import frame, peers


def _start(processes, cfg_path):
    return processes([sys.executable, "-m", "pipeline.cli", "run", cfg_path, "-q"],
                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _up(run_dir, proc):
    from pipeline import control
    return control.wait_ready(os.path.join(run_dir, "worker.ctl"), proc, timeout=20)


@pytest.mark.skipif(os.geteuid() != 0, reason="veth and TAP need root")
def test_sigterm_cleans_up_and_restart_after_kill(uniq, tmp_path, processes):
    lab = Lab(str(tmp_path), VETH_LAB)
    try:
        run = tmp_path / "run"
        tap = "vt" + uniq[-6:]
        cfg = tmp_path / "p.toml"
        cfg.write_text(f'[pipeline]\nname = "{uniq}"\nrun_dir = "{run}"\n'
                       f'[[port]]\nuri = "shm:{uniq}a"\n[[port]]\nuri = "shm:{uniq}b"\n'
                       f'[[port]]\nuri = "afxdp:{lab.name("a1")}@netns={lab.name("vS")}"\n'
                       f'[[port]]\nuri = "tap:{tap}"\n'
                       '[slowpath]\nflows = ["in_port=1,actions=output:2"]\n')
        # 1. a run killed outright leaves its regions and sockets behind ...
        p = _start(processes, str(cfg))
        st = _up(str(run), p)
        os.killpg(p.pid, signal.SIGKILL)                   # supervisor and worker at once
        p.wait()
        assert glob.glob(f"/dev/shm/valepipe.{uniq}*") and os.path.exists(run / "worker.ctl")
        assert wait_for(lambda: not os.path.exists(f"/proc/{st['upcall']['slowpath_pid']}/stat") or
                        open(f"/proc/{st['upcall']['slowpath_pid']}/stat").read().split()[2] == "Z", timeout=5)
        # ... which the next run replaces, and it forwards
        p = _start(processes, str(cfg))
        _up(str(run), p)
        with peers(uniq, "ab") as ps:
            ps["a"].send_all([frame(1, i) for i in range(10)])
            assert wait_for(lambda: ps["b"].drain() >= 10)
        assert lab.xdp_attached("vS", "a1") and os.path.exists(f"/sys/class/net/{tap}")
        # the same pipeline twice: the second says so and touches nothing of the first
        r = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(cfg), "-q", "--duration", "1"],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "already running" in r.stderr and "Traceback" not in r.stderr
        assert os.path.exists(run / "worker.ctl") and lab.xdp_attached("vS", "a1")
        # 2. SIGTERM: everything it made is gone
        p.send_signal(signal.SIGTERM)
        assert p.wait(15) == 0, p.stderr.read()
        assert not glob.glob(f"/dev/shm/valepipe.{uniq}*")
        assert not run.exists()
        assert not lab.xdp_attached("vS", "a1")
        assert not os.path.exists(f"/sys/class/net/{tap}")
    finally:
        lab.down()


def test_kill_of_the_supervisor_leaves_no_regions(uniq, pipeline_factory):
    """kill -9 of `valepipe run` (the supervisor, owner of the shm: regions): its worker,
    stopped by its death signal, removes what the dead supervisor published, and the run
    directory; nothing waits for a next run to clear it."""
    from tests.test_e2e import cfg
    from tests.test_run_dir import _gone
    pipe = pipeline_factory(cfg(uniq, ["in_port=1,actions=output:2"], ports=("a", "b")))
    worker = pipe.stats()["pid"]
    assert glob.glob(f"/dev/shm/valepipe*.{uniq}a*")
    pipe.proc.kill()
    pipe.proc.wait()
    assert wait_for(lambda: _gone(worker), timeout=30)
    assert wait_for(lambda: not glob.glob(f"/dev/shm/valepipe*.{uniq}*"), timeout=10), glob.glob(f"/dev/shm/*{uniq}*")
    assert not os.path.exists(pipe.ctl)
