"""extract against an independent dissector (scapy) on generated packets of every
supported kind, with Open vSwitch's rules for what a flow holds (one VLAN tag: OVS's
default vlan-limit=1); truncated and mutated frames end at a guard page, so a single byte
read past the frame length would fault."""
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption
from scapy.layers.inet6 import (ICMPv6EchoRequest, ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6NDOptDstLLAddr,
                                ICMPv6NDOptSrcLLAddr, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                                IPv6ExtHdrHopByHop, IPv6ExtHdrRouting)
from scapy.layers.l2 import ARP, LLC, SNAP, Dot1AD, Dot1Q, Dot3, Ether
from scapy.layers.sctp import SCTP
from scapy.packet import Raw

from pipeline import channel
from pipeline._native import ffi, lib
from pipeline.datapath import PARSE_ERRORS

PAGE = 4096
_guard = lib.vp_map_guarded(-1, PAGE)       # one RW page followed by PROT_NONE


def extract(frame, in_port=7):
    """Run the C parser on `frame` placed so its last byte is the last readable byte."""
    assert len(frame) <= PAGE
    p = _guard + PAGE - len(frame)
    ffi.memmove(p, frame, len(frame))
    key = ffi.new("struct vp_flow_key *")
    perr = ffi.new("uint64_t[]", lib.VP_PERR_N)
    lib.vp_extract_one(ffi.cast("uint8_t *", p), len(frame), in_port, key, perr)
    raw = bytes(ffi.buffer(key))
    # the hash takes only the words a key of its kind can hold: extract wrote no other
    words = lib.vp_key_words(key)
    assert all(raw[8 * w:8 * w + 8] == bytes(8) for w in range(len(raw) // 8) if not words >> w & 1), \
        (frame.hex(), hex(words), raw.hex())
    attrs = channel.key_attrs(raw, lambda i: i)
    return attrs, {PARSE_ERRORS[i]: perr[i] for i in range(lib.VP_PERR_N) if perr[i]}


def extract_batch(frames):
    """The extract stage's kernel on one batch: each packet's key, hash and header offsets."""
    b, dp = ffi.new("struct vp_batch *"), ffi.new("struct vp_dp *")
    keep = [ffi.new("char[]", f) for f in frames]
    for i, f in enumerate(keep):
        b.pkt[i].data, b.pkt[i].len = f, len(frames[i])
    b.n = b.cap = len(frames)
    assert lib.vp_extract(dp, b) == len(frames)
    return b


def mac(s):
    return bytes.fromhex(s.replace(":", ""))


def ip4(s):
    return int.from_bytes(bytes(map(int, s.split("."))), "big")


def ip6(s):
    import socket
    return socket.inet_pton(socket.AF_INET6, s)


def expected(frame, in_port=7):
    """The key attributes scapy's dissection says this frame has."""
    pkt = Ether(frame)
    a = {"in_port": in_port, "eth_dst": mac(pkt.dst), "eth_src": mac(pkt.src)}
    layers = 1
    if isinstance(pkt, Dot3):
        llc = pkt.payload
        etype = llc[SNAP].code if isinstance(llc, LLC) and SNAP in llc and llc[SNAP].OUI == 0 else 0x05FF
        a.update(eth_type=etype if etype >= 0x600 else 0x05FF, layers=layers)
        return a
    etype, layer, tags = pkt.type, pkt.payload, []
    while isinstance(layer, (Dot1Q, Dot1AD)) and len(tags) < 1:       # vlan-limit=1
        tags.append([etype, (layer.prio << 13) | (layer.dei << 12) | layer.vlan | 0x1000])
        etype, layer = layer.type, layer.payload
    a["eth_type"] = etype
    if tags:
        a["vlan"] = tags
        layers |= 2
    if etype in (0x8100, 0x88A8):
        a["layers"] = layers
        return a
    if isinstance(layer, IP):
        frag = (1 if (layer.flags.MF or layer.frag) else 0) | (2 if layer.frag else 0)
        a.update(ipv4_src=ip4(layer.src), ipv4_dst=ip4(layer.dst), ip_proto=layer.proto, ip_tos=layer.tos,
                 ip_ttl=layer.ttl, ip_frag=frag)
        layers |= 4
        l4 = layer.payload if not frag & 2 else None
    elif isinstance(layer, IPv6):
        a.update(ipv6_src=ip6(layer.src), ipv6_dst=ip6(layer.dst), ipv6_label=layer.fl, ip_tos=layer.tc,
                 ip_ttl=layer.hlim)
        nh, l4, frag = layer.nh, layer.payload, 0
        while isinstance(l4, (IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment)):
            if isinstance(l4, IPv6ExtHdrFragment):
                # Open vSwitch's rule: a marked fragment stays marked; a later one keeps nw_proto 44
                frag |= 1 if (l4.offset or l4.m or l4.res1 or l4.res2) else 0
                if l4.offset:
                    frag, nh = 3, 44
                    break
            nh = l4.nh
            l4 = l4.payload
        a.update(ip_proto=nh, ip_frag=frag)
        layers |= 4
        if frag & 2:
            l4 = None
    elif isinstance(layer, ARP):
        a.update(arp_op=layer.op, arp_spa=ip4(layer.psrc), arp_tpa=ip4(layer.pdst), arp_sha=mac(layer.hwsrc),
                 arp_tha=mac(layer.hwdst))
        a["layers"] = layers | 4
        return a
    else:
        a["layers"] = layers
        return a
    if isinstance(l4, (TCP, UDP, SCTP)):
        a.update(tp_src=l4.sport, tp_dst=l4.dport)
        if isinstance(l4, TCP):
            a["tcp_flags"] = (l4.reserved << 9) | int(l4.flags)
        layers |= 8
    elif isinstance(l4, ICMP) and isinstance(layer, IP):
        a.update(tp_src=l4.type, tp_dst=l4.code)
        layers |= 8
    elif l4 is not None and a["ip_proto"] == 58 and hasattr(l4, "type") and isinstance(layer, IPv6):
        a.update(tp_src=l4.type, tp_dst=l4.code)
        layers |= 8
        if isinstance(l4, (ICMPv6ND_NS, ICMPv6ND_NA)):
            a.update(nd_target=ip6(l4.tgt), nd_sll=bytes(6), nd_tll=bytes(6))
            if ICMPv6NDOptSrcLLAddr in l4 and isinstance(l4, ICMPv6ND_NS):
                a["nd_sll"] = mac(l4[ICMPv6NDOptSrcLLAddr].lladdr)
            if ICMPv6NDOptDstLLAddr in l4 and isinstance(l4, ICMPv6ND_NA):
                a["nd_tll"] = mac(l4[ICMPv6NDOptDstLLAddr].lladdr)
    a["layers"] = layers
    return a


macs = st.builds(lambda b: ":".join(f"{x:02x}" for x in b), st.binary(min_size=6, max_size=6))
v4 = st.builds(lambda b: ".".join(str(x) for x in b), st.binary(min_size=4, max_size=4))
v6 = st.builds(lambda b: ":".join(b[i:i + 2].hex() for i in range(0, 16, 2)), st.binary(min_size=16, max_size=16))
port = st.integers(0, 65535)


@st.composite
def l4_v4(draw):
    kind = draw(st.sampled_from(["tcp", "udp", "sctp", "icmp", "raw"]))
    if kind == "tcp":
        return TCP(sport=draw(port), dport=draw(port), flags=draw(st.integers(0, 511)), reserved=draw(st.integers(0, 7)))
    if kind == "udp":
        return UDP(sport=draw(port), dport=draw(port))
    if kind == "sctp":
        return SCTP(sport=draw(port), dport=draw(port))
    if kind == "icmp":
        return ICMP(type=draw(st.integers(0, 255)), code=draw(st.integers(0, 255)))
    return Raw(draw(st.binary(max_size=20)))


@st.composite
def l3(draw):
    kind = draw(st.sampled_from(["ip", "ip_opts", "ip_frag", "ipv6", "ipv6_ext", "nd", "arp"]))
    payload = draw(st.binary(max_size=40))
    if kind.startswith("ip") and not kind.startswith("ipv6"):
        ip = IP(src=draw(v4), dst=draw(v4), tos=draw(st.integers(0, 255)), ttl=draw(st.integers(0, 255)))
        if kind == "ip_opts":
            ip.options = [IPOption(b"\x01" * (4 * draw(st.integers(1, 9)) - 1) + b"\x00")]
        if kind == "ip_frag":
            ip.flags, ip.frag = draw(st.sampled_from([(1, 0), (0, 5), (1, 100)]))
        return ip / draw(l4_v4()) / payload
    if kind == "arp":
        return ARP(op=draw(st.integers(1, 4)), hwsrc=draw(macs), hwdst=draw(macs), psrc=draw(v4), pdst=draw(v4))
    ip = IPv6(src=draw(v6), dst=draw(v6), tc=draw(st.integers(0, 255)), fl=draw(st.integers(0, 2 ** 20 - 1)),
              hlim=draw(st.integers(0, 255)))
    if kind == "nd":
        if draw(st.booleans()):
            return ip / ICMPv6ND_NS(tgt=draw(v6)) / ICMPv6NDOptSrcLLAddr(lladdr=draw(macs))
        return ip / ICMPv6ND_NA(tgt=draw(v6)) / ICMPv6NDOptDstLLAddr(lladdr=draw(macs))
    if kind == "ipv6_ext":
        for h in draw(st.lists(st.sampled_from(["hop", "rt", "dst", "frag"]), min_size=1, max_size=4)):
            ip = ip / {"hop": IPv6ExtHdrHopByHop(), "rt": IPv6ExtHdrRouting(), "dst": IPv6ExtHdrDestOpt(),
                       "frag": IPv6ExtHdrFragment(offset=draw(st.sampled_from([0, 0, 7])), m=draw(st.integers(0, 1)))}[h]
    l4 = draw(st.sampled_from(["tcp", "udp", "icmp6"]))
    return ip / {"tcp": TCP(sport=draw(port), dport=draw(port), flags=draw(st.integers(0, 511))),
                 "udp": UDP(sport=draw(port), dport=draw(port)),
                 "icmp6": ICMPv6EchoRequest()}[l4] / payload


@st.composite
def frames(draw):
    eth = Ether(dst=draw(macs), src=draw(macs))
    pkt = eth
    for tpid in draw(st.lists(st.sampled_from([Dot1Q, Dot1AD]), max_size=2)):
        pkt = pkt / tpid(prio=draw(st.integers(0, 7)), dei=draw(st.integers(0, 1)), vlan=draw(st.integers(0, 4095)))
    return bytes(pkt / draw(l3()))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=frames())
def test_matches_scapy(frame):
    got, errs = extract(frame)
    want = expected(frame)
    assert got == want, (frame.hex(), errs)
    # a second tag is counted (vlan_depth): the frame is classified on its outer tag only
    assert errs == ({"vlan_depth": 1} if want["eth_type"] in (0x8100, 0x88A8) and "vlan" in want else {})


@pytest.mark.parametrize("frame", [
    bytes(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01", type=100) / LLC(dsap=0xAA, ssap=0xAA, ctrl=3) / SNAP(OUI=0, code=0x0800) / Raw(b"x" * 20)),
    bytes(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01", type=60) / LLC(dsap=0x42, ssap=0x42, ctrl=3) / Raw(b"x" * 40)),
    bytes(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01") / Dot1Q(vlan=5) / Dot1Q(vlan=6) / Dot1Q(vlan=7) / IP() / UDP()),
])
def test_llc_snap_and_tag_depth(frame):
    got, _ = extract(frame)
    assert got == expected(frame)


def test_counted_errors():
    ip = bytes(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01") / IP(src="1.2.3.4") / UDP() / b"payload!")
    assert extract(ip[:13])[1] == {"eth_short": 1}
    assert extract(ip[:30])[1] == {"ipv4_trunc": 1}
    bad_ihl = bytearray(ip)
    bad_ihl[14] = 0x43
    assert extract(bytes(bad_ihl))[1] == {"ipv4_bad": 1}
    assert extract(ip[:14 + 20 + 4])[1] == {"ipv4_trunc": 1}      # total length says more
    tcp = bytes(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01") / IP() / TCP())
    short_tcp = bytearray(tcp)
    short_tcp[17] = 20 + 10                                     # IP total length: 10 bytes of TCP
    attrs, errs = extract(bytes(short_tcp[:14 + 30]))
    assert errs == {"l4_trunc": 1} and attrs["layers"] == 1 | 4 and "tp_src" not in attrs
    v6 = bytes(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01") / IPv6() / IPv6ExtHdrHopByHop() / UDP())
    loop = bytearray(v6)
    loop[14 + 40] = 0                                           # hop-by-hop pointing at another one, again
    assert extract(bytes(loop))[1].get("ipv6_ext") == 1
    assert extract(bytes(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01") / Dot1Q())[:16])[1] == {"vlan_trunc": 1}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=frames(), cut=st.integers(0, 2000))
def test_truncated_frames_keep_only_whole_layers(frame, cut):
    cut %= len(frame)
    full, _ = extract(frame)
    part, errs = extract(frame[:cut])
    assert part["layers"] & ~full["layers"] == 0
    ptags, ftags = part.get("vlan", []), full.get("vlan", [])
    assert ftags[:len(ptags)] == ptags
    for k, v in part.items():
        if k == "eth_type" and len(ptags) < len(ftags):
            assert v == ftags[len(ptags)][0]        # the TPID of the tag that was cut off
        elif "ipv6_ext" in errs and k in ("ip_proto", "ip_tos", "ip_ttl", "ipv6_label", "ip_frag"):
            assert v == 0, k                        # as OVS: the addresses stand, the rest reads 0
        elif k not in ("layers", "vlan"):
            assert full.get(k) == v, k


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=frames(), flips=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=8))
def test_mutated_frames_never_overread(frame, flips):
    b = bytearray(frame)
    for pos, val in flips:
        b[pos % len(b)] = val
    attrs, _ = extract(bytes(b))
    assert attrs["layers"] & 1 or len(b) < 14


@settings(max_examples=500, deadline=None)
@given(raw=st.binary(max_size=400))
def test_random_bytes(raw):
    attrs, errs = extract(raw)
    assert (len(raw) < 14) == ("eth_short" in errs)


def test_zero_and_max_length():
    extract(b"")
    extract(os.urandom(PAGE))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fs=st.lists(frames(), min_size=1, max_size=16), cut=st.integers(0, 2000))
def test_the_stage_records_where_headers_are(fs, cut):
    """The batch kernel gives each packet the key and hash a lone parse gives, and the
    network/transport offsets execute edits at (so execute parses nothing again)."""
    fs = fs[:-1] + [fs[-1][:cut % (len(fs[-1]) + 1)]]          # one frame cut anywhere
    b = extract_batch(fs)
    key, L, perr = ffi.new("struct vp_flow_key *"), ffi.new("struct vp_layout *"), ffi.new("uint64_t[]", lib.VP_PERR_N)
    for i, f in enumerate(fs):
        lib.vp_parse(f, len(f), 0, key, perr, L)
        pk = b.pkt[i]
        assert bytes(ffi.buffer(key)) == bytes(ffi.buffer(ffi.addressof(b.key[i]))), f.hex()
        assert pk.parsed == 1 and (pk.l3, pk.l4, pk.l_end) == (L.l3, L.l4, L.end), f.hex()
        assert pk.hash == lib.vp_key_hash(key)
    # the offsets of the frames cut nowhere, against scapy's dissection
    for i, f in enumerate(fs[:-1]):
        want = scapy_offsets(f)
        if want and b.key[i].layers & 4 and b.key[i].dl_type in (0x0008, 0xdd86):    # network order
            assert (b.pkt[i].l3, b.pkt[i].l4, b.pkt[i].l_end) == want, f.hex()


def scapy_offsets(frame):
    """(network header, transport header, network packet's end) by scapy, for IP frames"""
    pkt = Ether(frame)
    for cls in (IP, IPv6):
        if cls in pkt:
            ip = pkt[cls]
            l3 = len(frame) - len(bytes(ip))
            l4 = ip.payload
            while isinstance(l4, (IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment)):
                later = isinstance(l4, IPv6ExtHdrFragment) and l4.offset
                l4 = l4.payload
                if later:
                    break
            return l3, len(frame) - len(bytes(l4)), l3 + (ip.len if cls is IP else 40 + ip.plen)
    return None
