"""/dev/shm is shared by every user: another (unprivileged) user squatting a pipeline's
names — a descriptor naming pid 1, a FIFO, a symbolic link, a pipeline of the same name,
an unsealed memfd shrunk under a reader — costs root's pipeline and tools nothing: the
pipeline starts, the tools attach only to root's own regions (or, with --owner, to that
user's sealed ones) and say why they refuse, at once, without hanging or a SIGBUS.

The other users are real: processes run by setpriv under uids no account uses."""
import glob
import os
import shutil
import stat
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, wait_for
from tests.test_e2e import frame, peers

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                                reason="needs root and setpriv to act as other users")


@pytest.fixture
def others(other_users):
    return other_users(2)


def _cli(*args, timeout=30):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def _one_line_error(r):
    assert r.returncode != 0 and r.returncode > 0, (r.returncode, r.stderr)     # no signal (SIGBUS)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    return r.stderr


def test_squatted_names_do_not_stop_roots_pipeline(uniq, others, pipeline_factory, tmp_path):
    alice = others[0]
    victim = tmp_path / "root-owned"
    victim.write_text("untouched\n")
    # alice squats the names root's pipeline will publish: a descriptor naming pid 1, a FIFO,
    # a link to a root-owned file; and a FIFO where root's generator will look; and the
    # names of their sockets: a listening socket of hers, a FIFO, a link
    alice.py(f"""
import os, socket, sys
os.umask(0)
with open("/dev/shm/valepipe.{uniq}a", "w") as f: f.write("valepipe-region/1 1 3 1000000\\n")
os.mkfifo("/dev/shm/valepipe.{uniq}b", 0o666)
os.symlink("{victim}", "/dev/shm/valepipe.{uniq}c")
os.mkfifo("/dev/shm/valepipe.{uniq}d", 0o666)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind("/dev/shm/valepipe.{uniq}a:sock")
s.listen(8)
os.mkfifo("/dev/shm/valepipe.{uniq}b:sock", 0o666)
os.symlink("{victim}", "/dev/shm/valepipe.{uniq}c:sock")
print("ready", flush=True)
sys.stdin.readline()
""")
    cfg = (f'[pipeline]\nname = "{uniq}"\nrun_dir = "@RUN@"\n'
           + "".join(f'[[port]]\nuri = "shm:{uniq}{p}"\n' for p in "abc")
           + '[slowpath]\nflows = ["in_port=1,actions=output:2"]\n')
    pipe = pipeline_factory(cfg)                   # starts (it did not: pid 1, or hung on the FIFO)
    for p in "abc":
        st = os.lstat(f"/dev/shm/valepipe.{uniq}{p}")
        assert st.st_uid == 0 and oct(st.st_mode & 0o777) == "0o600"
        st = os.lstat(f"/dev/shm/valepipe.{uniq}{p}:sock")
        assert stat.S_ISSOCK(st.st_mode) and st.st_uid == 0 and oct(st.st_mode & 0o777) == "0o600"
    assert victim.read_text() == "untouched\n"
    with peers(uniq, "ab") as ps:
        ps["a"].send_all([frame(1, i) for i in range(50)])
        assert wait_for(lambda: ps["b"].drain() >= 50)
    # root's generator on the FIFO: a sentence at once, not a hang
    t0 = time.monotonic()
    err = _one_line_error(_cli("gen", f"shm:{uniq}d", "--count", "10"))
    assert "FIFO" in err and str(alice.uid) in err and time.monotonic() - t0 < 20
    pipe.stop()
    assert glob.glob(f"/dev/shm/valepipe.{uniq}[abc]*") == []


