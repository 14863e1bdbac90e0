"""afxdp: ports — AF_XDP sockets with a UMEM per queue, via libxdp and libbpf.

`afxdp:IFNAME[:QUEUE][@queues=N,mode=native|generic,zerocopy=auto|yes|no,offload=yes|no,up=yes|no,netns=NS]`.
The XDP program is held by a bpf_link of this process: it is detached when the port
closes and also when the process dies, however it dies. AF_XDP hands frames without
offload metadata; with offload (the default) a frame longer than a UMEM frame arrives in
several descriptors (multi-buffer) and the binding infers what Linux would have said of
it: a partial checksum, or a super-frame of MTU-sized segments.
"""
from bindings.adapter import Adapter, AdapterError, check_ifname, in_netns, parse_uri
from pipeline._native import ffi, lib

OPTIONS = {"queues": 1, "mode": "auto", "zerocopy": "auto", "netns": None, "offload": True, "up": True}
MODES = {"auto": lib.VP_XDP_AUTO, "native": lib.VP_XDP_NATIVE, "generic": lib.VP_XDP_GENERIC}
ZEROCOPY = {"auto": lib.VP_ZC_AUTO, "yes": lib.VP_ZC_ON, "no": lib.VP_ZC_OFF}


MAX_QUEUE = 65535            # a queue index the kernel takes (a larger one was an OverflowError)


def split_queue(uri, body):
    """`IFNAME[:QUEUE]` -> (interface name, queue index), checked."""
    name, _, queue = body.partition(":")
    check_ifname(uri, name)
    if queue and not (queue.isascii() and queue.isdigit()):
        raise AdapterError(f"{uri!r}: queue {queue!r} must be a number")
    if queue and int(queue) > MAX_QUEUE:
        raise AdapterError(f"{uri!r}: queue {queue} is past the last one an interface can have ({MAX_QUEUE})")
    return name, int(queue or 0)


class AfxdpAdapter(Adapter):
    kind = "afxdp"
    can_reopen = True

    def __init__(self, uri, slots=None):
        body, opt = parse_uri(uri, "afxdp", OPTIONS)
        name, queue = split_queue(uri, body)
        if opt["mode"] not in MODES:
            raise AdapterError(f"{uri!r}: mode must be one of {', '.join(MODES)}")
        if opt["zerocopy"] not in ZEROCOPY:
            raise AdapterError(f"{uri!r}: zerocopy must be one of {', '.join(ZEROCOPY)}")
        super().__init__(uri, name, queues=opt["queues"], slots=slots, offload=opt["offload"])
        self.name, self.queue, self.opt = name, queue, opt
        with self.opening():
            self.open_io()

    def open_io(self):
        name, queue, opt = self.name, self.queue, self.opt
        info = ffi.new("struct vp_afxdp_info *")
        err = ffi.new("char[320]")
        with in_netns(opt["netns"]):
            self.watch_link(name, bring_up=opt["up"], netns=opt["netns"])
            if lib.vp_afxdp_open(self.io, name.encode(), queue, opt["queues"], MODES[opt["mode"]],
                                 ZEROCOPY[opt["zerocopy"]], opt["offload"], info, err, 320) < 0:
                raise AdapterError(f"{self.uri}: {ffi.string(err).decode()}")
        self.info = {**self.info, "interface": name, "ifindex": info.ifindex, "first_queue": queue,
                     "queues": opt["queues"], "xdp_mode": "native" if info.mode == lib.VP_XDP_NATIVE else "generic",
                     "zerocopy": bool(info.zerocopy), "xdp_prog_id": info.prog_id, "netns": opt["netns"],
                     "multi_buffer": bool(info.sg), "offload": opt["offload"]}

    def poll_kernel_stats(self):
        lib.vp_afxdp_poll_stats(self.io)

    def close_io(self):
        lib.vp_afxdp_close(self.io)
