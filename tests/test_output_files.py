"""Files root's `valepipe run` writes where another user can reach (a 1777 directory, as
the README's lab example's /tmp): a symbolic link, a FIFO or a file of that user at the
pid, log (given or default), stats, ready, mirror or pcap-output path is refused at start
in one line, the link's target untouched, nothing hanging; files valepipe reads are read
with a bound (/dev/zero is refused, not read into gigabytes).

The other user is real: a uid no account uses, via setpriv (tests/conftest.py)."""
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                                reason="needs root and setpriv to act as another user")

OUTPUTS = {       # option -> the run arguments that write PATH
    "pid": lambda p: ["--detach", "--pid-file", p, "--log-file", p + "-log"],
    "log": lambda p: ["--detach", "--log-file", p],
    "stats": lambda p: ["--quiet", "--duration", "30", "--stats-json", p],
    "ready": lambda p: ["--quiet", "--duration", "30", "--ready-file", p],
    "mirror": lambda p: ["--quiet", "--duration", "30", "--mirror", f"1={p}"],
    "pcap": None,                          # a port pcap:PATH@write
    "default-log": None,                   # --detach without --log-file: RUN_DIR/../NAME.log
}


def _run(conf, args, timeout=40):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "run", conf, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def public():
    """A directory every user may create in, as /tmp (root's, mode 1777)."""
    d = tempfile.mkdtemp(prefix="valepipe-pub-", dir="/tmp")
    os.chmod(d, 0o1777)
    yield pathlib.Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("squat", ["link", "fifo", "their-file"])
@pytest.mark.parametrize("output", sorted(OUTPUTS))
def test_root_refuses_what_another_user_put_at_its_output_paths(uniq, other_users, public, tmp_path, output, squat):
    alice = other_users(1)[0]
    victim = tmp_path / "victim.txt"                # root's: what the link points to
    victim.write_text("untouched\n")
    target = str(public / f"{uniq}.log") if output == "default-log" else str(public / "out")
    alice.py(f"""
import os
os.umask(0)
t = {target!r}
if {squat!r} == "link": os.symlink({str(victim)!r}, t)
elif {squat!r} == "fifo": os.mkfifo(t, 0o666)
else: open(t, "w").write("alice's\\n")
print("ready", flush=True)
""")
    port = f"pcap:{target}@write" if output == "pcap" else f"shm:{uniq}a"
    conf = tmp_path / "p.toml"
    conf.write_text(f'[pipeline]\nname = "{uniq}"\nrun_dir = "{public / "run"}"\n[[port]]\nuri = "{port}"\n')
    args = ["--quiet", "--duration", "30"] if OUTPUTS[output] is None else OUTPUTS[output](target)
    if output == "default-log":
        args = ["--detach"]
    t0 = time.monotonic()
    r = _run(str(conf), args)                     # a hang (FIFO) fails by timeout
    err = r.stderr.strip()
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(err.splitlines()) == 1, (r.returncode, err)
    assert target in err and ({"link": "symbolic link", "fifo": "FIFO", "their-file": f"uid {alice.uid}"}[squat]
                              in err), err
    assert time.monotonic() - t0 < 30
    assert victim.read_text() == "untouched\n"
    st = os.lstat(target)
    assert st.st_uid == alice.uid                  # left as it was
    if squat == "their-file":
        assert open(target).read() == "alice's\n"
    assert not (public / "run").exists()           # nothing started, nothing left
    assert not [f for f in os.listdir("/dev/shm") if uniq in f]


def test_pid_file_that_cannot_be_made_is_one_line_and_leaves_nothing(uniq, tmp_path):
    conf = tmp_path / "p.toml"
    conf.write_text(f'[pipeline]\nname = "{uniq}"\nrun_dir = "{tmp_path / "run"}"\n[[port]]\nuri = "shm:{uniq}a"\n')
    log = tmp_path / "x.log"
    r = _run(str(conf), ["--detach", "--pid-file", "/proc/p.pid", "--log-file", str(log)])
    err = r.stderr.strip()
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(err.splitlines()) == 1, err
    assert "--pid-file /proc/p.pid" in err
    assert not log.exists() and not (tmp_path / "run").exists()


def test_files_read_are_bounded(uniq, tmp_path):
    """A config, rule file, trace file or topology larger than its bound (a sparse file of
    65 MiB) or endless (/dev/zero): refused, not read whole (gigabytes, or a MemoryError)."""
    import resource
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(65 << 20)
    cases = [[cmd[0], path, *cmd[1:]] if cmd[0] != "trace" else ["trace", "--file", path, "--name", uniq]
             for path in ("/dev/zero", str(big))
             for cmd in (["check"], ["run"], ["add-flows", "--name", uniq], ["trace"], ["topo"])]
    for args in cases:
        if args[0] == "topo":
            args = ["topo", "up", args[1]]
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        r = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
        err = r.stderr.strip()
        assert r.returncode != 0 and "Traceback" not in r.stderr and len(err.splitlines()) == 1, (args, err)
        zero = "/dev/zero" in args
        assert ("/dev/zero: a device, not a regular file" if zero else f"{big}: larger than") in err, (args, err)
        # the largest child so far stays far from what reading on would take (KiB)
        assert max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) < 600_000, args
    conf = tmp_path / "p.toml"
    conf.write_text(f'[pipeline]\nname = "{uniq}"\nrun_dir = "{tmp_path / "run"}"\n[[port]]\n'
                    'uri = "pcap:/dev/zero"\n')
    r = _run(str(conf), ["--quiet", "--duration", "5"])
    assert r.returncode != 0 and "not a regular file" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_fifo_input_files_are_refused_at_once(uniq, tmp_path):
    """A FIFO planted where valepipe reads a config, rule file or trace file (nobody writes
    it): refused in one line without blocking (check, run, add-flows, replace-flows,
    diff-flows and trace --file all waited forever in open())."""
    fifo = tmp_path / "rules.txt"
    os.mkfifo(fifo)
    for args in (["check", str(fifo)], ["run", str(fifo)], ["add-flows", str(fifo), "--name", uniq],
                 ["replace-flows", str(fifo), "--name", uniq], ["diff-flows", str(fifo), "--name", uniq],
                 ["trace", "--file", str(fifo), "--name", uniq]):
        r = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, capture_output=True, text=True,
                           timeout=45)
        err = r.stderr.strip()
        assert r.returncode != 0 and "Traceback" not in r.stderr and len(err.splitlines()) == 1, (args, err)
        assert f"{fifo}: a FIFO, not a regular file" in err, (args, err)
