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


def test_mac_move_revalidates_cached_flows(uniq, pipeline_factory):
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    pipe = pipeline_factory(cfg(uniq, ["actions=NORMAL"]).replace("[pipeline]\n", "[pipeline]\nrevalidate_interval = 0\n"))

    def pkt(src, dst, i):
        return bytes(Ether(src=src, dst=dst) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2) / (bytes([i]) * 20))
    ma, mb = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
    with peers(uniq) as ps:
        a, b, c = ps["a"], ps["b"], ps["c"]
        a.send_all([pkt(ma, mb, 0)], others=(b, c))               # b unknown: flooded to b and c
        assert wait_for(lambda: b.drain() >= 1 and c.drain() >= 1)
        b.send_all([pkt(mb, ma, 1)], others=(a,))                  # a learned: only to a
        assert wait_for(lambda: a.drain() >= 1)
        time.sleep(0.3)
        assert c.drain() == 1
        # the cached a->b flow flooded; learning b revalidated it into a unicast
        assert wait_for(lambda: pipe.stats()["upcall"]["revalidated_changed"] >= 1)
        a.send_all([pkt(ma, mb, i) for i in range(2, 12)], others=(b,))
        assert wait_for(lambda: b.drain() >= 11)
        time.sleep(0.2)
        assert c.drain() == 1
        # b moves to port c: traffic to b follows it after revalidation
        c.send_all([pkt(mb, ma, 99)], others=(a,))
        assert wait_for(lambda: a.drain() >= 2)
        assert wait_for(lambda: pipe.stats()["upcall"]["revalidated_changed"] >= 2)
        a.send_all([pkt(ma, mb, 50)], others=(c,))
        assert wait_for(lambda: c.drain() >= 2)
        assert b.drain() == 11
