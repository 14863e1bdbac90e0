"""The switch's side of OpenFlow through a running pipeline on shm: ports, as a controller
sees it (messages parsed by os-ken, the library controllers use): packet-ins with their
reason, table, cookie, match (in_port, metadata) and max_len; packet-outs; barriers that
answer only once a change reaches cached flows; flow_removed for timeouts and deletes;
port_status; groups (ALL, SELECT, INDIRECT, FAST_FAILOVER) and meters in the datapath
(every packet delivered or counted); fail_mode secure and standalone without a controller."""
import struct
import time

import pytest
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as P

from pipeline.peer import PortPeer
from tests import openflow_lab as lab
from tests.conftest import wait_for

UDP = bytes.fromhex("0a0000000002" "0a0000000001" "0800" "4500001c0001000040117ccd0a0000010a000002"
                    "04d2003500080000") + bytes(18)


def udp(src_port, dst=b"\x0a\x00\x00\x02"):
    f = bytearray(UDP)
    f[30:34] = dst
    f[34:36] = struct.pack("!H", src_port)
    return bytes(f)


def parse(raw):
    """A message as os-ken's controller side reads it."""
    from os_ken.ofproto import ofproto_parser
    v, t, ln, xid = struct.unpack_from("!BBHI", raw)
    return ofproto_parser.msg(lab.dp(), v, t, ln, xid, raw)


def send(c, m, xid=None):
    c.send_msg(m, xid)


def barrier(c, xid):
    c.send_msg(P.OFPBarrierRequest(lab.dp()), xid)
    return c.until(ofp.OFPT_BARRIER_REPLY, xid)[1]


def flow(c, text_match, insts, table=0, priority=10, **kw):
    send(c, P.OFPFlowMod(lab.dp(), table_id=table, priority=priority, match=P.OFPMatch(**text_match),
                         instructions=insts, **kw))


def apply(*acts):
    return [P.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, list(acts))]


@pytest.fixture
def sw(pipeline_factory, uniq):
    pipe = pipeline_factory(lab.config(uniq, [f"shm:{uniq}{i}" for i in "abc"]))
    c = lab.Client(lab.listen_port(pipe))
    send(c, P.OFPSetConfig(lab.dp(), 0, 0xFFFF))           # a management connection asks for async messages
    with PortPeer(f"shm:{uniq}a") as a, PortPeer(f"shm:{uniq}b") as b, PortPeer(f"shm:{uniq}c") as cc:
        yield pipe, c, {1: a, 2: b, 3: cc}
    c.close()


def collect(peers, until):
    got = {i: [] for i in peers}

    def step():
        for i, p in peers.items():
            got[i] += p.recv()
        return until(got)
    wait_for(step, 10)
    return got


def test_packet_in_and_out(sw):
    pipe, c, peers = sw
    D = lab.dp()
    send(c, P.OFPFlowMod(D, table_id=0, priority=0, match=P.OFPMatch(), instructions=[
        P.OFPInstructionWriteMetadata(0x5, 0xFF), P.OFPInstructionGotoTable(2)]))
    flow(c, dict(eth_type=0x800, ip_proto=17), apply(P.OFPActionPushVlan(0x8100),
                                                     P.OFPActionSetField(vlan_vid=0x1009),
                                                     P.OFPActionOutput(ofp.OFPP_CONTROLLER, 40)),
         table=2, priority=7, cookie=0x99)
    flow(c, {}, apply(P.OFPActionOutput(ofp.OFPP_CONTROLLER, ofp.OFPCML_NO_BUFFER)), table=2, priority=0,
         cookie=0x42)
    barrier(c, 1)
    peers[1].send([UDP])
    m, _ = c.until(ofp.OFPT_PACKET_IN)
    pin = parse(m[3])
    assert (pin.reason, pin.table_id, pin.cookie, pin.buffer_id) == (ofp.OFPR_ACTION, 2, 0x99, ofp.OFP_NO_BUFFER)
    assert pin.match["in_port"] == 1 and pin.match["metadata"] == 0x5
    # the packet as the actions before the controller output left it (tagged), cut to max_len
    assert pin.total_len == len(UDP) + 4 and len(pin.data) == 40
    assert pin.data[12:16] == b"\x81\x00\x00\x09" and pin.data[:12] == UDP[:12]
    arp = bytes.fromhex("ffffffffffff0a00000000010806" "0001080006040001" "0a0000000001" "0a000001"
                        "000000000000" "0a000002")
    peers[2].send([arp])
    m, _ = c.until(ofp.OFPT_PACKET_IN)
    pin = parse(m[3])
    assert (pin.reason, pin.table_id, pin.cookie, pin.match["in_port"]) == (ofp.OFPR_NO_MATCH, 2, 0x42, 2)
    assert pin.data == arp and pin.total_len == len(arp)
    # packet-outs: from the controller, from a port (never back out of it), through the tables
    send(c, P.OFPPacketOut(D, buffer_id=ofp.OFP_NO_BUFFER, in_port=ofp.OFPP_CONTROLLER,
                           actions=[P.OFPActionOutput(3)], data=pin.data))
    send(c, P.OFPPacketOut(D, buffer_id=ofp.OFP_NO_BUFFER, in_port=2,
                           actions=[P.OFPActionOutput(ofp.OFPP_FLOOD)], data=arp))
    got = collect(peers, lambda g: len(g[3]) == 2 and len(g[1]) == 1)
    assert got == {1: [arp], 2: [], 3: [arp, arp]}
    flow(c, dict(in_port=1), apply(P.OFPActionOutput(2)), priority=100)
    barrier(c, 2)
    send(c, P.OFPPacketOut(D, buffer_id=ofp.OFP_NO_BUFFER, in_port=1,
                           actions=[P.OFPActionOutput(ofp.OFPP_TABLE)], data=UDP))
    assert collect(peers, lambda g: g[2])[2] == [UDP]
    st = lab.openflow_stats(pipe)
    assert st["packet_ins"] == 2 and st["packet_outs"] == 3 and st["errors_sent"] == 0


