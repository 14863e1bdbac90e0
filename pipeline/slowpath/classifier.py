"""OpenFlow tables as tuple-space search: one subtable per distinct mask, visited in
order of their highest priority, each looked up in stages (metadata -> L2 -> L3 -> L4)
so a miss can stop early. Every bit a lookup consulted is recorded in `wc`: the
megaflow mask that makes the cached result valid for every packet agreeing on it."""
from pipeline.slowpath.fields import FIELDS

NSTAGES = 4


def unwildcard(wc, field, mask):
    wc[field] = wc.get(field, 0) | mask


class Subtable:
    def __init__(self, mask):
        self.mask = dict(mask)                      # field -> mask (non-zero only)
        self.fields = sorted(mask, key=lambda f: (FIELDS[f].stage, list(FIELDS).index(f)))
        # cumulative field lists per stage present in this mask
        self.stages = []
        for s in range(NSTAGES):
            fs = [f for f in self.fields if FIELDS[f].stage <= s]
            if fs and (not self.stages or len(fs) > len(self.stages[-1])):
                self.stages.append(fs)
        if not self.stages:
            self.stages = [[]]
        self.prefixes = [dict() for _ in self.stages[:-1]]   # stage -> {masked prefix: refcount}
        self.rules = {}                              # full masked key -> [rules], highest priority first
        self.priorities = {}                         # priority -> rules with it
        self._max = -1                               # None: to find again (see max_priority)
        self.hits = 0

    @property
    def max_priority(self):
        # found again when next asked, not on every removal: deleting many rules of
        # distinct priorities, highest first, stays linear (it was quadratic: minutes)
        if self._max is None:
            self._max = max(self.priorities, default=-1)
        return self._max

    def _key(self, fields, values):
        return tuple(values[f] & self.mask[f] for f in fields)

    def insert(self, rule):
        vals = {f: v for f, (v, _) in rule.match.items()}
        for i, fs in enumerate(self.stages[:-1]):
            k = self._key(fs, vals)
            self.prefixes[i][k] = self.prefixes[i].get(k, 0) + 1
        lst = self.rules.setdefault(self._key(self.stages[-1], vals), [])
        lst.append(rule)
        lst.sort(key=lambda r: -r.priority)
        self.priorities[rule.priority] = self.priorities.get(rule.priority, 0) + 1
        if self._max is not None:
            self._max = max(self._max, rule.priority)

    def remove(self, rule):
        vals = {f: v for f, (v, _) in rule.match.items()}
        k = self._key(self.stages[-1], vals)
        lst = self.rules.get(k, [])
        if rule not in lst:
            return False
        lst.remove(rule)
        if not lst:
            del self.rules[k]
        for i, fs in enumerate(self.stages[:-1]):
            pk = self._key(fs, vals)
            self.prefixes[i][pk] -= 1
            if not self.prefixes[i][pk]:
                del self.prefixes[i][pk]
        self.priorities[rule.priority] -= 1
        if not self.priorities[rule.priority]:
            del self.priorities[rule.priority]
            if rule.priority == self._max:
                self._max = None
        return True

    def lookup(self, flow, wc):
        for i, fs in enumerate(self.stages):
            last = i == len(self.stages) - 1
            k = self._key(fs, flow)
            hit = (k in self.rules) if last else (k in self.prefixes[i])
            if not hit or last:
                for f in fs:                         # consulted up to this stage, no further
                    unwildcard(wc, f, self.mask[f])
                if not hit:
                    return None
                self.hits += 1
                return self.rules[k][0]


class Table:
    def __init__(self, table_id):
        self.id = table_id
        self.subtables = {}                          # mask key -> Subtable
        self.by_key = {}                             # Rule.key() -> rule (same priority and match: one rule)
        self._order = None                           # by max priority, highest first; None: to sort again
        self.lookups = self.matched = 0

    @property
    def order(self):
        # sorted when next looked up, not on every change: loading many rules stays linear
        if self._order is None:
            self._order = sorted(self.subtables.values(), key=lambda s: -s.max_priority)
        return self._order

    def insert(self, rule):
        mk = tuple(sorted((f, m) for f, (_, m) in rule.match.items() if m))
        st = self.subtables.get(mk)
        if st is None:
            st = self.subtables[mk] = Subtable(dict(mk))
        st.insert(rule)
        self.by_key[rule.key()] = rule
        self._order = None

    def remove(self, rule):
        mk = tuple(sorted((f, m) for f, (_, m) in rule.match.items() if m))
        st = self.subtables.get(mk)
        if st is None or not st.remove(rule):
            return False
        if not st.rules:
            del self.subtables[mk]
        if self.by_key.get(rule.key()) is rule:
            del self.by_key[rule.key()]
        self._order = None
        return True

    def rules(self):
        for st in self.subtables.values():
            for lst in st.rules.values():
                yield from lst

    def lookup(self, flow, wc):
        self.lookups += 1
        best = None
        for st in self.order:
            if best is not None and st.max_priority <= best.priority:
                break                                # nothing below can win: not consulted
            r = st.lookup(flow, wc)
            if r is not None and (best is None or r.priority > best.priority):
                best = r
        if best is not None:
            self.matched += 1
        return best
