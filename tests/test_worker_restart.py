"""A worker killed by a crash is restarted by its supervisor (`valepipe run`) with its
ports and the rules the slow path had, including those added at run time; its peers
attach again and traffic flows. A stop signal is not a crash: nothing restarts then."""
import os
import signal
import subprocess
import sys

from tests.conftest import ROOT, wait_for
from tests.test_e2e import cfg, frame, peers


def test_crashed_worker_is_restarted(uniq, pipeline_factory):
    pipe = pipeline_factory(cfg(uniq, ["in_port=1,actions=output:2"], ports=("a", "b", "c")))
    run = os.path.join(pipe.dir, "run")
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "add-flow", "priority=40000,in_port=1,actions=output:3",
                        "--name", uniq, "--run-dir", run], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    st = pipe.stats()
    assert st["worker_restarts"] == 0
    os.kill(st["pid"], signal.SIGKILL)
    assert wait_for(lambda: _restarted(pipe, st["pid"]), timeout=20, step=0.1)
    new = pipe.stats()
    assert new["worker_restarts"] == 1 and new["upcall"]["slowpath_pid"] != st["upcall"]["slowpath_pid"]
    # the run-time rule survived the crash: port 1 still goes to 3, not 2 as in the config
    with peers(uniq) as ps:
        ps["a"].send_all([frame(1, i) for i in range(30)], others=(ps["c"],))
        assert wait_for(lambda: ps["c"].drain() >= 30)
        assert ps["b"].drain() == 0
    pipe.proc.send_signal(signal.SIGTERM)
    assert pipe.proc.wait(15) == 0
    assert "restarting it with its ports" in pipe.proc.stderr.read()
    assert not os.path.exists(run)


def _restarted(pipe, old_pid):
    try:
        st = pipe.stats()
    except (OSError, RuntimeError):
        return False
    return st["pid"] != old_pid and st["upcall"]["channel_up"]