def test_barrier_means_in_effect(sw):
    """After a barrier's reply, the very next packet of a cached flow meets the new rule."""
    pipe, c, peers = sw
    flow(c, dict(in_port=1), apply(P.OFPActionOutput(2)))
    barrier(c, 1)
    for n in range(3):
        peers[1].send([udp(1000)])
        assert collect(peers, lambda g: g[2])[2], n
    cached = pipe.stats()
    assert cached["hits"] + cached["megaflow_hits"] >= 1
    for rnd in range(5):                       # back and forth: each change is there at the reply
        out = 3 if rnd % 2 == 0 else 2
        send(c, P.OFPFlowMod(D := lab.dp(), command=ofp.OFPFC_MODIFY_STRICT, priority=10,
                             match=P.OFPMatch(in_port=1), instructions=apply(P.OFPActionOutput(out))))
        barrier(c, 10 + rnd)
        peers[1].send([udp(1000)])
        got = collect(peers, lambda g: g[2] or g[3])
        assert got[out] == [udp(1000)] and got[5 - out] == [], (rnd, got)


def test_flow_removed(sw):
    pipe, c, peers = sw
    D = lab.dp()
    fr = ofp.OFPFF_SEND_FLOW_REM
    flow(c, dict(in_port=1, eth_type=0x800), apply(P.OFPActionOutput(2)), priority=5, hard_timeout=1, flags=fr,
         cookie=1)
    flow(c, dict(in_port=2), apply(P.OFPActionOutput(1)), priority=6, idle_timeout=2, flags=fr, cookie=2)
    flow(c, dict(in_port=3), apply(P.OFPActionOutput(1)), priority=7, flags=fr, cookie=3)
    flow(c, dict(in_port=3, eth_type=0x806), apply(P.OFPActionOutput(1)), priority=8, cookie=4)   # no flag
    barrier(c, 1)
    send(c, P.OFPFlowMod(D, command=ofp.OFPFC_DELETE, table_id=ofp.OFPTT_ALL, out_port=ofp.OFPP_ANY,
                         out_group=ofp.OFPG_ANY, match=P.OFPMatch(in_port=3)))
    seen = {}
    deadline = time.monotonic() + 15
    while len(seen) < 3 and time.monotonic() < deadline:
        m, _ = c.until(ofp.OFPT_FLOW_REMOVED, timeout=15)
        r = parse(m[3])
        seen[r.cookie] = (r.reason, r.priority, r.match["in_port"], r.hard_timeout, r.idle_timeout)
    assert seen == {1: (ofp.OFPRR_HARD_TIMEOUT, 5, 1, 1, 0), 2: (ofp.OFPRR_IDLE_TIMEOUT, 6, 2, 0, 2),
                    3: (ofp.OFPRR_DELETE, 7, 3, 0, 0)}
    assert pipe.cli("dump-flows").strip() == ""


