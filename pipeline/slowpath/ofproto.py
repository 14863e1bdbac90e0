"""The switch as the slow path holds it: OpenFlow tables of rules in ovs-ofctl syntax,
and translation of a fast-path flow key into datapath actions plus megaflow mask."""
import time
from collections import deque

CONTROLLER_QUEUE = 1024       # packet-ins kept for an OpenFlow agent (none yet)

from pipeline.slowpath.classifier import Table
from pipeline.slowpath.fields import flow_from_attrs
from pipeline.slowpath.flowtext import parse_flow
from pipeline.slowpath.normal import MacTable
from pipeline.slowpath.xlate import Xlate


class OFProto:
    def __init__(self, flows=(), ports=(), mac_age=300.0):
        self.tables = {}
        self.ports = list(ports)
        self.macs = MacTable(max_age=mac_age)
        self.created = {}                           # id(rule) -> time added, for duration
        self.st = dict(translations=0, table_misses=0, controller=0, errors=0, controller_queued=0,
                       controller_dropped=0)
        self.packet_ins = deque()
        for text in flows:
            self.add_flow(parse_flow(text))

    def add_flow(self, rule):
        t = self.tables.setdefault(rule.table, Table(rule.table))
        for old in list(t.rules()):                 # same table, priority and match: replace
            if old.key() == rule.key():
                t.remove(old)
                self.created.pop(id(old), None)
        t.insert(rule)
        self.created[id(rule)] = rule.used = time.monotonic()

    def packet_in(self, in_port, reason, frame):
        """Queue a packet for the controller; a full queue drops and counts."""
        if len(self.packet_ins) >= CONTROLLER_QUEUE:
            self.st["controller_dropped"] += 1
            return
        self.packet_ins.append({"in_port": in_port, "reason": reason, "packet": frame})
        self.st["controller_queued"] += 1

    def expire(self, now=None):
        """Remove rules past their hard_timeout, or idle (no packet) past their idle_timeout."""
        now = time.monotonic() if now is None else now
        gone = [r for r in self.rules()
                if (r.hard_timeout and now - self.created.get(id(r), now) >= r.hard_timeout)
                or (r.idle_timeout and now - r.used >= r.idle_timeout)]
        for r in gone:
            self.tables[r.table].remove(r)
            self.created.pop(id(r), None)
        self.st["expired_rules"] = self.st.get("expired_rules", 0) + len(gone)
        return len(gone)

    def dump(self):
        from pipeline.slowpath.flowtext import format_rule
        now = time.monotonic()
        return [format_rule(r, {"duration": now - self.created.get(id(r), now)}) for r in self.rules()]

    def rules(self):
        for tid in sorted(self.tables):
            yield from sorted(self.tables[tid].rules(), key=lambda r: -r.priority)

    def set_ports(self, ports):
        self.ports = list(ports)

    def translate(self, key_attrs, may_learn=False, touch=True):
        """may_learn: NORMAL learns source MACs (upcalls do; revalidation and trace do not).
        touch: the rules hit count as used now (idle_timeout); revalidation says so itself."""
        res = Xlate(self.tables, self.ports, self.macs, may_learn).translate(flow_from_attrs(key_attrs))
        self.st["translations"] += 1
        if touch:
            now = time.monotonic()
            for r in res.rules:
                r.used = now
        self.st["controller"] += res.controller
        if not res.rules:
            self.st["table_misses"] += 1
        if res.error:
            self.st["errors"] += 1
        return res
