"""The run directory against other users and against the pipeline's own past: a directory
another user prepared is refused (by `run` and by every CLI command, which would otherwise
talk to that user's sockets), a user's pipeline lives in $XDG_RUNTIME_DIR or a /tmp
directory of its own, files are never written through a planted symlink, names cannot
leave the run directory's parent, a slow path that outlived its worker removes none of
its successor's sockets, and a `pipeline/` package in the working directory is not what
runs as its slow path or metrics endpoint."""
import json
import os
import signal
import subprocess
import sys

import pytest

from pipeline import control
from ring.region import desc_path
from tests.conftest import ROOT, wait_for
from tests.test_e2e import cfg, frame, peers
from tests.test_worker_restart import _restarted

# an attacker's stand-in for a pipeline: answers every request on worker.ctl and
# slowpath.ctl with success, and notes each connection in a log the test reads
FAKE_PIPELINE = r'''
import os, select, socket, sys, msgpack
d = sys.argv[1]
socks = []
for n in ("worker.ctl", "slowpath.ctl"):
    s = socket.socket(socket.AF_UNIX)
    s.bind(os.path.join(d, n))
    os.chmod(os.path.join(d, n), 0o777)
    s.listen(8)
    socks.append(s)
log = open(os.path.join(d, "connections.log"), "a")
print("listening", flush=True)
while True:
    for s in select.select(socks, [], [])[0]:
        c, _ = s.accept()
        log.write("connected\n")
        log.flush()
        c.sendall(msgpack.packb({"ok": True, "result": {"pid": 1, "attacker": True}}))
        c.close()
'''


def _pipeline_cfg(user, name, uniq, run_dir=None):
    """A two-port shm: config readable by `user`, in a directory of that user's."""
    d = user.mkdtemp()
    path = os.path.join(d, "p.toml")
    text = cfg(uniq, ["in_port=1,actions=output:2"], ports=("a", "b")).replace(f'name = "{uniq}"', f'name = "{name}"')
    text = text.replace('run_dir = "@RUN@"\n', f'run_dir = "{run_dir}"\n' if run_dir else "")
    with open(path, "w") as f:
        f.write(text)
    os.chown(path, user.uid, user.uid)
    return path


def _one_line_refusal(r):
    lines = r.stderr.strip().splitlines()
    return r.returncode != 0 and len(lines) == 1 and "Traceback" not in r.stderr


def _owned_by(uid, top):
    return [os.path.join(dp, n) for dp, dns, fns in os.walk(top) for n in dns + fns
            if os.lstat(os.path.join(dp, n)).st_uid == uid]


def test_a_run_directory_prepared_by_another_user_is_refused(other_users, uniq):
    attacker, victim = other_users(2)
    name = "sw" + uniq[-6:]
    # the attacker prepares the victim's default run directory, world-writable, with a
    # listening "pipeline" in it
    base = f"/tmp/valepipe-{victim.uid}"
    r = attacker.run("-c", f"import os; os.umask(0); os.mkdir({base!r}, 0o777); os.mkdir({base + '/' + name!r}, 0o777)")
    assert r.returncode == 0, r.stderr
    fake = attacker.start("-c", FAKE_PIPELINE, f"{base}/{name}")
    assert fake.stdout.readline().strip() == "listening"
    log = f"{base}/{name}/connections.log"
    # the victim's commands refuse the directory instead of talking to the attacker
    for args in (("stats", "--json"), ("add-flow", "in_port=1,actions=drop"), ("dump-flows",), ("ports",)):
        r = victim.cli(*args, "--name", name)
        assert _one_line_refusal(r), (args, r.returncode, r.stdout, r.stderr)
        assert base in r.stderr and f"uid {attacker.uid}" in r.stderr, r.stderr
        assert "attacker" not in r.stdout
    assert open(log).read() == ""
    # and so does `run`, leaving nothing of the victim's there
    conf = _pipeline_cfg(victim, name, uniq)
    r = victim.cli("run", conf, "-q", "--duration", "2")
    assert _one_line_refusal(r) and base in r.stderr, r.stderr
    assert _owned_by(victim.uid, base) == [] and not os.path.exists(desc_path(f"{uniq}a", victim.uid))
    # a run_dir given explicitly inside a directory others may write is refused too
    shared = attacker.mkdtemp(mode=0o777)
    conf = _pipeline_cfg(victim, name, uniq, run_dir=f"{shared}/run")
    r = victim.cli("run", conf, "-q", "--duration", "2")
    assert _one_line_refusal(r) and shared in r.stderr and "other users" in r.stderr, r.stderr
    assert not os.path.exists(f"{shared}/run")
    assert open(log).read() == ""


