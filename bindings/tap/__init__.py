"""tap: ports — TAP devices (IFF_TAP|IFF_NO_PI), created or attached, one fd per queue.

`tap:NAME[@queues=N,offload=yes|no,up=yes|no,netns=NS]`: the pipeline holds the device's
file side; its kernel side (the interface NAME) is where a namespace, container or the
host stack sits. It is brought up unless up=no. With offload (the default) the device
offers TSO and checksum offload to its stack, as QEMU's TAPs do, and frames come and go
with a virtio_net_hdr (IFF_VNET_HDR): 64 KB super-frames and partial checksums pass whole.
"""
from bindings.adapter import Adapter, AdapterError, check_ifname, in_netns, parse_uri
from pipeline._native import ffi, lib

OPTIONS = {"queues": 1, "netns": None, "offload": True, "up": True}


class TapAdapter(Adapter):
    kind = "tap"
    can_reopen = True

    def __init__(self, uri, slots=None):
        name, opt = parse_uri(uri, "tap", OPTIONS)
        check_ifname(uri, name)
        super().__init__(uri, name, queues=opt["queues"], slots=slots, offload=opt["offload"])
        self.name, self.opt = name, opt
        with self.opening():
            self.open_io()
        self.info.update({"device": name, "queues": opt["queues"], "netns": opt["netns"]})

    def open_io(self):
        name, opt = self.name, self.opt
        err = ffi.new("char[256]")
        with in_netns(opt["netns"]):
            for q in range(opt["queues"]):
                fd = lib.vp_tap_open(name.encode(), opt["queues"], opt["offload"], err, 256)
                if fd < 0:
                    raise AdapterError(f"{self.uri}: {ffi.string(err).decode()}")
                self.io.fd[q] = fd
            self.watch_link(name, bring_up=opt["up"], netns=opt["netns"])
        lib.vp_tap_init(self.io)
        self.user.c.tx_offload = opt["offload"]     # sent frames keep their metadata
