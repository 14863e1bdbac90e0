"""The slow path's flow fields (after Open vSwitch's struct flow) and the names that
ovs-ofctl syntax uses for them, with their widths, masks and prerequisites."""
import ipaddress
import re
from dataclasses import dataclass


class FieldError(ValueError):
    pass


@dataclass(frozen=True)
class Field:
    name: str
    width: int
    kind: str = "int"          # int | mac | ipv4 | ipv6
    maskable: bool = True
    stage: int = 0             # classifier stage: 0 metadata, 1 L2, 2 L3, 3 L4

    @property
    def full(self):
        return (1 << self.width) - 1


# the flow as the slow path sees it: every field an int, 0 when absent
FIELDS = {f.name: f for f in [
    Field("in_port", 16, maskable=False, stage=0),
    Field("metadata", 64, stage=0),
    Field("vlan_tci", 16, stage=1),          # before the MACs: ovs-ofctl's print order
    Field("dl_src", 48, "mac", stage=1),
    Field("dl_dst", 48, "mac", stage=1),
    Field("dl_type", 16, maskable=False, stage=1),
    Field("nw_src", 32, "ipv4", stage=2),
    Field("nw_dst", 32, "ipv4", stage=2),
    Field("ipv6_src", 128, "ipv6", stage=2),
    Field("ipv6_dst", 128, "ipv6", stage=2),
    Field("ipv6_label", 20, stage=2),
    Field("nw_proto", 8, maskable=False, stage=2),
    Field("nw_tos", 8, stage=2),
    Field("nw_ttl", 8, maskable=False, stage=2),
    Field("nw_frag", 2, stage=2),
    Field("arp_sha", 48, "mac", stage=2),
    Field("arp_tha", 48, "mac", stage=2),
    Field("tp_src", 16, stage=3),
    Field("tp_dst", 16, stage=3),
    Field("tcp_flags", 12, stage=3),
    Field("nd_target", 128, "ipv6", stage=3),
]}
ORDER = list(FIELDS)
ETH_IP, ETH_IPV6, ETH_ARP, ETH_RARP = 0x0800, 0x86DD, 0x0806, 0x8035
VLAN_CFI = 0x1000
LOCAL = 0xFFFE                 # OpenFlow's port number for the switch's own (internal) port


HEX = frozenset("0123456789abcdefABCDEF")


_DECIMAL = re.compile(r"[0-9]+")
_HEXADECIMAL = re.compile(r"0[xX][0-9a-fA-F]+")


def strict_int(t):
    """An integer as ovs-ofctl reads one: ASCII decimal or 0x hex. Python's int() would
    also take signs, underscores, spaces, 0b/0o and any script's digits ('١', '２'), which
    OVS refuses; a leading 0 (octal to OVS) is refused rather than read otherwise."""
    if _HEXADECIMAL.fullmatch(t):
        return int(t[2:], 16)
    if _DECIMAL.fullmatch(t):
        return int(t, 0)
    raise ValueError(t)


def parse_value(field, text):
    """Value of `field` written as ovs-ofctl writes it: decimal/hex int, MAC, IPv4, IPv6."""
    t = text.strip()
    try:
        if field.kind == "mac":
            parts = t.split(":")
            if len(parts) != 6 or not all(1 <= len(p) <= 2 and all(c in HEX for c in p) for p in parts):
                raise ValueError
            return int("".join(p.zfill(2) for p in parts), 16)
        if field.kind == "ipv4":
            return int(ipaddress.IPv4Address(t))
        if field.kind == "ipv6":
            return int(ipaddress.IPv6Address(t))
        v = strict_int(t)
    except ValueError:
        raise FieldError(f"{t!r} is not a valid {field.kind} value for {field.name}") from None
    if not 0 <= v <= field.full:
        raise FieldError(f"{field.name}={t}: value out of range (at most {field.width} bits)")
    return v


def parse_value_mask(field, text):
    """`V` or `V/M`; IP fields also take a prefix length `V/N`. Returns (value & mask, mask)."""
    if "/" not in text:
        return parse_value(field, text), field.full
    if not field.maskable:
        raise FieldError(f"{field.name} cannot be masked ({text!r})")
    v, m = text.split("/", 1)
    value = parse_value(field, v)
    if field.kind in ("ipv4", "ipv6") and _DECIMAL.fullmatch(m):
        n = int(m)
        if not 0 <= n <= field.width:
            raise FieldError(f"{text}: {'IPv4' if field.kind == 'ipv4' else 'IPv6'} network prefix bits "
                             f"not between 0 and {field.width}, inclusive")
        mask = (field.full << (field.width - n)) & field.full
    else:
        mask = parse_value(field, m)
    return value & mask, mask


