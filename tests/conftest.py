"""Shared fixtures: unique names for shm regions, a running pipeline in its own process,
and cleanup of exactly what a test created."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from pipeline import control

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def uniq():
    """A prefix for shm names unique to this test; leftover regions are removed after."""
    from ring.region import desc_path
    tag = "t" + uuid.uuid4().hex[:10]
    yield tag
    prefix = os.path.basename(desc_path(tag))          # this user's descriptor names
    for f in os.listdir("/dev/shm"):
        if f.startswith(prefix):
            os.unlink(os.path.join("/dev/shm", f))


class Pipeline:
    def __init__(self, cfg_text, tmp):
        self.dir = tmp
        self.cfg = os.path.join(tmp, "p.toml")
        with open(self.cfg, "w") as f:
            f.write(cfg_text)
        self.ctl = os.path.join(tmp, "run", "worker.ctl")
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", self.cfg, "--quiet",
                                      "--stats-json", os.path.join(tmp, "final.json")],
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)     # killpg() ends supervisor, worker, slow path
        control.wait_ready(self.ctl, self.proc, timeout=20)

    def stats(self):
        return control.request(self.ctl, "stats")

    def cli(self, *args):
        """`valepipe ARGS` against this pipeline (its run directory); returns stdout."""
        r = subprocess.run([sys.executable, "-m", "pipeline.cli", *args, "--run-dir", os.path.join(self.dir, "run")],
                           cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return r.stdout

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        path = os.path.join(self.dir, "final.json")
        return json.load(open(path)) if os.path.exists(path) else None


@pytest.fixture
def pipeline_factory():
    made = []

    def make(cfg_text):
        tmp = tempfile.mkdtemp(prefix="valepipe-test-")
        cfg_text = cfg_text.replace("@RUN@", os.path.join(tmp, "run"))
        p = Pipeline(cfg_text, tmp)
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()
        shutil.rmtree(p.dir, ignore_errors=True)


def wait_for(pred, timeout=10.0, step=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


@pytest.fixture
def lab(tmp_path):
    """lab(TEXT) brings a tests.netlab topology up; each is taken down after the test."""
    from tests.netlab import Lab
    labs = []

    def make(text):
        labs.append(Lab(str(tmp_path), text))
        return labs[-1]
    yield make
    for lab_ in labs:
        lab_.down()
