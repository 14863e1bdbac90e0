"""Translation: run a flow through the OpenFlow tables and produce what the fast path
caches — datapath actions, and the megaflow mask (`wc`) of every bit that decided them.

Datapath actions: ["output", port], ["set", field, value, mask] (only the bits rules wrote),
["push_vlan", tpid, tci], ["pop_vlan"], ["drop"], ["controller", reason] (slow path only). Modifications are committed lazily,
right before the output that needs them, as Open vSwitch does."""
from dataclasses import dataclass, field

from pipeline.channel import MAX_ACTIONS
from pipeline.slowpath.classifier import unwildcard
from pipeline.slowpath.fields import ETH_IP, ETH_IPV6, FIELDS, VLAN_CFI
from pipeline.slowpath.normal import MULTICAST

MAX_DEPTH = 64
# as Open vSwitch: resubmits in one translation, however they nest (rules that each resubmit
# twice to the next table would otherwise take 2^tables steps); past it the packet is dropped
MAX_RESUBMITS = 4096
L3_FIELDS = ("nw_src", "nw_dst", "ipv6_src", "ipv6_dst", "nw_tos", "nw_ttl")


@dataclass
class Result:
    actions: list
    wc: dict
    trace: list = field(default_factory=list)      # (depth, table, rule or None, note)
    rules: list = field(default_factory=list)      # rules that matched, for their stats
    controller: int = 0
    error: str = ""
    packet_ins: list = field(default_factory=list)  # per controller action: its place and OpenFlow context


class Xlate:
    """Translates against a set of tables; `ports` are the switch's OpenFlow port numbers.
    With a MAC table, NORMAL learns (when `may_learn`, i.e. for real upcalls) and switches."""

    def __init__(self, tables, ports=(), macs=None, may_learn=False, ext=None):
        self.tables = tables                       # table id -> classifier.Table
        self.ports = list(ports)
        self.macs = macs
        self.may_learn = may_learn
        self.ext = ext                             # groups and meters (openflow.groups.Tables), if any

    def translate(self, flow, start=None):
        """start: actions to run instead of looking the flow up in table 0 (a packet-out's)."""
        ctx = _Ctx(self, flow)
        unwildcard(ctx.wc, "in_port", FIELDS["in_port"].full)   # a datapath flow is per input port
        if start is None:
            ctx.table(0, 0)
        else:
            ctx.actions(start, 0, 0)
        if not any(a[0] in ("output", "controller") for a in ctx.out):
            ctx.out = [["drop"]]
        elif len(ctx.out) > MAX_ACTIONS:
            # as Open vSwitch: a translation too big for the datapath drops, with an error
            ctx.error = f"{len(ctx.out)} datapath actions, more than the datapath's {MAX_ACTIONS}"
            ctx.out = [["drop"]]
        return Result(ctx.out, ctx.wc, ctx.trace, ctx.rules, ctx.controller, ctx.error, ctx.pins)


