"""Guests' offloads without a guest: super-frames (GSO) and partial checksums as Linux hands
them to a switch, through a running pipeline between namespaces (veth and TAP with their
offloads on), and the segmentation kernel against Linux's own software segmentation."""
import os
import random
import socket
import struct
import time

import pytest

from bindings.adapter import in_netns
from pipeline._native import ffi, lib
from tests.conftest import wait_for
from tests.netlab import MIXED_LAB, TAP_LAB, VETH_LAB, two_ports

root = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces, veth and TAP need root")

PACKET_VNET_HDR = 15


def _csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _pseudo_sum(frame, l3, v6, proto, l4len):
    if v6:
        return _csum(frame[l3 + 8:l3 + 40] + struct.pack("!IxxxB", l4len, proto))
    return _csum(frame[l3 + 12:l3 + 20] + struct.pack("!xBH", proto, l4len))


def super_frame(rng, v6, proto=6, payload=None, vlan=False, mss=None):
    """A GSO super-frame as Linux sends it: L4 checksum field = pseudo-header sum (partial),
    and its offload metadata (flags, gso_type, gso_size, csum_start, csum_off)."""
    eth = bytes.fromhex("02aabbccddee02112233445566")[:12]
    if vlan:
        eth += struct.pack("!HH", 0x8100, rng.randrange(4096))
    eth += struct.pack("!H", 0x86DD if v6 else 0x0800)
    l3 = len(eth)
    n = rng.randrange(1, 20000) if payload is None else payload
    data = bytes(rng.randrange(256) for _ in range(n))
    if proto == 6:
        opts = bytes([1, 1, 8, 10]) + os.urandom(8) if rng.random() < 0.7 else b""
        flags = rng.choice([0x10, 0x18, 0x19, 0x98, 0x58])       # ACK, +PSH, +FIN, +CWR, +ECE
        l4 = struct.pack("!HHIIBBHHH", rng.randrange(1, 65536), rng.randrange(1, 65536), rng.randrange(2**32),
                         rng.randrange(2**32), (20 + len(opts)) // 4 << 4, flags, rng.randrange(65536), 0, 0) + opts
        csum_off = 16
    else:
        l4 = struct.pack("!HHHH", rng.randrange(1, 65536), rng.randrange(1, 65536), 8 + n, 0)
        csum_off = 6
    l4len = len(l4) + n
    if v6:
        ip = struct.pack("!IHBB", 0x60000000 | rng.randrange(1 << 20), l4len, proto, 64) + \
            os.urandom(16) + bytes.fromhex("fd000000000000000000000000000002")
    else:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + l4len, rng.randrange(65536), 0x4000, 64, proto, 0,
                         os.urandom(4), bytes([10, 0, 0, 2]))
        ip = ip[:10] + struct.pack("!H", 0xFFFF ^ _csum(ip)) + ip[12:]
    frame = bytearray(eth + ip + l4 + data)
    l4at = l3 + len(ip)
    struct.pack_into("!H", frame, l4at + csum_off, _pseudo_sum(frame, l3, v6, proto, l4len))
    mss = mss or rng.choice([536, 1000, 1220, 1400])         # segments fit a 1500 MTU
    gso = (lib.VP_GSO_TCPV6 if v6 else lib.VP_GSO_TCPV4) if proto == 6 else lib.VP_GSO_UDP_L4
    return bytes(frame), (lib.VP_OL_CSUM, gso, mss, l4at, csum_off)


def c_segment(frame, meta):
    ol = ffi.new("struct vp_offload *", dict(zip(("flags", "gso_type", "gso_size", "csum_start", "csum_off"), meta)))
    n = lib.vp_gso_count(frame, len(frame), ol, 65535)
    assert n > 0
    bufs = [ffi.new("uint8_t[]", 65536) for _ in range(n)]
    lens = ffi.new("uint16_t[]", n)
    assert lib.vp_gso_segment(frame, len(frame), ol, ffi.new("uint8_t *[]", bufs), lens, n) == n
    return [bytes(ffi.buffer(b, lens[i])) for i, b in enumerate(bufs)]


