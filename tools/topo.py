"""Lab topologies: network namespaces, veth pairs and TAP devices from a small TOML file.

`up` creates everything and records what it made in a state file beside the run
directory; `down` removes exactly that, newest first, and nothing else.
"""
import fcntl
import hashlib
import ipaddress
import json
import os
import socket
import struct
import tomllib

from bindings.adapter import IFNAME_RE, AdapterError, in_netns

STATE_DIR = "/run/valepipe/topo"
SIOCETHTOOL = 0x8946
ETHTOOL_STXCSUM = 0x17


class TopoError(Exception):
    pass


KEYS = {
    "netns": {"name": str},
    "veth": {"name": str, "netns": str, "address": list, "mtu": int, "up": bool, "offload": bool,
             "ipv6": bool, "peer": str, "peer_netns": str, "peer_address": list, "peer_ipv6": bool,
             "queues": int},
    "tap": {"name": str, "netns": str, "address": list, "mtu": int, "up": bool, "queues": int, "ipv6": bool},
}


def load(path):
    """Parse and check a topology file; every error names the entry and key."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise TopoError(f"{path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise TopoError(f"{path}: not valid TOML: {e}") from None
    out = {k: [] for k in KEYS}
    for section, entries in doc.items():
        if section not in KEYS:
            raise TopoError(f"{path}: unknown section [[{section}]] (known: {', '.join('[[%s]]' % k for k in KEYS)})")
        if not isinstance(entries, list):
            raise TopoError(f"{path}: {section} must be an array of tables ([[{section}]])")
        for i, e in enumerate(entries):
            where = f"{path}: [[{section}]] #{i + 1}"
            for k, v in e.items():
                if k not in KEYS[section]:
                    raise TopoError(f"{where}: unknown key {k!r} (known: {', '.join(KEYS[section])})")
                if not isinstance(v, KEYS[section][k]):
                    raise TopoError(f"{where}.{k}: expected {KEYS[section][k].__name__}")
            if "name" not in e:
                raise TopoError(f"{where}: missing name")
            names = [e["name"]] + ([e["peer"]] if section == "veth" else [])
            if section == "veth" and "peer" not in e:
                raise TopoError(f"{where}: missing peer (the other end's name)")
            for n in names:
                if section != "netns" and not IFNAME_RE.fullmatch(n):
                    raise TopoError(f"{where}: {n!r} is not an interface name (1-15 of [A-Za-z0-9_.:-])")
                if section == "netns" and (not n or "/" in n or n in (".", "..")):
                    raise TopoError(f"{where}: {n!r} is not a namespace name")
            for k in ("address", "peer_address"):
                for a in e.get(k, []):
                    try:
                        ipaddress.ip_interface(a)
                    except ValueError:
                        raise TopoError(f"{where}.{k}: {a!r} is not an address with a prefix (10.0.0.1/24)") from None
            out[section].append(e)
    return out


def state_path(path):
    key = hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:16]
    return os.path.join(STATE_DIR, key + ".json")


def _ipr(netns):
    from pyroute2 import IPRoute
    return IPRoute(netns=netns) if netns else IPRoute()


def _exists(netns, name):
    with _ipr(netns) as ipr:
        return bool(ipr.link_lookup(ifname=name))


def _configure(netns, name, entry, addr_key="address", ipv6_key="ipv6"):
    if not entry.get(ipv6_key, True):
        # no link-local address, no router solicitations: a switch port that says nothing
        with in_netns(netns), open(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "w") as f:
            f.write("1")
    with _ipr(netns) as ipr:
        idx = ipr.link_lookup(ifname=name)[0]
        if "mtu" in entry:
            ipr.link("set", index=idx, mtu=entry["mtu"])
        for a in entry.get(addr_key, []):
            iface = ipaddress.ip_interface(a)
            ipr.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        if entry.get("up", True):
            ipr.link("set", index=idx, state="up")


def tx_offload_off(netns, name):
    """Checksum and segmentation done by the stack, not left to "hardware": a switch in
    user space receives frames as they would be on a wire (no partial checksums, no
    64 KB GSO frames), as Open vSwitch's userspace datapath also needs on veth."""
    from pipeline._native import ffi
    with in_netns(netns), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ev = ffi.new("uint32_t[2]", [ETHTOOL_STXCSUM, 0])
        ifr = struct.pack("16sP", name.encode(), int(ffi.cast("uintptr_t", ev)))
        fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifr)


