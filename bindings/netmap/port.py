"""netmap:IF and valeX:PORT ports on a real /dev/netmap: NIOCCTRL/REGISTER, one mapping per
memory region (so ports in one region swap buffers instead of copying), the rings bound
through the same ring/ code as shm: ports, and a message for every errno."""
import errno
import os

from bindings.adapter import AdapterError, in_netns
from bindings.netmap.names import NameError_, parse
from pipeline._native import ffi, lib
from ring.region import ROLE_USER, RingPort

DEVICE = "/dev/netmap"
REASONS = {
    errno.ENXIO: "no such interface (or it cannot be put in netmap mode)",
    errno.ENODEV: "no such interface",
    errno.EBUSY: "port busy (another process holds these rings exclusively, or the fd is registered)",
    errno.EINVAL: "request refused: bad name or mode for this port, or an API version mismatch "
                  f"(valepipe speaks netmap API {lib.NETMAP_API})",
    errno.EOPNOTSUPP: "not supported by this netmap module",
    errno.ENOMEM: "the netmap module is out of memory",
    errno.EPERM: "permission denied (netmap needs root or access to /dev/netmap)",
    errno.EACCES: "permission denied (netmap needs root or access to /dev/netmap)",
}


class NetmapError(Exception):
    pass


class _Mapping:
    """One region mapped once per process, shared by its ports (as libnetmap does)."""
    by_mem_id = {}

    def __init__(self, fd, size, mem_id):
        self.size, self.mem_id, self.users = size, mem_id, 0
        self.base = lib.vp_map_guarded(fd, size)
        if self.base == ffi.NULL:
            raise NetmapError(f"cannot map {size} bytes of netmap memory {mem_id}: {os.strerror(ffi.errno)}")

    @classmethod
    def get(cls, fd, size, mem_id):
        m = cls.by_mem_id.get(mem_id)
        if m is None or m.size < size:
            m = cls(fd, size, mem_id)
            cls.by_mem_id[mem_id] = m
        m.users += 1
        return m

    def put(self):
        self.users -= 1
        if self.users == 0:
            lib.vp_unmap_guarded(self.base, self.size)
            self.by_mem_id.pop(self.mem_id, None)


def _request(fd, reqtype, name, body=None, body_type=None):
    hdr = ffi.new("struct nmreq_header *")
    hdr.nr_version = lib.NETMAP_API
    hdr.nr_reqtype = reqtype
    hdr.nr_name = name.encode()[:63]
    hdr.nr_body = int(ffi.cast("uintptr_t", body)) if body is not None else 0
    e = lib.vp_netmap_ctrl(fd, hdr)
    if e:
        raise NetmapError(f"{name}: {REASONS.get(e, os.strerror(e))} ({errno.errorcode.get(e, e)})")
    return hdr