def test_segments_are_valid():
    """Every segment: IP length and header checksum, TCP/UDP checksum over the pseudo-header
    right, sequence numbers contiguous, payload reassembles to the original."""
    rng = random.Random(7)
    for case in range(60):
        v6, proto = case % 2 == 1, 6 if case % 3 else 17
        frame, meta = super_frame(rng, v6, proto, vlan=case % 5 == 0)
        segs = c_segment(frame, meta)
        l4at, hl = meta[3], None
        payload = b""
        for i, s in enumerate(segs):
            l3 = 18 if case % 5 == 0 else 14
            hl = l4at + ((s[l4at + 12] >> 4) * 4 if proto == 6 else 8)
            assert len(s) - hl <= meta[2]
            if not v6:
                assert struct.unpack_from("!H", s, l3 + 2)[0] == len(s) - l3 and _csum(s[l3:l3 + 20]) == 0xFFFF
            else:
                assert struct.unpack_from("!H", s, l3 + 4)[0] == len(s) - l3 - 40
            assert (_pseudo_sum(s, l3, v6, proto, len(s) - l4at) + _csum(s[l4at:])) % 0xFFFF == 0, (case, i)
            payload += s[hl:]
        assert payload == frame[hl:]


@root
def test_segmentation_matches_linux(lab):
    """The same super-frames through Linux's software GSO (sent with PACKET_VNET_HDR on a
    veth that has no TSO or checksum offload) and through vp_gso_segment: the same bytes."""
    L = lab(VETH_LAB)
    lab_run = L.run
    lab_run("vA", "ethtool", "-K", L.name("a0"), "tx", "off", "tso", "off", "gso", "off")
    with in_netns(L.name("vA")):
        tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        tx.setsockopt(263, PACKET_VNET_HDR, 1)
        tx.bind((L.name("a0"), 0))
    with in_netns(L.name("vS")):
        rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        rx.bind((L.name("a1"), 0))
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    rx.settimeout(3)
    rng = random.Random(11)
    try:
        for case in range(24):
            v6, proto = case % 2 == 1, 6 if case % 4 else 17
            frame, meta = super_frame(rng, v6, proto, payload=rng.randrange(1, 12000))
            hdr = struct.pack("<BBHHHH", meta[0], meta[1], meta[3] + meta[4] + 2, meta[2], meta[3], meta[4])
            tx.send(hdr + frame)
            want = c_segment(frame, meta)
            got = []
            while len(got) < len(want):
                f = rx.recv(65536)
                if f[12:14] in (b"\x08\x00", b"\x86\xdd") and f[:12] == frame[:12]:
                    got.append(f)
            assert got == want, (case, meta, [len(g) for g in got], [len(w) for w in want])
    finally:
        tx.close()
        rx.close()


def _offload_lab(text):
    """The same labs with the hosts' offloads left on, as a guest's virtio-net has them."""
    return text.replace("peer_ipv6 = false\n", "peer_ipv6 = false\noffload = true\n")


def _through(lab, pipe, a, b, addr_a, addr_b, ends, nbytes=8_000_000):
    ok, out = lab.ping(a, addr_b)
    assert ok, out
    sent, got = lab.transfer(a, b, addr_b, nbytes=nbytes)
    assert sent == got and sent.startswith(f"{nbytes} "), (sent, got)
    time.sleep(0.3)
    st = pipe.stats()
    for i, (ns, ifc) in enumerate(ends):
        io, k = st["ports"][i]["io"], lab.link_stats(ns, ifc)
        assert io["rx_truncated"] == io["tx_errors"] == io["rx_errors"] == 0, io
        assert io["rx_packets"] == k["tx_packets"] and io["tx_packets"] == k["rx_packets"], (ifc, io, k)
        assert st["ports"][i]["link"] == "up"
    assert st["drops"]["bad_offload"] == st["drops"]["too_big"] == 0, st["drops"]
    return st


