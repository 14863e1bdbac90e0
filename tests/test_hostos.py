"""pipeline/hostos.py's parts that run here too: the poll(2) poller FreeBSD's worker
sleeps in (woken by a readable fd, not by anything else), a socket peer's uid, and a
zombie owner counted as gone."""
import os
import socket
import subprocess
import sys

from pipeline import hostos
from tests.conftest import wait_for


def test_poll_poller_wakes_on_a_readable_fd_only():
    """Also as the worker's run-time ports use it (pipeline/runtime_ports.py)."""
    a, b = socket.socketpair()
    r, w = os.pipe()
    p = hostos.PollPoller([a.fileno(), r])
    try:
        assert p.poll(0.05) == []                 # nothing to read: the timeout ends it
        b.send(b"x")
        assert [fd for fd, _ in p.poll(5)] == [a.fileno()]
        a.recv(1)
        os.write(w, b"y")
        assert [fd for fd, _ in p.poll(5)] == [r]
        os.read(r, 1)
        assert p.poll(0) == []
        p.unregister(a.fileno())                  # as the worker does when a port leaves
        b.send(b"z")
        assert p.poll(0) == []
        p.register(a.fileno())
        assert [fd for fd, _ in p.poll(5)] == [a.fileno()]
    finally:
        p.close()
        a.close()
        b.close()
        os.close(r)
        os.close(w)


def test_peer_uid_is_the_other_ends():
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        assert hostos.peer_uid(a) == os.geteuid() == hostos.peer_uid(b)


def test_pid_running_is_false_for_a_zombie():
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        assert hostos.pid_running(child.pid)
        child.stdin.close()                       # it exits; unreaped, it is a zombie
        assert wait_for(lambda: not hostos.pid_running(child.pid), timeout=20)
        assert os.waitpid(child.pid, os.WNOHANG)[0] == child.pid        # it was one
    finally:
        child.returncode = 0
    assert not hostos.pid_running(child.pid) and not hostos.pid_running(0)
