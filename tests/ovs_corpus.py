"""Generated rule sets and frames for the differential tests against Open vSwitch: rules
in ovs-ofctl syntax over several tables (matches with masks, VLAN push/pop/rewrite in any
order, resubmit/goto_table, header rewrites on L2/L3/L4 of IPv4 and IPv6, dec_ttl, NORMAL
behind ACLs, FLOOD/ALL/IN_PORT/LOCAL, CONTROLLER), and frames of every kind (IPv4, IPv6,
ARP, others; TCP/UDP/ICMP/ICMPv6/SCTP; 0-2 VLAN tags; fragments; IP options, IPv6
extension headers; bad checksums; padded, truncated and corrupted frames; broadcast,
multicast and reserved multicast), all drawn from one random.Random."""
import struct

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption
from scapy.layers.inet6 import (ICMPv6EchoRequest, ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6NDOptDstLLAddr,
                                ICMPv6NDOptSrcLLAddr, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                                IPv6ExtHdrHopByHop, IPv6ExtHdrRouting)
from scapy.layers.l2 import ARP, LLC, SNAP, Dot1AD, Dot1Q, Ether
from scapy.layers.sctp import SCTP
from scapy.packet import Raw

LOCAL = 65534
HOSTS = [f"02:00:00:00:00:{i:02x}" for i in range(1, 7)]       # few, so NORMAL sees them move
GROUPS = ["ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01", "33:33:00:00:00:01", "01:80:c2:00:00:00",
          "01:80:c2:00:00:0e", "01:00:0c:cc:cc:cc", "01:00:0c:cc:cc:cd", "01:80:c2:00:00:10"]
V4 = ["10.0.0.1", "10.0.0.2", "10.1.2.3", "10.200.0.9", "192.168.0.7", "172.16.1.1", "224.0.0.5"]
V6 = ["2001:db8::1", "2001:db8::2", "2001:db8:1::7", "fe80::1", "ff02::1", "::1"]
VIDS = [0, 3, 5, 100]
MAX_FRAME = 1400            # room for two pushed tags under a 1500-byte MTU


