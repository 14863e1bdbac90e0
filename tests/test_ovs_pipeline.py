"""Differential test through the running processes: generated rule sets (tests/ovs_corpus.py)
go into a running `valepipe run` (four shm: ports and an internal: LOCAL port, rules through
the slow path's control socket, caching on) and into Open vSwitch 3.1 (dummy datapath,
ports capturing what they send, flow-limit=0 so OVS translates every packet anew); the
same generated frames go in, one at a time, on the same ports, through valepipe's worker,
channel, slow path and fast-path execute. Every frame every port sends must be the same,
byte for byte and in order, for every input frame.

The seed changes every run and is printed (VP_DIFF_SEED=N replays one); VP_DIFF_FRAMES and
VP_DIFF_SETS size the run (`make test`: 3,000 frames over 6 rule sets)."""
import os
import random
import socket
import time

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, \
    IPv6ExtHdrRouting
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.layers.sctp import SCTP

from pipeline import control
from pipeline.slowpath.flowtext import FlowError, parse_flow
from tests import ovs_oracle
from tests.conftest import wait_for
from tests.ovs_oracle import PcapTail
from tests.ovs_corpus import LOCAL, Corpus
from tests.test_e2e import Peer

pytestmark = pytest.mark.skipif(not ovs_oracle.available(), reason="Open vSwitch not installed (`make test` installs it)")
PORTS = (1, 2, 3, 4)
FRAMES = int(os.environ.get("VP_DIFF_FRAMES", "3000"))
SETS = int(os.environ.get("VP_DIFF_SETS", "6"))
ETH_P_ALL = 3


class HostSide:
    """The host-stack side of the internal port: frames go in through an AF_PACKET socket on
    the interface. What the pipeline sends the host is read from the port's mirror (the host
    stack itself would drop some of the generated frames before a socket could see them,
    such as a VLAN TPID with no tag after it)."""

    def __init__(self, ns, ifname, mirror):
        from bindings.adapter import in_netns
        with in_netns(ns):
            self.sk = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            self.sk.bind((ifname, 0))
        self.mirror = PcapTail(mirror)

    def send(self, frame):
        assert self.sk.send(frame) == len(frame)

    def drain(self):
        return self.mirror.read()

    def close(self):
        self.sk.close()


def _config(tag, local, mirror):
    out = [f'[pipeline]\nname = "{tag}"\nrun_dir = "@RUN@"\nupcall_rate = 0\n']
    for i in PORTS:
        out.append(f'[[port]]\nuri = "shm:{tag}{i}"\nslots = 256\nofport = {i}\n')
    if local:
        out.append(f'[[port]]\nuri = "internal:{local[1]}@netns={local[0]}"\nmirror = "{mirror}"\n')
    return "\n".join(out)


class Valepipe:
    """The running pipeline and its port peers."""

    def __init__(self, pipe, tag, local, mirror):
        self.pipe = pipe
        self.ctl = pipe.ctl
        self.sp = os.path.join(pipe.dir, "run", "slowpath.ctl")
        self.peers = {i: Peer(f"shm:{tag}{i}") for i in PORTS}
        self.host = HostSide(*local, mirror) if local else None
        self.received = pipe.stats()["packets"]

    def send(self, port, frame):
        if port == LOCAL:
            self.host.send(frame)
        else:
            assert self.peers[port].port.send([frame]) == 1
        self.received += 1

    def settle(self, timeout=30.0):
        """Until the worker took every frame sent and nothing is left in flight: no upcall
        waiting for its answer, no revalidation round running."""
        deadline = time.monotonic() + timeout
        while True:
            st = control.request(self.ctl, "stats")
            u = st["upcall"]
            if st["packets"] >= self.received and u["pending"] == 0 and u["channel_up"] \
                    and u["revalidations_done"] == u["revalidations"]:
                return st
            if time.monotonic() > deadline:
                raise TimeoutError(f"pipeline did not settle: {st['packets']}/{self.received} packets, {u}")
            time.sleep(0.0005)

    def revalidated(self):
        n = control.request(self.ctl, "revalidate")
        assert wait_for(lambda: control.request(self.ctl, "stats")["upcall"]["revalidations_done"] >= n, 30)

    def sent(self, port):
        if port == LOCAL:
            return self.host.drain()
        return self.peers[port].port.recv(1024)

    def close(self):
        for p in self.peers.values():
            p.close()
        if self.host:
            self.host.close()


def _ovs_port(p):
    return "br0" if p == LOCAL else f"p{p}"


