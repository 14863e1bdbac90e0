"""Regions: shared memory laid out exactly as netmap lays out its memory.

The creator (the pipeline, like VALE for its ports) formats the region in a sealed memfd
(no peer can shrink it under the pipeline: no SIGBUS) and publishes it under
/dev/shm/valepipe.NAME; a peer attaches by name and validates everything before touching
a ring.
"""
import errno
import fcntl
import os
import re
import time
import zlib

from pipeline._native import ffi, lib

ROLE_KERNEL = lib.VP_ROLE_KERNEL
ROLE_USER = lib.VP_ROLE_USER
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,48}$")
RING_STATS = ("packets", "bytes", "bad_index", "bad_buf", "bad_len", "bad_flags", "full")


class RegionError(Exception):
    """A region could not be created, attached or trusted; the message says why."""


def parse_shm_uri(uri):
    """`shm:NAME` or `shm:NAME@share=OTHER` -> (port name, region name)."""
    if not uri.startswith("shm:"):
        raise RegionError(f"{uri!r} is not a shm: port")
    body = uri[4:]
    region = None
    if "@" in body:
        body, opt = body.split("@", 1)
        if not opt.startswith("share="):
            raise RegionError(f"{uri!r}: unknown option {opt!r} (only @share=PORT)")
        region = opt[len("share="):]
    region = region or body
    for part in (body, region):
        if not NAME_RE.match(part):
            raise RegionError(f"{uri!r}: name {part!r} must be 1-48 of [A-Za-z0-9_.-]")
    return body, region


SHM_DIR = "/dev/shm"
DESC_MAGIC = "valepipe-region/1"
SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


def _desc_path(region):
    """Where a region is published: a small file naming the owner and its memfd."""
    return os.path.join(SHM_DIR, "valepipe." + region)


def _read_desc(path):
    """(pid, fd, size) from a descriptor file, or None if it is not one (yet)."""
    try:
        with open(path, "rb") as f:
            parts = f.read(256).decode("ascii", "replace").split()
    except FileNotFoundError:
        raise
    except OSError:
        return None
    if len(parts) != 4 or parts[0] != DESC_MAGIC or not all(p.isdigit() for p in parts[1:]):
        return None
    return int(parts[1]), int(parts[2]), int(parts[3])


def _mem_id(region):
    return (zlib.crc32(region.encode()) % 65533) + 2


