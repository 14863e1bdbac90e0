"""`ovs-ofctl -O OpenFlow13` against valepipe's passive OpenFlow listener does what it does
against an Open vSwitch 3.1 bridge: the same commands give the same output (add-flow,
dump-flows with filters, dump-aggregate, del-flows strict and by cookie, dump-ports,
dump-groups, dump-tables), packet-outs put the same bytes on the same ports, and the
rules are the pipeline's own: `valepipe dump-flows` shows a controller's cookies, a rule
added by the CLI is dumped over OpenFlow, and a flow_mod reaches cached flows at once."""
import os
import re
import subprocess
import sys
import time

import dpkt
import pytest

from pipeline.peer import PortPeer
from tests import openflow_lab as lab
from tests.conftest import wait_for
from tests.ovs_oracle import OVS, available

pytestmark = pytest.mark.skipif(not available(), reason="needs Open vSwitch (openvswitch-switch)")

FLOWS = ["table=0,priority=100,in_port=1,cookie=0x10,actions=output:2",
         "table=0,priority=90,ip,nw_src=10.0.0.0/8,cookie=0x20,idle_timeout=30,actions=goto_table:3",
         "table=3,priority=5,tcp,tp_dst=80,send_flow_rem,hard_timeout=100,actions=mod_vlan_vid:7,output:1",
         "table=3,priority=4,dl_vlan=5,actions=strip_vlan,output:2",
         "table=0,priority=1,actions=CONTROLLER:128",
         "table=1,priority=7,dl_dst=01:00:00:00:00:00/01:00:00:00:00:00,actions=set_field:00:11:22:33:44:55->eth_src,output:2",
         "table=2,arp,arp_tpa=10.1.1.1,actions=push_vlan:0x8100,set_field:4196->vlan_vid,output:1",
         "table=4,priority=3,udp,udp_dst=53,cookie=0xabc,actions=dec_ttl,output:2"]
UDP = ("0a0000000002" "0a0000000001" "0800" "4500001c0001000040117ccd0a0000010a000002" "04d2003500080000")
TAGGED = ("0a0000000002" "0a0000000001" "8100" "0005" "0800" "4500001c0001000040117ccd0a0000010a000002"
          "04d2003500080000")
# (in_port, frame, actions): what packet-out does with them, compared port by port
PACKET_OUTS = [("controller", UDP, "output:2"), ("controller", UDP, "output:1,output:2"),
               ("controller", UDP, "mod_vlan_vid:9,output:2"), ("1", UDP, "set_field:10.9.9.9->ip_dst,output:2"),
               ("controller", TAGGED, "strip_vlan,output:1"), ("1", UDP, "table"), ("2", UDP, "in_port"),
               ("controller", UDP, "set_field:00:00:00:00:00:07->eth_dst,dec_ttl,output:1")]


@pytest.fixture
def pair(pipeline_factory, uniq):
    """(Open vSwitch, its ovs-ofctl target, valepipe's target, the pipeline, its two peers)."""
    ovs = OVS(nports=2)
    try:
        pcaps = {}
        for i in (1, 2):
            pcaps[i] = os.path.join(ovs.dir, f"tx{i}.pcap")
            ovs.vsctl("set", "interface", f"p{i}", f"options:tx_pcap={pcaps[i]}")
        pipe = pipeline_factory(lab.config(uniq, [f"shm:{uniq}a", f"shm:{uniq}b"]))
        target = f"tcp:127.0.0.1:{lab.listen_port(pipe)}"
        with PortPeer(f"shm:{uniq}a") as pa, PortPeer(f"shm:{uniq}b") as pb:
            yield ovs, target, pipe, {1: pa, 2: pb}, pcaps
    finally:
        ovs.close()


def both(ovs, target, *args):
    a = lab.ofctl("br0", *args, env=ovs.env, check=False)
    b = lab.ofctl(target, *args, check=False)
    return lab.norm(a), lab.norm(b)


def ports_view(text, skip_local=True):
    """dump-ports without what one switch counts and the other cannot (OVS's dummy ports
    report drops and errors as unavailable), and without OVS's LOCAL (valepipe has none here)."""
    text = re.sub(r"(drop|errs|frame|over|crc|coll)=(\?|\d+)", r"\1=-", text)
    text = re.sub(r"\d+ ports", "N ports", text)
    if skip_local:
        text = re.sub(r"  port LOCAL:.*\n.*\n.*\n", "", text)
    return text


def pcap_frames(path):
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        try:
            return [bytes(buf) for _, buf in dpkt.pcap.Reader(f)]
        except (ValueError, dpkt.NeedData):
            return []


