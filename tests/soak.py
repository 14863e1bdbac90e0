"""The soak: a pipeline with established and new flows on three ports while its slow path
and workers are killed, stopped and resumed at random, a hostile peer scribbles on a
fourth port's rings and control clients misbehave; then the books close per port —
sent = delivered + each drop counter, nothing unexplained. `run(seconds, seed)` is shared
by `make test` (seconds) and `make soak` (minutes)."""
import os
import random
import signal
import socket
import threading
import time

import msgpack

from pipeline import control
from ring.region import ROLE_USER, Region
from tests.ledger import Traffic, books_text, run_books
from tests.test_e2e import cfg

# port 1 -> 2: a few established flows; 3 -> 4: a new flow per packet (each source its own
# megaflow); 5 -> 6: thousands of flows coming back; 7: the hostile peer's, to nowhere
PORTS = ("a", "b", "c", "d", "e", "f", "h")
RULES = ["priority=20,in_port=3,udp,nw_src=198.18.255.255,actions=drop", "priority=10,in_port=1,actions=output:2",
         "priority=10,in_port=3,actions=output:4", "priority=10,in_port=5,actions=output:6",
         "priority=10,in_port=7,actions=drop"]
TRAFFIC = (("a", "b", 0, 32, 12_000), ("c", "d", 2, 1_000_000, 12_000), ("e", "f", 4, 3_000, 8_000))
WORKER_KILL_GAP_S = 20.0      # the supervisor gives up past 5 crashes a minute


def config(tag):
    return cfg(tag, RULES, ports=PORTS)


class Faults(threading.Thread):
    """kill -9, SIGSTOP/SIGCONT of the slow path and the worker at random moments."""

    def __init__(self, pipe, rng, until):
        super().__init__(daemon=True)
        self.pipe, self.rng, self.until = pipe, rng, until
        self.done = {"slowpath_kill": 0, "slowpath_stop": 0, "slowpath_long_stop": 0, "worker_kill": 0,
                     "worker_stop": 0, "stopped_slowpath_replaced": 0}
        self.stopped = set()
        self.last_worker_kill = 0.0

    def run(self):
        while time.monotonic() < self.until:
            time.sleep(self.rng.uniform(0.4, 1.6))
            try:
                st = control.request(self.pipe.ctl, "stats", timeout=1)
            except (OSError, RuntimeError):
                continue                         # stopped, or between a worker and the next
            slow, worker = st["upcall"]["slowpath_pid"], st["pid"]
            pick = self.rng.choices(["slowpath_kill", "slowpath_stop", "slowpath_long_stop", "worker_kill",
                                     "worker_stop"], weights=[5, 3, 0.4, 1.5, 1.5])[0]
            if pick == "worker_kill" and time.monotonic() - self.last_worker_kill < WORKER_KILL_GAP_S:
                pick = "slowpath_kill"
            pid = worker if pick.startswith("worker") else slow
            if not pid:
                continue                         # no slow path right now
            try:
                if pick.endswith("kill"):
                    os.kill(pid, signal.SIGKILL)
                    if pick == "worker_kill":
                        self.last_worker_kill = time.monotonic()
                else:
                    # past the worker's heartbeat (5 s) a stopped slow path is replaced
                    secs = self.rng.uniform(6.0, 7.0) if pick == "slowpath_long_stop" else self.rng.uniform(0.1, 1.5)
                    self._pause(pid, min(secs, max(0.0, self.until - time.monotonic())))
                    if pick.startswith("slowpath") and not os.path.exists(f"/proc/{pid}"):
                        self.done["stopped_slowpath_replaced"] += 1     # the worker's heartbeat
                self.done[pick] += 1
            except ProcessLookupError:
                pass

    def _pause(self, pid, secs):
        os.kill(pid, signal.SIGSTOP)
        self.stopped.add(pid)
        time.sleep(secs)
        self.resume()

    def resume(self):
        for pid in list(self.stopped):
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.stopped.discard(pid)