def test_a_users_pipeline_lives_in_xdg_runtime_dir_or_its_own_tmp_dir(other_users, uniq):
    user, = other_users(1)
    name = "sw" + uniq[-6:]
    xdg = user.mkdtemp()
    conf = _pipeline_cfg(user, name, uniq)
    for env in ({"XDG_RUNTIME_DIR": xdg}, {}):
        run_dir = f"{xdg}/valepipe/{name}" if env else f"/tmp/valepipe-{user.uid}/{name}"
        p = user.start("-m", "pipeline.cli", "run", conf, "-q", env=env, stdout=subprocess.DEVNULL)
        control.wait_ready(f"{run_dir}/worker.ctl", p, timeout=30)
        st = os.lstat(run_dir)
        assert st.st_uid == user.uid and st.st_mode & 0o777 == 0o700
        if not env:
            st = os.lstat(os.path.dirname(run_dir))
            assert st.st_uid == user.uid and st.st_mode & 0o777 == 0o700
        # the user's CLI finds it without being told where
        r = user.cli("stats", "--json", "--name", name, **env)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["upcall"]["channel_up"]
        r = user.cli("add-flow", "priority=9,in_port=2,actions=output:1", "--name", name, **env)
        assert r.returncode == 0, r.stderr
        # and forwards what the user sends (the user's own generator and sink)
        r = user.cli("gen", f"shm:{uniq}a", "--count", "10", "--rx", f"shm:{uniq}b", "--json", **env)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["rx"]["received"] == 10
        p.send_signal(signal.SIGTERM)
        assert p.wait(20) == 0, p.stderr.read()
        assert not os.path.exists(run_dir)


def test_files_are_not_written_through_planted_symlinks(uniq, pipeline_factory, tmp_path):
    pipe = pipeline_factory(cfg(uniq, ["in_port=1,actions=output:2"], ports=("a", "b")))
    run = pipe.run_dir
    precious = tmp_path / "precious"
    precious.write_text("keep me\n")
    for f in ("rules.flows.tmp", "rules.state.tmp"):
        os.symlink(precious, os.path.join(run, f))
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "add-flow", "priority=7,in_port=2,actions=output:1",
                        "--name", uniq, "--run-dir", run], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert precious.read_text() == "keep me\n"
    assert not os.path.islink(os.path.join(run, "rules.flows"))
    with open(os.path.join(run, "rules.flows")) as f:
        assert "priority=7,in_port=2,actions=output:1" in f.read().splitlines()


BAD_NAMES = ["..", ".", "ｓｗ", "sw١", "a/b", "a\nb", "sw\n", "", "x" * 65, "a b", "é"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_bad_pipeline_names_are_refused(name, tmp_path):
    from pipeline import config
    with pytest.raises(config.ConfigError) as e:
        config.parse(f'[pipeline]\nname = {json.dumps(name)}\n[[port]]\nuri = "shm:x"\n', "p.toml")
    assert "name" in str(e.value) and "[A-Za-z0-9_.-]" in str(e.value)


@pytest.mark.parametrize("cmd", [("stats",), ("ports",), ("dump-flows",), ("add-flow", "actions=drop"),
                                 ("dump-megaflows",), ("fdb-show",)])
def test_bad_names_are_refused_by_every_command(cmd):
    for name in ("..", ".", "ｓｗ", "a/b"):
        r = subprocess.run([sys.executable, "-m", "pipeline.cli", *cmd, "--name", name], cwd=ROOT,
                           capture_output=True, text=True, timeout=30)
        assert _one_line_refusal(r) and "[A-Za-z0-9_.-]" in r.stderr, (cmd, name, r.stderr)


def test_a_dot_dot_name_never_reaches_the_run_directory(other_users, uniq):
    user, = other_users(1)
    conf = _pipeline_cfg(user, "..", uniq)
    r = user.cli("run", conf, "-q", "--duration", "2")
    assert _one_line_refusal(r) and "name" in r.stderr and "[A-Za-z0-9_.-]" in r.stderr, r.stderr
    assert not os.path.exists(desc_path(f"{uniq}a", user.uid))


def _gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_an_old_slow_path_leaves_its_successors_sockets_alone(uniq, pipeline_factory):
    pipe = pipeline_factory(cfg(uniq, ["in_port=1,actions=output:2"], ports=("a", "b", "c")))
    run = pipe.run_dir
    st = pipe.stats()
    old_slow = st["upcall"]["slowpath_pid"]
    os.kill(old_slow, signal.SIGSTOP)
    try:
        os.kill(st["pid"], signal.SIGKILL)                 # the worker dies; its slow path is stopped
        assert wait_for(lambda: _restarted(pipe, st["pid"]), timeout=30, step=0.1)
        mine = {f: os.lstat(os.path.join(run, f)).st_ino for f in ("slowpath.sock", "slowpath.ctl", "worker.ctl")}
    finally:
        os.kill(old_slow, signal.SIGCONT)                  # resumed: it ends (its worker is gone)
    assert wait_for(lambda: _gone(old_slow), timeout=20)
    assert {f: os.lstat(os.path.join(run, f)).st_ino for f in mine} == mine
    # the new slow path still answers: rules change, new flows are set up
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "add-flow", "priority=40000,in_port=1,actions=output:3",
                        "--name", uniq, "--run-dir", run], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    with peers(uniq) as ps:
        ps["a"].send_all([frame(7, i) for i in range(20)], others=(ps["c"],))
        assert wait_for(lambda: ps["c"].drain() >= 20)
    assert pipe.stats()["upcall"]["channel_up"]


