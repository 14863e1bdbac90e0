"""Port registry: a port URI -> the binding that presents it to the pipeline as netmap rings.

Kinds live in KINDS (those this build has: Linux's packet interfaces only on Linux); to add
one, write a function (specs) -> [Port] and register it (an emulated adapter: subclass
bindings.adapter.Adapter and use `adapter_kind`).
"""
import socket
from dataclasses import dataclass, field

from bindings.adapter import RX_LOSSES, TX_LOSSES, AdapterError, check_ifname, in_netns, parse_uri
from bindings.netmap.port import NetmapError, NetmapPort
from bindings.pcap import PcapAdapter
from pipeline._native import ffi, lib
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
    adapter: object = None                # bindings.adapter.Adapter of an emulated port
    mirror: object = None                 # bindings.pcap.PcapWriter copying what it sends
    up: bool = True                       # administratively up (valepipe port-mod)

    def describe(self):
        # a port that is down or gone has no OpenFlow number for the slow path: it is left
        # out of floods and outputs to it are dropped
        # port, up, link: for OpenFlow's port description (the agent's port_status)
        link = self.adapter.stats().get("link") if self.adapter else None
        return {"uri": self.uri, "ofport": self.ofport if self.up else None, "kind": self.kind,
                "port": self.ofport, "up": self.up, "link": link}

    def fds(self):
        return self.adapter.fds() if self.adapter else []

    def stats(self):
        rs = self.ring_port.ring_stats()
        # on a shm: port the pipeline is the kernel side: it receives on the peer's TX
        # ring and transmits into its RX ring; on the others it is the user
        rx, tx = (rs["tx"], rs["rx"]) if self.kind == "shm" else (rs["rx"], rs["tx"])
        extra = {}
        if self.adapter:
            extra["io"] = self.adapter.stats()
        if self.mirror:
            extra["mirror"] = self.mirror.stats()
        c = self.ring_port.c
        per = {"tx": [c.tx[i].st.packets for i in range(c.ntx)], "rx": [c.rx[i].st.packets for i in range(c.nrx)]}
        extra["rings"] = {"rx": per["tx"], "tx": per["rx"]} if self.kind == "shm" else per
        link = extra.get("io", {}).get("link")        # interface ports: up, down, no-carrier, gone
        return {"uri": self.uri, "ofport": self.ofport, "kind": self.kind, "faulty": rs["faulty"], "up": self.up,
                **({"link": link} if link else {}), **extra,
                "rx_packets": rx["packets"], "rx_bytes": rx["bytes"],
                "tx_packets": tx["packets"], "tx_bytes": tx["bytes"],
                "drops": {"rx_bad_index": rx["bad_index"], "rx_bad_buf": rx["bad_buf"],
                          "rx_bad_len": rx["bad_len"], "rx_bad_flags": rx["bad_flags"],
                          "tx_ring_full": tx["full"], "tx_bad_index": tx["bad_index"],
                          "tx_bad_buf": tx["bad_buf"], **self._losses()}}

    def _losses(self):
        return self.adapter.losses() if hasattr(self.adapter, "losses") else {}     # netmap's: none

    def rx_losses(self):
        """Frames that came in on this port and that its binding dropped (rx_truncated, ...):
        part of the port's in_drops, beside the stages' drops."""
        lost = self._losses()
        return {k: lost[k] for k in RX_LOSSES if k in lost}


def add_binding_losses(st):
    """The bindings' losses of every port in a pipeline's drops by reason too, so the
    totals (the live display, `stats`, valepipe_drops) count every frame lost."""
    for p in st["ports"]:
        for k in RX_LOSSES + TX_LOSSES:
            if k in p["drops"]:
                st["drops"][k] = st["drops"].get(k, 0) + p["drops"][k]


def open_shm(specs):
    """shm: ports; ports naming the same region with @share= are created in one region."""
    groups = {}
    ports, regions = [], []
    try:
        for spec in specs:
            name, region = parse_shm_uri(spec["uri"])
            groups.setdefault(region, []).append((name, spec))
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


def adapter_kind(cls):
    """A KINDS entry for an emulated adapter class (bindings/)."""
    def open_kind(specs):
        ports = []
        try:
            for s in specs:
                a = cls(s["uri"], slots=s.get("slots"))
                ports.append(Port(s["uri"], s["ofport"], cls.kind, a.user, a.region, adapter=a))
        except Exception:
            close_ports(ports)
            raise
        return ports
    return open_kind


def open_netmap(specs):
    """netmap:IF and valeX:PORT: real netmap ports; the pipeline is their user."""
    ports = []
    try:
        for s in specs:
            n = NetmapPort(s["uri"])
            ports.append(Port(s["uri"], s["ofport"], "netmap", n.ring_port, adapter=n))
    except NetmapError as e:
        close_ports(ports)
        raise PortError(str(e)) from None
    return ports


