"""The C execute stage against the reference executor (tests/reference_execute.py, Open
vSwitch's packet-editing rules written again in Python) on generated packets of every
kind and generated action programs: the same bytes come out."""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline._native import ffi, lib
from pipeline.datapath import SET_FIELDS
from tests.reference_execute import apply
from tests.test_extract import frames

WIDTH = {"dl_src": 48, "dl_dst": 48, "nw_src": 32, "nw_dst": 32, "ipv6_src": 128, "ipv6_dst": 128,
         "nw_tos": 8, "nw_ttl": 8, "tp_src": 16, "tp_dst": 16, "icmp": 16, "ipv6_label": 20,
         "arp_op": 16, "arp_spa": 32, "arp_tpa": 32, "arp_sha": 48, "arp_tha": 48, "nd_target": 128,
         "nd_sll": 48, "nd_tll": 48}


@st.composite
def action(draw):
    kind = draw(st.sampled_from(["set", "set", "set", "push_vlan", "pop_vlan"]))
    if kind == "push_vlan":
        return ["push_vlan", draw(st.sampled_from([0x8100, 0x88A8])), draw(st.integers(0, 0xFFFF))]
    if kind == "pop_vlan":
        return ["pop_vlan"]
    f = draw(st.sampled_from(sorted(WIDTH)))
    full = (1 << WIDTH[f]) - 1
    mask = draw(st.sampled_from([full, full & 0xFF00FF, full >> 1 << 1, 0xFC & full, 3])) or full
    return ["set", f, draw(st.integers(0, full)) & mask, mask]


def c_apply(frame, actions):
    buf = ffi.new("uint8_t[]", 4096)
    ffi.memmove(buf, frame, len(frame))
    ops = ffi.new("struct vp_op[]", len(actions))
    for op, a in zip(ops, actions):
        if a[0] == "set":
            op.kind, op.field = lib.VP_OP_SET, SET_FIELDS[a[1]][0]
            op.value, op.mask = a[2].to_bytes(16, "big"), a[3].to_bytes(16, "big")
        elif a[0] == "push_vlan":
            op.kind, op.tpid, op.tci = lib.VP_OP_PUSH_VLAN, a[1], a[2]
        elif a[0] == "reparse":
            op.kind = lib.VP_OP_REPARSE
        else:
            op.kind = lib.VP_OP_POP_VLAN
    n = lib.vp_ops_apply(ops, len(actions), buf, len(frame), 4096)
    assert n > 0
    return bytes(ffi.buffer(buf, n))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=frames(), actions=st.lists(action(), min_size=1, max_size=6))
def test_c_execute_matches_reference(frame, actions):
    (_, want), = apply(frame, actions + [["output", 1]])
    assert c_apply(frame, actions) == want


def test_reparse_takes_offsets_from_the_frame_as_it_is():
    """After a CONTROLLER, OVS's userspace datapath parses the frame again, one tag deep: on a
    frame that now has two tags the network header is taken to start after the first, and an
    IPv6 flow label rewrite lands there (the bytes OVS 3.1 sends); without the reparse, the
    offsets moved with the push put it on the IPv6 header."""
    from scapy.layers.inet import UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Dot1Q, Ether
    frame = bytes(Ether(src="02:00:00:00:00:04", dst="ff:ff:ff:ff:ff:ff") / Dot1Q(vlan=0)
                  / IPv6(src="2001:db8::2", dst="2001:db8:1::7", fl=0x8cb4d, tc=0xe0) / UDP())
    label = ["set", "ipv6_label", 0xABCDE, 0xFFFFF]
    out = c_apply(frame, [["push_vlan", 0x8100, 0], ["reparse"], label, ["pop_vlan"], ["pop_vlan"]])
    assert out[12:14] == b"\xbc\xde" and out[14:] == frame[18:]
    out = c_apply(frame, [["push_vlan", 0x8100, 0], label, ["pop_vlan"], ["pop_vlan"]])
    assert out[12:14] == b"\x86\xdd" and out[14:18] == bytes.fromhex("6e0abcde")
    # one tag: the reparse finds what the first parse found; a TTL or TOS rewrite is for
    # the IP version the flow had (IPv6's hop limit here, never an IPv4 TTL and checksum)
    for op in (label, ["set", "nw_ttl", 149, 0xFF], ["set", "nw_tos", 0x20, 0xFC]):
        assert c_apply(frame, [["reparse"], op]) == c_apply(frame, [op]) != frame


def test_arp_rewrite_of_a_frame_that_ends_inside_the_header():
    """OVS's set_arp() checks no length: of a frame cut inside the ARP header, the bytes it
    has get the new values (what ovs-vswitchd 3.1 sent for these frames)."""
    from scapy.layers.l2 import ARP, Ether
    arp = bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:00:01")
                / ARP(op=1, hwsrc="02:00:00:00:00:01", psrc="10.0.0.1", pdst="10.0.0.2"))
    ops = [["set", "arp_op", 2, 0xFFFF], ["set", "arp_tpa", 0x0A090000, 0xFFFF0000],
           ["set", "arp_sha", 0x020000000099, 0xFFFFFFFFFFFF]]
    sent = {10: "ffffffffffff020000000001080600010800060400020200",
            20: "ffffffffffff020000000001080600010800060400020200000000990a0000010000",
            26: "ffffffffffff020000000001080600010800060400020200000000990a0000010000000000000a09",
            27: "ffffffffffff020000000001080600010800060400020200000000990a0000010000000000000a0900"}
    for n, want in sent.items():
        assert c_apply(arp[:14 + n], ops).hex() == want, n