def test_root_tools_attach_only_to_roots_pipelines(uniq, others, tmp_path):
    alice = others[0]
    run = os.path.join(alice.home, "run")
    cfg = os.path.join(alice.home, "p.toml")
    with open(cfg, "w") as f:
        f.write(f'[pipeline]\nname = "{uniq}"\nrun_dir = "{run}"\n[[port]]\nuri = "shm:{uniq}p"\n'
                f'[[port]]\nuri = "shm:{uniq}q"\n[slowpath]\nflows = ["in_port=1,actions=output:2"]\n')
    os.chown(cfg, alice.uid, alice.uid)
    pipe = alice.start("-m", "pipeline.cli", "run", cfg, "-q")
    assert wait_for(lambda: _published(f"{uniq}p") and os.path.exists(os.path.join(run, "worker.ctl")), 30), \
        pipe.stderr.read() if pipe.poll() is not None else "alice's pipeline did not start"
    sink = alice.start("-m", "pipeline.cli", "sink", f"shm:{uniq}q", "--count", "300", "--duration", "40", "--json")
    # alice also publishes her region under root's name for it
    roots = f"/dev/shm/valepipe.{uniq}p"
    if _published(f"{uniq}p") != roots:
        shutil.copyfile(_published(f"{uniq}p"), roots)
        os.chown(roots, alice.uid, alice.uid)
    err = _one_line_error(_cli("gen", f"shm:{uniq}p", "--count", "100"))
    assert f"uid {alice.uid}" in err and "not uid 0" in err
    # told to, root attaches to alice's pipeline: its frames reach her sink
    r = _cli("gen", f"shm:{uniq}p", "--count", "1", "--owner", str(alice.uid))
    assert r.returncode == 0, r.stderr
    time.sleep(1)                                   # the flow is set up: the rest are hits
    r = _cli("gen", f"shm:{uniq}p", "--count", "299", "--rate", "20000", "--owner", str(alice.uid))
    assert r.returncode == 0, r.stderr
    out, err = sink.communicate(timeout=60)
    assert '"received": 300' in out, (out, err)


def _published(name):
    """The descriptor file of region `name`, under whichever user's name it is."""
    found = glob.glob(f"/dev/shm/valepipe-*.{name}")
    return found[0] if found else (f"/dev/shm/valepipe.{name}" if os.path.exists(f"/dev/shm/valepipe.{name}") else None)


def test_unsealed_memfd_is_refused(uniq, others):
    alice = others[0]
    # a region of alice's without seals, published under her name and under root's
    p = alice.py(f"""
import glob, os, shutil, sys
import ring.region as R
R.SEALS = 0
reg = R.Region.create("{uniq}u", ["{uniq}u"])
if not os.path.exists("/dev/shm/valepipe.{uniq}u"):
    shutil.copyfile(glob.glob("/dev/shm/valepipe-*.{uniq}u")[0], "/dev/shm/valepipe.{uniq}u")
print("ready", flush=True)
sys.stdin.readline()
os.ftruncate(reg._fd, 4096)                   # cut short under whoever mapped it
print("shrunk", flush=True)
sys.stdin.readline()
""")
    sinks = [subprocess.Popen([sys.executable, "-m", "pipeline.cli", "sink", f"shm:{uniq}u", "--duration", "3",
                               *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for extra in ((), ("--owner", str(alice.uid)))]
    time.sleep(2)                                   # (an unchecked sink would be reading by now)
    p.stdin.write("\n")
    p.stdin.flush()
    assert p.stdout.readline().strip() == "shrunk"
    results = []
    for s in sinks:
        out, err = s.communicate(timeout=30)
        results.append(subprocess.CompletedProcess(s.args, s.returncode, out, err))
    p.stdin.write("\n")
    p.stdin.flush()
    assert f"uid {alice.uid}" in _one_line_error(results[0])
    assert "not sealed" in _one_line_error(results[1])


@pytest.mark.parametrize("suffix", ["", ":sock"], ids=["descriptor", "socket"])
def test_a_users_name_squatted_by_another_user(uniq, others, tmp_path, suffix):
    alice, bob = others
    bob.py(f"""
import os
os.mkfifo("/dev/shm/valepipe-{alice.uid}.{uniq}z{suffix}", 0o666)
print("ready", flush=True)
""")
    cfg = os.path.join(alice.home, "p.toml")
    with open(cfg, "w") as f:
        f.write(f'[pipeline]\nname = "{uniq}"\nrun_dir = "{alice.home}/run"\n[[port]]\nuri = "shm:{uniq}z"\n')
    os.chown(cfg, alice.uid, alice.uid)
    # alice may not remove bob's FIFO (sticky /dev/shm): she is told so, at once
    err = _one_line_error(alice.run("-m", "pipeline.cli", "run", cfg, "-q", "--duration", "1", timeout=30))
    assert "FIFO" in err and f"uid {bob.uid}" in err and "cannot be removed" in err
    assert not os.path.exists(f"{alice.home}/run")
    if suffix:          # her descriptor, made before the socket's name was found taken: gone again
        assert not os.path.exists(f"/dev/shm/valepipe-{alice.uid}.{uniq}z")
