"""Port registry: a port URI -> the binding that presents it to the pipeline as netmap rings.

Kinds live in KINDS; to add one, write a function (uris, options) -> [Port] and register it.
"""
from dataclasses import dataclass, field

from ring.region import ROLE_KERNEL, Region, RegionError, parse_shm_uri


class PortError(Exception):
    pass


@dataclass
class Port:
    uri: str
    ofport: int
    kind: str
    ring_port: object                     # ring.RingPort bound in the pipeline's role
    region: object = None
    options: dict = field(default_factory=dict)

    def describe(self):
        return {"uri": self.uri, "ofport": self.ofport, "kind": self.kind}

    def stats(self):
        rs = self.ring_port.ring_stats()
        # the pipeline receives on the peer's TX ring and transmits into its RX ring
        rx, tx = (rs["tx"], rs["rx"]) if self.kind == "shm" else (rs["rx"], rs["tx"])
        return {"uri": self.uri, "ofport": self.ofport, "faulty": rs["faulty"],
                "rx_packets": rx["packets"], "rx_bytes": rx["bytes"],
                "tx_packets": tx["packets"], "tx_bytes": tx["bytes"],
                "drops": {"rx_bad_index": rx["bad_index"], "rx_bad_buf": rx["bad_buf"],
                          "rx_bad_len": rx["bad_len"], "rx_bad_flags": rx["bad_flags"],
                          "tx_ring_full": tx["full"], "tx_bad_index": tx["bad_index"],
                          "tx_bad_buf": tx["bad_buf"]}}


def open_shm(specs):
    """shm: ports; ports naming the same region with @share= are created in one region."""
    groups = {}
    for spec in specs:
        name, region = parse_shm_uri(spec["uri"])
        groups.setdefault(region, []).append((name, spec))
    ports, regions = [], []
    try:
        for region_name, members in groups.items():
            slots = max(s.get("slots", 1024) for _, s in members)
            names = [n for n, _ in members]
            if len(set(names)) != len(names):
                raise PortError(f"region {region_name}: port names repeat: {names}")
            reg = Region.create(region_name, names, slots=slots, buf_size=2048)
            regions.append(reg)
            for n, s in members:
                ports.append(Port(s["uri"], s["ofport"], "shm", reg.port(n, ROLE_KERNEL), reg))
    except RegionError as e:
        for r in regions:
            r.close()
        raise PortError(str(e)) from None
    return ports


KINDS = {"shm": open_shm}


def open_ports(specs):
    """Open every port of a config (list of dicts with uri, ofport, options) in order."""
    by_kind = {}
    for s in specs:
        kind = s["uri"].split(":", 1)[0]
        if kind not in KINDS:
            raise PortError(f"port {s['uri']!r}: unknown kind {kind!r}; this build has {', '.join(sorted(KINDS))}")
        by_kind.setdefault(kind, []).append(s)
    opened = {}
    try:
        for kind, ss in by_kind.items():
            for p in KINDS[kind](ss):
                opened[p.uri] = p
    except Exception:
        close_ports(opened.values())
        raise
    return [opened[s["uri"]] for s in specs]


def close_ports(ports):
    seen = set()
    for p in ports:
        if p.region is not None and id(p.region) not in seen:
            seen.add(id(p.region))
            p.region.close()
