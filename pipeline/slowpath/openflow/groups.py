"""OpenFlow groups and meters as the switch keeps them, and what translation makes of them:
a group is expanded into the datapath actions of its buckets (ALL: every bucket on a clone
of the packet; SELECT: one bucket by a hash of the flow's addresses and ports, which join
the megaflow; INDIRECT: its bucket; FAST_FAILOVER: the first bucket whose watched port is
live), as Open vSwitch's translation does; a meter becomes a datapath ["meter", slot]
action, a token bucket in the fast path that drops (and counts) what exceeds its band."""
import copy
import struct
import zlib
from dataclasses import dataclass, field

from os_ken.ofproto import ofproto_v1_3 as ofp

from pipeline.slowpath.classifier import unwildcard
from pipeline.slowpath.fields import ETH_IP, ETH_IPV6
from pipeline.slowpath.flowtext import FlowError, parse_actions
from pipeline.slowpath.openflow.codec import OFError
from pipeline.slowpath.openflow.flows import actions_text, port_to_flow

MAX_GROUPS = 4096
MAX_BUCKETS = 64
MAX_METERS = 1024                  # the fast path's meter slots (VP_MAX_METERS)
MAX_GROUP_DEPTH = 8                # groups chained through buckets


@dataclass
class Bucket:
    weight: int
    watch_port: int
    watch_group: int
    actions: list                    # the slow path's rule actions
    raw: object = None               # os-ken's OFPBucket, for group desc
    n_packets: int = 0               # credited as rules are: what the flows through it carried
    n_bytes: int = 0


@dataclass
class Group:
    id: int
    type: int
    buckets: list
    created: float = 0.0
    n_packets: int = 0
    n_bytes: int = 0


@dataclass
class Meter:
    id: int
    flags: int
    bands: list                      # os-ken OFPMeterBandDrop
    slot: int
    created: float = 0.0
    raw_bands: bytes = b""


