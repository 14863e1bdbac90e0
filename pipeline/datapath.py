"""The datapath the stages share: ports, the exact-match flow table, action sets, counters.

One `struct vp_dp` in C; this class owns its memory and translates between the
slow path's names (OpenFlow port numbers, action lists) and the datapath's indexes.
"""
import time
import weakref

from pipeline._native import ffi, lib
from pipeline.names import DROPS, PARSE_ERRORS, SET_FIELDS, STAGES  # noqa: F401  (re-exported)

MAX_ACTIONS = 65536
_CLOCK0 = (lib.vp_now_ns(), lib.vp_cycles())


def ns_per_cycle():
    """The rate of vp_cycles() (the stage counters), measured against the clock since this
    module was loaded (the longer ago, the more exact)."""
    ns, cyc = lib.vp_now_ns(), lib.vp_cycles()
    if ns - _CLOCK0[0] < 2_000_000:
        time.sleep(0.002)
        ns, cyc = lib.vp_now_ns(), lib.vp_cycles()
    return (ns - _CLOCK0[0]) / max(1, cyc - _CLOCK0[1])


class DatapathError(Exception):
    pass


class Datapath:
    def __init__(self, ports, flow_limit=200_000, batch=256, emc_limit=None):
        if not 1 <= len(ports) <= lib.VP_MAX_PORTS:
            raise DatapathError(f"a datapath has 1..{lib.VP_MAX_PORTS} ports, not {len(ports)}")
        if not 1 <= batch <= lib.VP_BATCH_MAX:
            raise DatapathError(f"batch must be 1..{lib.VP_BATCH_MAX}, not {batch}")
        self.ports = ports                       # list of pipeline.ports.Port, index = dp port
        self.c = ffi.new("struct vp_dp *")
        self.c.nports = len(ports)
        for i, p in enumerate(ports):
            p.ring_port.c.index = i
            p.ring_port.c.ofport = p.ofport
            self.c.ports[i] = p.ring_port.c
        self._actions = ffi.new("struct vp_actions[]", MAX_ACTIONS)
        self.c.actions = self._actions
        self.c.max_actions = MAX_ACTIONS
        # long output lists and programs live in memory the C side allocates
        weakref.finalize(self, lib.vp_actions_free, self.c)
        self._outq = ffi.new("struct vp_outq[]", lib.VP_MAX_PORTS)     # room for ports added at run time
        self.meters = ffi.new("struct vp_meter[]", lib.VP_MAX_METERS)   # OpenFlow meters' token buckets
        self.c.meters = self.meters
        self.c.outq = self._outq
        # exact-match entries (a cache capped at emc_limit when megaflows exist) and megaflows
        if lib.vp_flows_init(self.c, flow_limit) != 0 or lib.vp_megaflows_init(self.c, flow_limit) != 0:
            raise DatapathError(f"cannot allocate flow tables for {flow_limit} flows")
        self.c.flows.cap = emc_limit or 0
        self.batch = ffi.new("struct vp_batch *")
        self.batch.cap = batch
        self.batch_size = batch
        self.ofport_to_index = {p.ofport: i for i, p in enumerate(ports)}
        self._action_ids = {}                    # tuple of dp port indexes -> action set id

    def action_id(self, actions):
        """Intern a datapath action list (["output", ofport], ["drop"], ["set", f, v, m],
        ["push_vlan", tpid, tci], ["pop_vlan"], ["reparse"]) as a C action set; returns its id. Lists
        of any length up to VP_MAX_PROGRAM run whole; a longer one is refused, never cut."""
        if len(actions) > lib.VP_MAX_PROGRAM:
            raise DatapathError(f"{len(actions)} datapath actions, more than the {lib.VP_MAX_PROGRAM} "
                                "an action set holds")
        if all(a[0] in ("output", "drop") for a in actions):
            key = tuple(self.ofport_to_index.get(a[1], lib.VP_MAX_PORTS) for a in actions if a[0] == "output")
        else:
            key = ("ops",) + tuple(tuple(a) for a in actions)
        aid = self._action_ids.get(key)
        if aid is not None:
            return aid
        aid = len(self._action_ids)
        if aid >= MAX_ACTIONS:
            raise DatapathError("too many distinct action sets")
        if key[:1] == ("ops",):
            ops = self._ops(actions)
            rc = lib.vp_actions_set_ops(self.c, aid, ops, len(ops))
        else:
            rc = lib.vp_actions_set(self.c, aid, ffi.new("uint16_t[]", key or [0]), len(key))
        if rc != 0:
            raise DatapathError(f"actions not accepted by the datapath: {actions}")
        self._action_ids[key] = aid
        return aid

    def _ops(self, actions):
        prog = [a for a in actions if a[0] != "drop"]
        ops = ffi.new("struct vp_op[]", max(len(prog), 1))
        for op, a in zip(ops, prog):
            if a[0] == "output":
                op.kind, op.port = lib.VP_OP_OUTPUT, self.ofport_to_index.get(a[1], lib.VP_MAX_PORTS)
            elif a[0] == "set":
                fid, width = SET_FIELDS[a[1]]
                op.kind, op.field = lib.VP_OP_SET, fid
                op.value = a[2].to_bytes(16, "big")
                op.mask = a[3].to_bytes(16, "big")
            elif a[0] == "push_vlan":
                op.kind, op.tpid, op.tci = lib.VP_OP_PUSH_VLAN, a[1], a[2]
            elif a[0] == "pop_vlan":
                op.kind = lib.VP_OP_POP_VLAN
            elif a[0] == "reparse":
                op.kind = lib.VP_OP_REPARSE
            elif a[0] == "meter":
                op.kind, op.port = lib.VP_OP_METER, a[1]
        return ops

    def install(self, key_bytes, actions, megaflow=-1):
        """The exact flow; with `megaflow` (an entry install_megaflow returned) as its cache."""
        key = ffi.from_buffer("struct vp_flow_key *", key_bytes)
        return lib.vp_flow_install(self.c, key, self.action_id(actions), megaflow)

    def install_megaflow(self, key_bytes, wc, actions):
        """Cache a translation for every packet that agrees with this one on `wc`'s bits;
        returns its entry (>= 0), or < 0 when the table is full."""
        key = ffi.from_buffer("struct vp_flow_key *", key_bytes)
        return lib.vp_megaflow_install(self.c, key, key_mask(wc), self.action_id(actions))

    def megaflow_chunks(self, n=256):
        """Installed megaflows, up to n at a time, as lists of (entry, masked key bytes, mask
        bytes, action id, stats); each list is read when the caller asks for it."""
        start, buf, nxt = 0, ffi.new("uint32_t[]", n), ffi.new("uint32_t *")
        t = self.c.mflows
        size = ffi.sizeof("struct vp_flow_key")
        while start < t.limit:
            got = lib.vp_megaflow_dump(self.c, start, buf, n, nxt)
            out = []
            for j in range(got):
                f = t.entries[buf[j]]
                out.append((buf[j], bytes(ffi.buffer(ffi.addressof(f, "key"), size)),
                            bytes(ffi.buffer(ffi.addressof(self.c.masks[f.upcall_id]), size)), f.action,
                            {"packets": f.packets, "bytes": f.bytes, "used_ns": f.used_ns}))
            start = nxt[0]
            if out:
                yield out

    def port_drops(self, i):
        """Drops of packets that came in on dp port i, by reason (the port's ledger)."""
        row = self.c.port_drops[i]
        return {k: row[j] for j, k in enumerate(DROPS)}

    def stats(self):
        s = self.c.st
        rate = ns_per_cycle()
        stage_ns = {k: int(s.stage_cycles[i] * rate) for i, k in enumerate(STAGES)}
        stage = {}
        for i, name in enumerate(STAGES):
            n = s.stage_pkts[i]
            stage[name] = round(stage_ns[name] / n, 2) if n else None
        return {
            "batches": s.batches, "packets": s.packets, "hits": s.hits, "megaflow_hits": s.mf_hits,
            "misses": s.misses, "flows": self.c.flows.count, "flow_limit": self.c.flows.limit,
            "megaflows": self.c.mflows.count, "emc_evictions": self.c.flows.evictions, "masks": sum(1 for i in range(self.c.nmasks) if self.c.mask_refs[i]),
            "parse_errors": {k: s.parse_err[i] for i, k in enumerate(PARSE_ERRORS)},
            "drops": {k: s.drops[i] for i, k in enumerate(DROPS)},
            "stage_ns_per_packet": stage,
            "stage_ns_total": stage_ns,
            "stage_packets": {k: s.stage_pkts[i] for i, k in enumerate(STAGES)},
            # a batch's whole cost per packet in the C chain (stages, commit, the chain itself)
            "batch_ns_total": int(s.batch_cycles * rate),
            "tx_swapped": s.tx_swapped, "tx_copied": s.tx_copied,
            "tx_segmented": s.tx_segmented, "tx_segments": s.tx_segments, "csum_completed": s.csum_completed,
            "flow_hash": "crc32c-sse4.2" if lib.vp_crc32c_used() else "crc32c-portable",
        }


