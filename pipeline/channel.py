"""The fast path <-> slow path channel: versioned msgpack messages on a unix stream socket.

Every message is a map with "v" (channel version) and "t" (type). Flow keys travel
as attribute/value maps: unknown attributes are ignored, missing ones are wildcards.
Values wider than 64 bits (IPv6 addresses, their masks) travel as bytes, both ways. A flow
whose translation failed comes back with ["drop"] actions, an "error" and no mask.
"""
import struct

import msgpack

from pipeline._native import ffi, lib
from pipeline.slowpath.fields import FIELDS

VERSION = 1
MAX_MESSAGE = 16 << 20          # a batch of 1024 jumbo-less packets fits with room to spare
MAX_ACTIONS = lib.VP_MAX_PROGRAM   # datapath actions of one flow: what a fast-path action set holds
# "echo": the slow path's keepalive, each second (a worker restarts a slow path it stops hearing)
# OpenFlow's needs: "execute" (packet-outs), "stats_request"/"stats_reply" (port and meter
# counters), "revalidated" (a round asked for by a revalidate_request's seq is done), "meters"
# (the fast path's token buckets), "port_mod"
TYPES = {"hello", "upcall", "upcall_reply", "revalidate", "revalidate_reply", "revalidate_request", "error", "echo",
         "execute", "stats_request", "stats_reply", "revalidated", "meters", "port_mod"}


class ChannelError(Exception):
    """A message that does not follow the protocol; the text says what is wrong."""


def encode(msg):
    return msgpack.packb(msg, use_bin_type=True)


def unpacker():
    return msgpack.Unpacker(raw=False, max_buffer_size=MAX_MESSAGE, strict_map_key=True,
                            max_str_len=1 << 16, max_bin_len=1 << 16,
                            max_array_len=1 << 16, max_map_len=1 << 12)


def check(msg):
    """Validate the envelope of a received message; returns its type."""
    if not isinstance(msg, dict):
        raise ChannelError(f"message is a {type(msg).__name__}, not a map")
    v, t = msg.get("v"), msg.get("t")
    if not isinstance(v, int) or isinstance(v, bool):
        raise ChannelError("message has no integer version 'v'")
    if v != VERSION:
        raise ChannelError(f"channel version {v} not supported (this side speaks {VERSION})")
    if not isinstance(t, str) or t not in TYPES:
        raise ChannelError(f"unknown message type {t!r}"[:200])
    return t


FIELDS_SETTABLE = {"dl_src": 48, "dl_dst": 48, "nw_src": 32, "nw_dst": 32, "ipv6_src": 128, "ipv6_dst": 128,
                   "nw_tos": 8, "nw_ttl": 8, "tp_src": 16, "tp_dst": 16, "icmp": 16, "ipv6_label": 20,
                   "arp_op": 16, "arp_spa": 32, "arp_tpa": 32, "arp_sha": 48, "arp_tha": 48, "nd_target": 128,
                   "nd_sll": 48, "nd_tll": 48}
# msgpack integers stop at 64 bits: a wider value (an IPv6 address, its mask) travels as
# big-endian bytes of the field's width. Receivers take either form.
WIRE_INT_BITS = 64