def _load(ovs, vp, rules):
    """Load the rules both switches take into both; returns (taken, refused by valepipe
    only, refused by OVS only) — the last two are parity failures of rule syntax. A rule
    with a masked set_field that only OpenFlow 1.0 carries is left out: ovs-ofctl drops
    the mask when it encodes it for OpenFlow 1.0, so its meaning in OVS depends on how it
    was loaded (see README, Known differences)."""
    ovs.ofctl("del-flows", "br0")
    taken, vp_only, ovs_only = [], [], []
    for t in rules:
        try:
            parse_flow(t)
            vp_ok = True
        except FlowError as e:
            vp_ok, why = False, str(e)
        try:
            ovs.add_flow(t)
            ovs_ok = True
        except ovs_oracle.ProtocolDependent:
            continue
        except RuntimeError as e:
            ovs_ok, why = False, str(e)
        if vp_ok and ovs_ok:
            taken.append(t)
        elif vp_ok or ovs_ok:
            (ovs_only if vp_ok else vp_only).append(f"{t}  ({why})")
            if ovs_ok:
                ovs.ofctl("--strict", "del-flows", "br0", t.partition(",actions=")[0])
    control.request(vp.sp, "del-flows", match="")
    if taken:
        control.request(vp.sp, "add-flows", flows=taken)
    ovs.appctl("fdb/flush", "br0")
    control.request(vp.sp, "fdb-flush")
    vp.revalidated()
    return taken, vp_only, ovs_only


def _fdb(ovs):
    """NORMAL's MAC table in Open vSwitch: {(port, vlan, mac)}."""
    rows = set()
    for line in ovs.appctl("fdb/show", "br0").splitlines()[1:]:
        p = line.split()
        if len(p) >= 3:
            rows.add((LOCAL if p[0] == "LOCAL" else int(p[0]), int(p[1]), p[2]))
    return rows


def _vp_fdb(vp):
    return {(p, v, ":".join(f"{(m >> (40 - 8 * k)) & 0xFF:02x}" for k in range(6)))
            for p, v, m, _ in control.request(vp.sp, "fdb-show")}


def _explain(ovs, vp, rules, port, frame, got, want):
    name = "LOCAL" if port == LOCAL else str(port)
    ours = control.request(vp.sp, "trace", flow=f"in_port={name} {frame.hex()}")
    theirs = ovs.appctl("ofproto/trace", "br0", f"in_port={name}", frame.hex())
    return ("\nrules:\n  " + "\n  ".join(rules) + f"\nframe in on {name}: {frame.hex()}\n"
            + "".join(f"port {p}: valepipe sent {[f if isinstance(f, tuple) else f.hex() for f in got.get(p, [])]}\n"
                      f"        OVS sent      {[f if isinstance(f, tuple) else f.hex() for f in want.get(p, [])]}\n"
                      for p in sorted(set(got) | set(want), key=str) if got.get(p) != want.get(p))
            + f"--- valepipe trace ---\n{ours}\n--- OVS trace ---\n{theirs}\n"
            + f"--- valepipe counters ---\n{_counters(vp)}")


def _counters(vp):
    st = control.request(vp.ctl, "stats")
    return {"drops": {k: v for k, v in st["drops"].items() if v},
            "upcall": {k: v for k, v in st["upcall"].items() if v and k in (
                "bad_messages", "stale_replies", "xlate_errors", "execute_dropped", "slow_path_flows")},
            "last_error": st["upcall"].get("last_error")}


@pytest.fixture
def local_port(lab):
    """(namespace, interface) for the internal: port, in a namespace without IPv6 so the
    host stack sends nothing of its own; None when not root (no namespaces)."""
    if os.geteuid() != 0:
        return None
    lb = lab('[[netns]]\nname = "vL@"\n')
    lb.run("vL", "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1", "net.ipv6.conf.all.disable_ipv6=1")
    return lb.name("vL"), lb.name("vpl")


