"""Reference executor for datapath actions, written independently of the C execute stage:
set (with IPv4 header and TCP/UDP checksum updates), push_vlan, pop_vlan, output. Tests
compare the C stage against it on generated packets and action lists."""
import struct

ETH_VLANS = (0x8100, 0x88A8)


def _fold(s):
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _sum16(b):
    if len(b) % 2:
        b = bytes(b) + b"\0"
    return sum(struct.unpack(f"!{len(b) // 2}H", b))


def _csum_update(pkt, at, old, new):
    """RFC 1624 incremental update, HC' = ~(~HC + ~m + m'), of the checksum at `at`."""
    hc = struct.unpack_from("!H", pkt, at)[0]
    s = (~hc & 0xFFFF) + (~_fold(_sum16(old)) & 0xFFFF) + _fold(_sum16(new))
    struct.pack_into("!H", pkt, at, ~_fold(s) & 0xFFFF)


def _layers(pkt):
    """(ethertype, l3 offset, l4 offset or None, ip proto or None)."""
    off = 12
    et = struct.unpack_from("!H", pkt, off)[0] if len(pkt) >= 14 else 0
    while et in ETH_VLANS and len(pkt) >= off + 6:
        off += 4
        et = struct.unpack_from("!H", pkt, off)[0]
    l3 = off + 2
    if et == 0x0800 and len(pkt) >= l3 + 20:
        ihl = (pkt[l3] & 15) * 4
        frag_later = struct.unpack_from("!H", pkt, l3 + 6)[0] & 0x1FFF
        return et, l3, (None if frag_later or len(pkt) < l3 + ihl else l3 + ihl), pkt[l3 + 9]
    if et == 0x86DD and len(pkt) >= l3 + 40:
        return et, l3, l3 + 40 if pkt[l3 + 6] in (6, 17) else None, pkt[l3 + 6]
    return et, l3, None, None


def _l4_csum_at(pkt, l4, proto):
    if l4 is None:
        return None
    if proto == 6 and len(pkt) >= l4 + 18:
        return l4 + 16
    if proto == 17 and len(pkt) >= l4 + 8 and struct.unpack_from("!H", pkt, l4 + 6)[0]:
        return l4 + 6                               # 0 = no UDP checksum (IPv4)
    return None


def _write(pkt, at, width, value, mask, csums=()):
    """Write the masked bits of a field and update the checksums that cover it. Checksummed
    regions start at even offsets of the frame, so 16-bit words align absolutely."""
    s, e = at & ~1, (at + width + 1) & ~1
    before = bytes(pkt[s:e])
    cur = int.from_bytes(pkt[at:at + width], "big")
    pkt[at:at + width] = ((cur & ~mask) | (value & mask)).to_bytes(width, "big")
    after = bytes(pkt[s:e])
    for c in csums:
        if c is not None:
            _csum_update(pkt, c, before, after)


def set_field(pkt, field, value, mask):
    et, l3, l4, proto = _layers(pkt)
    if field in ("dl_dst", "dl_src"):
        _write(pkt, 0 if field == "dl_dst" else 6, 6, value, mask)
        return True
    if et == 0x0800 and field in ("nw_src", "nw_dst", "nw_tos", "nw_ttl"):
        at, w = {"nw_src": (l3 + 12, 4), "nw_dst": (l3 + 16, 4), "nw_tos": (l3 + 1, 1), "nw_ttl": (l3 + 8, 1)}[field]
        l4c = _l4_csum_at(pkt, l4, proto) if field in ("nw_src", "nw_dst") else None   # pseudo-header
        _write(pkt, at, w, value, mask, (l3 + 10, l4c))
        return True
    if et == 0x86DD and field in ("ipv6_src", "ipv6_dst", "nw_ttl", "nw_tos"):
        if field == "nw_tos":
            word = struct.unpack_from("!I", pkt, l3)[0]
            struct.pack_into("!I", pkt, l3, (word & ~(mask << 20)) | ((value & mask) << 20))
            return True
        at, w = {"ipv6_src": (l3 + 8, 16), "ipv6_dst": (l3 + 24, 16), "nw_ttl": (l3 + 7, 1)}[field]
        _write(pkt, at, w, value, mask, (_l4_csum_at(pkt, l4, proto),) if w == 16 else ())
        return True
    if field in ("tp_src", "tp_dst") and l4 is not None and proto in (6, 17):
        _write(pkt, l4 + (0 if field == "tp_src" else 2), 2, value, mask, (_l4_csum_at(pkt, l4, proto),))
        return True
    return False                                    # the packet has no such field: nothing to set


def apply(frame, actions):
    """Run datapath actions on a frame; returns [(port, bytes)] in output order."""
    pkt, outs = bytearray(frame), []
    for a in actions:
        k = a[0]
        if k == "output":
            outs.append((a[1], bytes(pkt)))
        elif k == "set":
            set_field(pkt, a[1], a[2], a[3])
        elif k == "push_vlan" and len(pkt) >= 14:
            pkt[12:12] = struct.pack("!HH", a[1], a[2] & 0xFFFF)
        elif k == "pop_vlan" and len(pkt) >= 18 and struct.unpack_from("!H", pkt, 12)[0] in ETH_VLANS:
            del pkt[12:16]
    return outs