def test_a_stopped_pipeline_keeps_its_run_directory(uniq, pipeline_factory):
    """A pipeline whose worker is stopped (SIGSTOP) still holds its run directory: a second
    `run` of the same pipeline is refused in one line instead of clearing the first one's
    sockets and regions, and the first forwards again once resumed."""
    pipe = pipeline_factory(cfg(uniq, ["in_port=1,actions=output:2"], ports=("a", "b")))
    worker = pipe.stats()["pid"]
    os.kill(worker, signal.SIGSTOP)
    try:
        r = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", pipe.cfg, "--quiet"], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    finally:
        os.kill(worker, signal.SIGCONT)
    assert _one_line_refusal(r), (r.returncode, r.stderr)
    assert "does not answer" in r.stderr
    assert os.path.exists(pipe.ctl) and pipe.stats()["pid"] == worker
    with peers(uniq, "ab") as ps:
        ps["a"].send_all([frame(7, i) for i in range(20)], others=(ps["b"],))
        assert wait_for(lambda: ps["b"].drain() >= 20)


def test_a_pipeline_package_in_the_working_directory_does_not_run(uniq, tmp_path):
    """`python -m pipeline.slowpath` would import a `pipeline/` in its working directory
    first: root running `valepipe run` in /tmp would run whatever anyone left there."""
    planted = tmp_path / "cwd"
    marker = tmp_path / "ran"
    for pkg in ("pipeline", "pipeline/slowpath", "pipeline/metrics"):
        (planted / pkg).mkdir(parents=True)
        (planted / pkg / "__init__.py").write_text("")
    evil = f"open({str(marker)!r}, 'a').write('ran\\n')\n"
    (planted / "pipeline" / "slowpath" / "__main__.py").write_text(evil)
    (planted / "pipeline" / "metrics" / "__init__.py").write_text(evil)
    conf = tmp_path / "p.toml"
    conf.write_text(cfg(uniq, ["in_port=1,actions=output:2"], ports=("a", "b")).replace("@RUN@", str(tmp_path / "run"))
                    + '\n[metrics]\nlisten = "127.0.0.1:0"\n')
    valepipe = os.path.join(os.path.dirname(sys.executable), "valepipe")      # the installed entry point
    p = subprocess.Popen([valepipe, "run", str(conf), "--quiet"], cwd=planted, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    ctl = str(tmp_path / "run" / "worker.ctl")
    try:
        control.wait_ready(ctl, p, timeout=30)
        assert wait_for(lambda: control.request(ctl, "stats")["upcall"]["channel_up"], 20)
        g = subprocess.run([sys.executable, "-m", "pipeline.cli", "gen", f"shm:{uniq}a", "--rx", f"shm:{uniq}b",
                            "--count", "10", "--json", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert json.loads(g.stdout)["rx"]["received"] == 10, g.stderr     # the real slow path set it up
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=30)
    assert not marker.exists(), marker.read_text()