def test_port_status_and_port_mod(sw):
    pipe, c, peers = sw
    pipe.cli("port-mod", "2", "--down", "--name", pipe.stats()["name"])
    m, _ = c.until(ofp.OFPT_PORT_STATUS)
    ps = parse(m[3])
    assert ps.reason == ofp.OFPPR_MODIFY and ps.desc.port_no == 2 and ps.desc.config & ofp.OFPPC_PORT_DOWN
    # and the other way: an OpenFlow port_mod takes port 3 down in the datapath
    c.send_msg(P.OFPPortDescStatsRequest(lab.dp(), 0), 5)
    m, _ = c.until(ofp.OFPT_MULTIPART_REPLY, 5)
    desc = {p.port_no: p for p in parse(m[3]).body}
    assert sorted(desc) == [1, 2, 3]
    send(c, P.OFPPortMod(lab.dp(), 3, desc[3].hw_addr, ofp.OFPPC_PORT_DOWN, ofp.OFPPC_PORT_DOWN, 0))
    assert wait_for(lambda: [p["up"] for p in pipe.stats()["ports"]] == [True, False, False], 10)
    m, _ = c.until(ofp.OFPT_PORT_STATUS)
    assert parse(m[3]).desc.port_no == 3


def group_mod(c, gid, gtype, buckets, cmd=ofp.OFPGC_ADD):
    send(c, P.OFPGroupMod(lab.dp(), cmd, gtype, gid, buckets))


def test_groups_in_the_datapath(sw):
    pipe, c, peers = sw
    D = lab.dp()
    B = P.OFPBucket
    group_mod(c, 1, ofp.OFPGT_ALL, [B(actions=[P.OFPActionOutput(2)]), B(actions=[
        P.OFPActionSetField(eth_dst="00:00:00:00:00:33"), P.OFPActionOutput(3)])])
    group_mod(c, 2, ofp.OFPGT_SELECT, [B(weight=1, actions=[P.OFPActionOutput(2)]),
                                       B(weight=1, actions=[P.OFPActionOutput(3)])])
    group_mod(c, 3, ofp.OFPGT_INDIRECT, [B(actions=[P.OFPActionGroup(1)])])
    group_mod(c, 4, ofp.OFPGT_FF, [B(watch_port=2, actions=[P.OFPActionOutput(2)]),
                                   B(watch_port=3, actions=[P.OFPActionOutput(3)])])
    sel = {}
    for gid, port in ((3, 1000), (2, 2000), (4, 3000)):
        flow(c, dict(in_port=1, eth_type=0x800, ip_proto=17, udp_src=port), apply(P.OFPActionGroup(gid)))
    # group stats see their rules
    barrier(c, 1)
    peers[1].send([udp(1000)])                        # INDIRECT -> ALL: both ports, port 3's rewritten
    got = collect(peers, lambda g: g[2] and g[3])
    assert got[2] == [udp(1000)] and got[3] == [b"\0\0\0\0\0\x33" + udp(1000)[6:]]
    for dst in range(1, 41):                           # SELECT: each flow one bucket, both used
        peers[1].send([udp(2000, bytes([10, 0, 1, dst]))] * 2)
        g = collect(peers, lambda g: len(g[2]) + len(g[3]) >= 2)
        assert len(g[2]) + len(g[3]) == 2 and (not g[2] or not g[3]), dst
        sel[dst] = 2 if g[2] else 3
    assert set(sel.values()) == {2, 3}
    peers[1].send([udp(3000)])                         # FAST_FAILOVER: port 2 while it is live
    assert collect(peers, lambda g: g[2] or g[3]) == {1: [], 2: [udp(3000)], 3: []}
    pipe.cli("port-mod", "2", "--down", "--name", pipe.stats()["name"])
    assert wait_for(lambda: (peers[1].send([udp(3000)]), collect(peers, lambda g: g[3] or g[2]))[1][3], 15)
    c.send_msg(P.OFPGroupDescStatsRequest(D, 0), 7)
    m, _ = c.until(ofp.OFPT_MULTIPART_REPLY, 7)
    assert sorted((g.group_id, g.type, len(g.buckets)) for g in parse(m[3]).body) == [
        (1, ofp.OFPGT_ALL, 2), (2, ofp.OFPGT_SELECT, 2), (3, ofp.OFPGT_INDIRECT, 1), (4, ofp.OFPGT_FF, 2)]
    # deleting a group deletes the rules that use it
    group_mod(c, 2, ofp.OFPGT_SELECT, [], cmd=ofp.OFPGC_DELETE)
    barrier(c, 8)
    assert "udp_src=2000" not in pipe.cli("dump-flows") and "tp_src=2000" not in pipe.cli("dump-flows")


