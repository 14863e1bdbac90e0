"""The NORMAL action's MAC learning table: source MACs learned per VLAN and port, aged
out after `max_age` seconds, bounded in size; every change is reported so the cached
flows that forwarded on the old state get revalidated."""
import time
from collections import OrderedDict

MULTICAST = 1 << 40            # the I/G bit of the first octet, in a 48-bit MAC as int


class MacTable:
    def __init__(self, max_age=300.0, max_entries=8192, clock=time.monotonic):
        self.max_age, self.max_entries, self.clock = max_age, max_entries, clock
        self.entries = OrderedDict()            # (vlan, mac) -> (port, last seen), oldest first
        self.changes = 0                        # bumped on every learn/move/expiry
        self.st = dict(learned=0, moved=0, expired=0, evicted=0)

    def learn(self, vlan, mac, port):
        """Record that `mac` was seen on `port`; returns True when the table changed."""
        if mac & MULTICAST:
            return False
        now, key = self.clock(), (vlan, mac)
        old = self.entries.pop(key, None)
        self.entries[key] = (port, now)
        if old is not None and old[0] == port:
            return False
        if old is None:
            self.st["learned"] += 1
            if len(self.entries) > self.max_entries:
                self.entries.popitem(last=False)
                self.st["evicted"] += 1
        else:
            self.st["moved"] += 1
        self.changes += 1
        return True

    def lookup(self, vlan, mac):
        e = self.entries.get((vlan, mac))
        if e is None or self.clock() - e[1] > self.max_age:
            return None
        return e[0]

    def expire(self):
        now, gone = self.clock(), []
        for key, (_, seen) in self.entries.items():
            if now - seen > self.max_age:
                gone.append(key)
        for key in gone:
            del self.entries[key]
        if gone:
            self.st["expired"] += len(gone)
            self.changes += 1
        return len(gone)

    def show(self):
        now = self.clock()
        return [(port, vlan, mac, int(now - seen)) for (vlan, mac), (port, seen) in self.entries.items()]
