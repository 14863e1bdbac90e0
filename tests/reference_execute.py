"""Reference executor for datapath actions, written independently of the C execute stage
from Open vSwitch's lib/packets.c and lib/odp-execute.c: set (IPv4/IPv6 addresses, TOS,
TTL, flow label, ports, ICMP type/code, ARP fields, with OVS's checksum updates word by
word), push_vlan, pop_vlan, output. Header offsets come from one parse of the frame as
received (OVS's miniflow_extract rules) and move with VLAN pushes and pops. Tests compare
the C stage against it on generated packets and action lists."""
import struct

ETH_VLANS = (0x8100, 0x88A8)
EXT = (0, 43, 60, 51, 44)


def _rd(b, at):
    return struct.unpack_from("!H", b, at)[0]


def layout(pkt):
    """{'l3', 'l4', 'end', 'dl_type', 'proto', 'ip'} as OVS's parser leaves a packet."""
    L = dict(l3=None, l4=None, end=None, dl_type=0, proto=0, ip=False)
    if len(pkt) < 14:
        return L
    off, et = 12, _rd(pkt, 12)
    if et in ETH_VLANS and len(pkt) - 12 >= 6:
        off += 4
        et = _rd(pkt, off)
    off += 2
    if et < 0x600:
        if len(pkt) - off >= 8 and pkt[off:off + 6] == b"\xaa\xaa\x03\x00\x00\x00":
            et = _rd(pkt, off + 6)
            off += 8
            et = et if et >= 0x600 else 0x05FF
        else:
            et = 0x05FF
    L.update(l3=off, dl_type=et)
    n = len(pkt) - off
    if et == 0x0800:
        if n < 20:
            return L
        ihl, tot = (pkt[off] & 15) * 4, _rd(pkt, off + 2)
        if ihl < 20 or ihl > n or tot < ihl or tot > n:
            return L
        L.update(l4=off + ihl, end=off + tot, proto=pkt[off + 9], ip=True)
    elif et == 0x86DD:
        if n < 40 or _rd(pkt, off + 4) > n - 40:
            return L
        end = off + 40 + _rd(pkt, off + 4)
        L.update(end=end, ip=True)
        nh, at = pkt[off + 6], off + 40
        while nh in EXT:
            if end - at < 8:
                return L
            if nh == 44:
                fo = _rd(pkt, at + 2)
                nh, at = pkt[at], at + 8
                if fo & 0xFFF8:
                    nh = 44
                    break
                continue
            hlen = (pkt[at + 1] + 2) * 4 if nh == 51 else (pkt[at + 1] + 1) * 8
            if hlen > end - at:
                return L
            nh, at = pkt[at], at + hlen
        L.update(l4=at, proto=nh)
    return L


def recalc16(csum, old, new):
    """OVS's recalc_csum16 on network-order 16-bit values."""
    s = (~csum & 0xFFFF) + (~old & 0xFFFF) + new
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _recalc_words(csum, old, new):
    for i in range(0, len(old), 2):
        csum = recalc16(csum, _rd(old, i), _rd(new, i))
    return csum


def _csum(pkt, at, old, new, udp=False):
    c = _recalc_words(_rd(pkt, at), old, new)
    struct.pack_into("!H", pkt, at, 0xFFFF if udp and c == 0 else c)


def _masked(old, value, mask, width):
    v = int.from_bytes(old, "big")
    return ((v & ~mask) | (value & mask)).to_bytes(width, "big")


def _l4size(L):
    return L["end"] - L["l4"] if L["l4"] is not None else 0


def _rh(pkt, L):
    """OVS's packet_rh_present: (final protocol, checksum covers it, routing header left)."""
    at, rem = L["l3"], (L["l4"] if L["l4"] is not None else len(pkt)) - L["l3"]
    if rem < 40:
        return 0, True, False
    proto, at, rem, recalc = pkt[at + 6], at + 40, rem - 40, True
    while proto in EXT:
        if rem < 8:
            return proto, recalc, False
        if proto == 51:
            proto, ln = pkt[at], (pkt[at + 1] + 2) * 4
        elif proto == 44:
            offlg = _rd(pkt, at + 2)
            recalc = not offlg & 0xFFF8 and bool(offlg & 1)
            proto, ln = pkt[at], 8
        elif proto == 43 and pkt[at + 3] > 0:
            return proto, recalc, True
        else:
            proto, ln = pkt[at], (pkt[at + 1] + 1) * 8
        if rem < ln:
            return proto, recalc, False
        rem, at = rem - ln, at + ln
    return proto, recalc, False


