"""The NORMAL action's MAC learning table: source MACs learned per VLAN and port, aged
out after `max_age` seconds, bounded in size; every change is reported so the cached
flows that forwarded on the old state get revalidated. It is kept across slow-path
restarts as a snapshot of entries and their ages (`snapshot`, `restore`)."""
import time
from collections import OrderedDict

MULTICAST = 1 << 40            # the I/G bit of the first octet, in a 48-bit MAC as int
# destinations a switch must not forward (Open vSwitch's eth_addr_is_reserved(): STP, pause
# frames and the other 802.1D group addresses, Extreme's and Cisco's protocol addresses)
RESERVED = frozenset([0x0180C2000000 + i for i in range(16)]
                     + [0x00E02B000000, 0x00E02B000004, 0x00E02B000006, 0x01000C000000, 0x01000CCCCCCC,
                        0x01000CCCCCCD, 0x01000CCDCDCD] + [0x01000CCCCCC0 + i for i in range(8)])


def is_reserved(mac):
    return mac in RESERVED


class MacTable:
    def __init__(self, max_age=300.0, max_entries=8192, clock=time.monotonic):
        self.max_age, self.max_entries, self.clock = max_age, max_entries, clock
        self.entries = OrderedDict()            # (vlan, mac) -> (port, last seen), oldest first
        self.changes = 0                        # bumped on every learn/move/expiry
        self.changed = {}                       # MAC -> its port (None: aged out), since `take_changed`
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
        self.changed[mac] = port
        return True

    def would_change(self, vlan, mac, port):
        """Whether learning `mac` on `port` would add or move an entry."""
        if mac & MULTICAST:
            return False
        e = self.entries.get((vlan, mac))
        return e is None or e[0] != port

    def refresh(self, vlan, mac, port):
        """Traffic of a cached flow says `mac` is still on `port`: keep its entry alive (never
        creates or moves one: cached traffic is from before whatever changed the table)."""
        key = (vlan, mac)
        e = self.entries.get(key)
        if e is not None and e[0] == port:
            self.entries.move_to_end(key)
            self.entries[key] = (port, self.clock())

    def forget_ports(self, ports):
        """Drop the entries learned on `ports` (ports deleted: OVS flushes a port's MACs
        when it goes); returns how many went."""
        gone = [key for key, (port, _) in self.entries.items() if port in ports]
        for key in gone:
            del self.entries[key]
            self.changed[key[1]] = None
        if gone:
            self.st["flushed"] = self.st.get("flushed", 0) + len(gone)
            self.changes += 1
        return len(gone)

    def take_changed(self):
        out, self.changed = self.changed, {}
        return out

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
            self.changed[key[1]] = None
        if gone:
            self.st["expired"] += len(gone)
            self.changes += 1
        return len(gone)

    def show(self):
        now = self.clock()
        return [(port, vlan, mac, int(now - seen)) for (vlan, mac), (port, seen) in self.entries.items()]

    def snapshot(self):
        """Entries with their ages in seconds, oldest first, and the wall-clock time taken."""
        now = self.clock()
        return {"taken": time.time(), "entries": [[vlan, mac, port, round(now - seen, 3)]
                                                  for (vlan, mac), (port, seen) in self.entries.items()]}

    def restore(self, snap):
        """Entries of a snapshot, aged by the time since it was taken; anything malformed
        or past max_age is left out. Returns how many came back."""
        if not isinstance(snap, dict) or not isinstance(snap.get("entries"), list):
            return 0
        taken = snap.get("taken")
        gap = max(0.0, time.time() - taken) if isinstance(taken, (int, float)) else 0.0
        now, n = self.clock(), 0
        for e in snap["entries"][-self.max_entries:]:
            if not (isinstance(e, list) and len(e) == 4 and all(isinstance(x, (int, float)) for x in e)):
                continue
            vlan, mac, port, age = e
            age += gap
            if not (0 <= vlan < 4096 and 0 <= mac < 1 << 48 and not mac & MULTICAST and 0 <= port < 1 << 16
                    and 0 <= age <= self.max_age):
                continue
            self.entries[(int(vlan), int(mac))] = (int(port), now - age)
            n += 1
        return n