class HostilePeer(threading.Thread):
    """The user side of one port writing garbage where netmap lets a user write, and where
    it does not: cursors, slot buffer indexes, lengths and flags of both its rings."""

    def __init__(self, uri_name, rng):
        super().__init__(daemon=True)
        self.region = Region.attach(uri_name)
        self.port = self.region.port(uri_name, ROLE_USER)
        self.rng, self.stop_ev, self.writes = rng, threading.Event(), 0

    def run(self):
        rings = [self.port.c.tx[0], self.port.c.rx[0]]
        while not self.stop_ev.is_set():
            r = self.rng.choice(rings)
            ring, n = r.ring, r.nslots
            what = self.rng.randrange(6)
            val = self.rng.choice([0, 1, n - 1, n, n + 7, 0xFFFFFFF0, self.rng.randrange(1 << 32)])
            if what == 0:
                ring.head = val % (1 << 32)
            elif what == 1:
                ring.cur = val % (1 << 32)
            elif what == 2:
                ring.tail = val % (1 << 32)
            else:
                s = ring.slot[self.rng.randrange(n)]
                if what == 3:
                    s.buf_idx = val % (1 << 32)
                elif what == 4:
                    s.len = val % (1 << 16)
                else:
                    s.flags = self.rng.randrange(1 << 16)
            self.writes += 1
            time.sleep(0.001)

    def close(self):
        self.stop_ev.set()
        self.join(5)
        self.region.close()


class BadClients(threading.Thread):
    """Control clients that connect and say nothing, send half a request, garbage, too
    much, or ask for every megaflow and read it a trickle at a time, then leave."""

    def __init__(self, paths, rng, until):
        super().__init__(daemon=True)
        self.paths, self.rng, self.until = paths, rng, until
        self.held, self.tries = [], 0

    def run(self):
        while time.monotonic() < self.until:
            path = self.rng.choice(self.paths)
            kind = self.rng.randrange(5)
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(1)
                s.connect(path)
                if kind == 1:
                    s.sendall(msgpack.packb({"cmd": "stats"})[:2])
                elif kind == 2:
                    s.sendall(os.urandom(self.rng.randrange(1, 4096)))
                elif kind == 3:
                    s.sendall(msgpack.packb({"cmd": "stats", "pad": "x" * (control.MAX_REQUEST + 1)}))
                elif kind == 4:
                    s.sendall(msgpack.packb({"cmd": "megaflows"}))
                    for _ in range(self.rng.randrange(1, 20)):
                        s.recv(4096)
                        time.sleep(0.05)
                self.held.append(s)
                self.tries += 1
            except OSError:
                pass
            while len(self.held) > 12:
                self.held.pop(0).close()
            time.sleep(self.rng.uniform(0.05, 0.3))
        for s in self.held:
            s.close()


def run(pipeline_factory, tag, seconds, seed):
    """The soak; returns (books rows, report, final stats). Asserts nothing itself."""
    pipe = pipeline_factory(config(tag))
    run_dir = os.path.join(pipe.dir, "run")
    hostile = HostilePeer(f"{tag}h", random.Random(seed + 1))
    until = time.monotonic() + seconds - 2
    faults = Faults(pipe, random.Random(seed + 2), until)
    clients = BadClients([pipe.ctl, os.path.join(run_dir, "slowpath.ctl")], random.Random(seed + 3), until)

    def misbehave():
        try:
            for t in (hostile, faults, clients):
                t.start()
            faults.join(seconds + 30)
            clients.join(30)
        finally:
            faults.resume()
            hostile.close()
    rows, st = run_books(pipe.ctl, [Traffic(port, f"{tag}{inp}", f"{tag}{out}", flows, rate, seconds)
                                    for inp, out, port, flows, rate in TRAFFIC], during=misbehave)
    report = dict(faults.done, seconds=seconds, seed=seed, hostile_writes=hostile.writes, bad_clients=clients.tries,
                  worker_restarts=st["worker_restarts"], takeovers=st["takeovers"],
                  hostile_port=st["ports"][6]["drops"], supervisor_alive=pipe.proc.poll() is None)
    return rows, report, st


def summary(rows, report):
    return (books_text(rows) + "\n" + ", ".join(f"{k} {v}" for k, v in report.items() if k != "hostile_port")
            + f"\nhostile port's ring counters: {report['hostile_port']}")