def test_ofctl_against_valepipe_as_against_ovs(pair):
    ovs, target, pipe, peers, pcaps = pair
    for f in FLOWS:
        a, b = both(ovs, target, "add-flow", f)
        assert a == b == "", (f, a, b)
    for cmd in (["dump-flows"], ["dump-flows", "table=3"], ["dump-flows", "cookie=0x10/-1"],
                ["dump-flows", "--strict", "table=3,priority=5,tcp,tp_dst=80"], ["dump-flows", "ip"],
                ["dump-aggregate"], ["dump-aggregate", "table=0"], ["dump-tables"], ["dump-groups"]):
        a, b = both(ovs, target, *cmd)
        assert a == b, cmd
    a, b = both(ovs, target, "dump-ports")
    assert ports_view(a) == ports_view(b)
    # deletions, then the tables compared again
    for cmd in (["del-flows", "--strict", "table=3,priority=4,dl_vlan=5"], ["del-flows", "cookie=0x20/-1"],
                ["del-flows", "table=1"], ["del-flows", "udp"]):
        a, b = both(ovs, target, *cmd)
        assert a == b == "", cmd
    a, b = both(ovs, target, "dump-flows")
    assert a == b
    assert "cookie=0x10" in b and "table=1" not in b and "udp" not in b

    # packet-out: the same bytes on the same ports
    both(ovs, target, "del-flows")
    both(ovs, target, "add-flow", "table=0,in_port=1,actions=output:2")
    for n, (in_port, frame, actions) in enumerate(PACKET_OUTS):
        for i in (1, 2):                    # a new capture per packet-out
            pcaps[i] = os.path.join(ovs.dir, f"tx{i}-{n}.pcap")
            ovs.vsctl("set", "interface", f"p{i}", f"options:tx_pcap={pcaps[i]}")
        a, b = both(ovs, target, "packet-out", f"in_port={in_port} packet={frame} actions={actions}")
        assert a == b == "", (in_port, actions, a, b)
        got, want = {1: [], 2: []}, {}
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for i, p in peers.items():
                got[i] += p.recv()
            want = {i: pcap_frames(pcaps[i]) for i in (1, 2)}
            if got == want and (want[1] or want[2]):
                break
            time.sleep(0.05)
        assert got == want, (in_port, actions, got, want)
    a, b = both(ovs, target, "dump-ports")
    assert "tx pkts=0" not in ports_view(b)
    assert [int(x) for x in re.findall(r"tx pkts=(\d+)", ports_view(a))] == \
        [int(x) for x in re.findall(r"tx pkts=(\d+)", ports_view(b))]