def _be(v, n):
    return int.from_bytes(v.to_bytes(n, "big"), "little")


def key_mask(wc):
    """The slow path's megaflow mask (field -> bits) as a mask over struct vp_flow_key.
    in_port and the parsed-layer set are always exact: a key must be read back the same."""
    m = ffi.new("struct vp_flow_key *")
    m.in_port, m.layers = 0xFFFFFFFF, 0xFFFF
    g = wc.get
    for f in ("dl_src", "dl_dst", "arp_sha", "arp_tha"):
        if g(f):
            setattr(m, f, list(g(f).to_bytes(6, "big")))
    for f in ("ipv6_src", "ipv6_dst", "nd_target"):
        if g(f):
            setattr(m, f, list(g(f).to_bytes(16, "big")))
    for f in ("dl_type", "tp_src", "tp_dst", "tcp_flags"):
        if g(f):
            setattr(m, f, _be(g(f), 2))
    for f in ("nw_src", "nw_dst"):
        if g(f):
            setattr(m, f, _be(g(f), 4))
    if g("ipv6_label"):
        m.ipv6_label = _be(g("ipv6_label"), 4)
    for f in ("nw_proto", "nw_tos", "nw_ttl", "nw_frag"):
        if g(f):
            setattr(m, f, g(f))
    if g("vlan_tci"):
        m.vlans[0].tci = _be(g("vlan_tci"), 2)
        m.vlans[0].tpid = 0xFFFF            # a rewritten tag keeps its TPID: part of the answer
    return m