class Corpus:
    def __init__(self, rng, ports=(1, 2, 3, 4), local=True):
        self.rng = rng
        self.ports = list(ports)
        self.all_ports = self.ports + ([LOCAL] if local else [])

    def pick(self, seq):
        return self.rng.choice(seq)

    def chance(self, p):
        return self.rng.random() < p

    def port_name(self, p):
        return "LOCAL" if p == LOCAL else str(p)

    # -- rules -----------------------------------------------------------------------------
    def rule_sets(self, n):
        kinds = ["tables", "normal", "wild"]
        return [self.rule_set(kinds[i % 3] if i < 3 else self.pick(kinds)) for i in range(n)]

    def rule_set(self, kind):
        """(kind, [rule text]) — rules of up to four tables (eight when wild), distinct
        priorities per table."""
        rules, prios = [], {t: self.rng.sample(range(1, 60000), 40) for t in range(8)}
        if kind == "wild":
            for _ in range(self.rng.randrange(4, 30)):
                rules.append(self.wild_rule(self.rng.randrange(8), prios))
            if self.chance(0.5):
                rules.append(f"table={self.rng.randrange(8)},priority=0,actions=NORMAL")
            return kind, rules
        if kind == "normal":
            # NORMAL behind ACLs, maybe in a later table and with rewrites on the way
            t_norm = self.pick([0, 0, 1])
            if t_norm:
                rules.append(f"table=0,priority=1,actions={self.pick(['goto_table:1', 'resubmit(,1)'])}")
            rules.append(f"table={t_norm},priority=1,actions=NORMAL")
            for _ in range(self.rng.randrange(0, 8)):
                rules.append(self.rule(self.pick([0, t_norm]), prios, acl=True, normal_table=t_norm))
        else:
            for _ in range(self.rng.randrange(6, 28)):
                rules.append(self.rule(self.pick([0, 0, 0, 1, 2, 3]), prios))
        return kind, rules

    def match(self, table):
        r, m = self.rng, []
        proto = self.pick(["", "", "ip", "ipv6", "arp", "tcp", "udp", "icmp", "sctp", "tcp6", "udp6", "icmp6",
                           "dl_type=0x88cc"])
        if proto:
            m.append(proto)
        if self.chance(0.4):
            m.append(f"in_port={self.port_name(self.pick(self.all_ports))}")
        if self.chance(0.3):
            m.append(self.pick(["dl_vlan=3", "dl_vlan=5", "dl_vlan=0", "dl_vlan=0xffff", "dl_vlan_pcp=2",
                                "vlan_tci=0x1000/0x1000", "vlan_tci=0/0x1000"]))
        if self.chance(0.25):
            m.append(self.pick([f"dl_src={self.pick(HOSTS)}", f"dl_dst={self.pick(HOSTS + GROUPS)}",
                                "dl_dst=01:00:00:00:00:00/01:00:00:00:00:00", "dl_src=02:00:00:00:00:00/ff:ff:ff:ff:ff:f8"]))
        v4 = proto in ("ip", "tcp", "udp", "icmp", "sctp")
        v6 = proto in ("ipv6", "tcp6", "udp6", "icmp6")
        if v4 and self.chance(0.5):
            m.append(self.pick(["nw_dst=10.0.0.0/8", "nw_dst=10.1.0.0/16", "nw_src=192.168.0.0/24",
                                "nw_dst=10.0.0.2", "nw_src=10.0.0.1", "nw_dst=224.0.0.0/4"]))
        if v6 and self.chance(0.5):
            m.append(self.pick(["ipv6_dst=2001:db8::/32", "ipv6_src=2001:db8::1", "ipv6_dst=ff02::/16",
                                "ipv6_src=fe80::/10", "ipv6_label=0x12345", "ipv6_label=0/0xf0000"]))
        if (v4 or v6) and self.chance(0.3):
            m.append(self.pick(["ip_dscp=10", "nw_ecn=1", "nw_ecn=3", "nw_ttl=1", "nw_ttl=64", "nw_frag=yes",
                                "nw_frag=first", "nw_frag=later", "nw_frag=no", "nw_frag=not_later"]))
        if proto in ("tcp", "udp", "sctp", "tcp6", "udp6") and self.chance(0.5) and "nw_frag=later" not in m:
            m.append(self.pick(["tp_dst=80", "tp_dst=53", "tp_src=1024/0xfc00", "tp_dst=0x100/0xff00", "tp_src=5"]))
        if proto in ("tcp", "tcp6") and self.chance(0.2) and "nw_frag=later" not in m:
            m.append(self.pick(["tcp_flags=+syn", "tcp_flags=+syn-ack", "tcp_flags=+fin"]))
        if proto == "icmp" and self.chance(0.4):
            m.append(self.pick(["icmp_type=8", "icmp_type=0", "icmp_type=3,icmp_code=1"]))
        if proto == "icmp6" and self.chance(0.4):
            m.append(self.pick(["icmp_type=128", "icmp_type=135", "icmp_type=136",
                                "icmp_type=135,nd_target=2001:db8::2", "icmp_type=135,nd_sll=02:00:00:00:00:01",
                                "icmp_type=136,nd_tll=02:00:00:00:00:02"]))
        if proto == "arp" and self.chance(0.5):
            m.append(self.pick(["arp_op=1", "arp_op=2", "arp_tpa=10.0.0.2", "arp_spa=10.0.0.0/24",
                                f"arp_sha={self.pick(HOSTS)}", "arp_tha=00:00:00:00:00:00"]))
        if table and self.chance(0.2):
            m.append(self.pick(["metadata=0x5", "metadata=0x1/0x1"]))
        return proto, m

    def rule(self, table, prios, acl=False, normal_table=None):
        proto, m = self.match(table)
        out = lambda: self.pick(  # noqa: E731
            [f"output:{self.port_name(self.pick(self.all_ports))}"] * 4 + ["IN_PORT", "FLOOD", "ALL", "LOCAL", "output:9"]
            + (["NORMAL"] if not acl else []) + ["CONTROLLER", "CONTROLLER:100"] * (not acl))
        v4 = proto in ("ip", "tcp", "udp", "icmp", "sctp")
        v6 = proto in ("ipv6", "tcp6", "udp6", "icmp6")
        tagged = any(x.startswith(("dl_vlan=", "dl_vlan_pcp", "vlan_tci=0x1000/")) and x != "dl_vlan=0xffff"
                     for x in m)
        mods = ["mod_dl_src:02:00:00:00:00:99", f"mod_dl_dst:{self.pick(HOSTS)}",
                "set_field:02:00:00:00:00:77->eth_dst", "strip_vlan", "mod_vlan_vid:7", "mod_vlan_pcp:5",
                "push_vlan:0x8100", "push_vlan:0x88a8"]
        if v4:
            mods += ["mod_nw_dst:10.9.9.9", "mod_nw_src:172.16.0.1", "mod_nw_tos:64", "mod_nw_ecn:2",
                     "mod_nw_ttl:3", "dec_ttl", "set_field:10.0.0.0/255.0.0.0->ip_dst"]
        if v6:
            mods += ["set_field:2001:db8::99->ipv6_dst", "set_field:fe80::5->ipv6_src", "mod_nw_tos:32", "dec_ttl",
                     "mod_nw_ecn:1", "mod_nw_ttl:9", "set_field:0xabcde->ipv6_label",
                     "set_field:2001:db8::/32->ipv6_src"]
        if proto == "arp":
            mods += ["set_field:2->arp_op", "set_field:10.9.9.9->arp_spa", "set_field:10.0.0.0/8->arp_tpa",
                     f"set_field:{self.pick(HOSTS)}->arp_sha", "set_field:02:00:00:00:00:77->arp_tha"]
        if proto in ("tcp", "udp", "sctp", "tcp6", "udp6") and "nw_frag=later" not in m:
            l4 = {"tcp": "tcp", "tcp6": "tcp", "udp": "udp", "udp6": "udp", "sctp": "sctp"}[proto]
            mods += ["mod_tp_dst:8080", "mod_tp_src:0", f"set_field:{self.pick([0, 53, 65535])}->{l4}_dst",
                     f"set_field:1234->{l4}_src"]
        if proto == "icmp":
            mods += ["set_field:3->icmp_type", "set_field:0->icmp_code"]
        if proto == "icmp6":
            mods += ["set_field:129->icmpv6_type"]
            if "icmp_type=135" in ",".join(m):
                mods += ["set_field:2001:db8::77->nd_target", "set_field:02:00:00:00:00:66->nd_sll"]
            if "icmp_type=136" in ",".join(m):
                mods += ["set_field:fe80::/16->nd_target", "set_field:02:00:00:00:00:65->nd_tll"]
        if acl:
            acts = self.pick([["drop"], ["drop"], [out()], mods[:1] + [f"resubmit(,{normal_table})"]]) \
                if normal_table else self.pick([["drop"], ["drop"], [f"output:{self.pick(self.ports)}"]])
        else:
            acts = []
            for _ in range(self.rng.randrange(1, 6)):
                acts.append(self.pick(mods) if self.chance(0.5) else out())
            if self.chance(0.1):
                acts = ["drop"]
        goto = None
        if table < 3 and not acl and acts != ["drop"] and self.chance(0.35):
            nxt = self.rng.randrange(table + 1, 4)
            kind = self.pick(["resubmit", "resubmit_port", "goto", "meta_goto", "resubmit_self"])
            if kind == "resubmit":
                acts.insert(self.rng.randrange(len(acts) + 1), f"resubmit(,{nxt})")
            elif kind == "resubmit_port":
                acts.insert(self.rng.randrange(len(acts) + 1),
                            f"resubmit({self.port_name(self.pick(self.all_ports))},{nxt})")
            elif kind == "resubmit_self":
                acts.insert(self.rng.randrange(len(acts) + 1), f"resubmit(,{table})")
            else:
                goto = f"goto_table:{nxt}"
                if kind == "meta_goto":
                    goto = f"write_metadata:{self.pick(['0x5', '0x1/0x1'])}," + goto
        if goto:
            acts.append(goto)
        # rules that need OpenFlow 1.1+ (push_vlan, goto_table, masked set_field) reach Open
        # vSwitch as OF1.3 (tests/ovs_oracle.py needs_of13),
        # where mod_vlan_vid/mod_vlan_pcp mean something else: there, VLAN rewrites are the
        # set_field forms (valid only on a tag the check can see)
        if goto or any(a.startswith("push_vlan") or (a.startswith("set_field") and "/" in a) for a in acts):
            fixed, has_tag = [], tagged
            for a in acts:
                if a.startswith("push_vlan"):
                    has_tag = True
                elif a == "strip_vlan":
                    has_tag = False
                elif a.startswith(("mod_vlan_vid", "mod_vlan_pcp")):
                    if not has_tag:
                        continue
                    a = "set_field:4103->vlan_vid" if a.startswith("mod_vlan_vid") else None
                    if a is None:
                        continue
                fixed.append(a)
            acts = fixed or ["drop"]
        text = ",".join([f"table={table}", f"priority={prios[table].pop()}"] + m + ["actions=" + ",".join(acts)])
        return text

    def wild_rule(self, table, prios):
        """A rule of any fields and values (from the pools or anywhere) and up to eight
        actions of any kind, in any order, to any table: what nobody would write, OVS takes."""
        r = self.rng
        rnd_mac = lambda: ":".join(f"{r.randrange(256):02x}" for _ in range(6))  # noqa: E731
        rnd_v4 = lambda: self.pick(V4) if self.chance(0.6) else ".".join(str(r.randrange(256)) for _ in range(4))  # noqa
        proto = self.pick(["", "ip", "ipv6", "arp", "rarp", "tcp", "udp", "icmp", "sctp", "tcp6", "udp6", "icmp6",
                           "sctp6", f"dl_type=0x{r.randrange(0x600, 0x10000):04x}", "ip,nw_proto=47"])
        m = [proto] if proto else []
        v4 = proto in ("ip", "tcp", "udp", "icmp", "sctp", "ip,nw_proto=47")
        v6 = proto in ("ipv6", "tcp6", "udp6", "icmp6", "sctp6")
        l4 = proto in ("tcp", "udp", "sctp", "tcp6", "udp6", "sctp6")
        pool = [f"in_port={self.port_name(self.pick(self.all_ports + [7]))}",
                f"dl_src={self.pick(HOSTS + [rnd_mac()])}", f"dl_dst={self.pick(HOSTS + GROUPS + [rnd_mac()])}",
                f"dl_dst={rnd_mac()}/{rnd_mac()}", f"dl_vlan={self.pick(VIDS + [r.randrange(4096)])}",
                f"dl_vlan_pcp={r.randrange(8)}", f"vlan_tci=0x{r.randrange(65536):04x}/0x{r.randrange(65536):04x}"]
        if v4 or proto in ("arp", "rarp"):
            pool += [f"nw_src={rnd_v4()}/{r.randrange(33)}", f"nw_dst={rnd_v4()}/{r.randrange(33)}"]
        if v4 or v6:
            pool += [f"nw_tos={r.randrange(64) * 4}", f"nw_ecn={r.randrange(4)}", f"nw_ttl={self.pick([0, 1, 2, 64, 255])}",
                     f"nw_frag={self.pick(['yes', 'no', 'first', 'not_later'])}"]
        if v6:
            pool += [f"ipv6_src={self.pick(V6)}/{r.randrange(129)}", f"ipv6_dst={self.pick(V6)}/{r.randrange(129)}",
                     f"ipv6_label=0x{r.randrange(1 << 20):05x}/0x{r.randrange(1 << 20):05x}"]
        if l4:
            pool += [f"tp_src={r.randrange(65536)}/0x{r.randrange(65536):04x}", f"tp_dst={self.pick([53, 80, 443, 511])}"]
        if proto in ("tcp", "tcp6"):
            pool += [f"tcp_flags={self.pick(['+syn', '-syn+ack', '+fin-rst', '+psh', '0x12/0x3f'])}"]
        if proto == "icmp":
            pool += [f"icmp_type={self.pick([0, 3, 8, 11, r.randrange(256)])}", f"icmp_code={r.randrange(3)}"]
        if proto == "icmp6":
            pool += [f"icmp_type={self.pick([128, 129, 135, 136])}", f"icmp_code={self.pick([0, 0, 1])}"]
        if proto in ("arp", "rarp"):
            pool += [f"arp_op={r.randrange(5)}", f"arp_sha={self.pick(HOSTS)}", f"arp_tha={rnd_mac()}/{rnd_mac()}"]
        if table:
            pool += [f"metadata=0x{r.randrange(16):x}/0x{r.randrange(16):x}"]
        m += r.sample(pool, min(len(pool), r.randrange(0, 4)))
        outs = [f"output:{self.port_name(self.pick(self.all_ports + [9, 0]))}", "IN_PORT", "FLOOD", "ALL", "NORMAL",
                "LOCAL", "CONTROLLER", f"CONTROLLER:{r.randrange(65536)}", "drop"]
        mods = [f"mod_dl_src:{rnd_mac()}", f"mod_dl_dst:{self.pick(HOSTS + GROUPS)}", "strip_vlan", "pop_vlan",
                f"mod_vlan_vid:{self.pick(VIDS + [r.randrange(4096)])}", f"mod_vlan_pcp:{r.randrange(8)}",
                f"push_vlan:{self.pick(['0x8100', '0x88a8'])}", f"set_field:{4096 + r.randrange(4096)}->vlan_vid",
                f"set_field:{rnd_mac()}/{rnd_mac()}->eth_src", "dec_ttl", f"mod_nw_ttl:{r.randrange(256)}",
                f"mod_nw_tos:{r.randrange(64) * 4}", f"mod_nw_ecn:{r.randrange(4)}", f"mod_nw_src:{rnd_v4()}",
                f"mod_nw_dst:{rnd_v4()}", f"mod_tp_src:{r.randrange(65536)}", f"mod_tp_dst:{r.randrange(65536)}",
                f"set_field:{rnd_v4()}/{r.randrange(1, 33)}->ip_src", f"set_field:{self.pick(V6)}->ipv6_dst",
                f"set_field:{self.pick(V6)}/{r.randrange(1, 129)}->ipv6_src", f"set_field:{r.randrange(1 << 20)}->ipv6_label",
                f"set_field:{r.randrange(65536)}->tcp_dst", f"set_field:{r.randrange(65536)}->udp_src",
                f"set_field:{r.randrange(65536)}->sctp_dst", f"set_field:{r.randrange(256)}->icmp_type",
                f"set_field:{r.randrange(256)}->icmpv6_code", f"set_field:{r.randrange(1, 5)}->arp_op",
                f"set_field:{rnd_v4()}->arp_tpa", f"set_field:{rnd_mac()}->arp_sha",
                f"set_field:{self.pick(V6)}->nd_target", f"set_field:{rnd_mac()}->nd_tll",
                f"resubmit(,{r.randrange(8)})", f"resubmit({self.port_name(self.pick(self.all_ports))},{r.randrange(8)})",
                f"write_metadata:0x{r.randrange(16):x}/0x{r.randrange(16):x}"]
        acts = [self.pick(mods + outs) for _ in range(r.randrange(1, 9))]
        if "drop" in acts:
            acts = ["drop"] if self.chance(0.5) else [a for a in acts if a != "drop"] or ["drop"]
        if table < 7 and self.chance(0.25):
            acts.append(f"goto_table:{r.randrange(table + 1, 8)}")
        return ",".join([f"table={table}", f"priority={prios[table].pop()}"] + m + ["actions=" + ",".join(acts)])

    # -- frames ----------------------------------------------------------------------------
    def frames(self, n, move_macs=False):
        """[(in_port, frame)]; sources keep to a port unless move_macs (then they move).
        Half the frames repeat an earlier one's headers (same flow: cached answers are used)
        with another payload byte, so the caches are exercised, not only the slow path."""
        home = {mac: self.pick(self.all_ports) for mac in HOSTS}
        out = []
        for _ in range(n):
            if out and self.chance(0.5):
                port, frame = self.pick(out[-40:])
                if len(frame) > 60 and self.chance(0.5):
                    b = bytearray(frame)
                    b[-1] = self.rng.randrange(256)          # payload (or padding): same flow
                    frame = bytes(b)
                out.append((port, frame))
                continue
            src = self.pick(HOSTS)
            if move_macs and self.chance(0.03):
                home[src] = self.pick(self.all_ports)
            port = home[src] if self.chance(0.9) else self.pick(self.all_ports)
            out.append((port, self.frame(src)))
        return out

    def frame(self, src=None):
        r = self.rng
        src = src or self.pick(HOSTS)
        dst = self.pick(HOSTS + GROUPS) if self.chance(0.8) else self.pick(GROUPS)
        if self.chance(0.03):
            src = self.pick(GROUPS)                         # a multicast source: never learned
        tags = self.pick([[], [], [], [0x8100], [0x8100], [0x88A8], [0x8100, 0x8100], [0x88A8, 0x8100]])
        l3 = self.l3()
        macs = bytes.fromhex(dst.replace(":", "")) + bytes.fromhex(src.replace(":", ""))
        if isinstance(l3, bytes):                           # an EtherType with some payload
            pkt = macs + l3 + bytes(r.randrange(0, 60))
        elif isinstance(l3, LLC):                           # 802.3: a length, then LLC (SNAP)
            body = bytes(l3) + bytes(r.randrange(0, 40))
            pkt = macs + struct.pack("!H", len(body)) + body
        else:
            pkt = bytes(Ether(src=src, dst=dst) / l3)
        for tpid in reversed(tags):
            tci = (r.randrange(8) << 13) | (r.randrange(2) << 12) | self.pick(VIDS)
            if self.chance(0.15):
                tci = 0                                     # a priority-0 tag without a VLAN
            pkt = pkt[:12] + struct.pack("!HH", tpid, tci) + pkt[12:]
        pkt = self.damage(pkt)
        end = _arp_end(pkt)
        if end and len(pkt) < end:
            # Open vSwitch rewrites ARP fields without a length check: on a frame that ends
            # inside the ARP header it writes past the end of its buffer (undefined; a short
            # enough frame crashes ovs-vswitchd), so such frames are not sent to it
            pkt += bytes(end - len(pkt))
        return pkt[:MAX_FRAME]

    def damage(self, pkt):
        r = self.rng
        roll = r.random()
        if roll < 0.06:                                     # padded past the IP length
            pkt += bytes(r.randrange(1, 30))
        elif roll < 0.12 and len(pkt) > 15:                 # truncated anywhere
            pkt = pkt[:r.randrange(14, len(pkt))]
        elif roll < 0.18:                                   # a few bytes corrupted
            b = bytearray(pkt)
            for _ in range(r.randrange(1, 4)):
                b[r.randrange(12, len(b))] = r.randrange(256)
            pkt = bytes(b)
        return pkt

    def l3(self):
        r = self.rng
        kind = self.pick(["ip"] * 6 + ["ipv6"] * 4 + ["arp", "arp", "rarp", "other", "llc"])
        if kind == "rarp":
            return struct.pack("!HHHBBH", 0x8035, 1, 0x0800, 6, 4, self.pick([3, 4])) + bytes(20)
        if kind == "arp":
            op = self.pick([1, 2, 1, 3])
            spa = self.pick(V4)
            tpa = spa if self.chance(0.2) else self.pick(V4)    # gratuitous, sometimes
            return ARP(op=op, hwsrc=self.pick(HOSTS), psrc=spa, pdst=tpa, hwdst=self.pick(HOSTS + ["00:00:00:00:00:00"]))
        if kind == "other":
            return struct.pack("!H", self.pick([0x88CC, 0x9000, 0x8847, 0x0842]))
        if kind == "llc":
            if self.chance(0.5):
                return LLC(dsap=0xAA, ssap=0xAA, ctrl=3) / SNAP(OUI=0, code=self.pick([0x0800, 0x0806, 0x0101]))
            return LLC(dsap=0x42, ssap=0x42, ctrl=3) / Raw(bytes(r.randrange(0, 40)))
        if kind == "ip":
            ip = IP(src=self.pick(V4), dst=self.pick(V4), ttl=self.pick([0, 1, 2, 64, 255]), tos=r.randrange(256),
                    id=r.randrange(65536))
            if self.chance(0.15):
                ip.options = [IPOption(b"\x01" * (4 * r.randrange(1, 6) - 1) + b"\x00")]
            if self.chance(0.15):
                ip.flags, ip.frag = self.pick([(1, 0), (0, 7), (1, 100), (0, 1)])
            l4 = self.l4(v6=False)
            pkt = ip / l4
            if self.chance(0.08):
                pkt = IP(bytes(pkt))
                pkt.chksum = r.randrange(65536)             # a wrong header checksum
            return pkt
        ip = IPv6(src=self.pick(V6), dst=self.pick(V6), hlim=self.pick([0, 1, 2, 64]), tc=r.randrange(256),
                  fl=r.randrange(1 << 20))
        if self.chance(0.3):
            if self.chance(0.15):                           # an authentication header (12 bytes) first
                ip.nh = 51
                nxt = self.pick([17, 6, 58])
                return ip / Raw(bytes([nxt, 1, 0, 0]) + r.randbytes(8) + bytes(self.l4(v6=True))[:60])
            for h in self.rng.sample(["hop", "dst", "rt", "frag"], r.randrange(1, 4)):
                ip = ip / {"hop": IPv6ExtHdrHopByHop(), "dst": IPv6ExtHdrDestOpt(),
                           "rt": IPv6ExtHdrRouting(segleft=self.pick([0, 0, 1]), addresses=["2001:db8::5"]),
                           "frag": IPv6ExtHdrFragment(offset=self.pick([0, 0, 9]), m=r.randrange(2),
                                                      id=r.randrange(1 << 32))}[h]
        return ip / self.l4(v6=True)

    def l4(self, v6):
        r = self.rng
        pay = bytes(r.randrange(0, 48))
        kind = self.pick(["tcp", "udp", "udp", "icmp", "sctp", "raw"])
        if kind == "tcp":
            t = TCP(sport=self.pick([80, 1024, 1030, 5, 443]), dport=self.pick([80, 53, 443, 22, 0x1ff]),
                    flags=r.randrange(256), seq=r.randrange(1 << 32))
            if self.chance(0.2):
                t.options = [("MSS", 1460), ("NOP", None), ("WScale", 7)]
            return self.bad_csum(t / pay)
        if kind == "udp":
            u = UDP(sport=self.pick([53, 1024, 5, 4000]), dport=self.pick([53, 80, 0x1ff, 123]))
            if self.chance(0.2):
                u.chksum = 0                                # no checksum (IPv4)
            return self.bad_csum(u / pay)
        if kind == "sctp":
            return SCTP(sport=self.pick([5, 1024]), dport=self.pick([80, 9]), tag=r.randrange(1 << 32)) / pay
        if kind == "raw":
            return Raw(pay)
        if v6:
            return self.pick([ICMPv6EchoRequest(id=r.randrange(65536)) / pay,
                              ICMPv6ND_NS(tgt=self.pick(V6)) / ICMPv6NDOptSrcLLAddr(lladdr=self.pick(HOSTS)),
                              ICMPv6ND_NA(tgt=self.pick(V6)) / ICMPv6NDOptDstLLAddr(lladdr=self.pick(HOSTS))])
        return self.bad_csum(ICMP(type=self.pick([0, 8, 3, 11]), code=self.pick([0, 1])) / pay)

    def bad_csum(self, l4):
        if self.chance(0.08):
            l4.chksum = self.rng.randrange(65536)
        return l4


def _arp_end(pkt):
    """Where an ARP header ends in the frame as OVS parses it (one tag, SNAP), or None."""
    off = 12
    et = int.from_bytes(pkt[12:14], "big")
    if et in (0x8100, 0x88A8) and len(pkt) >= 18:
        off, et = 16, int.from_bytes(pkt[16:18], "big")
    l3 = off + 2
    if et < 0x600 and pkt[l3:l3 + 6] == b"\xaa\xaa\x03\x00\x00\x00" and len(pkt) >= l3 + 8:
        et, l3 = int.from_bytes(pkt[l3 + 6:l3 + 8], "big"), l3 + 8
    return l3 + 28 if et == 0x0806 else None
