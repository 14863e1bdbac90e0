"""Shared fixtures: unique names for shm regions, a running pipeline in its own process,
processes that are stopped whatever happens, an unprivileged second user, and cleanup of
exactly what a test created."""
import ctypes
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid

import pytest

from pipeline import control

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


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


def _die_with_parent():
    # a test process killed outright (a timeout of test_asan's inner pytest, kill -9 of
    # pytest) takes what it started along: SIGTERM lets a pipeline clean up after itself
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start(cmd, **kw):
    """Popen in a session (process group) of its own, so stop() reaches everything it
    starts (a pipeline's supervisor, worker and slow path), and dying with this process."""
    kw.setdefault("cwd", ROOT)
    return subprocess.Popen(cmd, start_new_session=True, preexec_fn=_die_with_parent, **kw)


class GenRunning:
    """`valepipe gen shm:TAGa --rx shm:TAGb --json -q ARGS` going on in the background while
    the `with` block does its part (stats, signals); result() waits for its JSON. Killed if
    the block fails."""

    def __init__(self, tag, *args):
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "gen", f"shm:{tag}a", "--rx",
                                      f"shm:{tag}b", "--json", "-q", *args], cwd=ROOT, stdout=subprocess.PIPE,
                                     text=True)

    def result(self, timeout=120):
        out, _ = self.proc.communicate(timeout=timeout)
        return json.loads(out)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def stop(proc, timeout=15):
    """SIGTERM to the process group of a start()ed process, then SIGKILL to whatever of the
    group is left; returns the process's exit status."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)      # children that outlived their parent
    except ProcessLookupError:
        pass
    return proc.wait()


@pytest.fixture
def processes():
    """started = processes(cmd, ...): start()ed, and stop()ped at the end of the test."""
    made = []

    def make(cmd, **kw):
        made.append(start(cmd, **kw))
        return made[-1]
    yield make
    for p in made:
        stop(p)


class Pipeline:
    def __init__(self, cfg_text, tmp, run_dir, ready_timeout=20, root=ROOT, args=(), prefix=()):
        self.dir, self.run_dir = tmp, run_dir
        self.cfg = os.path.join(tmp, "p.toml")
        with open(self.cfg, "w") as f:
            f.write(cfg_text)
        self.ctl = os.path.join(run_dir, "worker.ctl")
        self.proc = start([*prefix, sys.executable, "-m", "pipeline.cli", "run", self.cfg, "--quiet",
                           "--stats-json", os.path.join(tmp, "final.json"), *args],
                          cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            control.wait_ready(self.ctl, self.proc, timeout=ready_timeout)
        except BaseException:
            self.stop()
            raise

    def stats(self):
        return control.request(self.ctl, "stats")

    def cli(self, *args):
        """`valepipe ARGS` against this pipeline (its run directory); returns stdout."""
        r = subprocess.run([sys.executable, "-m", "pipeline.cli", *args, "--run-dir", os.path.join(self.dir, "run")],
                           cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return r.stdout

    def stop(self):
        stop(self.proc)
        path = os.path.join(self.dir, "final.json")
        return json.load(open(path)) if os.path.exists(path) else None


@pytest.fixture
def pipeline_factory():
    made = []

    def make(cfg_text, ready_timeout=20, run_dir=None, root=ROOT, args=(), prefix=()):
        """run_dir: what "@RUN@" in cfg_text stands for (default: "run" in a new temporary
        directory, removed after the test); root: the checkout to run it from; args: more
        of `valepipe run`'s options; prefix: a command it runs under (taskset ...)."""
        tmp = tempfile.mkdtemp(prefix="valepipe-test-")
        run_dir = run_dir or os.path.join(tmp, "run")
        cfg_text = cfg_text.replace("@RUN@", run_dir)
        try:
            p = Pipeline(cfg_text, tmp, run_dir, ready_timeout, root, args, prefix)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()
        shutil.rmtree(p.dir, ignore_errors=True)


def copy_checkout(dest, module=True):
    """A copy of this checkout's sources at `dest` (a new directory), with its built native
    module unless module=False; no venv, git, caches or build products."""
    skip = [".venv", ".git", "build", "__pycache__", ".hypothesis", ".pytest_cache", "perf", "*.o", "_native.c",
            "*.egg-info", ".native-stamp"] + ([] if module else ["*.so"])
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(*skip))
    return dest


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