INTERNAL_OPTIONS = {"netns": None}


def open_internal(specs):
    """internal:NAME[@netns=NS]: the switch's own port, OpenFlow's LOCAL, as Open vSwitch's
    bridge port: a TAP interface in the host stack (or in namespace NS) that the pipeline
    creates (it must not exist yet), brings up, and that goes with the pipeline's fds."""
    from bindings.tap import TapAdapter
    ports = []
    try:
        for s in specs:
            name, opt = parse_uri(s["uri"], "internal", INTERNAL_OPTIONS)
            check_ifname(s["uri"], name)
            with in_netns(opt["netns"]):
                try:
                    socket.if_nametoindex(name)
                except OSError:
                    pass
                else:
                    raise PortError(f"{s['uri']}: an interface {name} already exists; an internal port is "
                                    f"created by its pipeline (remove it, or use tap:{name} to attach to it)")
            a = TapAdapter(f"tap:{name}" + (f"@netns={opt['netns']}" if opt["netns"] else ""), slots=s.get("slots"))
            ports.append(Port(s["uri"], s["ofport"], "internal", a.user, a.region, adapter=a))
    except Exception:
        close_ports(ports)
        raise
    return ports


BUILD_OS = ffi.string(lib.vp_build_os()).decode()
KINDS = {"shm": open_shm, "pcap": adapter_kind(PcapAdapter), "netmap": open_netmap, "vale": open_netmap}
# TAP through /dev/net/tun, AF_PACKET, AF_XDP (and internal:, a TAP): Linux's own; their C
# is built only there
LINUX_KINDS = ("tap", "packet", "afxdp", "internal")
if BUILD_OS == "linux":
    from bindings.afxdp import AfxdpAdapter
    from bindings.packet import PacketAdapter
    from bindings.tap import TapAdapter
    KINDS.update(tap=adapter_kind(TapAdapter), packet=adapter_kind(PacketAdapter), afxdp=adapter_kind(AfxdpAdapter),
                 internal=open_internal)


def kind_of(uri):
    return "vale" if uri.startswith("vale") else uri.split(":", 1)[0]


def known_kind(uri):
    """The kind of a port uri this build has; PortError for another (Linux's on another
    OS: "not available on this OS")."""
    kind = kind_of(uri)
    if kind in LINUX_KINDS and kind not in KINDS:
        raise PortError(f"port {uri!r}: {kind}: ports are Linux's, not available on this OS "
                        f"(this {BUILD_OS} build has {', '.join(sorted(KINDS))})")
    if kind not in KINDS:
        raise PortError(f"port {uri!r}: unknown kind {kind!r}; this build has {', '.join(sorted(KINDS))}")
    return kind


def check_uri(uri):
    """Refuse a port uri whose syntax its kind would refuse, without opening anything
    (what `valepipe check` and config loading use)."""
    import importlib
    from bindings.adapter import check_ifname, parse_uri
    from bindings.netmap import names
    kind = known_kind(uri)
    try:
        if kind == "shm":
            parse_shm_uri(uri)
        elif kind in ("netmap", "vale"):
            names.parse(uri)
        elif kind == "internal":
            name, _ = parse_uri(uri, "internal", INTERNAL_OPTIONS)
            check_ifname(uri, name)
        else:
            mod = importlib.import_module(f"bindings.{kind}")          # tap, packet, afxdp, pcap
            body, opts = parse_uri(uri, kind, mod.OPTIONS)
            if kind == "afxdp":
                mod.split_queue(uri, body)
            elif kind != "pcap":
                check_ifname(uri, body)
            if not 1 <= opts.get("queues", 1) <= lib.VP_MAX_RINGS:
                raise AdapterError(f"{uri!r}: queues must be 1..{lib.VP_MAX_RINGS}")
    except (RegionError, AdapterError, names.NameError_) as e:
        raise PortError(str(e)) from None


def open_ports(specs):
    """Open every port of a config (list of dicts with uri, ofport, options) in order."""
    by_kind = {}
    for s in specs:
        by_kind.setdefault(known_kind(s["uri"]), []).append(s)
    opened = {}
    try:
        for kind, ss in by_kind.items():
            for p in KINDS[kind](ss):
                opened[p.uri] = p
    except AdapterError as e:
        close_ports(opened.values())
        raise PortError(str(e)) from None
    except Exception:
        close_ports(opened.values())
        raise
    return [opened[s["uri"]] for s in specs]


def close_ports(ports):
    seen = set()
    for p in ports:
        if p.mirror:
            lib.vp_pcap_mirror_attach(p.ring_port.c, ffi.NULL)
            p.mirror.close()
            p.mirror = None
        if p.adapter:
            p.adapter.close()
            continue
        if p.region is not None and id(p.region) not in seen:
            seen.add(id(p.region))
            p.region.close()
