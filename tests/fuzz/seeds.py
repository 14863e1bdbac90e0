#!/usr/bin/env python3
"""Seed inputs for the fuzz targets, written to DIR/TARGET/: frames of every kind extract
parses, rules of every kind the flow syntax has, configs, and channel messages. Generated,
not stored: `python tests/fuzz/seeds.py DIR`."""
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from scapy.all import (ARP, ICMP, IP, TCP, UDP, Dot1AD, Dot1Q, Ether, ICMPv6ND_NS, IPv6,  # noqa: E402
                       IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting)

from pipeline import channel  # noqa: E402

E = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
FRAMES = [E / IP() / UDP(), E / IP(ihl=6, options=b"\x01\x01\x01\x00") / TCP(flags="S"), E / IP(flags=1, frag=0) / UDP(),
          E / IP(frag=100) / (b"x" * 20), E / Dot1Q(vlan=5) / IP() / ICMP(), E / Dot1AD(vlan=3) / Dot1Q(vlan=4) / IP() / TCP(),
          E / ARP(), E / IPv6() / UDP(), E / IPv6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt() / TCP(),
          E / IPv6() / IPv6ExtHdrFragment(offset=0, m=1) / UDP(), E / IPv6() / IPv6ExtHdrFragment(offset=8) / (b"y" * 16),
          E / IPv6(dst="ff02::1:ff00:1") / ICMPv6ND_NS(tgt="fe80::1"), Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x88B5) / (b"z" * 50)]
RULES = ["in_port=1,actions=output:2", "priority=100,tcp,nw_dst=10.0.0.0/8,tp_dst=80,actions=mod_vlan_vid:7,output:2",
         "table=1,priority=5,ipv6,ipv6_src=2001:db8::/32,actions=dec_ttl,goto_table:2",
         "dl_vlan=7,dl_src=02:00:00:00:00:01/ff:ff:ff:00:00:00,actions=strip_vlan,NORMAL",
         "arp,arp_tpa=10.0.0.1,actions=FLOOD", "udp,tp_src=0x10/0xfff0,actions=set_field:10.0.0.5->ip_dst,IN_PORT",
         "icmp6,icmp_type=135,nd_target=fe80::1,actions=controller:64",
         "cookie=0x5,idle_timeout=10,hard_timeout=30,actions=write_metadata:0x1/0xff,resubmit(,3)",
         "ip,nw_frag=later,actions=drop", "tcp,tcp_flags=+syn-ack,actions=push_vlan:0x88a8,mod_vlan_vid:3,ALL"]
# the edges: nothing at all, the largest frame a ring slot length can carry (an IPv4
# header claiming all of it), and an IPv6 extension chain longer than extract follows
EDGES = [b"", bytes(E / IP(len=65535 - 14) / UDP()) + bytes(65535 - 42),
         bytes(E / IPv6(nh=60) / b"".join(bytes([60, 0]) + bytes(6) for _ in range(20)))]
CONFIGS = ['[pipeline]\nname = "s"\nbatch = 64\n[[port]]\nuri = "shm:a"\n[[port]]\nuri = "tap:t0@queues=2"\nofport = 9\n'
           '[slowpath]\nflows = ["actions=NORMAL"]\n',
           '[pipeline]\nflow_limit = 10\nidle_timeout = 0.5\n[[port]]\nuri = "pcap:/tmp/x.pcap@write"\nmirror = "m.pcap"\n']
KEY = {"in_port": 1, "eth_src": b"\x02\0\0\0\0\x01", "eth_dst": b"\x02\0\0\0\0\x02", "eth_type": 0x800,
       "ipv4_src": 0x0A000001, "ipv4_dst": 0x0A000002, "ip_proto": 17, "udp_dst": 53, "layers": 13}
# a virtio_net_hdr (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset) and a frame:
# TCP/IPv4 and /IPv6 super-frames, UDP GSO, a VLAN-tagged one, a partial checksum, a plain frame
OL_TCP4, OL_TCP6 = struct.pack("<BBHHHH", 1, 1, 66, 1448, 34, 16), struct.pack("<BBHHHH", 1, 4, 86, 1440, 54, 16)
VNET = [OL_TCP4 + bytes(E / IP() / TCP(flags="PA") / (b"a" * 5000)),
        OL_TCP6 + bytes(E / IPv6() / TCP(flags="FA") / (b"b" * 4000)),
        struct.pack("<BBHHHH", 1, 5, 42, 1200, 34, 6) + bytes(E / IP() / UDP() / (b"c" * 3000)),
        struct.pack("<BBHHHH", 1, 1, 70, 1000, 38, 16) + bytes(E / Dot1Q(vlan=9) / IP() / TCP() / (b"d" * 2500)),
        struct.pack("<BBHHHH", 1, 0, 0, 0, 34, 6) + bytes(E / IP() / UDP() / (b"e" * 100)),
        bytes(10) + bytes(FRAMES[0])]
TO_SLOW = [{"v": 1, "t": "hello", "worker": 0, "ports": [{"ofport": 1}, {"ofport": 2}]},
           {"v": 1, "t": "upcall", "flows": [{"id": 1, "key": KEY}], "packets": [[1, 1, bytes(FRAMES[0])]]},
           {"v": 1, "t": "upcall", "flows": [{"id": 2, "key": KEY}], "packets": [[2, 1, VNET[0][10:], bytes(8)]]},
           {"v": 1, "t": "revalidate", "flows": [{"id": 3, "key": KEY, "packets": 5, "bytes": 300}]}]
TO_WORKER = [{"v": 1, "t": "upcall_reply", "flows": [{"id": 1, "actions": [["output", 1]], "mask": {"in_port": 65535}}],
              "execute": [[[["output", 0]], bytes(FRAMES[0])], [[["output", 0]], VNET[0][10:], bytes([1, 1, 0xa8, 5, 34, 0, 16, 0])]]},
             {"v": 1, "t": "upcall_reply", "flows": [{"id": 2, "actions": [["set", "nw_dst", 5, 0xFFFFFFFF], ["push_vlan", 0x8100, 7],
                                                                         ["output", 1]], "mask": {"ipv4_dst": 0xFFFFFFFF}}]},
             {"v": 1, "t": "revalidate_reply", "flows": [{"id": 0, "actions": [["drop"]], "mask": {}}]},
             {"v": 1, "t": "revalidate_request"}, {"v": 1, "t": "error", "error": "x"}]


def write(base):
    sets = {"extract": [bytes(f) for f in FRAMES] + EDGES, "vnet": VNET, "flowtext": [r.encode() for r in RULES],
            "config": [c.encode() for c in CONFIGS], "slowpath_message": [channel.encode(m) for m in TO_SLOW],
            "worker_message": [channel.encode(m) for m in TO_WORKER]}
    for target, items in sets.items():
        d = os.path.join(base, target)
        os.makedirs(d, exist_ok=True)
        for i, b in enumerate(items):
            with open(os.path.join(d, f"seed-{i:02d}"), "wb") as f:
                f.write(b)
    return sets


if __name__ == "__main__":
    write(sys.argv[1])
