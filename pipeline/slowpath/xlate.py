"""Translation: run a flow through the OpenFlow tables and produce what the fast path
caches — datapath actions, and the megaflow mask (`wc`) of every bit that decided them.

Datapath actions: ["output", port], ["set", field, value, mask] (only the bits rules wrote),
["push_vlan", tpid, tci], ["pop_vlan"], ["drop"]. Modifications are committed lazily,
right before the output that needs them, as Open vSwitch does."""
from dataclasses import dataclass, field

from pipeline.slowpath.classifier import unwildcard
from pipeline.slowpath.fields import ETH_IP, ETH_IPV6, FIELDS, VLAN_CFI

MAX_DEPTH = 64


@dataclass
class Result:
    actions: list
    wc: dict
    trace: list = field(default_factory=list)      # (depth, table, rule or None, note)
    rules: list = field(default_factory=list)      # rules that matched, for their stats
    controller: int = 0
    error: str = ""


class Xlate:
    """Translates against a set of tables; `ports` are the switch's OpenFlow port numbers."""

    def __init__(self, tables, ports=()):
        self.tables = tables                       # table id -> classifier.Table
        self.ports = list(ports)

    def translate(self, flow):
        ctx = _Ctx(self, flow)
        unwildcard(ctx.wc, "in_port", FIELDS["in_port"].full)   # a datapath flow is per input port
        ctx.table(0, 0)
        if not any(a[0] == "output" for a in ctx.out):
            ctx.out = [["drop"]]
        return Result(ctx.out, ctx.wc, ctx.trace, ctx.rules, ctx.controller, ctx.error)


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
        self.touched = {}                          # field -> bits written by set actions

    def table(self, tid, depth):
        t = self.x.tables.get(tid)
        rule = t.lookup(self.flow, self.wc) if t is not None else None
        self.trace.append((depth, tid, rule, None))
        if rule is None:
            return                                  # table miss: drop
        self.rules.append(rule)
        self.actions(rule.actions, tid, depth)

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
                self.controller += 1
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
                # one tag is modelled; pushing over an existing tag keeps its TCI, as OVS does
                unwildcard(self.wc, "vlan_tci", 0xFFFF)
                self.flow["vlan_tci"] = self.flow["vlan_tci"] | VLAN_CFI
                self.flow["_tpid"] = a[1]
            elif k == "dec_ttl":
                if self.flow["dl_type"] not in (ETH_IP, ETH_IPV6):
                    continue
                unwildcard(self.wc, "nw_ttl", 0xFF)
                if self.flow["nw_ttl"] <= 1:
                    self.controller += 1              # invalid_ttl goes to the controller
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

    def resubmit(self, port, tid, depth):
        if depth + 1 >= MAX_DEPTH:
            self.error = f"over max translation depth {MAX_DEPTH}"
            self.stop = True
            return
        saved = self.flow["in_port"]
        if port is not None:
            self.flow["in_port"] = port
        self.table(tid, depth + 1)
        self.flow["in_port"] = saved

    def vlan_bits(self, mask, value):
        unwildcard(self.wc, "vlan_tci", 0xFFFF)     # the new tag keeps the old tag's other bits
        tci = self.flow["vlan_tci"]
        if not tci & VLAN_CFI:
            tci = VLAN_CFI
            self.flow["_tpid"] = 0x8100
        self.flow["vlan_tci"] = (tci & ~mask) | value | VLAN_CFI

    def normal(self):
        # NORMAL comes with MAC learning (issue 3, part 4); until then it floods
        for f in ("dl_src", "dl_dst", "vlan_tci"):
            unwildcard(self.wc, f, FIELDS[f].full)
        for p in self.x.ports:
            if p != self.flow["in_port"]:
                self.output(p)

    def commit(self):
        """Datapath actions that turn `base` into `flow`."""
        f, b = self.flow, self.base
        if f["vlan_tci"] != b["vlan_tci"] or f.get("_tpid") != b.get("_tpid"):
            if b["vlan_tci"] & VLAN_CFI and (not f["vlan_tci"] & VLAN_CFI or f.get("_tpid")):
                self.out.append(["pop_vlan"])
            if f["vlan_tci"] & VLAN_CFI:
                self.out.append(["push_vlan", f.get("_tpid") or 0x8100, f["vlan_tci"] & ~VLAN_CFI])
            f.pop("_tpid", None)
        for name, m in self.touched.items():
            # whether a set is needed depends on the packet's own bits there: consult them
            unwildcard(self.wc, name, m)
            if (f[name] ^ b[name]) & m:
                self.out.append(["set", name, f[name] & m, m])
        self.base = dict(f)

    def output(self, port, allow_in_port=False):
        if port == self.flow["in_port"] and not allow_in_port:
            return                                  # OpenFlow: not back out the ingress port
        self.commit()
        self.out.append(["output", port])
