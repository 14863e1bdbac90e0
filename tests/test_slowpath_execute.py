"""The reference executor: set actions leave valid IPv4, TCP and UDP checksums (checked
by scapy recomputing them), VLAN push/pop produce the expected frames."""
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether

from tests.reference_execute import apply

E = dict(dst="02:00:00:00:00:02", src="02:00:00:00:00:01")


def checksums_ok(frame):
    p = Ether(frame)
    for layer in (IP, TCP, UDP):
        if layer in p and p[layer].chksum is not None and not (layer is UDP and p[UDP].chksum == 0):
            want = p[layer].chksum
            q = p.copy()
            del q[layer].chksum
            if Ether(bytes(q))[layer].chksum != want:
                return False
    return True


@pytest.mark.parametrize("base", [
    Ether(**E) / IP(src="10.0.0.1", dst="10.0.0.2", ttl=9) / TCP(sport=1234, dport=80) / b"hello",
    Ether(**E) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=53, dport=5353) / b"abc",
    Ether(**E) / Dot1Q(vlan=3) / IP(src="1.2.3.4", dst="5.6.7.8") / TCP() / (b"x" * 7),
])
@pytest.mark.parametrize("act", [
    ["set", "nw_dst", 0x0A0A0A0A, 0xFFFFFFFF], ["set", "nw_src", 0xC0000000, 0xFF000000],
    ["set", "tp_dst", 8080, 0xFFFF], ["set", "tp_src", 0x00AB, 0x00FF], ["set", "nw_ttl", 3, 0xFF],
    ["set", "nw_tos", 0xB8, 0xFC], ["set", "dl_dst", 0x0A0B0C0D0E0F, 0xFFFFFFFFFFFF],
])
def test_set_keeps_checksums_valid(base, act):
    (port, out), = apply(bytes(base), [act, ["output", 2]])
    assert port == 2 and out != bytes(base) and checksums_ok(out)
    p = Ether(out)
    field, value = act[1], act[2]
    if field == "nw_dst":
        assert p[IP].dst == "10.10.10.10"
    if field == "nw_src":
        assert p[IP].src.split(".")[0] == "192" and p[IP].src.split(".")[1:] == base[IP].src.split(".")[1:]
    if field == "tp_dst":
        assert p.payload.payload.dport == 8080
    if field == "nw_ttl":
        assert p[IP].ttl == 3


def test_ipv6_address_set_updates_l4_checksum():
    base = Ether(**E) / IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=1, dport=2) / b"data"
    (_, out), = apply(bytes(base), [["set", "ipv6_dst", 0x20010DB8 << 96 | 7, (1 << 128) - 1], ["output", 1]])
    p = Ether(out)
    assert p[IPv6].dst == "2001:db8::7"
    q = p.copy()
    del q[UDP].chksum
    assert Ether(bytes(q))[UDP].chksum == p[UDP].chksum


def test_vlan_push_pop_and_outputs_in_order():
    base = bytes(Ether(**E) / IP() / UDP())
    outs = apply(base, [["output", 1], ["push_vlan", 0x8100, 0x2005], ["output", 2], ["pop_vlan"], ["output", 3]])
    assert [p for p, _ in outs] == [1, 2, 3]
    assert outs[0][1] == base and outs[2][1] == base
    tagged = Ether(outs[1][1])
    assert tagged[Dot1Q].vlan == 5 and tagged[Dot1Q].prio == 1 and bytes(tagged[IP]) == bytes(Ether(base)[IP])


def test_set_on_a_packet_without_the_field_changes_nothing():
    arp = bytes(Ether(**E, type=0x0806)) + bytes(28)
    (_, out), = apply(arp, [["set", "nw_dst", 1, 0xFFFFFFFF], ["output", 1]])
    assert out == arp