class Switches:
    """Open vSwitch and a running valepipe side by side, same ports, same rules."""

    def __init__(self, uniq, pipeline_factory, local_port, tmp_path):
        self.ports = list(PORTS) + ([LOCAL] if local_port else [])
        self.ovs = ovs_oracle.OVS(len(PORTS), capture=True, flow_limit=0)
        mirror = os.path.join(tmp_path, "local.pcap")
        self.pipe = pipeline_factory(_config(uniq, local_port, mirror))
        self.vp = Valepipe(self.pipe, uniq, local_port, mirror)
        self.rules = []
        self.frames_out = 0

    def load(self, rules):
        taken, vp_only, ovs_only = _load(self.ovs, self.vp, rules)
        self.rules = taken
        return vp_only, ovs_only

    def frame(self, port, frame, compare_fdb=False):
        """One frame in on `port` on both; a description of how they differ, or None."""
        ovs, vp = self.ovs, self.vp
        ovs.receive(_ovs_port(port), frame)
        vp.send(port, frame)
        vp.settle()
        want = {p: v for p in self.ports if (v := ovs.sent(_ovs_port(p)))}
        got = {p: v for p in self.ports if (v := vp.sent(p))}
        self.frames_out += sum(len(v) for v in want.values())
        if compare_fdb and got == want and _fdb(ovs) != _vp_fdb(vp):
            got["fdb"], want["fdb"] = sorted(_vp_fdb(vp)), sorted(_fdb(ovs))
        return _explain(ovs, vp, self.rules, port, frame, got, want) if got != want else None

    def close(self):
        self.vp.close()
        self.ovs.close()