def to_wire(v, bits):
    return v.to_bytes(bits // 8, "big") if bits > WIRE_INT_BITS else v


def from_wire(v, bits):
    """The int a wire value stands for, or None when it is not a value of `bits`."""
    t = type(v)
    if t is int:
        return v if v >= 0 and not v >> bits else None
    if t is bytes and len(v) * 8 == bits:
        return int.from_bytes(v, "big")
    return None


def actions_to_wire(actions):
    return [["set", a[1], to_wire(a[2], FIELDS_SETTABLE[a[1]]), to_wire(a[3], FIELDS_SETTABLE[a[1]])]
            if a[0] == "set" else a for a in actions]


def actions_from_wire(actions):
    """Datapath actions as the channel carries them, checked and with wide values as ints:
    ["output", port], ["drop"], ["set", field, value, mask], ["push_vlan", tpid, tci],
    ["pop_vlan"], ["controller", reason], ["reparse"] (the frame parsed anew where a
    controller action was: the slow path sends the packet-in, the fast path runs the rest),
    ["meter", slot] (an OpenFlow meter's token bucket in the fast path).
    None when anything is off."""
    if not isinstance(actions, list) or len(actions) > MAX_ACTIONS:
        return None
    out = []
    for a in actions:
        if not isinstance(a, list) or not a or not isinstance(a[0], str):
            return None
        k = a[0]
        if k == "output":
            ok = len(a) == 2 and _uint(a[1], 16)
        elif k in ("drop", "pop_vlan", "reparse"):
            ok = len(a) == 1
        elif k == "set":
            w = FIELDS_SETTABLE.get(a[1]) if len(a) == 4 and isinstance(a[1], str) else None
            v, m = (from_wire(a[2], w), from_wire(a[3], w)) if w else (None, None)
            if v is None or m is None:
                return None
            a, ok = ["set", a[1], v, m], True
        elif k == "push_vlan":
            ok = len(a) == 3 and _uint(a[1], 16) and a[1] in (0x8100, 0x88A8) and _uint(a[2], 16)
        elif k == "controller":
            ok = len(a) == 2 and isinstance(a[1], str) and len(a[1]) <= 32
        elif k == "meter":                          # an OpenFlow meter's slot in the fast path
            ok = len(a) == 2 and _uint(a[1], 16) and a[1] < lib.VP_MAX_METERS
        else:
            ok = False
        if not ok:
            return None
        out.append(a)
    return out


def actions_ok(actions):
    return actions_from_wire(actions) is not None


def mask_to_wire(wc):
    return {k: to_wire(v, FIELDS[k].width) for k, v in wc.items() if v}


def mask_from_wire(wc):
    """A megaflow mask (field -> bits) with wide values as ints; None when malformed."""
    if not isinstance(wc, dict) or len(wc) > len(FIELDS):
        return None
    out = {}
    for k, v in wc.items():
        f = FIELDS.get(k) if isinstance(k, str) else None
        m = from_wire(v, f.width) if f else None
        if m is None:
            return None
        out[k] = m
    return out


def fast_path_runs(actions):
    """Whether the C execute stage runs these actions; a newer slow path may send kinds an
    older fast path lacks, and then the flow is not cached."""
    return all(a[0] in ("output", "drop", "set", "push_vlan", "pop_vlan", "reparse", "meter") for a in actions)


def _uint(v, bits):
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < (1 << bits)


# --- flow keys as attribute/value pairs -------------------------------------------------

_KEY = struct.Struct("<IHH6s6s2sH2s2s2s2s4s4s16s16s4sBBBB6s6s16s2s2s2sHI")
assert _KEY.size == ffi.sizeof("struct vp_flow_key"), "flow key layout changed: update _KEY"
L2, VLAN, L3, L4 = 1, 2, 4, 8


def _be(b):
    return int.from_bytes(b, "big")


def key_attrs(key_bytes, ofport_of, like=None):
    """The attributes of a packed struct vp_flow_key that its parsed layers define. With
    `like` (another packed key), which attributes exist is decided by that key: used to
    read a megaflow's mask the way its key is read."""
    (in_port, layers, _p0, dst, src, dl_type, _p1, t0, c0, t1, c1, nw_src, nw_dst, v6s, v6d, label,
     proto, tos, ttl, frag, sha, tha, nd, tps, tpd, tflags, _p2, _p3) = _KEY.unpack(key_bytes)
    own_layers, own_dl = layers, _be(dl_type)
    dl, proto_like, tps_like = own_dl, proto, tps
    if like is not None:
        lk = _KEY.unpack(like)
        layers, dl, proto_like, tps_like = lk[1], _be(lk[5]), lk[16], lk[23]
    a = {"in_port": ofport_of(in_port), "layers": own_layers}
    if not layers & L2:
        return a
    a.update(eth_dst=dst, eth_src=src, eth_type=own_dl)
    if layers & VLAN:
        a["vlan"] = [[_be(t), _be(c)] for t, c in ((t0, c0), (t1, c1)) if _be(t)]
    if not layers & L3:
        return a
    if dl == 0x0800:
        a.update(ipv4_src=_be(nw_src), ipv4_dst=_be(nw_dst), ip_proto=proto, ip_tos=tos, ip_ttl=ttl, ip_frag=frag)
    elif dl == 0x86DD:
        a.update(ipv6_src=v6s, ipv6_dst=v6d, ipv6_label=_be(label), ip_proto=proto, ip_tos=tos,
                 ip_ttl=ttl, ip_frag=frag)
    elif dl in (0x0806, 0x8035):
        a.update(arp_op=proto, arp_spa=_be(nw_src), arp_tpa=_be(nw_dst), arp_sha=sha, arp_tha=tha)
        return a
    if layers & L4:
        a.update(tp_src=_be(tps), tp_dst=_be(tpd))
        if proto_like == 6:
            a["tcp_flags"] = _be(tflags)
        if proto_like == 58 and _be(tps_like) in (135, 136):
            a.update(nd_target=nd, nd_sll=sha, nd_tll=tha)
    return a
