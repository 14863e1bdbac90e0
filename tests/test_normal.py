"""NORMAL: the MAC learning table (learn, move, age, bound) and switching decisions;
a MAC that moves invalidates what forwarded to its old port (checked end to end)."""
import time

from pipeline.slowpath.classifier import Table
from pipeline.slowpath.fields import ORDER
from pipeline.slowpath.flowtext import parse_flow
from pipeline.slowpath.normal import MacTable
from pipeline.slowpath.xlate import Xlate
from tests.conftest import wait_for
from tests.test_e2e import cfg, peers

A, B, C = 0x020000000001, 0x020000000002, 0x020000000003
BCAST = 0xFFFFFFFFFFFF


class Clock:
    t = 0.0

    def __call__(self):
        return self.t


def test_learn_move_age_and_bound():
    clk = Clock()
    m = MacTable(max_age=300, max_entries=3, clock=clk)
    assert m.learn(0, A, 1) and not m.learn(0, A, 1)
    assert m.lookup(0, A) == 1 and m.lookup(5, A) is None          # per VLAN
    assert m.learn(0, A, 2) and m.st["moved"] == 1 and m.lookup(0, A) == 2
    assert not m.learn(0, BCAST, 3)                                # never a multicast source
    clk.t = 301
    assert m.lookup(0, A) is None and m.expire() == 1 and m.entries == {}
    for i in range(5):
        m.learn(0, 0x020000000100 + i, 1)
    assert len(m.entries) == 3 and m.st["evicted"] == 2


def flow(**kw):
    f = {k: 0 for k in ORDER}
    f.update(dl_type=0x0800, **kw)
    return f


def test_normal_switching_and_megaflow():
    t = Table(0)
    t.insert(parse_flow("actions=NORMAL"))
    macs = MacTable()
    learn = Xlate({0: t}, [1, 2, 3], macs, may_learn=True)
    res = learn.translate(flow(in_port=1, dl_src=A, dl_dst=B))
    assert res.actions == [["output", 2], ["output", 3]]           # B unknown: flood
    assert res.wc["dl_src"] == res.wc["dl_dst"] == 0xFFFFFFFFFFFF and res.wc["vlan_tci"] == 0x1FFF
    res = learn.translate(flow(in_port=2, dl_src=B, dl_dst=A))
    assert res.actions == [["output", 1]]                          # A learned on 1
    assert learn.translate(flow(in_port=1, dl_src=A, dl_dst=A)).actions == [["drop"]]   # same port
    assert learn.translate(flow(in_port=3, dl_src=C, dl_dst=BCAST)).actions == [["output", 1], ["output", 2]]
    # per VLAN: A is unknown on VLAN 7
    assert learn.translate(flow(in_port=2, dl_src=B, dl_dst=A, vlan_tci=0x1007)).actions == [["output", 1], ["output", 3]]
    # without may_learn (trace, revalidation) nothing is learned
    before = macs.changes
    Xlate({0: t}, [1, 2, 3], macs).translate(flow(in_port=3, dl_src=0x0200000000AA, dl_dst=A))
    assert macs.changes == before


def test_mac_move_takes_effect_with_the_learning_packet(uniq, pipeline_factory):
    """A MAC that moves: cached flows to it are dropped when the worker applies the upcall
    reply for the learning packet itself, before that packet is sent on. So every packet
    sent after the learning packet arrived goes the new way (counts, not timing), which
    also bounds the time a stale flow can live by the learning packet's own round trip."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    pipe = pipeline_factory(cfg(uniq, ["actions=NORMAL"]).replace("[pipeline]\n", "[pipeline]\nrevalidate_interval = 0\n"))

    def pkt(src, dst, i):
        return bytes(Ether(src=src, dst=dst) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2)
                     / i.to_bytes(4, "big") / bytes(20))
    ma, mb = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
    with peers(uniq) as ps:
        a, b, c = ps["a"], ps["b"], ps["c"]
        a.send_all([pkt(ma, mb, 0)], others=(b, c))               # b unknown: flooded to b and c
        assert wait_for(lambda: b.drain() >= 1 and c.drain() >= 1)
        b.send_all([pkt(mb, ma, 1)], others=(a,))                  # b learned (and a): unicast now
        assert wait_for(lambda: a.drain() >= 1)
        to_b = [pkt(ma, mb, i) for i in range(2, 202)]
        a.send_all(to_b[:1], others=(b,))                          # set up a -> b, then use it
        assert wait_for(lambda: b.drain() >= 2)
        a.send_all(to_b[1:], others=(b,))
        assert wait_for(lambda: b.drain() >= 201)
        assert b.got[1:] == to_b and c.drain() == 1                # to b only
        hits = pipe.stats()["hits"] + pipe.stats()["megaflow_hits"]
        assert hits >= 199
        # b moves to port c; its learning packet reaches a through the slow path
        t0 = time.monotonic()
        c.send_all([pkt(mb, ma, 1000)], others=(a,))
        assert wait_for(lambda: a.drain() >= 2)
        took_ms = (time.monotonic() - t0) * 1e3
        after = [pkt(ma, mb, i) for i in range(2000, 2200)]
        a.send_all(after[:1], others=(c,))
        assert wait_for(lambda: c.drain() >= 2)
        a.send_all(after[1:], others=(c,))
        assert wait_for(lambda: c.drain() >= 201)
        time.sleep(0.1)
        assert c.got[1:] == after and b.drain() == 201              # every one the new way
        st = pipe.stats()
        assert st["upcall"]["forgotten"] >= 1
        assert st["hits"] + st["megaflow_hits"] > hits              # and cached again once set up
        print(f"learning packet delivered {took_ms:.1f} ms after it was sent; 200 of 200 packets after it "
              "went to the new port")