def open_device():
    try:
        return os.open(DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetmapError(f"{DEVICE} does not exist: the netmap kernel module is not loaded "
                          "(FreeBSD has it built in; on Linux: insmod netmap.ko)") from None
    except PermissionError:
        raise NetmapError(f"{DEVICE}: permission denied (run as root)") from None


class NetmapPort:
    """A registered netmap port: `ring_port` is what the pipeline drives (the user side)."""
    kind = "netmap"

    def __init__(self, uri):
        try:
            self.name = parse(uri)
        except NameError_ as e:
            raise NetmapError(str(e)) from None
        self.uri = uri
        self.fd = -1
        self._errors_seen = 0
        # netmap looks an interface up in the caller's namespace; the fd stays bound to it
        netns = self.name.options.get("netns", {}).get("name")
        try:
            with in_netns(netns):
                self._register()
            self.info["netns"] = netns
        except AdapterError as e:
            self.close()
            raise NetmapError(f"{uri}: {e}") from None
        except Exception:
            self.close()
            raise

    def _register(self):
        uri = self.uri
        self.fd = open_device()
        reg = ffi.new("struct nmreq_register *")
        reg.nr_mode, reg.nr_ringid, reg.nr_flags = self.name.mode, self.name.ringid, self.name.flags
        reg.nr_mem_id = self.name.mem_id or self._shared_mem_id()
        for k, v in self.name.conf().items():
            setattr(reg, k, v)
        _request(self.fd, lib.NETMAP_REQ_REGISTER, self.name.kernel_name, reg)
        self.info = {"mem_id": reg.nr_mem_id, "memsize": reg.nr_memsize, "tx_rings": reg.nr_tx_rings,
                     "rx_rings": reg.nr_rx_rings, "tx_slots": reg.nr_tx_slots, "rx_slots": reg.nr_rx_slots}
        self.map = _Mapping.get(self.fd, reg.nr_memsize, reg.nr_mem_id)
        self.ring_port = RingPort(self.name.kernel_name, None)
        err = ffi.new("char[256]")
        if lib.vp_port_bind(self.ring_port.c, self.map.base, self.map.size, reg.nr_offset, ROLE_USER,
                            reg.nr_mem_id, err, 256):
            raise NetmapError(f"{uri}: {ffi.string(err).decode()}")
        lib.vp_netmap_port_attach(self.ring_port.c, self.fd)

    def fds(self):
        return [self.fd] if self.fd >= 0 else []

    def stats(self):
        c = self.ring_port.c
        return dict(self.info, kernel_name=self.name.kernel_name, sync_errors=c.sync_errors,
                    last_error=os.strerror(c.sync_errno) if c.sync_errno else None)

    def new_error(self):
        """A new sync refusal since the last call, for the worker's log (else None)."""
        c = self.ring_port.c
        if c.sync_errors == self._errors_seen:
            return None
        n, self._errors_seen = c.sync_errors - self._errors_seen, c.sync_errors
        return (f"{self.uri}: the netmap module refused a sync: {REASONS.get(c.sync_errno, os.strerror(c.sync_errno))} "
                f"({n} new, sync_errors={c.sync_errors})")

    def _shared_mem_id(self):
        """@share=PORT: the memory region of another port (PORT_INFO_GET on its name)."""
        share = self.name.options.get("share", {}).get("port")
        if not share:
            return 0
        info = ffi.new("struct nmreq_port_info_get *")
        _request(self.fd, lib.NETMAP_REQ_PORT_INFO_GET, parse(share).kernel_name, info)
        return info.nr_mem_id

    def close(self):
        if getattr(self, "map", None):
            lib.vp_netmap_port_attach(self.ring_port.c, -1)
            self.map.put()
            self.map = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _control(reqtype, name, body=None):
    fd = open_device()
    try:
        return _request(fd, reqtype, name, body)
    finally:
        os.close(fd)


def vale_newif(name, slots=0, rings=0):
    """A persistent VALE port (an OS interface too), like `vale-ctl -n NAME`."""
    if name.startswith("vale"):
        raise NetmapError(f"{name}: a persistent port's name must not start with 'vale'")
    body = ffi.new("struct nmreq_vale_newif *", dict(nr_tx_slots=slots, nr_rx_slots=slots,
                                                        nr_tx_rings=rings, nr_rx_rings=rings))
    _control(lib.NETMAP_REQ_VALE_NEWIF, name, body)


def vale_delif(name):
    """Remove a persistent VALE port (`vale-ctl -r NAME`)."""
    _control(lib.NETMAP_REQ_VALE_DELIF, name)


def vale_attach(switch_port, host=False):
    """Attach an interface or persistent port to a switch, `valeX:IF` (`vale-ctl -a`, or
    `-h` with host=True: its host stack too); returns its port index."""
    body = ffi.new("struct nmreq_vale_attach *")
    body.reg.nr_mode = lib.NR_REG_NIC_SW if host else lib.NR_REG_ALL_NIC
    _control(lib.NETMAP_REQ_VALE_ATTACH, switch_port, body)
    return body.port_index


def vale_detach(switch_port):
    """Detach `valeX:IF` from its switch (`vale-ctl -d`); returns the index it had."""
    body = ffi.new("struct nmreq_vale_detach *")
    _control(lib.NETMAP_REQ_VALE_DETACH, switch_port, body)
    return body.port_index


def vale_list():
    """(switch index, port index, name) of every VALE port (vale-ctl -l)."""
    fd = open_device()
    out = []
    try:
        body = ffi.new("struct nmreq_vale_list *")
        while True:
            hdr = ffi.new("struct nmreq_header *")
            hdr.nr_version, hdr.nr_reqtype = lib.NETMAP_API, lib.NETMAP_REQ_VALE_LIST
            hdr.nr_body = int(ffi.cast("uintptr_t", body))
            e = lib.vp_netmap_ctrl(fd, hdr)
            if e == errno.ENOENT:
                return out
            if e:
                raise NetmapError(f"VALE list: {REASONS.get(e, os.strerror(e))}")
            out.append((body.nr_bridge_idx, body.nr_port_idx, ffi.string(hdr.nr_name).decode()))
            body.nr_port_idx += 1
    finally:
        os.close(fd)