@root
@pytest.mark.parametrize("kind", ["packet", "afxdp"])
def test_veth_offloads_on(lab, pipeline_factory, kind):
    """Hosts with TSO/GSO and checksum offload on: packet: carries the super-frames whole
    (the kernel hands them over and takes them back with their virtio_net_hdr); afxdp:
    gets partial checksums it must complete (native XDP on veth makes the peer segment)."""
    L = lab(_offload_lab(VETH_LAB))
    p = pipeline_factory(two_ports(kind[:2] + L.tag, L.uri(kind, "a1", "vS"), L.uri(kind, "b1", "vS")))
    st = _through(L, p, "vA", "vB", "10.61.0.1", "10.61.0.2", [("vA", "a0"), ("vB", "b0")])
    io = st["ports"][0]["io"]
    assert io["rx_csum_partial"] > 0, io
    if kind == "packet":
        assert io["rx_gso"] > 0 and st["tx_segmented"] == 0, (io, st)     # passed whole both ways
    else:
        assert st["csum_completed"] > 0, st


@root
def test_tap_offloads_on(lab, pipeline_factory):
    """tap: offers TSO to the namespaces' stacks: 64 KB super-frames cross the pipeline
    whole, TAP to TAP, with their headers."""
    L = lab(TAP_LAB)
    p = pipeline_factory(two_ports("to" + L.tag, L.uri("tap", "ta", "vA"), L.uri("tap", "tb", "vB")))
    st = _through(L, p, "vA", "vB", "10.62.0.1", "10.62.0.2", [("vA", "ta"), ("vB", "tb")])
    io = st["ports"][0]["io"]
    assert io["rx_gso"] > 0 and st["tx_segmented"] == 0 and st["csum_completed"] == 0, (io, st)


@root
def test_tap_super_frames_to_afxdp(lab, pipeline_factory):
    """Super-frames from a TAP leave through AF_XDP, which takes none: segmented and their
    checksums completed in the pipeline; the other way, AF_XDP's partial checksums go
    into the TAP still partial."""
    L = lab(_offload_lab(MIXED_LAB))
    p = pipeline_factory(two_ports("ta" + L.tag, L.uri("afxdp", "a1", "vS"), L.uri("tap", "tb", "vB")))
    # B (on the TAP) sends: its super-frames are cut for the veth
    st = _through(L, p, "vB", "vA", "10.63.0.2", "10.63.0.1", [("vA", "a0"), ("vB", "tb")])
    assert st["tx_segmented"] > 0 and st["tx_segments"] > st["tx_segmented"], st
    assert st["ports"][1]["io"]["rx_gso"] > 0
    sent, got = L.transfer("vA", "vB", "10.63.0.2", nbytes=4_000_000, port=5202)
    assert sent == got


def _tap_to_shm(lab, pipeline_factory, uniq, flows, sender, enough):
    """Host A, on a TAP port with its offloads on, runs Python `sender` (UDP to 10.62.0.9);
    the rules `flows` take it into a shm: peer. Returns (pipeline, the frames the peer got,
    once enough(frames) or after 5 s)."""
    from ring.region import ROLE_USER, Region
    L = lab(TAP_LAB)
    p = pipeline_factory(two_ports("ts" + L.tag, L.uri("tap", "ta", "vA"), f"shm:{uniq}s", flows))
    with Region.attach(f"{uniq}s") as region:
        peer = region.port(f"{uniq}s", ROLE_USER)
        L.run("vA", "ip", "neigh", "add", "10.62.0.9", "lladdr", "02:00:00:00:00:09", "dev", L.name("ta"))
        L.run("vA", "python3", "-c", "import socket, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
              + sender)
        got = []
        wait_for(lambda: got.extend(peer.recv()) or enough(got), timeout=5)
    return p, got


