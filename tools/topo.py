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


MAX_FILE = 1 << 20
MTU = (68, 65535)             # what Linux takes for a veth or TAP


def load(path):
    """Parse and check a topology file; every error names the entry and key. A veth's
    peer is created in its own namespace unless peer_netns says otherwise (as `ip link
    add ... peer` run in that namespace does)."""
    from pipeline import userfiles
    try:
        doc = tomllib.loads(userfiles.read_bytes(path, "topology", MAX_FILE).decode("utf-8"))
    except userfiles.UserFileError as e:
        raise TopoError(str(e).removeprefix("topology ")) from None
    except UnicodeDecodeError as e:
        raise TopoError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except (tomllib.TOMLDecodeError, RecursionError) as e:
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
                if section == "netns" and not NETNS_RE.fullmatch(n):
                    raise TopoError(f"{where}: {n!r} is not a namespace name (1-64 of [A-Za-z0-9_.-], not . or ..)")
            for k in ("netns", "peer_netns"):
                if k in e and not NETNS_RE.fullmatch(e[k]):
                    raise TopoError(f"{where}.{k}: {e[k]!r} is not a namespace name (1-64 of [A-Za-z0-9_.-])")
            if section == "veth":
                e.setdefault("peer_netns", e.get("netns"))
                if e["peer_netns"] is None:
                    del e["peer_netns"]
                if e["name"] == e["peer"] and e.get("netns") == e.get("peer_netns"):
                    raise TopoError(f"{where}: name and peer are both {e['name']!r} in one namespace")
            if "mtu" in e and not MTU[0] <= e["mtu"] <= MTU[1]:
                raise TopoError(f"{where}.mtu: {e['mtu']} is not an MTU ({MTU[0]}..{MTU[1]})")
            for k in ("address", "peer_address"):
                for a in e.get(k, []):
                    try:
                        ipaddress.ip_interface(a)
                    except ValueError:
                        raise TopoError(f"{where}.{k}: {a!r} is not an address with a prefix (10.0.0.1/24)") from None
            out[section].append(e)
    seen = {}
    for section in ("veth", "tap"):
        for e in out[section]:
            ends = [(e["name"], e.get("netns"))] + ([(e["peer"], e.get("peer_netns"))] if section == "veth" else [])
            for n, ns in ends:
                if (n, ns) in seen:
                    raise TopoError(f"{path}: interface {n} in {ns or 'this namespace'} is declared twice "
                                    f"([[{seen[n, ns]}]] and [[{section}]])")
                seen[n, ns] = section
    declared = {e["name"] for e in out["netns"]}
    if len(declared) != len(out["netns"]):
        raise TopoError(f"{path}: a [[netns]] is declared twice")
    return out


def state_path(path):
    key = hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:16]
    return os.path.join(STATE_DIR, key + ".json")


NETNS_RE = __import__("re").compile(r"(?!\.\.?$)[A-Za-z0-9_.-]{1,64}")


def _ipr(netns):
    from pyroute2 import IPRoute
    # flags=0: never create a namespace by naming it (pyroute2's default would, and a
    # failed `up` then left it behind)
    return IPRoute(netns=netns, flags=0) if netns else IPRoute()


