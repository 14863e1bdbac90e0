"""Translation: run a flow through the OpenFlow tables and produce what the fast path
caches — datapath actions, and the megaflow mask (`wc`) of every bit that decided them.

It follows Open vSwitch 3.1's ofproto-dpif-xlate with its defaults (frag handling
`normal`, vlan-limit=1, no controller, every port a VLAN trunk), so that a frame leaves
valepipe exactly as it would leave OVS. Datapath actions: ["output", port],
["set", field, value, mask] (only the bits rules wrote), ["push_vlan", tpid, tci],
["pop_vlan"], ["drop"], ["controller", reason] (slow path only). Modifications are
committed lazily, right before the output that needs them, in OVS's order."""
from dataclasses import dataclass, field

from pipeline.channel import MAX_ACTIONS
from pipeline.slowpath.classifier import unwildcard
from pipeline.slowpath.fields import ETH_IP, ETH_IPV6, FIELDS, VLAN_CFI, vlans_of
from pipeline.slowpath.normal import MULTICAST, is_reserved

MAX_DEPTH = 64                       # nested resubmits to the same or an earlier table
MAX_RESUBMITS = MAX_DEPTH * MAX_DEPTH   # resubmits and goto_tables in one translation
ETH_VLAN_TYPES = (0x8100, 0x88A8)
VID, PCP = 0x0FFF, 0xE000
IPV4_FIELDS = ("nw_src", "nw_dst", "nw_tos", "nw_ttl")
IPV6_FIELDS = ("ipv6_src", "ipv6_dst", "ipv6_label", "nw_tos", "nw_ttl")
# the ARP header's fields: in the flow, and as the datapath sets them
ARP_FIELDS = (("nw_src", "arp_spa"), ("nw_dst", "arp_tpa"), ("nw_proto", "arp_op"), ("arp_sha", "arp_sha"),
              ("arp_tha", "arp_tha"))
# what a set action needs the packet to have (Open vSwitch's mf_field prerequisites)
PREREQS = {"ipv4": lambda f: f["dl_type"] == ETH_IP, "ipv6": lambda f: f["dl_type"] == ETH_IPV6,
           "ip": lambda f: f["dl_type"] in (ETH_IP, ETH_IPV6), "arp": lambda f: f["dl_type"] in (0x0806, 0x8035)}


@dataclass
class Result:
    actions: list
    wc: dict
    trace: list = field(default_factory=list)      # (depth, table, rule or None, note)
    rules: list = field(default_factory=list)      # rules that matched, for their stats
    controller: int = 0
    error: str = ""
    relearn: bool = False      # revalidation: NORMAL would learn something new from this flow
    packet_ins: list = field(default_factory=list)  # per controller action: its place and OpenFlow context
    groups: list = field(default_factory=list)      # OpenFlow groups and buckets it went through, for their stats


class Xlate:
    """Translates against a set of tables; `ports` are the switch's OpenFlow port numbers
    (LOCAL included when the switch has one). With a MAC table, NORMAL learns (when
    `may_learn`, i.e. for real upcalls) and switches."""

    def __init__(self, tables, ports=(), macs=None, may_learn=False, ext=None):
        self.tables = tables                       # table id -> classifier.Table
        self.ports = list(ports)
        self.macs = macs
        self.ext = ext                             # groups and meters (openflow.groups.Tables), if any
        # NORMAL's learning: True (an upcall: learn), False (a trace: nothing), "check"
        # (revalidation: say whether learning would change the table), "refresh" (the
        # same, and keep the source's entry alive: the flow carried packets)
        self.may_learn = may_learn

    def translate(self, flow, start=None):
        """start: actions to run instead of looking the flow up in table 0 (a packet-out's)."""
        ctx = _Ctx(self, flow)
        f = ctx.flow
        # a datapath flow is per input port and ethertype, and IP flows carry their
        # fragment bits (OVS's xlate_actions does the same)
        unwildcard(ctx.wc, "in_port", FIELDS["in_port"].full)
        unwildcard(ctx.wc, "dl_type", 0xFFFF)
        if f["dl_type"] in (ETH_IP, ETH_IPV6):
            unwildcard(ctx.wc, "nw_frag", 3)
        if start is not None:
            ctx.actions(start)
        else:
            rule = ctx.lookup(0, f["in_port"])
            ctx.trace.append((0, 0, rule, None))
            if rule is not None:
                ctx.rules.append(rule)
                ctx.rule = rule
                ctx.actions(rule.actions)
        if ctx.error:
            ctx.out = []                           # as OVS: an error drops the packet
        if not any(a[0] in ("output", "controller") for a in ctx.out):
            ctx.out = [["drop"]]
        elif len(ctx.out) > MAX_ACTIONS:
            # as Open vSwitch: a translation too big for the datapath drops, with an error
            ctx.error = f"{len(ctx.out)} datapath actions, more than the datapath's {MAX_ACTIONS}"
            ctx.out = [["drop"]]
        ctx.finish_wc()
        return Result(ctx.out, ctx.wc, ctx.trace, ctx.rules, ctx.controller, ctx.error, ctx.relearn, ctx.pins,
                      getattr(ctx, "groups", []))