def test_every_frame_identical_to_ovs(uniq, pipeline_factory, local_port, tmp_path):
    seed = int(os.environ.get("VP_DIFF_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"\nseed {seed} (VP_DIFF_SEED={seed} replays this run)")
    rng = random.Random(seed)
    corpus = Corpus(rng, PORTS, local=local_port is not None)
    sw = Switches(uniq, pipeline_factory, local_port, tmp_path)
    mismatches, refused = [], ([], [])
    try:
        for kind, rules in corpus.rule_sets(SETS):
            for mine, theirs in zip(refused, sw.load(rules)):
                mine.extend(theirs)
            for port, frame in corpus.frames(max(1, FRAMES // SETS), move_macs=kind == "normal"):
                diff = sw.frame(port, frame, compare_fdb=kind == "normal")
                if diff:
                    mismatches.append(diff)
                    if len(mismatches) >= 5:
                        break
            if len(mismatches) >= 5:
                break
        st = sw.pipe.stats()
    finally:
        sw.close()
    print(f"{FRAMES} frames in over {SETS} rule sets, {sw.frames_out} out; caching: {st['hits']} exact-match and "
          f"{st['megaflow_hits']} megaflow hits, {st['upcall']['upcall_packets']} upcalls; rules refused by "
          f"valepipe only: {len(refused[0])}, by OVS only: {len(refused[1])}; {len(mismatches)} frames differ")
    assert not mismatches, f"seed {seed}: " + "\n\n".join(mismatches[:3])
    assert not refused[0] and not refused[1], (f"seed {seed}: rules only one switch takes:\n  valepipe refuses: "
                                               + "\n    ".join(refused[0]) + "\n  OVS refuses: "
                                               + "\n    ".join(refused[1]))


def _eth(dst="02:00:00:00:00:02", src="02:00:00:00:00:01"):
    return Ether(src=src, dst=dst)


def _udp_checksum_becomes_zero(dport_after):
    """A valid UDP frame whose checksum, updated for tp_dst=dport_after, comes out 0: two
    payload bytes w chosen so that the one's-complement sum with the new port is 0xffff."""
    from tests.reference_execute import recalc16

    def build(w):
        return bytes(_eth() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=7, dport=53) / w.to_bytes(2, "big"))
    s = ~Ether(build(0))[UDP].chksum & 0xFFFF                 # the sum of everything else
    s += (~53 & 0xFFFF) + dport_after
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    for w in ((~s & 0xFFFF), 0, 0xFFFF):
        f = build(w)
        if recalc16(Ether(f)[UDP].chksum, 53, dport_after) == 0:
            return f
    raise AssertionError("no payload gives a zero checksum")


def _cases():
    """(what, rules, [(in_port, frame)]): each once differed from Open vSwitch."""
    first = IP(src="10.0.0.1", dst="10.0.0.2", flags=1, frag=0)
    later = IP(src="10.0.0.1", dst="10.0.0.2", flags=0, frag=9)
    v6 = IPv6(src="2001:db8::1", dst="2001:db8::2")
    tagged = _eth() / Dot1Q(vlan=5, prio=3) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2)
    deep = [f"table={k},actions=resubmit(,{k + 1}),resubmit(,{k + 1})" for k in range(40)]
    return [
        ("fragments: looked up with ports 0, a first fragment's port still rewritten",
         ["priority=10,tcp,tp_dst=80,actions=output:2", "priority=5,udp,actions=mod_tp_dst:99,output:3",
          "priority=1,ip,actions=output:4"],
         [(1, bytes(_eth() / first / TCP(dport=80) / (b"x" * 20))), (1, bytes(_eth() / later / TCP(dport=80) / b"x")),
          (1, bytes(_eth() / IP() / TCP(dport=80))), (1, bytes(_eth() / first / UDP(dport=53) / (b"y" * 9))),
          (1, bytes(_eth() / later / UDP(dport=53) / (b"y" * 9))),
          (1, bytes(_eth() / IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrFragment(offset=0, m=1)
                    / TCP(dport=80)))]),
        ("pop_vlan, then push_vlan in another table: one tag",
         ["table=0,dl_vlan=5,actions=strip_vlan,resubmit(,1)",
          "table=1,actions=push_vlan:0x8100,set_field:4103->vlan_vid,output:2"],
         [(1, bytes(tagged))]),
        ("a UDP checksum that becomes 0 is sent as 0xffff",
         ["udp,actions=mod_tp_dst:4000,output:2"], [(1, _udp_checksum_becomes_zero(4000))]),
        ("NORMAL drops reserved multicast destinations",
         ["actions=NORMAL"],
         [(1, bytes(_eth(dst=d) / IP() / UDP())) for d in ("01:80:c2:00:00:00", "01:80:c2:00:00:0e",
                                                           "01:00:0c:cc:cc:cc", "01:00:0c:cc:cc:cd",
                                                           "01:80:c2:00:00:10", "ff:ff:ff:ff:ff:ff")]),
        ("two tags: classified on the outer one only (vlan-limit=1)",
         ["priority=10,ip,actions=output:2", "priority=5,dl_type=0x8100,dl_vlan=5,actions=output:3",
          "priority=1,actions=output:4"],
         [(1, bytes(_eth() / Dot1AD(vlan=5) / Dot1Q(vlan=6) / IP() / UDP())),
          (1, bytes(_eth() / Dot1Q(vlan=5) / Dot1Q(vlan=6) / IP() / UDP()))]),
        ("ip_ecn: matched and set",
         ["priority=10,ip,nw_ecn=3,actions=mod_nw_ecn:1,output:2",
          "priority=5,ipv6,actions=set_field:2->ip_ecn,output:3", "priority=1,ip,actions=set_field:1->nw_ecn,output:4"],
         [(1, bytes(_eth() / IP(tos=0xbb) / UDP())), (1, bytes(_eth() / IP(tos=0x10) / UDP())),
          (1, bytes(_eth() / v6 / UDP()))]),
        ("LOCAL: in_port=LOCAL, output:LOCAL, LOCAL in FLOOD/ALL",
         ["priority=10,in_port=LOCAL,actions=output:1,output:LOCAL", "priority=9,in_port=1,actions=LOCAL,output:2",
          "priority=8,in_port=2,actions=FLOOD", "priority=7,in_port=3,actions=ALL,IN_PORT"],
         [(LOCAL, bytes(_eth() / IP() / UDP())), (1, bytes(_eth() / IP() / UDP())), (2, bytes(_eth() / IP())),
          (3, bytes(_eth() / IP()))]),
        ("NORMAL: a priority-0 tag is removed, a priority tag kept",
         ["actions=NORMAL"],
         [(1, bytes(_eth() / Dot1Q(vlan=0, prio=0) / IP() / UDP())),
          (2, bytes(_eth() / Dot1Q(vlan=0, prio=5) / IP() / UDP()))]),
        ("NORMAL: one flow, a priority tag then a priority-0 tag (the megaflow matches the PCP)",
         ["actions=NORMAL"],
         [(2, bytes(_eth(dst="02:00:00:00:00:01", src="02:00:00:00:00:02") / IP())),
          (1, bytes(_eth() / Dot1AD(vlan=0, prio=3) / Dot1Q(vlan=5) / IP() / UDP())),
          (1, bytes(_eth() / Dot1AD(vlan=0, prio=0) / Dot1Q(vlan=5) / IPv6() / UDP())),
          (1, bytes(_eth() / Dot1Q(vlan=0, prio=3) / IP() / UDP())),
          (1, bytes(_eth() / Dot1Q(vlan=0, prio=0) / IP() / UDP()))]),
        ("translation bounded: 4,096 resubmits, or depth 64; an error drops what came before it",
         ["table=0,priority=10,udp,actions=output:2,resubmit(,1)", "table=0,priority=5,actions=output:3,resubmit(,0)"]
         + deep[1:],
         [(1, bytes(_eth() / IP() / UDP())), (1, bytes(_eth() / IP() / TCP()))]),
        ("dec_ttl at TTL 1 ends its own action list only; drop in a resubmitted table ends nothing",
         ["table=0,priority=10,ip,actions=resubmit(,1),output:3", "table=1,priority=10,tcp,actions=drop",
          "table=1,priority=5,actions=dec_ttl,output:2"],
         [(1, bytes(_eth() / IP(ttl=1) / UDP())), (1, bytes(_eth() / IP(ttl=5) / UDP())),
          (1, bytes(_eth() / IP(ttl=5) / TCP()))]),
        ("ICMP type and code, SCTP ports (CRC32C right or wrong), ARP fields, IPv6 flow label, masked sets",
         ["icmp,actions=set_field:3->icmp_type,set_field:1->icmp_code,output:2",
          "sctp,actions=set_field:99->sctp_dst,output:2",
          "arp,actions=set_field:2->arp_op,set_field:10.9.9.9->arp_spa,set_field:02:00:00:00:00:77->arp_tha,output:2",
          "ipv6,actions=set_field:0xabcde->ipv6_label,set_field:2001:db8::/32->ipv6_dst,output:2",
          "tcp,actions=set_field:10.0.0.0/255.0.0.0->ip_dst,output:2"],
         [(1, bytes(_eth() / IP() / ICMP(type=8) / b"ping")), (1, bytes(_eth() / IP() / SCTP(dport=5) / (b"s" * 8))),
          (1, bytes(_eth() / IP() / SCTP(dport=5, chksum=1) / (b"s" * 8))), (1, bytes(_eth() / ARP(op=1))),
          (1, bytes(_eth() / IPv6(src="fe80::1", dst="fe80::2", fl=5) / UDP())),
          (1, bytes(_eth() / IP(src="172.16.0.1", dst="192.168.1.1") / TCP()))]),
        ("IPv6 addresses rewritten behind extension headers, a routing header, an atomic fragment",
         ["ipv6,actions=set_field:2001:db8::99->ipv6_dst,set_field:2001:db8::98->ipv6_src,output:2"],
         [(1, bytes(_eth() / v6 / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / UDP() / b"u")),
          (1, bytes(_eth() / v6 / IPv6ExtHdrRouting(segleft=1, addresses=["2001:db8::5"]) / TCP())),
          (1, bytes(_eth() / v6 / IPv6ExtHdrFragment(offset=0, m=0) / UDP() / b"a")),
          (1, bytes(_eth() / v6 / ICMPv6EchoRequest()))]),
        ("CONTROLLER: the frame is parsed anew after it (one tag deep), later rewrites go where that parse "
         "puts the headers",
         ["priority=10,udp6,actions=push_vlan:0x8100,CONTROLLER,set_field:0xabcde->ipv6_label,output:2",
          "priority=10,udp,actions=push_vlan:0x8100,CONTROLLER,mod_nw_src:10.9.9.9,mod_tp_dst:7,output:2",
          "priority=5,ip,actions=CONTROLLER,mod_nw_ttl:9,output:3,CONTROLLER"],
         [(1, bytes(_eth() / Dot1Q(vlan=0) / v6 / UDP() / b"x")), (1, bytes(_eth() / v6 / UDP() / b"x")),
          (1, bytes(_eth() / Dot1Q(vlan=3) / IP() / UDP() / b"x")), (1, bytes(_eth() / IP() / UDP() / b"x")),
          (1, bytes(_eth() / Dot1Q(vlan=3) / IP() / ICMP())), (1, bytes(_eth() / IP() / ICMP()))]),
        ("MAC moves, and back",
         ["actions=NORMAL"],
         [(1, bytes(_eth() / IP() / UDP())), (2, bytes(_eth(dst="02:00:00:00:00:01", src="02:00:00:00:00:02") / IP())),
          (1, bytes(_eth() / IP() / UDP())), (3, bytes(_eth(dst="02:00:00:00:00:01", src="02:00:00:00:00:02") / IP())),
          (1, bytes(_eth() / IP() / UDP())), (2, bytes(_eth(dst="02:00:00:00:00:01", src="02:00:00:00:00:02") / IP())),
          (1, bytes(_eth() / IP() / UDP()))]),
    ]


def test_cases_that_once_differed(uniq, pipeline_factory, local_port, tmp_path):
    sw = Switches(uniq, pipeline_factory, local_port, tmp_path)
    diffs = []
    try:
        for what, rules, frames in _cases():
            vp_only, ovs_only = sw.load(rules)
            assert not vp_only and not ovs_only, (what, vp_only, ovs_only)
            for port, frame in frames:
                if port == LOCAL and LOCAL not in sw.ports:
                    continue
                diff = sw.frame(port, frame, compare_fdb="NORMAL" in rules[0])
                if diff:
                    diffs.append(f"{what}:{diff}")
    finally:
        sw.close()
    assert not diffs, "\n\n".join(diffs)