def _why(exc):
    """An error in words: netlink's and the OS's as strerror, not (17, 'File exists')."""
    code = getattr(exc, "code", None)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(code, int) and code > 0:
        return os.strerror(code)
    return str(exc) or type(exc).__name__


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
    what = "the topology"
    try:
        from pyroute2 import netns as nsmod
        existing = set(nsmod.listnetns())
        declared = {e["name"] for e in topo["netns"]}
        for section in ("veth", "tap"):         # before anything is made: a namespace nobody declared
            for e in topo[section]:
                for k in ("netns", "peer_netns"):
                    if e.get(k) and e[k] not in declared | existing:
                        raise TopoError(f"{section} {e['name']}: {k} {e[k]!r} is neither a [[netns]] of {path} "
                                        "nor an existing namespace (ip netns list)")
        for e in topo["netns"]:
            what = f"netns {e['name']}"
            if e["name"] in existing:
                raise TopoError(f"netns {e['name']} already exists (not created by this topology)")
            nsmod.create(e["name"])
            made.append({"kind": "netns", "name": e["name"]})
            with _ipr(e["name"]) as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        for e in topo["veth"]:
            ns, pns = e.get("netns"), e.get("peer_netns")
            what = f"veth {e['name']} (peer {e['peer']})"
            for n, where in ((e["name"], ns), (e["peer"], pns)):
                if _exists(where, n):
                    raise TopoError(f"interface {n} already exists in {where or 'this namespace'}")
            queues = e.get("queues", 1)
            if not 1 <= queues <= 64:
                raise TopoError(f"veth {e['name']}: queues must be 1..64")
            with _ipr(ns) as ipr:
                peer = {"ifname": e["peer"], "num_rx_queues": queues, "num_tx_queues": queues}
                if pns != ns:
                    peer["net_ns_fd"] = pns
                ipr.link("add", ifname=e["name"], kind="veth", peer=peer,
                         num_rx_queues=queues, num_tx_queues=queues)
            made.append({"kind": "link", "name": e["name"], "netns": ns})
            what = f"veth {e['name']}"
            _configure(ns, e["name"], e)
            what = f"veth {e['peer']} (peer of {e['name']})"
            _configure(pns, e["peer"], e, "peer_address", "peer_ipv6")
            if not e.get("offload", False):
                tx_offload_off(ns, e["name"])
                tx_offload_off(pns, e["peer"])
        for e in topo["tap"]:
            ns = e.get("netns")
            what = f"tap {e['name']}"
            if _exists(ns, e["name"]):
                raise TopoError(f"interface {e['name']} already exists in {ns or 'this namespace'}")
            _tap_create(ns, e["name"], e.get("queues", 1))
            made.append({"kind": "link", "name": e["name"], "netns": ns})
            _configure(ns, e["name"], e)
    except TopoError:
        _remove(made)
        raise
    except Exception as exc:                    # netlink's, the OS's, pyroute2's: said of the object
        _remove(made)
        raise TopoError(f"{what}: {_why(exc)}") from None
    os.makedirs(STATE_DIR, mode=0o700, exist_ok=True)
    with open(sp, "w") as f:
        json.dump({"file": os.path.abspath(path), "created": made}, f, indent=1)
    return made


def _remove(made):
    """Remove what `up` made, newest first; returns (errors, already gone): what could not
    be removed, and what was no longer there (removed by hand)."""
    from pyroute2 import netns as nsmod
    errors, gone = [], []
    for m in reversed(made):
        try:
            if m["kind"] == "netns":
                if m["name"] in nsmod.listnetns():
                    nsmod.remove(m["name"])
                else:
                    gone.append(f"netns {m['name']}")
            else:
                ns = m.get("netns")
                if ns and ns not in nsmod.listnetns():
                    if not any(x["kind"] == "netns" and x["name"] == ns for x in made):
                        gone.append(f"link {m['name']} (its netns {ns} is gone)")
                    continue                     # went with its namespace
                with _ipr(ns) as ipr:
                    idx = ipr.link_lookup(ifname=m["name"])
                    if idx:
                        ipr.link("del", index=idx[0])
                    else:
                        gone.append(f"link {m['name']}" + (f" in {ns}" if ns else ""))
        except Exception as e:                   # keep removing the rest
            errors.append(f"{m['kind']} {m['name']}: {_why(e)}")
    return errors, gone


def down(path):
    """Remove what `up` created for this file; returns (made, errors, already gone)."""
    sp = state_path(path)
    try:
        with open(sp) as f:
            made = json.load(f)["created"]
    except FileNotFoundError:
        raise TopoError(f"{path} is not up (no state file {sp})") from None
    errors, gone = _remove(made)
    os.unlink(sp)
    for d in (STATE_DIR, os.path.dirname(STATE_DIR)):   # ours too, once nothing else is in them
        try:
            os.rmdir(d)
        except OSError:
            break
    return made, errors, gone
