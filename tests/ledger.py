"""Traffic through a running pipeline with an exact ledger, for the fault tests and the soak:
generators as processes (`valepipe gen`) on the pipeline's shm: ports, sinks counting in
threads, and the check that closes the books per input port — every packet a generator
sent was delivered to its sink or dropped with a reason, none unexplained."""
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from pipeline import control
from pipeline._native import lib
from tests.conftest import ROOT
from tools.traffic import Sink

# ring-level drops of packets a port received (cursor faults, `rx_bad_index`, count events)
RX_BAD = ("rx_bad_buf", "rx_bad_len", "rx_bad_flags")


class SinkThread:
    """Counts what arrives on a port's RX ring until closed (the C loop drops the GIL)."""

    def __init__(self, uri):
        self.sink = Sink(uri)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            lib.vp_sink_run(self.sink.s, 50_000_000)

    @property
    def received(self):
        return self.sink.s.packets

    def close(self):
        self._stop.set()
        self._t.join(10)
        self.sink.close()


def gen(uri, flows, rate, duration, size=60):
    """A `valepipe gen` process; gen_sent() reads what it sent once it is done."""
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "gen", uri, "--flows", str(flows),
                             "--rate", str(rate), "--duration", str(duration), "--size", str(size), "--json"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def gen_sent(proc, timeout=120):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return json.loads(out)["sent"]


@dataclass
class Lane:
    """Traffic from one input port (dp index `port`) to a sink of its own."""
    port: int
    sink: SinkThread
    sent: int = 0
    row: dict = field(default_factory=dict)


def settle(ctl, lanes, timeout=90.0):
    """Wait until the pipeline has taken everything sent, the slow path owes nothing and the
    sinks stopped counting; returns the final stats."""
    deadline = time.monotonic() + timeout
    st, last, since = None, None, time.monotonic()
    while time.monotonic() < deadline:
        try:
            st = control.request(ctl, "stats", timeout=2)
        except (OSError, RuntimeError):
            time.sleep(0.2)
            continue
        ports = st["ports"]
        taken = all(ports[ln.port]["rx_packets"] + sum(ports[ln.port]["drops"][k] for k in RX_BAD) >= ln.sent
                    and ports[ln.port]["upcall_inflight"] == 0 for ln in lanes)
        now = (tuple(ln.sink.received for ln in lanes), tuple(ports[ln.port]["rx_packets"] for ln in lanes))
        if now != last:
            last, since = now, time.monotonic()
        if taken and time.monotonic() - since >= 1.0:
            return st
        time.sleep(0.1)
    return st


def close_books(st, lanes):
    """Per lane: sent = delivered + every drop counted for its input port. Returns the rows
    (sent, delivered, drops by reason, unexplained)."""
    rows = []
    for ln in lanes:
        p = st["ports"][ln.port]
        drops = {k: v for k, v in p["in_drops"].items() if v}
        drops.update({k: p["drops"][k] for k in RX_BAD if p["drops"][k]})
        ln.row = {"port": p["uri"], "sent": ln.sent, "delivered": ln.sink.received, "drops": drops,
                  "inflight": p["upcall_inflight"],
                  "unexplained": ln.sent - ln.sink.received - sum(drops.values()) - p["upcall_inflight"]}
        rows.append(ln.row)
    return rows


@dataclass
class Traffic:
    """`valepipe gen` on shm:SRC (dp port `port`) for `seconds`, `after` seconds in, counted
    on shm:DST by a sink of its own."""
    port: int
    src: str
    dst: str
    flows: int
    rate: int
    seconds: float
    after: float = 0.0


def run_books(ctl, traffic, during=lambda: None):
    """Send `traffic`, run during() meanwhile (the faults), then wait until the pipeline
    has settled and close the books. Returns (rows, final stats); prints the books."""
    sinks = {t.dst: SinkThread(f"shm:{t.dst}") for t in traffic}
    t0, procs = time.monotonic(), []
    try:
        for t in sorted(traffic, key=lambda t: t.after):
            time.sleep(max(0.0, t0 + t.after - time.monotonic()))
            procs.append((t, gen(f"shm:{t.src}", flows=t.flows, rate=t.rate, duration=t.seconds)))
        during()
        lanes = [Lane(t.port, sinks[t.dst], gen_sent(p, timeout=t.seconds + 120)) for t, p in procs]
        st = settle(ctl, lanes)
    finally:
        for _, p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for s in sinks.values():
            s.close()
    rows = close_books(st, sorted(lanes, key=lambda ln: ln.port))
    print(books_text(rows))
    return rows, st


def books_text(rows):
    return "\n".join(f"{r['port']}: sent {r['sent']} = delivered {r['delivered']} + "
                     + " + ".join(f"{k} {v}" for k, v in sorted(r["drops"].items()))
                     + f" (+ with the slow path {r['inflight']}); unexplained {r['unexplained']}" for r in rows)
