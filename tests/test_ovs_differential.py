"""Differential test against Open vSwitch, in-process: the same rule sets (several tables,
overlapping priorities, masked prefixes, VLAN push/pop/rewrite, resubmit/goto_table, set
fields) are loaded into a private ovs-vswitchd (dummy datapath) and into valepipe's slow
path; for thousands of generated packets, valepipe's datapath actions must equal
ofproto/trace's (LOCAL included). How often valepipe's megaflow is wider, equal or narrower
than OVS's is printed. tests/test_ovs_pipeline.py compares the frames themselves, through
the running processes."""
import ipaddress
import os
import random
import re

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether

from pipeline.slowpath.fields import FIELDS, flow_from_attrs
from pipeline.slowpath.flowtext import FlowError, parse_flow
from pipeline.slowpath.ofproto import OFProto
from pipeline.slowpath.trace import attrs_of_packet
from tests import ovs_oracle

pytestmark = pytest.mark.skipif(not ovs_oracle.available(), reason="Open vSwitch not installed (`make test` installs it)")
PORTS = [1, 2, 3, 4]
LOCAL = 65534
MACS = ["02:00:00:00:00:01", "02:00:00:00:00:02", "ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01"]


def rule(rng, table):
    proto = rng.choice(["", "ip", "tcp", "udp", "arp", "ipv6"])
    m = [proto] if proto else []
    if rng.random() < 0.5:
        m.append(f"in_port={rng.choice(PORTS)}")
    if rng.random() < 0.3:
        m.append(rng.choice(["dl_vlan=3", "dl_vlan=5", "dl_vlan=0xffff", "dl_vlan_pcp=2",
                             "dl_dst=01:00:00:00:00:00/01:00:00:00:00:00", f"dl_src={rng.choice(MACS[:2])}"]))
    if proto in ("ip", "tcp", "udp") and rng.random() < 0.6:
        m.append(rng.choice(["nw_dst=10.0.0.0/8", "nw_dst=10.1.0.0/16", "nw_src=192.168.0.0/24",
                             "nw_dst=10.1.2.3", "nw_src=192.168.0.7", "ip_dscp=10"]))
    if proto in ("tcp", "udp") and rng.random() < 0.5:
        m.append(rng.choice(["tp_dst=80", "tp_dst=53", "tp_src=1024/0xfc00", "tp_dst=443"]))
    if proto == "ipv6" and rng.random() < 0.5:
        m.append("ipv6_dst=2001:db8::/32")
    if proto == "arp" and rng.random() < 0.5:
        m.append("arp_op=1")
    if rng.random() < 0.2 and table:
        m.append("metadata=0x5")
    out = lambda: f"output:{rng.choice(PORTS)}"  # noqa: E731
    acts = rng.choice([
        [out()], [out(), out()], ["drop"], ["ALL"], ["FLOOD"], ["IN_PORT"],
        ["strip_vlan", out()], [f"mod_vlan_vid:{rng.choice([3, 7])}", out()], ["mod_vlan_pcp:5", out()],
        [f"mod_dl_dst:{rng.choice(MACS[:2])}", out()], [out(), "mod_dl_src:02:00:00:00:00:99", out()],
        ["push_vlan:0x8100", "set_field:4105->vlan_vid", out()],
    ])
    if proto in ("ip", "tcp", "udp") and rng.random() < 0.4:
        acts = rng.choice([["dec_ttl"], ["mod_nw_dst:10.9.9.9"], ["mod_nw_tos:64"],
                           ["mod_nw_src:172.16.0.1", "dec_ttl"]]) + acts
    if proto in ("tcp", "udp") and rng.random() < 0.3:
        acts = ["mod_tp_dst:8080"] + acts
    if table < 3 and rng.random() < 0.35:
        nxt = rng.randrange(table + 1, 4)
        acts = rng.choice([[f"resubmit(,{nxt})"], [f"resubmit({rng.choice(PORTS)},{nxt})"],
                           ["write_metadata:0x5", f"goto_table:{nxt}"], [out(), f"goto_table:{nxt}"]])
    if "drop" in acts:
        acts = ["drop"]
    return ",".join([f"table={table}", f"priority={rng.randrange(1, 100)}"] + m + ["actions=" + ",".join(acts)])