def _crc32c(b):
    crc = 0xFFFFFFFF
    for x in b:
        crc ^= x
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return ~crc & 0xFFFFFFFF


def set_field(pkt, L, field, value, mask):
    l3, l4 = L["l3"], L["l4"]
    v4 = L["ip"] and L["dl_type"] == 0x0800
    v6 = L["ip"] and L["dl_type"] == 0x86DD
    if field in ("dl_dst", "dl_src"):
        at = 0 if field == "dl_dst" else 6
        pkt[at:at + 6] = _masked(pkt[at:at + 6], value, mask, 6)
    elif field in ("nw_src", "nw_dst") and v4:
        at = l3 + (12 if field == "nw_src" else 16)
        old, new = bytes(pkt[at:at + 4]), _masked(pkt[at:at + 4], value, mask, 4)
        if old != new:
            proto, n4 = pkt[l3 + 9], _l4size(L)
            if proto == 6 and n4 >= 20:
                _csum(pkt, l4 + 16, old, new)
            elif proto == 17 and n4 >= 8 and _rd(pkt, l4 + 6):
                _csum(pkt, l4 + 6, old, new, udp=True)
            _csum(pkt, l3 + 10, old, new)
            pkt[at:at + 4] = new
    elif field in ("ipv6_src", "ipv6_dst") and v6:
        at = l3 + (8 if field == "ipv6_src" else 24)
        old, new = bytes(pkt[at:at + 16]), _masked(pkt[at:at + 16], value, mask, 16)
        if old != new:
            proto, recalc, rh = _rh(pkt, L)
            n4 = _l4size(L)
            if recalc and not (field == "ipv6_dst" and rh) and l4 is not None:
                if proto == 6 and n4 >= 20:
                    _csum(pkt, l4 + 16, old, new)
                elif proto == 17 and n4 >= 8 and _rd(pkt, l4 + 6):
                    _csum(pkt, l4 + 6, old, new, udp=True)
                elif proto == 58 and n4 >= 4:
                    _csum(pkt, l4 + 2, old, new)
            pkt[at:at + 16] = new
    elif field == "nw_tos" and v4:
        new = (pkt[l3 + 1] & ~mask) | (value & mask)
        if new != pkt[l3 + 1]:
            struct.pack_into("!H", pkt, l3 + 10, recalc16(_rd(pkt, l3 + 10), pkt[l3 + 1], new))
            pkt[l3 + 1] = new
    elif field == "nw_tos" and v6:
        w = struct.unpack_from("!I", pkt, l3)[0]
        tc = (((w >> 20) & 0xFF) & ~mask) | (value & mask)
        struct.pack_into("!I", pkt, l3, (w & 0xF00FFFFF) | (tc << 20))
    elif field == "nw_ttl" and v4:
        new = (pkt[l3 + 8] & ~mask) | (value & mask)
        if new != pkt[l3 + 8]:
            struct.pack_into("!H", pkt, l3 + 10, recalc16(_rd(pkt, l3 + 10), pkt[l3 + 8] << 8, new << 8))
            pkt[l3 + 8] = new
    elif field == "nw_ttl" and v6:
        pkt[l3 + 7] = (pkt[l3 + 7] & ~mask) | (value & mask)
    elif field == "ipv6_label" and v6:
        w = struct.unpack_from("!I", pkt, l3)[0]
        struct.pack_into("!I", pkt, l3, (w & ~(mask & 0xFFFFF)) | (value & mask & 0xFFFFF))
    elif field in ("tp_src", "tp_dst", "icmp") and (v4 or v6) and l4 is not None:
        n4, proto = _l4size(L), L["proto"]
        off = 2 if field == "tp_dst" else 0
        new = _masked(pkt[l4 + off:l4 + off + 2], value, mask, 2)
        if new == pkt[l4 + off:l4 + off + 2]:
            return
        if field == "icmp":
            if n4 >= 8:
                struct.pack_into("!H", pkt, l4 + 2, recalc16(_rd(pkt, l4 + 2), _rd(pkt, l4), _rd(new, 0)))
                pkt[l4:l4 + 2] = new
        elif proto == 6 and n4 >= 20 and 20 <= (pkt[l4 + 12] >> 4) * 4 <= n4:
            struct.pack_into("!H", pkt, l4 + 16, recalc16(_rd(pkt, l4 + 16), _rd(pkt, l4 + off), _rd(new, 0)))
            pkt[l4 + off:l4 + off + 2] = new
        elif proto == 17 and n4 >= 8:
            if _rd(pkt, l4 + 6):
                c = recalc16(_rd(pkt, l4 + 6), _rd(pkt, l4 + off), _rd(new, 0))
                struct.pack_into("!H", pkt, l4 + 6, c or 0xFFFF)
            pkt[l4 + off:l4 + off + 2] = new
        elif proto == 132 and n4 >= 12:
            old_csum = bytes(pkt[l4 + 8:l4 + 12])
            pkt[l4 + 8:l4 + 12] = bytes(4)
            good = _crc32c(pkt[l4:l4 + n4])
            pkt[l4 + off:l4 + off + 2] = new
            fresh = _crc32c(pkt[l4:l4 + n4])
            x = struct.unpack("<I", old_csum)[0] ^ good ^ fresh
            pkt[l4 + 8:l4 + 12] = struct.pack("<I", x)
    elif field.startswith("nd_") and v6 and l4 is not None and _l4size(L) >= 24:
        if field == "nd_target":
            old, new = bytes(pkt[l4 + 8:l4 + 24]), _masked(pkt[l4 + 8:l4 + 24], value, mask, 16)
            if old != new:
                _csum(pkt, l4 + 2, old, new)
                pkt[l4 + 8:l4 + 24] = new
            return
        rem, at = _l4size(L) - 24, l4 + 24                # packet_set_nd's walk, its arithmetic kept
        while rem >= 8 and at + 2 <= len(pkt) and pkt[at + 1]:
            if pkt[at] in (1, 2) and pkt[at + 1] == 1:
                if pkt[at] == (1 if field == "nd_sll" else 2):
                    old, new = bytes(pkt[at + 2:at + 8]), _masked(pkt[at + 2:at + 8], value, mask, 6)
                    if old != new:
                        _csum(pkt, l4 + 2, old, new)
                        pkt[at + 2:at + 8] = new
                return
            at += pkt[at + 1] * 8
            if at + 2 > len(pkt):
                return
            rem -= pkt[at + 1] * 8
    elif field.startswith("arp_") and L["dl_type"] == 0x0806 and len(pkt) >= l3 + 28:
        at, w = {"arp_op": (6, 2), "arp_sha": (8, 6), "arp_spa": (14, 4), "arp_tha": (18, 6),
                 "arp_tpa": (24, 4)}[field]
        pkt[l3 + at:l3 + at + w] = _masked(pkt[l3 + at:l3 + at + w], value, mask, w)


def apply(frame, actions):
    """Run datapath actions on a frame; returns [(port, bytes)] in output order."""
    pkt, outs = bytearray(frame), []
    L = layout(pkt)
    for a in actions:
        k = a[0]
        if k == "output":
            outs.append((a[1], bytes(pkt)))
        elif k == "set":
            set_field(pkt, L, a[1], a[2], a[3])
        elif k in ("push_vlan", "pop_vlan"):
            if k == "push_vlan" and len(pkt) >= 14:
                pkt[12:12] = struct.pack("!HH", a[1], a[2] & 0xEFFF)
                d = 4
            elif k == "pop_vlan" and len(pkt) >= 18 and _rd(pkt, 12) in ETH_VLANS:
                del pkt[12:16]
                d = -4
            else:
                continue
            for x in ("l3", "l4", "end"):
                if L[x] is not None:
                    L[x] += d
    return outs