class Region:
    """A mapped region. `create` formats a new one; `attach` opens a peer's."""

    def __init__(self, name, fd, size, owner):
        self.name, self._fd, self.size, self.owner = name, fd, size, owner
        self.base = lib.vp_map_guarded(fd, size)
        if self.base == ffi.NULL:
            os.close(fd)
            raise RegionError(f"region {name}: cannot map {size} bytes: {os.strerror(ffi.errno)}")
        self.hdr = ffi.cast("struct vp_region_hdr *", self.base)
        self.nm_base = self.base + lib.VP_REGION_HDR_SIZE
        self.nm_size = size - lib.VP_REGION_HDR_SIZE
        self.mem_id = _mem_id(name)
        self._ports = []

    @classmethod
    def create(cls, name, ports, slots=1024, buf_size=2048, extra_bufs=0, rings=1):
        geom = ffi.new("struct vp_geom *", dict(nports=len(ports), tx_rings=rings, rx_rings=rings,
                                                 slots=slots, buf_size=buf_size, extra_bufs=extra_bufs))
        size = lib.vp_region_size(geom)
        if size == 0:
            raise RegionError(f"region {name}: bad geometry (ports={len(ports)} rings={rings} "
                              f"slots={slots} buf_size={buf_size}); slots 2..65536, buf_size 64..65536 multiple of 64")
        path = _desc_path(name)
        try:
            desc = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            if not _stale(path):
                raise RegionError(f"region {name}: {path} exists (another pipeline owns it)") from None
            os.unlink(path)
            desc = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise RegionError(f"region {name}: cannot create {path}: {e.strerror}") from None
        try:
            fd = os.memfd_create("valepipe." + name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            try:
                os.ftruncate(fd, size)
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
            except OSError as e:
                os.close(fd)
                raise RegionError(f"region {name}: cannot size {size} bytes: {e.strerror}") from None
        except (OSError, RegionError) as e:
            os.close(desc)
            os.unlink(path)
            raise e if isinstance(e, RegionError) else RegionError(f"region {name}: memfd: {e.strerror}") from None
        self = cls(name, fd, size, owner=True)
        names = [ffi.new("char[]", p.encode()) for p in ports]
        rc = lib.vp_region_format(self.base, size, geom, ffi.new("char *[]", names), self.mem_id,
                                  int.from_bytes(os.urandom(8), "little"), os.getpid())
        if rc != 0:
            os.close(desc)
            self.close()
            raise RegionError(f"region {name}: format failed")
        # published only once formatted: a peer that finds it finds a whole region
        os.write(desc, f"{DESC_MAGIC} {os.getpid()} {fd} {size}\n".encode())
        os.close(desc)
        return self

    @classmethod
    def private(cls, name, ports, slots=1024, buf_size=2048, rings=1):
        """A region in this process's own memory, for an emulated adapter (bindings/):
        the pipeline is its user, a binding its kernel side. No other process can map it."""
        geom = ffi.new("struct vp_geom *", dict(nports=len(ports), tx_rings=rings, rx_rings=rings,
                                                 slots=slots, buf_size=buf_size, extra_bufs=0))
        size = lib.vp_region_size(geom)
        if size == 0:
            raise RegionError(f"{name}: bad geometry (rings={rings} slots={slots}); slots 2..65536, rings 1..4")
        self = cls(name, -1, size, owner=False)
        self.mem_id = _private_mem_id()
        names = [ffi.new("char[]", p.encode()[:63]) for p in ports]
        if lib.vp_region_format(self.base, size, geom, ffi.new("char *[]", names), self.mem_id, 0, os.getpid()):
            self.close()
            raise RegionError(f"{name}: format failed")
        return self

    @classmethod
    def attach(cls, name):
        path = _desc_path(name)
        try:
            desc = _read_desc(path)
        except FileNotFoundError:
            raise RegionError(f"region {name}: no such shm region ({path}); "
                              "is the pipeline that owns it running?") from None
        if desc is None:
            raise RegionError(f"region {name}: not ready ({path} is not a region descriptor yet)")
        pid, rfd, _ = desc
        link = f"/proc/{pid}/fd/{rfd}"
        try:
            # the owner's memfd itself, not whatever a recycled pid/fd pair now names
            if not os.readlink(link).startswith(f"/memfd:valepipe.{name} "):
                raise FileNotFoundError
            fd = os.open(link, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise RegionError(f"region {name}: its pipeline (pid {pid}) is gone") from None
        except PermissionError:
            raise RegionError(f"region {name}: permission denied opening pid {pid}'s region "
                              "(another user's pipeline?)") from None
        size = os.fstat(fd).st_size
        if size < lib.VP_REGION_HDR_SIZE:
            os.close(fd)
            raise RegionError(f"region {name}: not ready ({size} bytes)")
        self = cls(name, fd, size, owner=False)
        err = ffi.new("char[256]")
        if lib.vp_region_check(self.base, size, err, 256) != 0:
            self.close()
            raise RegionError(f"region {name}: {ffi.string(err).decode()}")
        return self

    def port_names(self):
        return [ffi.string(self.hdr.port[i].name).decode(errors="replace") for i in range(self.hdr.nports)]

    def port(self, name, role):
        """Bind port `name` of this region; role is ROLE_KERNEL (switch) or ROLE_USER (peer)."""
        names = self.port_names()
        if name not in names:
            raise RegionError(f"region {self.name} has no port {name!r} (has {', '.join(names)})")
        i = names.index(name)
        p = RingPort(name, self)
        err = ffi.new("char[256]")
        if lib.vp_port_bind(p.c, self.nm_base, self.nm_size, self.hdr.port[i].nr_offset,
                            role, self.mem_id, err, 256) != 0:
            raise RegionError(f"port {name}: {ffi.string(err).decode()}")
        if role == ROLE_USER:
            self.hdr.port[i].peer_pid = os.getpid()
        self._ports.append(p)
        return p

    def owner_alive(self):
        return _pid_alive(self.hdr.owner_pid)

    def close(self):
        if self.base is None:
            return
        if self.owner:
            self.hdr.state = 2
            path = _desc_path(self.name)
            try:
                if (_read_desc(path) or (0,))[0] == os.getpid():
                    os.unlink(path)
            except FileNotFoundError:
                pass
        for p in self._ports:
            p.region = None
        lib.vp_unmap_guarded(self.base, self.size)
        self.base = self.hdr = self.nm_base = None
        self._ports = []
        if self._fd >= 0:
            os.close(self._fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class RingPort:
    """One port of a region, bound in one role: a `struct vp_port` plus copy helpers."""

    def __init__(self, name, region):
        self.name, self.region = name, region
        self.c = ffi.new("struct vp_port *")
        self.c.name = name.encode()[:63]
        self.c.fd = -1

    def tx_ring(self, i=0):
        return ffi.addressof(self.c.tx[i])

    def rx_ring(self, i=0):
        return ffi.addressof(self.c.rx[i])

    def send(self, frames):
        """User side: copy frames into the TX ring; returns how many went in."""
        if not frames:
            return 0
        lens = ffi.new("uint16_t[]", [len(f) for f in frames])
        blob = b"".join(frames)
        return lib.vp_ring_send(self.tx_ring(), blob, lens, len(frames))

    def recv(self, max_frames=1024):
        """User side: copy out and release what the RX ring holds (up to max_frames)."""
        blob = ffi.new("uint8_t[]", max_frames * 2048)
        lens = ffi.new("uint16_t[]", max_frames)
        n = lib.vp_ring_recv(self.rx_ring(), blob, max_frames * 2048, lens, max_frames)
        out, off, raw = [], 0, ffi.buffer(blob)
        for i in range(n):
            out.append(bytes(raw[off:off + lens[i]]))
            off += lens[i]
        return out

    def ring_stats(self):
        """Per-ring counters summed by direction, as netmap users see them."""
        def total(rings, n):
            return {k: sum(getattr(rings[i].st, k) for i in range(n)) for k in RING_STATS}
        return {"tx": total(self.c.tx, self.c.ntx), "rx": total(self.c.rx, self.c.nrx),
                "faulty": any(self.c.tx[i].faulty for i in range(self.c.ntx))
                or any(self.c.rx[i].faulty for i in range(self.c.nrx))}


_next_private = [0]


def _private_mem_id():
    """Private regions get ids above the shm ones, so no two regions share an id."""
    _next_private[0] += 1
    return 0x10000 + _next_private[0]


def _pid_alive(pid):
    """Running, not a zombie: a crashed owner may wait a while for its parent to reap it."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return False
    except OSError:
        return True
    return state not in (b"Z", b"X")


def _stale(path):
    """A region left by a process that no longer runs may be replaced."""
    try:
        desc = _read_desc(path)
    except FileNotFoundError:
        return True
    if desc is None:
        # not (yet) a descriptor: being written right now, or debris from a crash
        try:
            return os.stat(path).st_mtime < time.time() - 5
        except FileNotFoundError:
            return True
    return not _pid_alive(desc[0])
