"""packet: ports — any Linux interface through AF_PACKET (TPACKET_V3 rx ring, sendmmsg tx).

`packet:IFNAME[@queues=N,fanout=GROUP,netns=NS]`: with queues > 1 or a fanout group the
sockets join a PACKET_FANOUT (hash) group, so frames of a flow stay on one ring, and
several pipelines giving the same group share the interface's traffic.
"""
import os
import socket

from bindings.adapter import Adapter, AdapterError, check_ifname, in_netns, parse_uri
from pipeline._native import ffi, lib

OPTIONS = {"queues": 1, "fanout": -1, "netns": None}


class PacketAdapter(Adapter):
    kind = "packet"

    def __init__(self, uri, slots=1024):
        name, opt = parse_uri(uri, "packet", OPTIONS)
        check_ifname(uri, name)
        super().__init__(uri, name, queues=opt["queues"], slots=slots)
        with self.opening():
            fanout = opt["fanout"]
            if fanout < 0 and opt["queues"] > 1:
                fanout = (os.getpid() ^ hash(name)) & 0xFFFF
            err = ffi.new("char[256]")
            with in_netns(opt["netns"]):
                try:
                    ifindex = socket.if_nametoindex(name)
                except OSError:
                    raise AdapterError(f"{uri}: no interface {name!r}"
                                       + (f" in netns {opt['netns']}" if opt["netns"] else "")) from None
                for q in range(opt["queues"]):
                    if lib.vp_packet_open(self.io, q, ifindex, fanout, err, 256) < 0:
                        raise AdapterError(f"{uri}: {ffi.string(err).decode()}")
            lib.vp_packet_init(self.io)
        self.info = {"interface": name, "ifindex": ifindex, "queues": opt["queues"],
                     "fanout": fanout if fanout >= 0 else None, "netns": opt["netns"]}

    def poll_kernel_stats(self):
        lib.vp_packet_poll_stats(self.io)

    def close_io(self):
        lib.vp_packet_close(self.io)
