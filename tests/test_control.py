"""The control sockets (worker and slow path) under misuse: owner-only; clients that connect
and never send cost forwarding nothing and are dropped with an error later; a request that
arrives in pieces is answered; oversized and malformed requests get an error reply;
requests name commands, never files. A dump of 20,000 megaflows read slowly streams out
while packets and other requests go on."""
import os
import socket
import threading
import time

import msgpack

from pipeline import control
from tests.conftest import wait_for
from tests.ledger import gen, gen_sent
from tests.test_e2e import cfg, frame, peers


def _raw(path, payload, wait=5.0):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(wait)
    s.connect(path)
    try:
        s.sendall(payload)
        return _reply(s)
    finally:
        s.close()


def _reply(s):
    up = msgpack.Unpacker(raw=False, max_buffer_size=1 << 24)
    while True:
        data = s.recv(1 << 16)
        if not data:
            return None
        up.feed(data)
        for rep in up:
            return rep


def _idle(path, n):
    out = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        out.append(s)
    return out


def test_control_sockets_under_misuse(uniq, pipeline_factory):
    pipe = pipeline_factory(cfg(uniq, ["in_port=1,actions=output:2"], ports=("a", "b")))
    run = os.path.join(pipe.dir, "run")
    with peers(uniq, "ab") as ps:
        ps["a"].send_all([frame(1, 0)], others=(ps["b"],))          # the flow is set up first
        assert wait_for(lambda: ps["b"].drain() >= 1)
        for path in (os.path.join(run, "worker.ctl"), os.path.join(run, "slowpath.ctl")):
            st = os.stat(path)
            assert st.st_mode & 0o777 == 0o600 and st.st_uid == os.geteuid()
            # twenty clients that connect and say nothing: requests and packets pass them by
            idle = _idle(path, 20)
            t0 = time.monotonic()
            assert control.request(path, "stats", timeout=2)
            sent = 1 + 2000 * (1 + path.endswith("slowpath.ctl"))
            ps["a"].send_all([frame(1, i) for i in range(2000)], others=(ps["b"],))
            assert wait_for(lambda: ps["b"].drain() >= sent, timeout=10), (len(ps["b"].got), pipe.stats()["drops"])
            # ... and get an error reply once they have been idle a while
            for s in idle:
                s.settimeout(control.REQUEST_TIME_S + 10)
                rep = msgpack.unpackb(s.recv(1 << 16), raw=False)
                s.close()
                assert rep["ok"] is False and "no complete request" in rep["error"]
            assert time.monotonic() - t0 >= control.REQUEST_TIME_S
            # a request that arrives in pieces is put together across turns
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(path)
            req = msgpack.packb({"cmd": "stats"})
            s.sendall(req[:3])
            time.sleep(0.3)
            s.sendall(req[3:])
            assert _reply(s)["ok"] is True
            s.close()
            # not msgpack, not a map, no such command, arguments that are paths
            assert _raw(path, b"\xc1\xc1\xc1")["ok"] is False
            assert _raw(path, msgpack.packb([1, 2]))["error"].startswith("a request is a map")
            rep = _raw(path, msgpack.packb({"cmd": "load", "file": "/etc/shadow"}))
            assert rep["ok"] is False and "unknown command" in rep["error"]
        # too large for the worker (the slow path takes rule sets of many megabytes)
        big = _raw(os.path.join(run, "worker.ctl"), msgpack.packb({"cmd": "stats", "pad": "x" * (control.MAX_REQUEST + 10)}))
        assert big["ok"] is False and "larger than" in big["error"]
        assert _raw(os.path.join(run, "slowpath.ctl"), msgpack.packb({"cmd": "stats", "pad": "x" * (control.MAX_REQUEST + 10)}))["ok"]
        assert os.stat(run).st_mode & 0o777 == 0o700
        # the fast path never stopped, and the sockets still answer
        assert pipe.stats()["drops"]["tx_ring_full"] == 0
        assert control.request(os.path.join(run, "slowpath.ctl"), "dump-flows")


def test_large_megaflow_dump_streams_while_forwarding(uniq, pipeline_factory):
    # each source address its own megaflow; port 3 -> 4 is an established flow meanwhile
    rules = ["priority=20,in_port=1,udp,nw_src=198.18.255.255,actions=drop", "priority=10,in_port=1,actions=output:2",
             "priority=10,in_port=3,actions=output:4"]
    pipe = pipeline_factory(cfg(uniq, rules, ports=("a", "b", "c", "d")).replace(
        "[pipeline]\n", "[pipeline]\nupcall_rate = 0\nidle_timeout = 0\n"))
    gen_sent(gen(f"shm:{uniq}a", flows=20_000, rate=10_000, duration=2.5))
    counts = []
    assert wait_for(lambda: counts.append(pipe.stats()["megaflows"]) or counts[-4:] == counts[-1:] * 4,
                    timeout=60, step=0.5)       # the slow path has set up all it will
    n = counts[-1]
    assert n >= 10_000
    with peers(uniq, "cd") as ps:
        c, d = ps["c"], ps["d"]
        c.send_all([frame(1, 0)], others=(d,))
        assert wait_for(lambda: d.drain() >= 1)
        # a client that reads the dump 16 KB at a time
        got, done = bytearray(), threading.Event()

        def slow_reader():
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(30)
            s.connect(pipe.ctl)
            s.sendall(msgpack.packb({"cmd": "megaflows"}))
            while True:
                data = s.recv(16 << 10)
                if not data:
                    break
                got.extend(data)
                time.sleep(0.01)
            s.close()
            done.set()
        t = threading.Thread(target=slow_reader)
        t.start()
        # meanwhile: packets of the established flow, and other requests, all go through
        for k in range(10):
            c.send_all([frame(1, 1 + 100 * k + i) for i in range(100)], others=(d,))
            assert control.request(pipe.ctl, "stats", timeout=2)
        assert wait_for(lambda: d.drain() >= 1001, timeout=10)
        t.join(60)
    assert done.is_set()
    up = msgpack.Unpacker(raw=False, max_buffer_size=64 << 20)
    up.feed(bytes(got))
    msgs = list(up)
    assert msgs, "no whole reply: the dump was cut off"
    assert msgs[0] == {"ok": True, "stream": True} and msgs[-1] is None
    flows = [f for chunk in msgs[1:-1] for f in chunk]
    assert len(flows) >= n
    # the CLI reads the same stream
    assert len(control.request(pipe.ctl, "megaflows", timeout=10)) == len(flows)