def test_meter_drops_what_exceeds_its_band(sw):
    """A 50 packets/s meter (burst 20) on a flow: of 400 frames sent at once, the burst and
    what the rate refills while they pass get through (bounded by the time they took, however
    slow the machine), the rest is dropped, each counted as a meter drop; the books close."""
    pipe, c, peers = sw
    D = lab.dp()
    send(c, P.OFPMeterMod(D, ofp.OFPMC_ADD, ofp.OFPMF_PKTPS | ofp.OFPMF_BURST | ofp.OFPMF_STATS, 7,
                          [P.OFPMeterBandDrop(rate=50, burst_size=20)]))
    flow(c, dict(in_port=1), [P.OFPInstructionMeter(7)] + apply(P.OFPActionOutput(2)))
    barrier(c, 1)
    peers[1].send([udp(1234)])                       # the flow cached first: the rest meets the fast path
    assert collect(peers, lambda g: g[2])[2]
    sent = 400
    t0 = time.monotonic()                            # the bucket holds at most the burst by now
    for _ in range(sent // 50):
        peers[1].send([udp(1234)] * 50)
        time.sleep(0.01)
    assert wait_for(lambda: pipe.stats()["ports"][0]["rx_packets"] >= sent + 1, 30)
    took = time.monotonic() - t0                     # every frame met the meter within this
    got = collect(peers, lambda g: False)[2]
    st = pipe.stats()
    meter_drops = st["drops"]["meter"]
    in_drops = st["ports"][0]["in_drops"]
    assert len(got) + sum(in_drops.values()) == sent, (len(got), in_drops)
    assert in_drops["meter"] == meter_drops and sum(in_drops.values()) == meter_drops
    assert 19 <= len(got) <= 20 + 50 * took + 1 and meter_drops > 0, (len(got), took)
    sent += 1
    c.send_msg(P.OFPMeterStatsRequest(D, 0, ofp.OFPM_ALL), 3)
    m, _ = c.until(ofp.OFPT_MULTIPART_REPLY, 3)
    ms = parse(m[3]).body[0]
    assert ms.meter_id == 7 and ms.packet_in_count == sent and ms.band_stats[0].packet_band_count == meter_drops


def test_fail_modes(pipeline_factory, uniq):
    """No controller: secure keeps to the rules (a drop stays a drop); standalone, once the
    controller has been gone a while, forwards as a learning switch, and stops when one
    connects."""
    ctl = lab.Controller()
    secure = pipeline_factory(lab.config(uniq + "s", [f"shm:{uniq}sa", f"shm:{uniq}sb"], listen="",
                                         controller=[f"tcp:127.0.0.1:{ctl.port}"],
                                         extra='fail_mode = "secure"\ninactivity_probe = 5\n',
                                         flows=["priority=5,actions=drop"]))
    alone = pipeline_factory(lab.config(uniq + "o", [f"shm:{uniq}oa", f"shm:{uniq}ob"], listen="",
                                        controller=["tcp:127.0.0.1:1"],
                                        extra='fail_mode = "standalone"\ninactivity_probe = 0.5\n',
                                        flows=["priority=5,actions=drop"]))
    with PortPeer(f"shm:{uniq}sa") as sa, PortPeer(f"shm:{uniq}sb") as sb, \
            PortPeer(f"shm:{uniq}oa") as oa, PortPeer(f"shm:{uniq}ob") as ob:
        assert wait_for(lambda: oflab_stats(alone)["fail_open_now"], 20)
        assert wait_for(lambda: (oa.send([UDP]), ob.recv())[1], 10)          # NORMAL floods it
        time.sleep(2)                                                       # secure: longer than its trigger
        sa.send([UDP] * 5)
        assert wait_for(lambda: secure.stats()["drops"]["action_drop"] >= 5, 10)
        assert sb.recv() == [] and not oflab_stats(secure)["fail_open_now"]
        # a controller for the secure switch: it connects (it has been trying)
        cl = ctl.accept()
        cl.send(struct.pack("!BBHI", 4, ofp.OFPT_HELLO, 8, 1))
        assert wait_for(lambda: oflab_stats(secure)["controllers_connected"] == 1, 10)
    ctl.close()


def oflab_stats(pipe):
    return lab.openflow_stats(pipe)