class User:
    """An unprivileged uid with no account (setpriv), running this tree's Python:
    `user.run(*python_args)`, `user.cli("stats", ...)`, `user.start(...)` (stopped after the
    test), `user.py(code)`; `user.home` is a 0700 directory of its own."""

    def __init__(self, uid, python, env, processes):
        self.uid, self.python, self._processes = uid, python, processes
        self.made = []                         # paths to remove after the test
        self.procs = []
        self.home = self.mkdtemp()
        self.env = dict(env, HOME=self.home)

    def argv(self, *args):
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups", "--inh-caps=-all", "--",
                self.python, *args]

    def _env(self, extra):
        return {**self.env, **{k: v for k, v in extra.items() if v is not None}}

    def run(self, *args, timeout=60, **env):
        """This tree's Python with `args`, as this user (env: extra variables)."""
        return subprocess.run(self.argv(*args), cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env=self._env(env))

    def cli(self, *args, timeout=60, **env):
        return self.run("-m", "pipeline.cli", *args, timeout=timeout, **env)

    def start(self, *args, env=None, **kw):
        """A process of this user (pipes for stdin, stdout and stderr unless given),
        stopped with its process group after the test."""
        for k in ("stdin", "stdout", "stderr"):
            kw.setdefault(k, subprocess.PIPE)
        kw.setdefault("text", True)
        self.procs.append(self._processes(self.argv(*args), env=self._env(env or {}), **kw))
        return self.procs[-1]

    def py(self, code):
        """A Python snippet as this user, once it printed "ready" (set up)."""
        p = self.start("-c", code)
        line = p.stdout.readline().strip()
        assert line == "ready", line + p.stderr.read()
        return p

    def mkdtemp(self, mode=0o700):
        """A fresh directory under /tmp owned by this user (removed after the test)."""
        d = tempfile.mkdtemp(prefix=f"valepipe-u{self.uid}-")
        os.chown(d, self.uid, self.uid)
        os.chmod(d, mode)
        self.made.append(d)
        return d


_PYTHON_FOR_OTHERS = []


def _python_for(uid):
    """A Python other users can run with this tree importable: ours, or the system's of
    the same version with our site-packages on PYTHONPATH (ours may sit under /root);
    (None, None) if there is none. Probed once."""
    if _PYTHON_FOR_OTHERS:
        return _PYTHON_FOR_OTHERS[0]
    base = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
    site = sysconfig.get_paths()["purelib"]
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    found = None, None
    for py, env in ((sys.executable, base),
                    (shutil.which(ver, path="/usr/bin:/usr/local/bin") or "", dict(base, PYTHONPATH=f"{ROOT}:{site}"))):
        if not py:
            continue
        # it must also start itself again: the worker starts its slow path that way
        r = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", py, "-c",
                            "import subprocess, sys; import pipeline._native, msgpack, typer; "
                            "subprocess.run([sys.executable, '-c', 'import pipeline._native'], check=True)"],
                           cwd=ROOT, env=env, capture_output=True, timeout=60)
        if r.returncode == 0:
            found = py, env
            break
    _PYTHON_FOR_OTHERS.append(found)
    return found


def _free_uid(rng, taken):
    """A uid no account has, no process runs as, and not in `taken`."""
    taken = taken | {int(line.split(":")[2]) for line in open("/etc/passwd") if line.count(":") >= 3}
    for _ in range(100):
        uid = rng.randrange(61000, 64000)
        if uid not in taken and not _pids_of(uid):
            return uid
    raise RuntimeError("no free uid")


def _pids_of(uid):
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    out.append(int(pid))
            except FileNotFoundError:
                pass
    return out


@pytest.fixture
def other_users(processes):
    """other_users(n) -> n User objects with uids of their own (root only; setpriv); their
    processes, files under /tmp and in /dev/shm are removed after the test."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv (util-linux) to act as other users")
    users = []

    def make(n):
        rng = random.Random()
        for _ in range(n):
            uid = _free_uid(rng, {u.uid for u in users})
            py, env = _python_for(uid)
            if py is None:
                pytest.skip(f"no Python that an unprivileged user may run with {ROOT} importable")
            users.append(User(uid, py, env, processes))
        return users[-n:]
    yield make
    for u in users:
        for p in u.procs:
            stop(p)
        for pid in _pids_of(u.uid):            # a uid made up for this test: all its processes are ours
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for d in u.made + [f"/tmp/valepipe-{u.uid}"]:
            shutil.rmtree(d, ignore_errors=True)
        for f in os.listdir("/dev/shm"):
            try:
                if os.lstat(os.path.join("/dev/shm", f)).st_uid == u.uid:
                    os.unlink(os.path.join("/dev/shm", f))
            except FileNotFoundError:
                pass