@root
def test_super_frames_to_shm(lab, pipeline_factory, uniq):
    """A shm: peer gets segments of at most gso_size payload, each a valid frame."""
    # one 30000-byte UDP datagram with UDP GSO (USO) of 1200-byte segments
    _, got = _tap_to_shm(lab, pipeline_factory, uniq, ["in_port=1,actions=output:2", "in_port=2,actions=drop"],
                         "s.setsockopt(17, 103, 1200); s.sendto(bytes(range(256)) * 117 + b'x' * 48, ('10.62.0.9', 9))",
                         lambda got: sum(len(f) for f in got) >= 30000)
    udp = [f for f in got if f[12:14] == b"\x08\x00" and f[23] == 17]
    assert len(udp) == 25 and all(len(f) <= 14 + 20 + 8 + 1200 for f in udp), [len(f) for f in got]
    for f in udp:
        assert _csum(f[14:34]) == 0xFFFF
        assert (_pseudo_sum(f, 14, False, 17, len(f) - 34) + _csum(f[34:])) % 0xFFFF == 0
    assert b"".join(f[42:] for f in udp) == bytes(range(256)) * 117 + b"x" * 48


@root
@pytest.mark.parametrize("uri", ["packet:{}@netns={}", "afxdp:{}@mode=generic,netns={}", "afxdp:{}@netns={}"])
def test_guest_super_frames(lab, pipeline_factory, uri):
    """Two guests as QEMU attaches them (TAPs left down, the guests' TSO and checksum
    offload on), joined through the host side of their TAPs: the pipeline brings the TAPs
    up, TCP data crosses intact, and each port counted what its guest's NIC did."""
    from tests.netlab import GuestNic
    L = lab('[[netns]]\nname = "gA@"\n[[netns]]\nname = "gB@"\n[[netns]]\nname = "vH@"\n')
    guests = [GuestNic(L, "gA", "ea", "10.64.0.1/24", "vH", "vm1"), GuestNic(L, "gB", "eb", "10.64.0.2/24", "vH", "vm2")]
    try:
        p = pipeline_factory(two_ports("gs" + L.tag, uri.format(L.name("vm1"), L.name("vH")),
                                       uri.format(L.name("vm2"), L.name("vH"))))
        st = _through(L, p, "gA", "gB", "10.64.0.1", "10.64.0.2", [("gA", "ea"), ("gB", "eb")])
        io = [q["io"] for q in st["ports"]]
        assert io[0]["rx_gso"] > 0 and io[0]["rx_csum_partial"] > 0 and io[0]["brought_up"], io[0]
        if uri.startswith("afxdp"):
            assert io[0]["multi_buffer"] and st["tx_segmented"] > 0, (io[0], st)
            # mode=auto on a TAP: native XDP (tun has it), super-frames and all
            assert io[0]["xdp_mode"] == ("generic" if "mode=generic" in uri else "native"), io[0]
    finally:
        for g in guests:
            g.close()


@root
def test_partial_checksums_through_actions(lab, pipeline_factory, uniq):
    """Datagrams with partial checksums (a TAP offering checksum offload) rewritten on the way
    (addresses, port, a pushed VLAN tag) into a shm: peer: their checksums come out complete
    and right, for the first datagram (executed by the slow path) and the cached rest."""
    p, got = _tap_to_shm(lab, pipeline_factory, uniq,
                         ["in_port=1,udp,actions=mod_nw_src:10.9.8.7,mod_nw_dst:10.1.2.3,mod_tp_dst:4242,"
                          "mod_vlan_vid:5,output:2", "actions=drop"],
                         "for i in range(20): s.sendto(bytes([i]) * (100 + 37 * i), ('10.62.0.9', 9)); time.sleep(0.02)",
                         lambda got: len(got) >= 20)
    assert len(got) == 20, len(got)
    for i, f in enumerate(got):
        assert f[12:16] == b"\x81\x00\x00\x05" and f[16:18] == b"\x08\x00", f[:20].hex()
        ip = f[18:38]
        assert ip[12:16] == bytes([10, 9, 8, 7]) and ip[16:20] == bytes([10, 1, 2, 3]) and _csum(ip) == 0xFFFF
        udp = f[38:]
        assert struct.unpack_from("!H", udp, 2)[0] == 4242 and udp[8:] == bytes([i]) * (100 + 37 * i)
        assert (_pseudo_sum(f, 18, False, 17, len(udp)) + _csum(udp)) % 0xFFFF == 0, i
    st = p.stats()
    assert st["ports"][0]["io"]["rx_csum_partial"] >= 20 and st["csum_completed"] >= 20, st
