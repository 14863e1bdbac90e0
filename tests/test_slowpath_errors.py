"""The slow path through a running pipeline, where it used to fail: IPv6 rules whose
translations carry 128-bit values (they crossed the channel as integers msgpack cannot
encode, and the slow path died), a translation that raises (answered with a drop and an
error, counted, logged once, and the slow path keeps answering), and a slow-path restart
(NORMAL's MAC table comes back with its ages)."""
import json
import os
import signal
import time

from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from pipeline import control
from pipeline.slowpath.daemon import FAULT_ENV
from tests.conftest import wait_for
from tests.test_e2e import cfg, frame, peers


def _sp(pipe, cmd, **args):
    return control.request(os.path.join(pipe.dir, "run", "slowpath.ctl"), cmd, **args)


def v6(i, dst="2001:db8::2"):
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IPv6(src="2001:db8::1", dst=dst)
                 / UDP(sport=1000 + i, dport=53) / i.to_bytes(4, "big"))


def test_ipv6_rules_cross_the_channel(uniq, pipeline_factory):
    pipe = pipeline_factory(cfg(uniq, [
        "priority=10,ipv6,ipv6_dst=2001:db8::/64,actions=set_field:2001:db8:ffff::9->ipv6_dst,output:2",
        "priority=5,ipv6,actions=set_field:fe80::/16->ipv6_src,output:3"], ports=("a", "b", "c")))
    pid = pipe.stats()["upcall"]["slowpath_pid"]
    with peers(uniq) as ps:
        a, b, c = ps["a"], ps["b"], ps["c"]
        a.send_all([v6(0)], others=(b,))
        assert wait_for(lambda: b.drain() >= 1)
        a.send_all([v6(i) for i in range(1, 40)], others=(b,))            # cached: megaflow and exact
        assert wait_for(lambda: b.drain() >= 40)
        a.send_all([v6(i, dst="2001:db9::5") for i in range(40, 45)], others=(c,))
        assert wait_for(lambda: c.drain() >= 5)
        for out in b.got:
            p = Ether(out)
            assert p[IPv6].dst == "2001:db8:ffff::9"
            q = Ether(out)
            del q[UDP].chksum
            assert Ether(bytes(q))[UDP].chksum == p[UDP].chksum        # the pseudo-header moved with it
        assert {Ether(f)[IPv6].src for f in c.got} == {"fe80:db8::1"}   # a /16 of the address rewritten
        st = pipe.stats()
        assert st["upcall"]["slowpath_pid"] == pid and st["upcall"]["slowpath_restarts"] == 0
        assert st["upcall"]["megaflows_installed"] >= 2 and st["upcall"]["bad_messages"] == 0
        assert st["hits"] + st["megaflow_hits"] >= 30
        megaflows = control.request(pipe.ctl, "megaflows")
        assert any(m["mask"].get("ipv6_dst") == "ffffffffffffffff0000000000000000" for m in megaflows), megaflows


def test_a_translation_that_raises_is_answered_with_a_drop(uniq, pipeline_factory, monkeypatch):
    """The slow path is started with a fault: translating any UDP flow to port 666 raises
    (test-only environment variable). Those flows are dropped and counted, the error is
    logged once, and every other flow is served by the same slow-path process."""
    monkeypatch.setenv(FAULT_ENV, "udp,tp_dst=666")
    pipe = pipeline_factory(cfg(uniq, ["actions=output:2"], ports=("a", "b")))
    pid = pipe.stats()["upcall"]["slowpath_pid"]

    def bad(i):
        return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="10.0.0.1", dst="10.0.0.2")
                     / UDP(sport=2000 + i, dport=666) / b"x")
    with peers(uniq, "ab") as ps:
        a, b = ps["a"], ps["b"]
        for i in range(3):                                  # three flows, each failing to translate
            a.send_all([bad(i)])
            assert wait_for(lambda: _sp(pipe, "stats")["xlate_errors"] == i + 1)
        a.send_all([bad(0)] * 5)                            # its flow is cached as a drop now
        good = [frame(2 + i, i) for i in range(30)]
        for f in good:                                      # flows after the failures
            a.send_all([f], others=(b,))
        assert wait_for(lambda: b.drain() >= 30)
        assert sorted(b.got) == sorted(good)
        st = pipe.stats()
        assert wait_for(lambda: pipe.stats()["drops"]["action_drop"] == 8), pipe.stats()["drops"]
        assert st["upcall"]["xlate_errors"] == 3
        assert st["upcall"]["slowpath_pid"] == pid and st["upcall"]["slowpath_restarts"] == 0
        assert _sp(pipe, "stats")["xlate_errors"] == 3
    pipe.stop()
    log = pipe.proc.stderr.read()
    assert log.count("translation failed") == 1, log            # the same error, logged once
    assert "tp_dst=666" in log and "injected translation fault" in log


def test_mac_table_survives_a_slow_path_restart(uniq, pipeline_factory):
    pipe = pipeline_factory(cfg(uniq, ["actions=NORMAL"], ports=("a", "b", "c")))

    def pkt(src, dst, i):
        return bytes(Ether(src=src, dst=dst) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=i, dport=9) / b"m")
    ma, mb = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
    with peers(uniq) as ps:
        a, b, c = ps["a"], ps["b"], ps["c"]
        a.send_all([pkt(ma, mb, 1)], others=(b, c))                     # a learned, b unknown: flood
        assert wait_for(lambda: b.drain() >= 1 and c.drain() >= 1)
        b.send_all([pkt(mb, ma, 2)], others=(a,))                       # b learned
        assert wait_for(lambda: a.drain() >= 1)
        before = {(p, v, m) for p, v, m, _ in _sp(pipe, "fdb-show")}
        assert before == {(1, 0, 0x02000000000A), (2, 0, 0x02000000000B)}
        time.sleep(2.2)                                                 # ages to carry over
        assert wait_for(lambda: os.path.exists(os.path.join(pipe.dir, "run", "macs.json")))
        old = pipe.stats()["upcall"]["slowpath_pid"]
        os.kill(old, signal.SIGKILL)
        assert wait_for(lambda: (lambda u: u["channel_up"] and u["slowpath_pid"] != old)(pipe.stats()["upcall"]), 20)
        after = _sp(pipe, "fdb-show")
        assert {(p, v, m) for p, v, m, _ in after} == before
        assert all(age >= 2 for *_, age in after), after
        # a new flow to a learned MAC goes to its port only: nothing is flooded to c
        a.send_all([pkt(ma, mb, 3)], others=(b,))
        assert wait_for(lambda: b.drain() >= 2)
        time.sleep(0.2)
        assert c.drain() == 1
        saved = json.load(open(os.path.join(pipe.dir, "run", "macs.json")))
        assert len(saved["entries"]) == 2
