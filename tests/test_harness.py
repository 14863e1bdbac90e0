"""The test harness itself: a pipeline that fails to come up in time is stopped, with
every process it started, before the error reaches the test (a leaked one kept its port
names and corrupted the next test)."""
import glob
import os
import signal

import pytest

from ring.region import desc_path
from tests.conftest import wait_for
from tests.test_e2e import cfg


def _marked(mark):
    """Processes whose environment carries `mark` (all a test started inherit it)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if mark.encode() in f.read().split(b"\0"):
                    out.append(int(pid))
        except OSError:
            pass
    return out


def test_a_pipeline_that_times_out_at_start_is_stopped(uniq, pipeline_factory, monkeypatch):
    mark = f"VALEPIPE_TEST_MARK={uniq}"
    monkeypatch.setenv("VALEPIPE_TEST_MARK", uniq)
    try:
        with pytest.raises(RuntimeError, match="did not come up"):
            pipeline_factory(cfg(uniq, ["in_port=1,actions=output:2"], ports=("a", "b")), ready_timeout=0.01)
        # supervisor, worker and slow path: all gone, and nothing of theirs left behind
        assert wait_for(lambda: not _marked(mark), timeout=20), _marked(mark)
        assert not glob.glob(desc_path(uniq) + "*")
    finally:
        for pid in _marked(mark):                      # only what this test started
            os.kill(pid, signal.SIGKILL)