def packet(rng):
    eth = Ether(src=rng.choice(MACS[:2]), dst=rng.choice(MACS))
    vlan = rng.choice([None, None, 3, 5])
    l2 = eth / Dot1Q(vlan=vlan, prio=rng.choice([0, 2])) if vlan else eth
    kind = rng.choice(["tcp", "udp", "udp", "ip", "arp", "ipv6"])
    if kind == "arp":
        return bytes(l2 / ARP(op=rng.choice([1, 2]), psrc="10.0.0.1", pdst=rng.choice(["10.1.2.3", "10.0.0.2"])))
    if kind == "ipv6":
        return bytes(l2 / IPv6(src="2001:db8::1", dst=rng.choice(["2001:db8::2", "fe80::1"]), hlim=rng.choice([2, 64]))
                     / UDP(sport=5, dport=53))
    ip = IP(src=rng.choice(["192.168.0.7", "192.168.0.9", "172.16.1.1"]),
            dst=rng.choice(["10.1.2.3", "10.1.9.9", "10.200.0.1", "8.8.8.8"]), ttl=rng.choice([2, 64]),
            tos=rng.choice([0, 40]))
    l4 = {"tcp": TCP(sport=rng.choice([1024, 1030, 5000]), dport=rng.choice([80, 443, 22])),
          "udp": UDP(sport=rng.choice([1024, 4000]), dport=rng.choice([53, 80])), "ip": b"raw"}[kind]
    return bytes(l2 / ip / l4)


OVS_SET = {("eth", "src"): "dl_src", ("eth", "dst"): "dl_dst", ("ipv4", "src"): "nw_src", ("ipv4", "dst"): "nw_dst",
           ("ipv4", "tos"): "nw_tos", ("ipv4", "ttl"): "nw_ttl", ("ipv6", "src"): "ipv6_src",
           ("ipv6", "dst"): "ipv6_dst", ("ipv6", "tclass"): "nw_tos", ("ipv6", "hlimit"): "nw_ttl",
           ("tcp", "src"): "tp_src", ("tcp", "dst"): "tp_dst", ("udp", "src"): "tp_src", ("udp", "dst"): "tp_dst"}


def _split(text):
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return [t for t in out + [cur] if t]


def _value(field, text):
    f = FIELDS[field]
    v, _, m = text.partition("/")
    conv = {"mac": lambda s: int(s.replace(":", ""), 16), "ipv4": lambda s: int(ipaddress.IPv4Address(s)),
            "ipv6": lambda s: int(ipaddress.IPv6Address(s))}.get(f.kind, lambda s: int(s, 0))
    mask = conv(m) if m else f.full
    return conv(v) & mask, mask


# Each output as (port, header changes made before it, VLAN ops before it), as a sorted
# list: what every port receives, independent of the order a flood visits ports in.
def segments_ovs(text, dp_to_of):
    segs, sets, vlan = [], {}, []
    for tok in _split(text.strip()):
        if tok == "drop":
            continue
        if tok.isdigit():
            segs.append((dp_to_of.get(int(tok)), frozenset(sets.items()), tuple(vlan)))
        elif tok == "pop_vlan":
            vlan.append(("pop",))
        elif tok.startswith("push_vlan("):
            kv = dict(x.split("=") for x in tok[10:-1].split(","))
            vlan.append(("push", int(kv.get("tpid", "0x8100"), 0), int(kv["vid"]), int(kv["pcp"])))
        elif tok.startswith("set("):
            hdr, _, body = tok[4:-1].partition("(")
            for kv in body[:-1].split(","):
                k, v = kv.split("=")
                field = OVS_SET[(hdr, k)]
                sets[field] = _value(field, v)
        else:
            raise AssertionError(f"unexpected OVS datapath action {tok!r} in {text!r}")
    return sorted(segs, key=repr)


def segments_ours(actions):
    segs, sets, vlan = [], {}, []
    for a in actions:
        if a[0] == "output":
            segs.append((a[1], frozenset(sets.items()), tuple(vlan)))
        elif a[0] == "set":
            sets[a[1]] = (a[2] & a[3], a[3])
        elif a[0] == "pop_vlan":
            vlan.append(("pop",))
        elif a[0] == "push_vlan":
            vlan.append(("push", a[1], a[2] & 0xFFF, a[2] >> 13))
    return sorted(segs, key=repr)


def ovs_megaflow_masks(text):
    t = re.sub(r"(^|,)(recirc_id=0|eth|packet_type=[^,]*)(?=,|$)", "", text).strip(",")
    try:
        return {f: m for f, (_, m) in parse_flow(t, mode="match").match.items()}
    except FlowError:
        return None


