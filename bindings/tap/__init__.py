"""tap: ports — TAP devices (IFF_TAP|IFF_NO_PI), created or attached, one fd per queue.

`tap:NAME[@queues=N,netns=NS]`: the pipeline holds the device's file side; its kernel
side (the interface NAME) is where a namespace, container or the host stack sits.
"""
from bindings.adapter import Adapter, AdapterError, check_ifname, in_netns, parse_uri
from pipeline._native import ffi, lib

OPTIONS = {"queues": 1, "netns": None}


class TapAdapter(Adapter):
    kind = "tap"

    def __init__(self, uri, slots=1024):
        name, opt = parse_uri(uri, "tap", OPTIONS)
        check_ifname(uri, name)
        super().__init__(uri, name, queues=opt["queues"], slots=slots)
        with self.opening():
            err = ffi.new("char[256]")
            with in_netns(opt["netns"]):
                for q in range(opt["queues"]):
                    fd = lib.vp_tap_open(name.encode(), opt["queues"], err, 256)
                    if fd < 0:
                        raise AdapterError(f"{uri}: {ffi.string(err).decode()}")
                    self.io.fd[q] = fd
            lib.vp_tap_init(self.io)
        self.info = {"device": name, "queues": opt["queues"], "netns": opt["netns"]}
