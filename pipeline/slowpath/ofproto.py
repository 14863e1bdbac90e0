"""The switch as the slow path holds it: OpenFlow tables of rules in ovs-ofctl syntax,
and translation of a fast-path flow key into datapath actions plus megaflow mask."""
import math
import time
from collections import deque

CONTROLLER_QUEUE = 1024       # packet-ins waiting for the OpenFlow agent (or for none)

from pipeline.slowpath.classifier import Table
from pipeline.slowpath.fields import flow_from_attrs
from pipeline.slowpath.flowtext import FlowError, format_match, parse_flow
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
        self.ext = None                             # groups and meters (an OpenFlow agent's)
        self.standalone = None                      # tables that replace these while failed open
        self.on_removed = None                      # fn(rule, reason): a rule timed out or was deleted
        self.undo_log = None                        # while a change is open: how to take it back
        for text in flows:
            self.add_flow(parse_flow(text))

    # -- changes that can be taken back (a change that cannot be saved is not made) -------
    def begin(self):
        self.undo_log = []

    def commit(self):
        self.undo_log = None

    def rollback(self):
        for _ in self.rollback_steps():
            pass

    def rollback_steps(self, step=500):
        """rollback, `step` undos at a time (a generator: the caller serves between steps)."""
        log, self.undo_log = self.undo_log or [], None
        for k, undo in enumerate(reversed(log), 1):
            undo()
            if k % step == 0:
                yield None

    def _undo(self, fn):
        if self.undo_log is not None:
            self.undo_log.append(fn)

    def remove(self, r):
        self.tables[r.table].remove(r)
        created = self.created.pop(id(r), None)
        self._undo(lambda: self._insert(r, created))

    def modify(self, r, actions, reset_counts=False):
        """New actions for rule `r` (mod-flows), its counters cleared with reset_counts."""
        old = (r.actions, r.n_packets, r.n_bytes)
        self._undo(lambda: (setattr(r, "actions", old[0]), setattr(r, "n_packets", old[1]),
                            setattr(r, "n_bytes", old[2])))
        r.actions = list(actions)
        if reset_counts:
            r.n_packets = r.n_bytes = 0

    def _insert(self, r, created):
        self.tables.setdefault(r.table, Table(r.table)).insert(r)
        if created is not None:
            self.created[id(r)] = created

    def check_references(self, actions):
        """A rule from the CLI may name only groups and meters the switch has (as
        `ovs-ofctl add-flow` on an OVS bridge: OFPBAC_BAD_OUT_GROUP, OFPMMFC_UNKNOWN_METER);
        rules reloaded at start are not checked: their controller resyncs groups and meters."""
        for a in actions:
            if a[0] in ("group", "meter"):
                have = getattr(self.ext, a[0] + "s", None) if self.ext is not None else None
                if have is None or a[1] not in have:
                    how = "" if self.ext is not None else " (groups and meters come over OpenFlow: [openflow])"
                    raise FlowError(f"{a[0]} {a[1]} does not exist{how}")

    def add_flow(self, rule):
        t = self.tables.setdefault(rule.table, Table(rule.table))
        old = t.by_key.get(rule.key())              # same table, priority and match: replace
        if old is not None:
            self.remove(old)
        t.insert(rule)
        self.created[id(rule)] = rule.used = time.monotonic()
        self._undo(lambda: (t.remove(rule), self.created.pop(id(rule), None)))

    def packet_in(self, in_port, reason, frame, pin=None, before=()):
        """Queue a packet for the controller; a full queue drops and counts. pin: the
        translation's context of the controller action, `before` the datapath actions that
        ran on the packet up to it."""
        if len(self.packet_ins) >= CONTROLLER_QUEUE:
            self.st["controller_dropped"] += 1
            return
        self.packet_ins.append({"in_port": in_port, "reason": reason, "packet": frame, "pin": pin,
                                "before": before})
        self.st["controller_queued"] += 1

    def expire(self, now=None, fresh=None):
        """Remove rules past their hard_timeout, or idle (no packet) past their idle_timeout.
        fresh: the time up to which the fast path's counters have reached the rules (a rule
        the fast path still uses looks idle until they have); default now."""
        now = time.monotonic() if now is None else now
        fresh = now if fresh is None else fresh
        gone, self.idle_unsure = [], False        # idle by now, not yet by the counters it has
        for r in self.rules():
            if (r.hard_timeout and now - self.created.get(id(r), now) >= r.hard_timeout) \
                    or (r.idle_timeout and fresh - r.used >= r.idle_timeout):
                gone.append(r)
            elif r.idle_timeout and now - r.used >= r.idle_timeout:
                self.idle_unsure = True
        for r in gone:
            self.tables[r.table].remove(r)
            if self.on_removed is not None:
                hard = r.hard_timeout and now - self.created.get(id(r), now) >= r.hard_timeout
                self.on_removed(r, "hard_timeout" if hard else "idle_timeout")
            self.created.pop(id(r), None)
        self.st["expired_rules"] = self.st.get("expired_rules", 0) + len(gone)
        return len(gone)

    def dump(self, rules=None):
        """`rules` (default: all) as ovs-ofctl dump-flows lines."""
        from pipeline.slowpath.flowtext import format_rule
        now = time.monotonic()
        return [format_rule(r, {"duration": now - self.created.get(id(r), now)})
                for r in (self.rules() if rules is None else rules)]

    def rules(self):
        for tid in sorted(self.tables):
            yield from sorted(self.tables[tid].rules(), key=lambda r: -r.priority)

    def rule_state(self, rules=None):
        """Per rule (of `rules`, default all): [table, priority, match text, added, last used,
        n_packets, n_bytes]; times on CLOCK_MONOTONIC, which all processes share until a reboot."""
        return [[r.table, r.priority, _match_text(r), self.created.get(id(r), r.used), r.used,
                 r.n_packets, r.n_bytes] for r in (self.rules() if rules is None else rules)]

    def restore_rule_state(self, entries):
        """Counters and times from rule_state() for the rules that are the same rule
        (table, priority, match); returns how many were restored. Anything malformed is
        skipped: it comes from a file."""
        byid = {(r.table, r.priority, _match_text(r)): r for r in self.rules()}
        now, n = time.monotonic(), 0
        for e in entries:
            if not (isinstance(e, list) and len(e) == 7 and all(type(v) is int for v in e[:2] + e[5:])
                    and isinstance(e[2], str) and all(type(v) in (int, float) and math.isfinite(v) for v in e[3:5])
                    and all(0 <= v < 1 << 64 for v in e[5:])):
                continue
            r = byid.get((e[0], e[1], e[2]))
            if r is None:
                continue
            self.created[id(r)] = min(e[3], now)
            r.used = min(e[4], now)
            r.n_packets, r.n_bytes = e[5], e[6]
            n += 1
        return n

    def set_ports(self, ports):
        self.ports = list(ports)

    def translate(self, key_attrs, may_learn=False, touch=True):
        """may_learn: NORMAL learns source MACs (upcalls do; revalidation and trace do not).
        touch: the rules hit count as used now (idle_timeout); revalidation says so itself."""
        tables = self.standalone if self.standalone is not None else self.tables
        res = Xlate(tables, self.ports, self.macs, may_learn, ext=self.ext).translate(flow_from_attrs(key_attrs))
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


def _match_text(rule):
    """The rule's match in canonical text, computed once per rule (a match never changes;
    rules.state names rules by it, for every rule, every second)."""
    text = rule.__dict__.get("match_text")
    if text is None:
        text = rule.__dict__["match_text"] = format_match(rule.match)
    return text
