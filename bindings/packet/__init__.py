"""packet: ports — any Linux interface through AF_PACKET (TPACKET_V2 rx ring, sendmmsg tx).

`packet:IFNAME[@queues=N,fanout=GROUP,offload=yes|no,up=yes|no,netns=NS]`: with queues > 1
or a fanout group the sockets join a PACKET_FANOUT (hash) group, so frames of a flow stay
on one ring, and several pipelines giving the same group share the interface's traffic.
With offload (the default) frames come and go with a virtio_net_hdr (PACKET_VNET_HDR):
a guest's 64 KB super-frames and partial checksums pass whole, and the kernel segments
what it sends where the interface cannot take them.
"""
import os
import socket

from bindings.adapter import Adapter, AdapterError, check_ifname, in_netns, parse_uri
from pipeline._native import ffi, lib

OPTIONS = {"queues": 1, "fanout": -1, "netns": None, "offload": True, "up": True}


class PacketAdapter(Adapter):
    kind = "packet"
    can_reopen = True

    def __init__(self, uri, slots=None):
        name, opt = parse_uri(uri, "packet", OPTIONS)
        check_ifname(uri, name)
        super().__init__(uri, name, queues=opt["queues"], slots=slots, offload=opt["offload"])
        self.name, self.opt = name, opt
        fanout = opt["fanout"]
        if fanout < 0 and opt["queues"] > 1:
            fanout = (os.getpid() ^ hash(name)) & 0xFFFF
        self.fanout = fanout
        with self.opening():
            self.open_io()
        self.info.update({"interface": name, "queues": opt["queues"],
                          "fanout": fanout if fanout >= 0 else None, "netns": opt["netns"]})

    def open_io(self):
        name, opt, uri = self.name, self.opt, self.uri
        err = ffi.new("char[256]")
        with in_netns(opt["netns"]):
            try:
                ifindex = socket.if_nametoindex(name)
            except OSError:
                raise AdapterError(f"{uri}: no interface {name!r}"
                                   + (f" in netns {opt['netns']}" if opt["netns"] else "")) from None
            self.watch_link(name, ifindex, bring_up=opt["up"], netns=opt["netns"])
            if opt["fanout"] < 0:                   # every frame of the interface is ours
                self.account_restart(name, ifindex, opt["netns"])
            for q in range(opt["queues"]):
                if lib.vp_packet_open(self.io, q, ifindex, self.fanout, opt["offload"], err, 256) < 0:
                    raise AdapterError(f"{uri}: {ffi.string(err).decode()}")
        lib.vp_packet_init(self.io)
        self.user.c.tx_offload = opt["offload"]     # sent frames keep their metadata
        self.info["ifindex"] = ifindex

    def poll_kernel_stats(self):
        lib.vp_packet_poll_stats(self.io)

    def close_io(self):
        lib.vp_packet_close(self.io)