@pytest.fixture(scope="module")
def ovs():
    o = ovs_oracle.OVS(len(PORTS))
    yield o
    o.close()


@pytest.mark.parametrize("seed", [int(s) for s in os.environ.get("VP_OVS_SEEDS", "1,2,3,4,5").split(",")])
def test_datapath_actions_match_ovs(ovs, seed):
    rng = random.Random(seed)
    texts = []
    for _ in range(rng.randrange(8, 30)):
        t = rule(rng, rng.choice([0, 0, 0, 1, 2, 3]))
        try:
            parse_flow(t)
            texts.append(t)
        except FlowError:
            continue
    ovs.ofctl("del-flows", "br0")
    for t in texts:
        ovs.add_flow(t)
    of = OFProto(texts, ports=PORTS + [LOCAL])
    widths = {"wider": 0, "equal": 0, "narrower": 0, "different": 0, "unparsed": 0}
    for i in range(600):
        pkt, in_port = packet(rng), rng.choice(PORTS)
        dp, mf, full = ovs.trace(in_port, pkt.hex())
        res = of.translate(attrs_of_packet(pkt.hex(), in_port))
        assert segments_ours(res.actions) == segments_ovs(dp, ovs.dp_to_of), \
            f"\nrules:\n  " + "\n  ".join(texts) + f"\npacket {pkt.hex()} in_port={in_port}\n" \
            f"ours: {res.actions}\novs:  {dp}\n{full}"
        theirs = ovs_megaflow_masks(mf)
        if theirs is None:
            widths["unparsed"] += 1
            continue
        ours = {k: v for k, v in res.wc.items() if v and k != "metadata"}
        keys = set(ours) | set(theirs)
        sub = all(ours.get(k, 0) & ~theirs.get(k, 0) == 0 for k in keys)
        sup = all(theirs.get(k, 0) & ~ours.get(k, 0) == 0 for k in keys)
        widths["equal" if sub and sup else "wider" if sub else "narrower" if sup else "different"] += 1
    print(f"seed {seed}: {len(texts)} rules, 600 packets, datapath actions identical; "
          f"valepipe megaflow vs OVS: {widths}")


def _fdb(text):
    rows = set()
    for line in text.splitlines()[1:]:
        p = line.split()
        if len(p) >= 3 and p[0].isdigit():
            rows.add((int(p[0]), int(p[1]), p[2]))
    return rows


def test_normal_matches_ovs(ovs):
    """NORMAL against OVS's: a random packet sequence is traced on both (datapath actions
    must be equal), then both learn from it; their MAC tables must agree throughout."""
    import time
    ovs.ofctl("del-flows", "br0")
    ovs.add_flow("actions=NORMAL")
    ovs.appctl("fdb/flush", "br0")
    of = OFProto(["actions=NORMAL"], ports=PORTS + [LOCAL])
    rng = random.Random(77)
    macs = [f"02:00:00:00:00:{i:02x}" for i in range(1, 7)]
    for i in range(250):
        src, dst = rng.choice(macs), rng.choice(macs + ["ff:ff:ff:ff:ff:ff"])
        eth = Ether(src=src, dst=dst)
        vlan = rng.choice([None, None, 3])
        l2 = eth / Dot1Q(vlan=vlan) if vlan else eth
        pkt = bytes(l2 / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=i + 1, dport=53))
        port = rng.choice(PORTS)
        dp, _, full = ovs.trace(port, pkt.hex())
        res = of.translate(attrs_of_packet(pkt.hex(), port))
        assert segments_ours(res.actions) == segments_ovs(dp, ovs.dp_to_of), f"packet {i}: ours {res.actions}\n{full}"
        ovs.appctl("netdev-dummy/receive", f"p{port}", pkt.hex())
        of.translate(attrs_of_packet(pkt.hex(), port), may_learn=True)
        # every packet goes up on our side here; a cached OVS datapath flow would absorb it
        # without learning (a MAC moving back would then go unnoticed), so empty the cache
        ovs.appctl("dpctl/del-flows", "dummy@ovs-dummy")
        ours = {(p, v, ":".join(f"{(m >> (40 - 8 * k)) & 0xFF:02x}" for k in range(6))) for p, v, m, _ in of.macs.show()}
        deadline = time.monotonic() + 2
        while _fdb(ovs.appctl("fdb/show", "br0")) != ours and time.monotonic() < deadline:
            time.sleep(0.005)                       # OVS learns in its upcall handler thread
        assert _fdb(ovs.appctl("fdb/show", "br0")) == ours, f"after packet {i}"