def format_value(field, v):
    if field.kind == "mac":
        return ":".join(f"{(v >> (40 - 8 * i)) & 0xFF:02x}" for i in range(6))
    if field.kind == "ipv4":
        return str(ipaddress.IPv4Address(v))
    if field.kind == "ipv6":
        return str(ipaddress.IPv6Address(v))
    if field.name in ("metadata", "vlan_tci", "tcp_flags", "dl_type", "ipv6_label"):
        return hex(v)
    return str(v)


def format_value_mask(field, v, m):
    if m == field.full:
        return format_value(field, v)
    if field.kind in ("ipv4", "ipv6"):
        n = bin(m).count("1")
        if m == (field.full << (field.width - n)) & field.full:
            return f"{format_value(field, v)}/{n}"
    if field.kind in ("ipv4", "ipv6", "mac"):
        return f"{format_value(field, v)}/{format_value(field, m)}"
    return f"{hex(v)}/{hex(m)}"


ZERO_FLOW = dict.fromkeys(ORDER, 0)
# (attribute, field, bits) copied when present for the flow's ethertype
_IP_COMMON = (("ip_proto", "nw_proto", 8), ("ip_tos", "nw_tos", 8), ("ip_ttl", "nw_ttl", 8), ("ip_frag", "nw_frag", 2),
              ("tp_src", "tp_src", 16), ("tp_dst", "tp_dst", 16), ("tcp_flags", "tcp_flags", 12))
_BY_TYPE = {
    ETH_IP: (("ipv4_src", "nw_src", 32), ("ipv4_dst", "nw_dst", 32)) + _IP_COMMON,
    ETH_IPV6: (("ipv6_src", "ipv6_src", 128), ("ipv6_dst", "ipv6_dst", 128), ("nd_target", "nd_target", 128),
               ("ipv6_label", "ipv6_label", 20), ("nd_sll", "arp_sha", 48), ("nd_tll", "arp_tha", 48)) + _IP_COMMON,
    ETH_ARP: (("arp_spa", "nw_src", 32), ("arp_tpa", "nw_dst", 32), ("arp_op", "nw_proto", 8),
              ("arp_sha", "arp_sha", 48), ("arp_tha", "arp_tha", 48)),
}
_BY_TYPE[ETH_RARP] = _BY_TYPE[ETH_ARP]


def _uint(v, bits):
    """An attribute value as an unsigned int of `bits` (bytes are big-endian); anything
    malformed reads as 0, as a missing attribute would."""
    t = type(v)
    if t is int:
        return v if 0 <= v and not v >> bits else 0
    if t is bytes and len(v) * 8 == bits:
        return int.from_bytes(v, "big")
    return 0


def vlans_of(flow):
    """The flow's VLAN stack, outermost first, two entries of [tpid, tci] (tci with CFI
    when the tag exists); a flow without one gets it from its vlan_tci."""
    if "vlans" in flow:
        return [[t, c] if c & VLAN_CFI else [t, 0] for t, c in flow["vlans"]]
    tci = flow.get("vlan_tci", 0)
    return [[0x8100, tci] if tci & VLAN_CFI else [0, 0], [0, 0]]


def flow_from_attrs(a):
    """A fast-path key (attribute map from the channel) as slow-path field ints.
    Unknown attributes are ignored; missing or malformed ones read as 0."""
    f = dict(ZERO_FLOW)
    f["in_port"] = _uint(a.get("in_port"), 16)
    f["dl_src"] = _uint(a.get("eth_src"), 48)
    f["dl_dst"] = _uint(a.get("eth_dst"), 48)
    dl = f["dl_type"] = _uint(a.get("eth_type"), 16)
    vlans = [[0, 0], [0, 0]]
    vl = a.get("vlan")
    if type(vl) is list:
        for i, tag in enumerate(vl[:2]):
            if type(tag) is list and len(tag) == 2:
                vlans[i] = [_uint(tag[0], 16), _uint(tag[1], 16)]
    f["vlans"] = vlans
    f["vlan_tci"] = vlans[0][1]
    for attr, field, bits in _BY_TYPE.get(dl, ()):
        v = a.get(attr)
        if v is not None:
            f[field] = _uint(v, bits)
    return f
