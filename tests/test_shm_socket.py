"""A region's memory reaches its peers over the socket beside its descriptor
(valepipe.NAME:sock, ring/fdpass.py: SCM_RIGHTS, the way FreeBSD has, used on Linux too).
Its name is squatted like the descriptor's (test_shm_users: root's pipeline replaces
another user's socket, FIFO or link there; a user's pipeline says why it cannot), and the
socket is checked from both ends: it hands the memfd to no other user; a peer takes the
memory only from a socket of the region's user, answered by a process of that user,
handing over that region's memfd."""
import os
import subprocess
import sys

from tests.conftest import ROOT
from tests.test_shm_users import _cli, _one_line_error, others, pytestmark  # noqa: F401  (fixture, skip rule)


def test_the_socket_hands_nothing_to_another_user(uniq, others, pipeline_factory):
    alice = others[0]
    pipeline_factory(f'[pipeline]\nname = "{uniq}"\nrun_dir = "@RUN@"\n[[port]]\nuri = "shm:{uniq}p"\n')
    sock = f"/dev/shm/valepipe.{uniq}p:sock"
    os.chmod(sock, 0o666)                    # as if the mode let her in: the pipeline still checks
    r = alice.run("-c", f"from ring import fdpass; print(*fdpass.receive_fd({sock!r}))")
    assert r.returncode == 0 and r.stdout.split() == ["None", "0"], (r.stdout, r.stderr)
    assert _cli("gen", f"shm:{uniq}p", "--count", "1").returncode == 0      # root's own tools: served


def test_a_socket_answered_by_another_user_is_refused(uniq, others):
    alice = others[0]
    sock = f"/dev/shm/valepipe.{uniq}q:sock"
    # alice serves a sealed memfd of the right name at root's socket name, which then
    # becomes root's (as a race or a careless chown could make it); the descriptor is root's
    p = alice.py(f"""
import fcntl, os, sys
from ring import fdpass
fd = os.memfd_create("valepipe.{uniq}q", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
os.ftruncate(fd, 1 << 20)
fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
server = fdpass.FdServer({sock!r}, fd, {{os.geteuid(), 0}})
print("ready", flush=True)
sys.stdin.readline()
""")
    os.lchown(sock, 0, 0)
    fd = os.open(f"/dev/shm/valepipe.{uniq}q", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.write(fd, f"valepipe-region/1 {p.pid} 3 {1 << 20}\n".encode())
    os.close(fd)
    err = _one_line_error(_cli("sink", f"shm:{uniq}q", "--duration", "1"))
    assert f"answered by uid {alice.uid}, not uid 0" in err, err


def test_memory_that_is_not_the_regions_memfd_is_refused(uniq, tmp_path):
    """Root's own process serving the wrong memory at a region's socket: a memfd made for
    another region, a plain file."""
    from ring import fdpass
    from ring.region import SEALS, desc_path
    import fcntl
    for what, fd in (("other", os.memfd_create(f"valepipe.{uniq}other", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)),
                     ("file", os.open(tmp_path / "plain", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600))):
        name = f"{uniq}{what}r"
        os.ftruncate(fd, 1 << 20)
        if what == "other":
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
        server = fdpass.FdServer(desc_path(name) + ":sock", fd, {0})
        try:
            with open(desc_path(name), "x") as f:
                f.write(f"valepipe-region/1 {os.getpid()} {fd} {1 << 20}\n")
            r = subprocess.run([sys.executable, "-m", "pipeline.cli", "sink", f"shm:{name}", "--duration", "1"],
                               cwd=ROOT, capture_output=True, text=True, timeout=60)
            err = _one_line_error(r)
            assert "is not its region's memfd" in err, err
        finally:
            server.close()
            os.unlink(desc_path(name))
            os.close(fd)