class _Ctx:
    def __init__(self, x, flow):
        self.x = x
        self.flow = dict(flow)
        self.base = dict(flow)                     # what the packet looks like in the datapath now
        self.wc = {}
        self.out = []
        self.trace = []
        self.rules = []
        self.controller = 0
        self.error = ""
        self.stop = False
        self.resubmits = 0
        self.touched = {}                          # field -> bits written by set actions
        self.pins = []                             # packet-ins: where, why, which table and rule
        self.rule, self.tid = None, 0              # the rule whose actions run, and its table

    def table(self, tid, depth, lookup_in_port=None):
        t = self.x.tables.get(tid)
        saved = self.flow["in_port"]
        if lookup_in_port is not None:
            self.flow["in_port"] = lookup_in_port
        rule = t.lookup(self.flow, self.wc) if t is not None else None
        # as Open vSwitch: resubmit's in_port is for the lookup only, not for the actions
        self.flow["in_port"] = saved
        self.trace.append((depth, tid, rule, None))
        if rule is None:
            return                                  # table miss: drop
        self.rules.append(rule)
        outer = self.rule, self.tid
        self.rule, self.tid = rule, tid
        self.actions(rule.actions, tid, depth)
        self.rule, self.tid = outer

    def actions(self, acts, tid, depth):
        for a in acts:
            if self.stop:
                return
            k = a[0]
            if k == "output":
                self.output(a[1])
            elif k == "in_port":
                self.output(self.flow["in_port"], allow_in_port=True)
            elif k in ("flood", "all"):
                for p in self.x.ports:
                    if p != self.flow["in_port"]:
                        self.output(p)
            elif k == "normal":
                self.normal()
            elif k == "drop":
                self.stop = True
            elif k == "controller":
                self.to_controller("action", a[1])
            elif k in ("group", "meter"):
                if self.x.ext is not None:
                    self.x.ext.xlate(self, a, lambda acts: self.actions(acts, tid, depth))
            elif k == "set_field":
                _, f, v, m = a
                self.flow[f] = (self.flow[f] & ~m) | (v & m)
                self.touched[f] = self.touched.get(f, 0) | m
            elif k == "mod_vlan_vid":
                self.vlan_bits(0x0FFF, a[1])
            elif k == "mod_vlan_pcp":
                self.vlan_bits(0xE000, a[1] << 13)
            elif k == "pop_vlan":
                unwildcard(self.wc, "vlan_tci", 0xFFFF)
                self.flow["vlan_tci"] = 0
            elif k == "push_vlan":
                # a new outer tag, VID 0 and PCP 0 until set (as Open vSwitch does); the tag it
                # covers is not modelled further
                unwildcard(self.wc, "vlan_tci", 0xFFFF)
                self.flow["vlan_tci"] = VLAN_CFI
                self.flow["_push"] = a[1]
            elif k == "dec_ttl":
                if self.flow["dl_type"] not in (ETH_IP, ETH_IPV6):
                    continue
                unwildcard(self.wc, "nw_ttl", 0xFF)
                if self.flow["nw_ttl"] <= 1:
                    self.to_controller("invalid_ttl")
                    self.stop = True
                    return
                self.flow["nw_ttl"] -= 1
                self.touched["nw_ttl"] = 0xFF
            elif k == "write_metadata":
                self.flow["metadata"] = (self.flow["metadata"] & ~a[2]) | (a[1] & a[2])
            elif k == "resubmit":
                self.resubmit(a[1], tid if a[2] is None else a[2], depth)
            elif k == "goto_table":
                self.resubmit(None, a[1], depth)

    def to_controller(self, reason, max_len=0xFFFF):
        """A packet-in: only the slow path can do it, so flows with one are not cached."""
        self.controller += 1
        self.commit()
        r = self.rule
        self.pins.append({"at": len(self.out), "reason": reason, "max_len": max_len, "table": self.tid,
                          "cookie": r.cookie if r is not None else 0, "metadata": self.flow["metadata"],
                          "table_miss": r is not None and r.priority == 0 and not r.match})
        self.out.append(["controller", reason])

    def resubmit(self, port, tid, depth):
        self.resubmits += 1
        if self.resubmits > MAX_RESUBMITS:
            self.error = f"over {MAX_RESUBMITS} resubmit actions"
            self.stop = True
            self.out = []                           # dropped: translate() says so
            return
        if depth + 1 >= MAX_DEPTH:
            self.error = f"over max translation depth {MAX_DEPTH}"
            self.stop = True
            return
        self.table(tid, depth + 1, port)

    def vlan_bits(self, mask, value):
        unwildcard(self.wc, "vlan_tci", 0xFFFF)     # the new tag keeps the old tag's other bits
        tci = self.flow["vlan_tci"]
        if not tci & VLAN_CFI:
            tci = VLAN_CFI
            self.flow["_push"] = 0x8100            # OpenFlow 1.0 mod_vlan_vid tags an untagged packet
        self.flow["vlan_tci"] = (tci & ~mask) | value | VLAN_CFI

    def normal(self):
        """A VLAN-aware learning switch, as VALE's and OVS's default: learn the source per
        VLAN and port, send to the learned port, flood unknown, multicast and broadcast."""
        f = self.flow
        for fl, m in (("dl_src", FIELDS["dl_src"].full), ("dl_dst", FIELDS["dl_dst"].full), ("vlan_tci", 0x1FFF)):
            unwildcard(self.wc, fl, m)
        vlan = f["vlan_tci"] & 0xFFF if f["vlan_tci"] & VLAN_CFI else 0
        macs = self.x.macs
        if macs is not None and self.x.may_learn:
            macs.learn(vlan, f["dl_src"], f["in_port"])
        port = macs.lookup(vlan, f["dl_dst"]) if macs is not None and not f["dl_dst"] & MULTICAST else None
        if f["dl_dst"] == f["dl_src"] and not f["dl_src"] & MULTICAST:
            port = f["in_port"]                     # learned before the lookup (OVS): to itself
        if port is None:
            for p in self.x.ports:
                if p != f["in_port"]:
                    self.output(p)
        elif port != f["in_port"]:
            self.output(port)

    def commit(self):
        """Datapath actions that turn `base` into `flow`."""
        f, b = self.flow, self.base
        push = f.pop("_push", None)
        if f["vlan_tci"] != b["vlan_tci"] or push:
            if b["vlan_tci"] & VLAN_CFI and not push:
                self.out.append(["pop_vlan"])       # the outer tag changed or went: replace it
            if f["vlan_tci"] & VLAN_CFI:
                self.out.append(["push_vlan", push or f.get("_tpid") or 0x8100, f["vlan_tci"] & ~VLAN_CFI])
        for name, m in self.touched.items():
            if not self._committable(name):
                continue
            # whether a set is needed depends on the packet's own bits there: consult them
            unwildcard(self.wc, name, m)
            if (f[name] ^ b[name]) & m:
                self.out.append(["set", name, f[name] & m, m])
        self.base = dict(f)

    def _committable(self, name):
        """Open vSwitch's commit rules: no L3 sets when nw_proto is 0 (taken as no L3
        header), no port sets unless IP with a non-zero port. The decision reads those
        fields, so they join the megaflow."""
        b = self.base
        if name in L3_FIELDS:
            unwildcard(self.wc, "dl_type", 0xFFFF)
            unwildcard(self.wc, "nw_proto", 0xFF)
            return b["dl_type"] in (ETH_IP, ETH_IPV6) and b["nw_proto"] != 0
        if name in ("tp_src", "tp_dst"):
            for fl, m in (("dl_type", 0xFFFF), ("nw_proto", 0xFF), ("tp_src", 0xFFFF), ("tp_dst", 0xFFFF)):
                unwildcard(self.wc, fl, m)
            return (b["dl_type"] in (ETH_IP, ETH_IPV6) and b["nw_proto"] in (6, 17, 132)
                    and (b["tp_src"] or b["tp_dst"]))
        return True

    def output(self, port, allow_in_port=False):
        if port == self.flow["in_port"] and not allow_in_port:
            return                                  # OpenFlow: not back out the ingress port
        if self.x.ports and port not in self.x.ports:
            return                                  # no such port: nothing to send (as OVS)
        self.commit()
        self.out.append(["output", port])