def test_one_table_for_controller_and_cli(pair):
    """What a controller adds is what `valepipe dump-flows` shows (with its cookie), what
    `valepipe add-flow` adds is what OpenFlow dumps; a flow_mod changes a cached flow's
    fate at once (revalidated before the barrier that add-flow waits for is answered)."""
    ovs, target, pipe, peers, _ = pair
    lab.ofctl(target, "add-flow", "cookie=0x5eed,priority=10,in_port=1,actions=output:2")
    assert "cookie=0x5eed" in pipe.cli("dump-flows")
    pipe.cli("add-flow", "priority=20,in_port=2,cookie=0x77,actions=output:1")
    assert "cookie=0x77" in lab.ofctl(target, "dump-flows")
    # groups and meters a CLI rule names must exist, as on an OVS bridge (which refuses too)
    run_dir = os.path.join(pipe.dir, "run")
    for rule, error in (("priority=30,in_port=2,actions=group:9", "group 9 does not exist"),
                        ("priority=30,in_port=2,actions=meter:4,output:1", "meter 4 does not exist")):
        r = subprocess.run([sys.executable, "-m", "pipeline.cli", "add-flow", rule, "--run-dir", run_dir],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode != 0 and error in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert lab.ofctl("br0", "add-flow", rule, env=ovs.env, check=False).count("OFPT_ERROR") == 1
        assert "priority=30" not in pipe.cli("dump-flows")
    lab.ofctl(target, "add-group", "group_id=9,type=all,bucket=output:1")
    lab.ofctl(target, "add-meter", "meter=4,pktps,band=type=drop,rate=1000")
    pipe.cli("add-flow", "priority=30,in_port=2,actions=meter:4,group:9")
    assert "priority=30,in_port=2 actions=meter:4,group:9" in lab.ofctl(target, "dump-flows")
    pipe.cli("del-flows", "priority=30,in_port=2", "--strict")
    frame = bytes.fromhex(UDP)
    n = 0
    for rnd in range(3):                     # one path, cached, then moved by flow_mods
        peers[1].send([frame])
        assert wait_for(lambda: peers[2].recv(), 5), rnd
        n += 1
    assert pipe.stats()["hits"] + pipe.stats()["megaflow_hits"] >= 1          # it was cached
    lab.ofctl(target, "mod-flows", "in_port=1,actions=drop")
    drops = pipe.stats()["drops"]["action_drop"]
    peers[1].send([frame])
    assert wait_for(lambda: pipe.stats()["drops"]["action_drop"] > drops, 5)
    assert peers[2].recv() == []
    lab.ofctl(target, "del-flows", "in_port=1")
    lab.ofctl(target, "add-flow", "priority=10,in_port=1,actions=output:1,output:2")
    peers[1].send([frame])
    assert wait_for(lambda: peers[2].recv(), 5)
    flows = lab.ofctl(target, "dump-flows")
    assert re.search(r"n_packets=[1-9]\d*, n_bytes=\d+, priority=10,in_port=1 ", flows), flows


def _group_stats(text):
    """{group id: (packets, bytes, [(packets, bytes) per bucket])} from dump-group-stats."""
    out = {}
    for line in text.splitlines():
        m = re.search(r"group_id=(\d+),.*?packet_count=(\d+),byte_count=(\d+)(.*)", line)
        if m:
            buckets = [(int(p), int(b)) for p, b in re.findall(r"bucket\d+:packet_count=(\d+),byte_count=(\d+)", m.group(4))]
            out[int(m.group(1))] = (int(m.group(2)), int(m.group(3)), buckets)
    return out


def test_group_and_bucket_counters_as_ovs(pair):
    """The same groups, rules and frames on both switches: dump-group-stats counts what went
    through each group and bucket as Open vSwitch does (the frames of cached flows too)."""
    import random
    ovs, target, pipe, peers, _ = pair
    groups = ["group_id=1,type=all,bucket=output:2,bucket=mod_vlan_vid:5,output:2",
              "group_id=2,type=select,bucket=output:1,bucket=output:2",
              "group_id=3,type=indirect,bucket=group:1"]
    rules = ["priority=10,in_port=1,udp,tp_dst=53,actions=group:1",
             "priority=10,in_port=1,udp,tp_dst=54,actions=group:2",
             "priority=10,in_port=1,udp,tp_dst=55,actions=group:3",
             "priority=1,actions=drop"]
    for t in (target, "br0"):
        env = {} if t == target else {"env": ovs.env}
        for g in groups:
            lab.ofctl(t, "add-group", g, **env)
        for r in rules:
            lab.ofctl(t, "add-flow", r, **env)
    base = bytearray.fromhex(UDP)
    rnd = random.Random(7)
    for _ in range(60):
        f = bytearray(base)
        f[36:38] = (53 + rnd.randrange(3)).to_bytes(2, "big")           # tp_dst
        f[34:36] = rnd.randrange(1000, 1010).to_bytes(2, "big")          # tp_src: ten flows each
        ovs.receive("p1", bytes(f))
        peers[1].send([bytes(f)])
    ovs.appctl("revalidator/wait")
    a = _group_stats(lab.ofctl("br0", "dump-group-stats", env=ovs.env))
    b = _group_stats(lab.ofctl(target, "dump-group-stats"))
    assert a[1][0] + a[2][0] == 60 and a[3][0] > 0, a        # group 1 counts what group 3 chains to it
    for g in (1, 3):                       # all, indirect: every bucket as OVS counts it
        assert b[g] == a[g], (g, a, b)
    assert b[2][:2] == a[2][:2], (a, b)   # select: the group's totals; which bucket, by hash
    assert sum(p for p, _ in b[2][2]) == b[2][0] and sum(x for _, x in b[2][2]) == b[2][1], b


def test_groups_and_meters_survive_a_slow_path_crash(pair):
    """The slow path is killed: the one that replaces it has the controller's groups and
    meters as it had its rules (a rule naming a group that no longer exists would drop
    what it matched), and frames go through them as before."""
    import signal
    ovs, target, pipe, peers, _ = pair
    lab.ofctl(target, "add-group", "group_id=5,type=all,bucket=output:1")
    lab.ofctl(target, "add-group", "group_id=6,type=indirect,bucket=group:5")
    lab.ofctl(target, "mod-group", "group_id=5,type=all,bucket=output:2")     # made again after 6
    lab.ofctl(target, "add-meter", "meter=3,pktps,band=type=drop,rate=100000")
    lab.ofctl(target, "add-flow", "in_port=1,actions=meter:3,group:6")
    before = (lab.norm(lab.ofctl(target, "dump-groups")), lab.norm(lab.ofctl(target, "dump-meters")))
    frame = bytes.fromhex(UDP)
    peers[1].send([frame])
    assert wait_for(lambda: peers[2].recv(), 5)
    time.sleep(1.5)                                  # saved with the rules within a second
    st = pipe.stats()
    old = st["upcall"]["slowpath_pid"]
    os.kill(old, signal.SIGKILL)
    assert wait_for(lambda: (lambda s: s["upcall"]["slowpath_pid"] not in (None, old) and s["upcall"]["channel_up"])(
        pipe.stats()), 20)
    def tables():               # (port 0: the new slow path listens on a port of its own)
        t = f"tcp:127.0.0.1:{lab.listen_port(pipe)}"
        a = (lab.norm(lab.ofctl(t, "dump-groups", check=False)), lab.norm(lab.ofctl(t, "dump-meters", check=False)))
        return a if "group_id=6" in a[0] else None
    after = wait_for(tables, 20)
    assert after == before, (before, after)
    src = bytearray(frame)
    src[34:36] = (4321).to_bytes(2, "big")           # a new flow: translated by the new slow path
    peers[1].send([bytes(src)])
    assert wait_for(lambda: peers[2].recv(), 5)