_vlans = vlans_of


def _count_vlans(vlans):
    n = 0
    while n < len(vlans) and vlans[n][1] & VLAN_CFI:
        n += 1
    return n


class _Ctx:
    def __init__(self, x, flow):
        self.x = x
        self.flow = dict(flow)
        self.flow["vlans"] = _vlans(flow)
        self.flow["vlan_tci"] = self.flow["vlans"][0][1]
        self.base = dict(self.flow)                 # what the packet looks like in the datapath now
        self.base["vlans"] = _vlans(self.flow)
        self.wc = {}
        self.out = []
        self.trace = []
        self.rules = []
        self.controller = 0
        self.error = ""
        self.depth = 0                             # nesting of deepening resubmits
        self.resubmits = 0
        self.table_id = 0
        self.nest = 0                              # resubmit nesting, for the trace
        self.relearn = False
        self.pins = []                             # packet-ins: where, why, which table and rule
        self.rule = None                           # the rule whose actions run

    # -- tables ------------------------------------------------------------------------
    def lookup(self, tid, in_port):
        """A rule of table `tid` for the flow as if it came in on `in_port` (resubmit's
        port is for the lookup only). Fragments are looked up with transport ports 0
        (frag handling `normal`), the ports themselves stay for the actions."""
        t = self.x.tables.get(tid)
        if t is None:
            return None
        f = self.flow
        saved = f["in_port"], f["tp_src"], f["tp_dst"]
        f["in_port"] = in_port
        if f["nw_frag"] & 1:
            f["tp_src"] = f["tp_dst"] = 0
        f["vlan_tci"] = f["vlans"][0][1]
        try:
            return t.lookup(f, self.wc)
        finally:
            f["in_port"], f["tp_src"], f["tp_dst"] = saved

    def table(self, tid, in_port):
        """resubmit/goto_table, bounded as Open vSwitch bounds it (then drop with an error)."""
        if self.depth >= MAX_DEPTH:
            self.error = f"over max translation depth {MAX_DEPTH}"
            return
        if self.resubmits >= MAX_RESUBMITS:
            self.error = f"over {MAX_RESUBMITS} resubmit actions"
            return
        old = self.table_id
        deepens = tid <= old
        rule = self.lookup(tid, in_port)
        self.nest += 1
        self.trace.append((self.nest, tid, rule, None))
        self.resubmits += 1                         # a miss runs OVS's empty miss rule
        self.table_id = tid
        self.depth += deepens
        if rule is not None:
            self.rules.append(rule)
            outer, self.rule = self.rule, rule
            self.actions(rule.actions)
            self.rule = outer
        self.depth -= deepens
        self.table_id = old
        self.nest -= 1

    # -- actions -----------------------------------------------------------------------
    def actions(self, acts):
        f, wc = self.flow, self.wc
        for a in acts:
            if self.error:
                return
            k = a[0]
            if k == "output":
                if a[1] != f["in_port"]:
                    self.output(a[1])
            elif k == "in_port":
                self.output(f["in_port"])
            elif k in ("flood", "all"):
                for p in self.x.ports:
                    if p != f["in_port"]:
                        self.output(p)
            elif k == "normal":
                self.normal()
            elif k == "drop":
                pass                                # an empty action list: nothing to do
            elif k == "controller":
                self.to_controller("action", a[1])
            elif k in ("group", "meter"):
                if self.x.ext is not None:
                    self.x.ext.xlate(self, a, self.actions)
            elif k == "set_field":
                _, fld, v, m, prereq = a
                if prereq is None or self.prereq_ok(prereq):
                    unwildcard(wc, fld, m)
                    f[fld] = (f[fld] & ~m) | (v & m)
            elif k in ("mod_vlan_vid", "set_vlan_vid"):
                self.set_vlan(VID, a[1])
            elif k == "mod_vlan_pcp":
                self.set_vlan(PCP, a[1] << 13)
            elif k == "set_vlan_pcp":
                # set_field on vlan_pcp needs a tag there (OVS's prerequisite), pushes none
                unwildcard(wc, "vlan_tci", VLAN_CFI)
                if f["vlans"][0][1] & VLAN_CFI:
                    self.set_vlan(PCP, a[1] << 13)
            elif k == "pop_vlan":
                v = f["vlans"]
                n = _count_vlans(v)
                unwildcard(wc, "vlan_tci", VLAN_CFI)   # how many tags: the fast path's key says it
                if n > 1:
                    unwildcard(wc, "vlan_tci", 0xFFFF)
                if n:
                    del v[0]
                    v.append([0, 0])
            elif k == "push_vlan":
                unwildcard(wc, "vlan_tci", VLAN_CFI)
                if _count_vlans(f["vlans"]):
                    unwildcard(wc, "vlan_tci", 0xFFFF)
                f["vlans"] = [[a[1], VLAN_CFI], f["vlans"][0]]
            elif k == "dec_ttl":
                unwildcard(wc, "nw_ttl", 0xFF)
                if f["dl_type"] not in (ETH_IP, ETH_IPV6):
                    continue
                if f["nw_ttl"] > 1:
                    f["nw_ttl"] -= 1
                    continue
                self.to_controller("invalid_ttl")
                return                              # OVS stops this action list only
            elif k == "write_metadata":
                f["metadata"] = (f["metadata"] & ~a[2]) | (a[1] & a[2])
            elif k == "resubmit":
                self.table(self.table_id if a[2] is None else a[2], f["in_port"] if a[1] is None else a[1])
            elif k == "goto_table":
                self.table(a[1], f["in_port"])

    def prereq_ok(self, prereq):
        """OVS's mf_are_prereqs_ok(): what it reads joins the megaflow."""
        f, wc = self.flow, self.wc
        unwildcard(wc, "dl_type", 0xFFFF)
        if prereq in PREREQS:
            return PREREQS[prereq](f)
        ip = f["dl_type"] in (ETH_IP, ETH_IPV6)
        if prereq == "l4port":                      # mod_tp_src/dst: any IP, not a later fragment
            return ip and not f["nw_frag"] & 2
        unwildcard(wc, "nw_proto", 0xFF)
        want = {"tcp": 6, "udp": 17, "sctp": 132}.get(prereq)
        if want is not None:
            return ip and f["nw_proto"] == want and not f["nw_frag"] & 2
        if prereq == "icmp":
            return f["dl_type"] == ETH_IP and f["nw_proto"] == 1
        if prereq == "icmp6":
            return f["dl_type"] == ETH_IPV6 and f["nw_proto"] == 58
        if prereq in ("nd", "nd_ns", "nd_na"):           # OVS's is_nd(), and the message kind
            if f["dl_type"] != ETH_IPV6 or f["nw_proto"] != 58:
                return False
            unwildcard(wc, "tp_dst", 0xFFFF)
            if f["tp_dst"]:
                return False
            unwildcard(wc, "tp_src", 0xFFFF)
            return f["tp_src"] in {"nd": (135, 136), "nd_ns": (135,), "nd_na": (136,)}[prereq]
        return False

    def set_vlan(self, mask, value):
        """mod_vlan_vid/mod_vlan_pcp (and set_field on vlan_vid/vlan_pcp): rewrite the outer
        tag's bits, pushing an 802.1Q tag on an untagged packet (OpenFlow 1.0's meaning)."""
        unwildcard(self.wc, "vlan_tci", mask | VLAN_CFI)
        v0 = self.flow["vlans"][0]
        if not v0[0]:
            v0[0] = 0x8100
        v0[1] = (v0[1] & ~mask) | value | VLAN_CFI

    def to_controller(self, reason, max_len=0xFFFF):
        """A packet-in: only the slow path can do it, so flows with one are not cached."""
        self.controller += 1
        self.commit()
        r = self.rule
        self.pins.append({"at": len(self.out), "reason": reason, "max_len": max_len, "table": self.table_id,
                          "cookie": r.cookie if r is not None else 0, "metadata": self.flow["metadata"],
                          "table_miss": r is not None and r.priority == 0 and not r.match})
        self.out.append(["controller", reason])

    def normal(self):
        """OVS's xlate_normal() with its defaults: every port a trunk of all VLANs, reserved
        multicast destinations dropped, the source learned per VLAN and port, the
        destination sent to its learned port or flooded."""
        f, wc = self.flow, self.wc
        unwildcard(wc, "dl_src", FIELDS["dl_src"].full)
        unwildcard(wc, "dl_dst", FIELDS["dl_dst"].full)
        unwildcard(wc, "vlan_tci", VID | VLAN_CFI)
        in_port = f["in_port"]
        if in_port not in self.x.ports:
            return                                  # no input bundle
        vlans = f["vlans"]
        if f["dl_type"] in ETH_VLAN_TYPES and not vlans[0][1] & VLAN_CFI:
            return                                  # a partial VLAN tag
        xvlan = []
        for tpid, tci in vlans:
            if tpid not in ETH_VLAN_TYPES or not tci & VLAN_CFI:
                break
            xvlan.append((tpid, tci & VID, tci & PCP))
        vlan = xvlan[0][1] if xvlan else 0
        if is_reserved(f["dl_dst"]):
            return
        self.gratuitous_arp()                       # consulted by OVS (for bonds): in the megaflow
        macs, learn = self.x.macs, self.x.may_learn
        if macs is not None and learn in ("check", "refresh"):
            # a cached flow never learns: one that would must take its next packet to the
            # slow path (to learn at that packet, as an uncached switch would)
            if macs.would_change(vlan, f["dl_src"], in_port):
                self.relearn = True
            elif learn == "refresh":
                macs.refresh(vlan, f["dl_src"], in_port)
        elif macs is not None and learn:
            macs.learn(vlan, f["dl_src"], in_port)
        port = None
        if macs is not None and not f["dl_dst"] & MULTICAST:
            port = macs.lookup(vlan, f["dl_dst"])
        if f["dl_dst"] == f["dl_src"] and not f["dl_src"] & MULTICAST:
            port = in_port                          # learned just before the lookup (also in a trace)
        if port is None:
            for p in self.x.ports:
                if p != in_port:
                    self.output_normal(p, xvlan)
        elif port != in_port and port in self.x.ports:
            self.output_normal(port, xvlan)

    def gratuitous_arp(self):
        f, wc = self.flow, self.wc
        if f["dl_type"] != 0x0806 or f["dl_dst"] != FIELDS["dl_dst"].full:
            return
        unwildcard(wc, "nw_proto", 0xFF)
        if f["nw_proto"] == 1:
            unwildcard(wc, "nw_src", 0xFFFFFFFF)
            unwildcard(wc, "nw_dst", 0xFFFFFFFF)

    def output_normal(self, port, xvlan):
        """The packet's VLANs as NORMAL sends them: VID and PCP kept, a tag with neither
        (a priority tag of priority 0) removed. Whether a VID-0 tag stays depends on its
        PCP, so the megaflow matches the PCP then. (OVS 3.1's does not: cached, a later
        packet of the flow with the other PCP would go as the first did; translated anew,
        as every packet is here, it goes as valepipe sends it.)"""
        f = self.flow
        if xvlan and not xvlan[0][1]:
            unwildcard(self.wc, "vlan_tci", PCP)
        saved = _vlans(f)
        for i, v in enumerate(f["vlans"]):
            tpid, vid, pcp = xvlan[i] if i < len(xvlan) else (0, 0, 0)
            tci = vid | pcp
            if tci:
                v[0] = tpid or 0x8100
                v[1] = tci | VLAN_CFI
            else:
                v[1] = 0
        self.output(port)
        f["vlans"] = saved

    def output(self, port):
        if port not in self.x.ports:
            return                                  # no such port: nothing to send (as OVS)
        self.commit()
        self.out.append(["output", port])

    # -- commit: datapath actions that turn `base` into `flow` (OVS's commit_odp_actions) --
    def commit(self):
        f, b, wc = self.flow, self.base, self.wc
        for name in ("dl_src", "dl_dst"):
            self._set(name)
        l34 = IPV4_FIELDS + IPV6_FIELDS + ("tp_src", "tp_dst", "nw_proto", "arp_sha", "arp_tha", "nd_target")
        if any(f[k] != b[k] for k in l34):
            # whether (and how) they are written depends on the protocol fields
            unwildcard(wc, "nw_proto", 0xFF)
            if f["nw_proto"]:
                if b["dl_type"] == ETH_IP:
                    for name in IPV4_FIELDS:
                        self._set(name)
                elif b["dl_type"] == ETH_IPV6:
                    for name in IPV6_FIELDS:
                        self._set(name)
                    if b["nw_proto"] == 58:            # neighbour discovery's fields
                        self._set("nd_target")
                        self._set("arp_sha", "nd_sll")
                        self._set("arp_tha", "nd_tll")
                elif b["dl_type"] == 0x0806:
                    for name, dp_name in ARP_FIELDS:
                        self._set(name, dp_name)
                if b["dl_type"] in (ETH_IP, ETH_IPV6) and f["nw_proto"] in (6, 17, 132):
                    self._set("tp_src")
                    self._set("tp_dst")
                elif (f["dl_type"], f["nw_proto"]) in ((ETH_IP, 1), (ETH_IPV6, 58)):
                    # ICMP type and code travel in 8 bits each, and change together
                    new = (f["tp_src"] & 0xFF, f["tp_dst"] & 0xFF)
                    if new != (b["tp_src"] & 0xFF, b["tp_dst"] & 0xFF):
                        unwildcard(wc, "tp_src", 0xFF)
                        unwildcard(wc, "tp_dst", 0xFF)
                        self.out.append(["set", "icmp", new[0] << 8 | new[1], 0xFFFF])
                        b["tp_src"], b["tp_dst"] = new
        self._commit_vlans()

    def _set(self, name, dp_name=None):
        """One header field written where the flow differs from the packet (the bits rules
        wrote are in the megaflow already; the rest of the field stays the packet's)."""
        f, b, wc = self.flow, self.base, self.wc
        if f[name] == b[name]:
            return
        m = wc.get(name, 0) | (f[name] ^ b[name])
        unwildcard(wc, name, m)
        if dp_name == "arp_op" and m == 0xFF:
            self.out.append(["set", dp_name, f[name], 0xFFFF])   # OVS writes the whole 16-bit opcode
        else:
            self.out.append(["set", dp_name or name, f[name] & m, m])
        b[name] = f[name]

    def _commit_vlans(self):
        """Pop the packet's tags that differ from the flow's, counting from the innermost,
        then push the flow's (OVS's commit_vlan_action)."""
        fv, bv = self.flow["vlans"], self.base["vlans"]
        if fv != bv:
            unwildcard(self.wc, "vlan_tci", VLAN_CFI)
        bn, fn = _count_vlans(bv) - 1, _count_vlans(fv) - 1
        while bn >= 0 and fn >= 0 and bv[bn] == fv[fn]:
            bn -= 1
            fn -= 1
        while bn >= 0:
            self.out.append(["pop_vlan"])
            unwildcard(self.wc, "vlan_tci", 0xFFFF)
            bn -= 1
        while fn >= 0:
            self.out.append(["push_vlan", fv[fn][0], fv[fn][1] & ~VLAN_CFI])
            fn -= 1
        self.base["vlans"] = _vlans(self.flow)

    def finish_wc(self):
        """OVS's xlate_wc_finish(): ICMP type/code are 8 bits; any TCI bit means CFI too;
        later fragments have no ports to match."""
        f, wc = self.flow, self.wc
        if (f["dl_type"], f["nw_proto"]) in ((ETH_IP, 1), (ETH_IPV6, 58)):
            for k in ("tp_src", "tp_dst"):
                if k in wc:
                    wc[k] &= 0xFF
        if wc.get("vlan_tci"):
            wc["vlan_tci"] |= VLAN_CFI
        if f["nw_frag"] & 2:
            wc.pop("tp_src", None)
            wc.pop("tp_dst", None)