@dataclass
class Tables:
    """Groups and meters of the switch, and the liveness of its ports (FAST_FAILOVER)."""
    groups: dict = field(default_factory=dict)
    meters: dict = field(default_factory=dict)
    live_ports: set = None           # OpenFlow 1.0 numbers of ports whose link is up; None: all are
    # the group_mod/meter_mod that made each as it is (as an ADD), kept with the rules so a
    # restarted slow path has them (their rules name them): id -> message bytes
    made: dict = field(default_factory=lambda: {"groups": {}, "meters": {}})

    def remember(self, kind, ident, raw, gone):
        """After a successful group_mod/meter_mod: keep `raw` as the ADD that makes `ident`
        (None for a delete) and forget the ids `gone`."""
        table = self.made[kind]
        for i in gone:
            table.pop(i, None)
        if ident is not None:
            table.pop(ident, None)                  # to the end: made after what it names
            table[ident] = raw[:8] + struct.pack("!H", 0) + raw[10:]     # command: ADD (0)

    # -- groups ------------------------------------------------------------------------------
    def group_mod(self, m, now):
        """Apply a group_mod; returns the groups deleted (their rules go too)."""
        gid, cmd = m.group_id, m.command
        if cmd == ofp.OFPGC_DELETE:
            return _delete(self.groups, gid, ofp.OFPG_ALL)
        if gid > ofp.OFPG_MAX:
            raise OFError(ofp.OFPET_GROUP_MOD_FAILED, ofp.OFPGMFC_INVALID_GROUP, f"group id {gid:#x}")
        if cmd not in (ofp.OFPGC_ADD, ofp.OFPGC_MODIFY):
            raise OFError(ofp.OFPET_GROUP_MOD_FAILED, ofp.OFPGMFC_BAD_COMMAND, f"group command {cmd}")
        if cmd == ofp.OFPGC_ADD and gid in self.groups:
            raise OFError(ofp.OFPET_GROUP_MOD_FAILED, ofp.OFPGMFC_GROUP_EXISTS, f"group {gid} exists")
        if cmd == ofp.OFPGC_MODIFY and gid not in self.groups:
            raise OFError(ofp.OFPET_GROUP_MOD_FAILED, ofp.OFPGMFC_UNKNOWN_GROUP, f"group {gid} does not exist")
        if cmd == ofp.OFPGC_ADD and len(self.groups) >= MAX_GROUPS:
            raise OFError(ofp.OFPET_GROUP_MOD_FAILED, ofp.OFPGMFC_OUT_OF_GROUPS, f"{MAX_GROUPS} groups")
        t = m.group_type
        if t not in (ofp.OFPGT_ALL, ofp.OFPGT_SELECT, ofp.OFPGT_INDIRECT, ofp.OFPGT_FF):
            raise OFError(ofp.OFPET_GROUP_MOD_FAILED, ofp.OFPGMFC_BAD_TYPE, f"group type {t}")
        if len(m.buckets) > MAX_BUCKETS:
            raise OFError(ofp.OFPET_GROUP_MOD_FAILED, ofp.OFPGMFC_OUT_OF_BUCKETS, f"{len(m.buckets)} buckets")
        if t == ofp.OFPGT_INDIRECT and len(m.buckets) != 1:
            raise OFError(ofp.OFPET_GROUP_MOD_FAILED, ofp.OFPGMFC_INVALID_GROUP, "an indirect group has one bucket")
        buckets = []
        for b in m.buckets:
            if t == ofp.OFPGT_SELECT and b.weight == 0 and len(m.buckets) > 1:
                raise OFError(ofp.OFPET_GROUP_MOD_FAILED, ofp.OFPGMFC_WEIGHT_UNSUPPORTED, "select bucket of weight 0")
            if t == ofp.OFPGT_FF and b.watch_port == ofp.OFPP_ANY and b.watch_group == ofp.OFPG_ANY:
                raise OFError(ofp.OFPET_GROUP_MOD_FAILED, ofp.OFPGMFC_WATCH_UNSUPPORTED, "a bucket watches nothing")
            known = set(self.groups) - {gid}
            text = ",".join(actions_text(b.actions, known))
            try:
                acts = _action_set(parse_actions(text, 0)) if text else []
            except FlowError as e:
                raise OFError(ofp.OFPET_GROUP_MOD_FAILED, ofp.OFPGMFC_BAD_BUCKET, str(e)) from None
            if any(a[0] in ("goto_table", "write_metadata", "meter") for a in acts):
                raise OFError(ofp.OFPET_GROUP_MOD_FAILED, ofp.OFPGMFC_BAD_BUCKET, "a bucket holds actions only")
            buckets.append(Bucket(b.weight, b.watch_port, b.watch_group, acts, b))
        old = self.groups.get(gid)
        self.groups[gid] = Group(gid, t, buckets, old.created if old else now)
        if self._loops(gid):
            if old is None:
                del self.groups[gid]
            else:
                self.groups[gid] = old
            raise OFError(ofp.OFPET_GROUP_MOD_FAILED, ofp.OFPGMFC_LOOP, f"group {gid} would reach itself")
        return []

    def _loops(self, start):
        seen, stack = set(), [(start, 0)]
        while stack:
            gid, depth = stack.pop()
            g = self.groups.get(gid)
            if g is None:
                continue
            for b in g.buckets:
                for a in b.actions:
                    if a[0] == "group":
                        if a[1] == start or depth >= MAX_GROUP_DEPTH:
                            return True
                        if a[1] not in seen:
                            seen.add(a[1])
                            stack.append((a[1], depth + 1))
        return False

    def live(self, port):
        return self.live_ports is None or port in self.live_ports

    # -- meters ------------------------------------------------------------------------------
    def meter_mod(self, m, now):
        mid, cmd = m.meter_id, m.command
        if cmd == ofp.OFPMC_DELETE:
            return _delete(self.meters, mid, ofp.OFPM_ALL)
        if not 1 <= mid <= ofp.OFPM_MAX:
            raise OFError(ofp.OFPET_METER_MOD_FAILED, ofp.OFPMMFC_INVALID_METER, f"meter id {mid:#x}")
        if cmd not in (ofp.OFPMC_ADD, ofp.OFPMC_MODIFY):
            raise OFError(ofp.OFPET_METER_MOD_FAILED, ofp.OFPMMFC_BAD_COMMAND, f"meter command {cmd}")
        if cmd == ofp.OFPMC_ADD and mid in self.meters:
            raise OFError(ofp.OFPET_METER_MOD_FAILED, ofp.OFPMMFC_METER_EXISTS, f"meter {mid} exists")
        if cmd == ofp.OFPMC_MODIFY and mid not in self.meters:
            raise OFError(ofp.OFPET_METER_MOD_FAILED, ofp.OFPMMFC_UNKNOWN_METER, f"meter {mid} does not exist")
        flags = m.flags
        if flags & ~(ofp.OFPMF_KBPS | ofp.OFPMF_PKTPS | ofp.OFPMF_BURST | ofp.OFPMF_STATS) \
                or bool(flags & ofp.OFPMF_KBPS) == bool(flags & ofp.OFPMF_PKTPS):
            raise OFError(ofp.OFPET_METER_MOD_FAILED, ofp.OFPMMFC_BAD_FLAGS, f"meter flags {flags:#x}")
        if not m.bands:
            raise OFError(ofp.OFPET_METER_MOD_FAILED, ofp.OFPMMFC_INVALID_METER, "a meter needs a band")
        for b in m.bands:
            if not 1 <= b.rate <= 0xFFFFFFFF:
                raise OFError(ofp.OFPET_METER_MOD_FAILED, ofp.OFPMMFC_BAD_RATE, f"band rate {b.rate}")
            if flags & ofp.OFPMF_BURST and b.burst_size == 0:
                raise OFError(ofp.OFPET_METER_MOD_FAILED, ofp.OFPMMFC_BAD_BURST, "burst flag with burst 0")
        old = self.meters.get(mid)
        if old is None:
            used = {x.slot for x in self.meters.values()}
            slot = next((i for i in range(MAX_METERS) if i not in used), None)
            if slot is None:
                raise OFError(ofp.OFPET_METER_MOD_FAILED, ofp.OFPMMFC_OUT_OF_METERS, f"{MAX_METERS} meters")
        else:
            slot = old.slot
        self.meters[mid] = Meter(mid, flags, list(m.bands), slot, old.created if old else now)
        return []

    def datapath_meters(self):
        """What the fast path's meter slots hold: [slot, pktps, rate, burst] per meter; the
        drop band with the lowest rate is the one any excess meets first."""
        out = []
        for mt in self.meters.values():
            band = min(mt.bands, key=lambda b: b.rate)
            burst = band.burst_size if mt.flags & ofp.OFPMF_BURST else band.rate
            out.append([mt.slot, 1 if mt.flags & ofp.OFPMF_PKTPS else 0, band.rate, max(1, burst)])
        return out

    # -- translation ---------------------------------------------------------------------------
    def xlate(self, ctx, a, run):
        """The action `a` (a group or meter) in translation context `ctx`; `run(actions)`
        translates a list of actions there."""
        if a[0] == "meter":
            mt = self.meters.get(a[1])
            if mt is not None:
                ctx.out.append(["meter", mt.slot])
            return
        self._group(ctx, a[1], run, 0)

    def _group(self, ctx, gid, run, depth):
        g = self.groups.get(gid)
        if g is None or depth > MAX_GROUP_DEPTH:
            return
        ctx.groups = getattr(ctx, "groups", []) + [g]
        if g.type == ofp.OFPGT_ALL:
            for b in g.buckets:
                self._bucket(ctx, b, run)
        elif g.type == ofp.OFPGT_INDIRECT:
            self._bucket(ctx, g.buckets[0], run)
        elif g.type == ofp.OFPGT_SELECT:
            b = self._select(ctx, g)
            if b is not None:
                self._bucket(ctx, b, run)
        else:
            b = next((b for b in g.buckets if self._bucket_live(b, depth)), None)
            if b is not None:
                self._bucket(ctx, b, run)

    def _bucket_live(self, b, depth):
        if b.watch_port != ofp.OFPP_ANY and not self.live(port_to_flow(b.watch_port)):
            return False
        if b.watch_group != ofp.OFPG_ANY:
            g = self.groups.get(b.watch_group)
            if g is None or depth > MAX_GROUP_DEPTH or not any(self._bucket_live(x, depth + 1) for x in g.buckets):
                return False
        return True

    def _select(self, ctx, g):
        live = [b for b in g.buckets if b.weight and self._bucket_live(b, 0)]
        if not live:
            return None
        f = ctx.flow
        # OVS's default selection: a symmetric hash of addresses and ports (both directions
        # of a connection pick the same bucket); the fields hashed join the megaflow, only
        # those the packet has
        src, dst, other = ["dl_src"], ["dl_dst"], ["dl_type"]
        if f.get("dl_type") in (ETH_IP, ETH_IPV6):
            v6 = f["dl_type"] == ETH_IPV6
            src.append("ipv6_src" if v6 else "nw_src")
            dst.append("ipv6_dst" if v6 else "nw_dst")
            other.append("nw_proto")
            if f.get("nw_proto") in (6, 17, 132):
                src.append("tp_src")
                dst.append("tp_dst")
        for name in src + dst + other:
            unwildcard(ctx.wc, name, _full(name))
        ends = sorted([tuple(f[n] for n in src), tuple(f[n] for n in dst)])
        h = zlib.crc32(repr((ends, [f[n] for n in other])).encode())
        total = sum(x.weight for x in live)
        pick = h % total
        for x in live:
            if pick < x.weight:
                return x
            pick -= x.weight
        return live[-1]

    def _bucket(self, ctx, b, run):
        """A bucket's actions on a clone of the packet: the flow is as it was afterwards
        (Open vSwitch's xlate_group_bucket), what the bucket sent stays sent."""
        saved = copy.deepcopy(ctx.flow)
        touched = copy.deepcopy(getattr(ctx, "touched", None))
        ctx.groups = getattr(ctx, "groups", []) + [b]
        run(b.actions)
        ctx.flow = saved
        if touched is not None:
            ctx.touched = touched


def _delete(table, key, every):
    """A group or meter delete: `key`, or all of them (`every`); returns the ids gone."""
    gone = list(table) if key == every else [key] if key in table else []
    for k in gone:
        del table[k]
    return gone


# a bucket is an action set: its actions run in OpenFlow's action-set order
_SET_ORDER = {"pop_vlan": 0, "push_vlan": 1, "dec_ttl": 2, "set_field": 3, "mod_vlan_vid": 3, "mod_vlan_pcp": 3,
              "set_vlan_vid": 3, "set_vlan_pcp": 3, "group": 5}


def _action_set(acts):
    return sorted(acts, key=lambda a: _SET_ORDER.get(a[0], 4 if a[0] not in ("output", "controller", "in_port",
                                                                              "flood", "all", "normal") else 6))


def _full(name):
    from pipeline.slowpath.fields import FIELDS
    return FIELDS[name].full