def _tap_create(netns, name, queues):
    from pipeline._native import ffi, lib
    TUNSETPERSIST = 0x400454CB
    err = ffi.new("char[256]")
    with in_netns(netns):
        fd = lib.vp_tap_open(name.encode(), queues, 0, err, 256)
        if fd < 0:
            raise TopoError(f"tap {name}: {ffi.string(err).decode()}")
        try:
            fcntl.ioctl(fd, TUNSETPERSIST, 1)
        finally:
            os.close(fd)


def up(path):
    """Create the lab; returns the list of what was created (also written to the state file)."""
    topo = load(path)
    sp = state_path(path)
    if os.path.exists(sp):
        raise TopoError(f"{path} is already up (state in {sp}); run `valepipe topo down {path}` first")
    made = []
    try:
        from pyroute2 import netns as nsmod
        existing = set(nsmod.listnetns())
        for e in topo["netns"]:
            if e["name"] in existing:
                raise TopoError(f"netns {e['name']} already exists (not created by this topology)")
            nsmod.create(e["name"])
            made.append({"kind": "netns", "name": e["name"]})
            with _ipr(e["name"]) as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        for e in topo["veth"]:
            ns, pns = e.get("netns"), e.get("peer_netns")
            for n, where in ((e["name"], ns), (e["peer"], pns)):
                if _exists(where, n):
                    raise TopoError(f"interface {n} already exists in {where or 'this namespace'}")
            queues = e.get("queues", 1)
            if not 1 <= queues <= 64:
                raise TopoError(f"veth {e['name']}: queues must be 1..64")
            with _ipr(ns) as ipr:
                peer = {"ifname": e["peer"], "num_rx_queues": queues, "num_tx_queues": queues}
                if pns:
                    peer["net_ns_fd"] = pns
                ipr.link("add", ifname=e["name"], kind="veth", peer=peer,
                         num_rx_queues=queues, num_tx_queues=queues)
            made.append({"kind": "link", "name": e["name"], "netns": ns})
            _configure(ns, e["name"], e)
            _configure(pns, e["peer"], e, "peer_address", "peer_ipv6")
            if not e.get("offload", False):
                tx_offload_off(ns, e["name"])
                tx_offload_off(pns, e["peer"])
        for e in topo["tap"]:
            ns = e.get("netns")
            if _exists(ns, e["name"]):
                raise TopoError(f"interface {e['name']} already exists in {ns or 'this namespace'}")
            _tap_create(ns, e["name"], e.get("queues", 1))
            made.append({"kind": "link", "name": e["name"], "netns": ns})
            _configure(ns, e["name"], e)
    except (TopoError, AdapterError, OSError) as exc:
        _remove(made)
        raise TopoError(str(exc)) from None
    except Exception:
        _remove(made)
        raise
    os.makedirs(STATE_DIR, mode=0o700, exist_ok=True)
    with open(sp, "w") as f:
        json.dump({"file": os.path.abspath(path), "created": made}, f, indent=1)
    return made


def _remove(made):
    from pyroute2 import netns as nsmod
    errors = []
    for m in reversed(made):
        try:
            if m["kind"] == "netns":
                if m["name"] in nsmod.listnetns():
                    nsmod.remove(m["name"])
            else:
                ns = m.get("netns")
                if ns and ns not in nsmod.listnetns():
                    continue                     # went with its namespace
                with _ipr(ns) as ipr:
                    idx = ipr.link_lookup(ifname=m["name"])
                    if idx:
                        ipr.link("del", index=idx[0])
        except Exception as e:                   # keep removing the rest
            errors.append(f"{m['kind']} {m['name']}: {e}")
    return errors


def down(path):
    """Remove what `up` created for this file; returns (removed, errors)."""
    sp = state_path(path)
    try:
        with open(sp) as f:
            made = json.load(f)["created"]
    except FileNotFoundError:
        raise TopoError(f"{path} is not up (no state file {sp})") from None
    errors = _remove(made)
    os.unlink(sp)
    for d in (STATE_DIR, os.path.dirname(STATE_DIR)):   # ours too, once nothing else is in them
        try:
            os.rmdir(d)
        except OSError:
            break
    return made, errors
