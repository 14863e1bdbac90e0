"""pipeline/hostos.py's parts that run here too: a socket peer's uid, and a zombie owner
counted as gone."""
import os
import socket
import subprocess
import sys

from pipeline import hostos
from tests.conftest import wait_for


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
