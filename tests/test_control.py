"""The control sockets (worker and slow path) under misuse: owner-only, a client that
never sends does not hold up forwarding, oversized and malformed requests get an error
reply, and requests name commands, never files."""
import os
import socket
import time

import msgpack

from pipeline import control
from tests.conftest import wait_for
from tests.test_e2e import cfg, frame, peers


def _raw(path, payload, wait=5.0):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(wait)
    s.connect(path)
    try:
        s.sendall(payload)
        up = msgpack.Unpacker(raw=False)
        while True:
            data = s.recv(1 << 16)
            if not data:
                return None
            up.feed(data)
            for rep in up:
                return rep
    finally:
        s.close()


def test_control_sockets_under_misuse(uniq, pipeline_factory):
    pipe = pipeline_factory(cfg(uniq, ["in_port=1,actions=output:2"], ports=("a", "b")))
    run = os.path.join(pipe.dir, "run")
    with peers(uniq, "ab") as ps:
        for path in (os.path.join(run, "worker.ctl"), os.path.join(run, "slowpath.ctl")):
            st = os.stat(path)
            assert st.st_mode & 0o777 == 0o600 and st.st_uid == os.geteuid()
            # a client that connects and says nothing: answered with an error, soon
            idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            idle.connect(path)
            t0 = time.monotonic()
            ps["a"].send_all([frame(1, i) for i in range(50)])
            assert wait_for(lambda: ps["b"].drain() >= 50 * (1 + (path.endswith("slowpath.ctl"))), timeout=5)
            idle.settimeout(5)
            rep = msgpack.unpackb(idle.recv(1 << 16), raw=False)
            idle.close()
            assert rep["ok"] is False and "no complete request" in rep["error"] and time.monotonic() - t0 < 0.9
            # too large, not msgpack, not a map, no such command, arguments that are paths
            big = _raw(path, msgpack.packb({"cmd": "stats", "pad": "x" * (control.MAX_REQUEST + 10)}))
            assert big["ok"] is False and "larger than" in big["error"]
            assert _raw(path, b"\xc1\xc1\xc1")["ok"] is False
            assert _raw(path, msgpack.packb([1, 2]))["error"].startswith("a request is a map")
            rep = _raw(path, msgpack.packb({"cmd": "load", "file": "/etc/shadow"}))
            assert rep["ok"] is False and "unknown command" in rep["error"]
        assert os.stat(run).st_mode & 0o777 == 0o700
        # the fast path never stopped, and the sockets still answer
        assert pipe.stats()["drops"]["tx_ring_full"] == 0
        assert control.request(os.path.join(run, "slowpath.ctl"), "dump-flows")
