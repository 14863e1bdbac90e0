"""Regions: shared memory laid out exactly as netmap lays out its memory.

The creator (the pipeline, like VALE for its ports) formats the region in a sealed memfd
(no peer can shrink it under the pipeline: no SIGBUS) and publishes it under
/dev/shm/valepipe.NAME (valepipe-UID.NAME for users other than root; /tmp on FreeBSD),
handing the memfd itself to peers over the socket beside it (NAME:sock, ring/fdpass.py);
a peer of the same user attaches by name, checks the memfd's owner and seals, and
validates everything before touching a ring. The other ports of a shared region
(`shm:b@share=a`) are published under their own names too (valepipe.b names region a),
so peers find every port by its name; each ring of a port has one peer at a time.
"""
import errno
import fcntl
import os
import pwd
import re
import stat
import time
import zlib

from pipeline import hostos
from pipeline._native import ffi, lib
from ring import fdpass

ROLE_KERNEL = lib.VP_ROLE_KERNEL
ROLE_USER = lib.VP_ROLE_USER
NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,48}")
RING_STATS = ("packets", "bytes", "bad_index", "bad_buf", "bad_len", "bad_flags", "full")


class RegionError(Exception):
    """A region could not be created, attached or trusted; the message says why."""


class RegionNotReady(RegionError):
    """The region is not there (yet): its pipeline is starting, restarting or gone."""


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
        if not NAME_RE.fullmatch(part):     # match() and $ would let "name\n" through
            raise RegionError(f"{uri!r}: name {part!r} must be 1-48 of [A-Za-z0-9_.-]")
    return body, region


SHM_DIR = hostos.SHM_DIR
DESC_MAGIC = "valepipe-region/1"
ALIAS_MAGIC = "valepipe-share/1"     # "valepipe-share/1 REGION PID": a port of REGION, published by PID
SOCK_SUFFIX = ":sock"         # not a name character: no region's descriptor is another's socket
SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


def desc_path(region, owner=None):
    """Where user `owner`'s (default: this process's) region is published: a small file
    naming the creator's pid and memfd. /dev/shm is shared by all users: each has its own
    names (root: valepipe.NAME, uid N: valepipe-N.NAME), so none can take another's."""
    uid = os.geteuid() if owner is None else owner
    return os.path.join(SHM_DIR, ("valepipe." if uid == 0 else f"valepipe-{uid}.") + region)


class _NotADescriptor(Exception):
    """What sits at a descriptor path is no descriptor of the expected user (the text: why)."""


def _read_desc(path, owner=None):
    """(pid, fd, size) from a descriptor file of user `owner` (default: us), or None while
    it is being written (or when it names a shared region's port: _read_alias). Opened
    without following links and without blocking (a FIFO someone put there must not hang
    us); anything but a regular file of that user raises _NotADescriptor.
    FileNotFoundError when there is nothing."""
    parts = _read_words(path, owner)
    if len(parts) != 4 or parts[0] != DESC_MAGIC or not all(p.isascii() and p.isdigit() for p in parts[1:]):
        return None
    return int(parts[1]), int(parts[2]), int(parts[3])


def _read_alias(words):
    """(region, pid) if a descriptor's words name a port of a shared region, else None."""
    if len(words) == 3 and words[0] == ALIAS_MAGIC and NAME_RE.fullmatch(words[1]) and words[2].isascii() \
            and words[2].isdigit():
        return words[1], int(words[2])
    return None


def _read_words(path, owner=None):
    """The words of a descriptor file of user `owner` (see _read_desc)."""
    uid = os.geteuid() if owner is None else owner
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise _NotADescriptor(_describe(path) if e.errno == errno.ELOOP else e.strerror) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _NotADescriptor(_describe(path))
        if st.st_uid != uid:
            raise _NotADescriptor(f"it belongs to uid {st.st_uid}, not {_user(uid)}")
        return os.read(fd, 256).decode("ascii", "replace").split()
    finally:
        os.close(fd)


def _describe(path, expected="a region descriptor"):
    """What a squatted path is, in words."""
    try:
        st = os.lstat(path)
    except OSError as e:
        return e.strerror
    kind = ("a symbolic link" if stat.S_ISLNK(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else
            "a directory" if stat.S_ISDIR(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else
            "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a file")
    return f"it is {kind} of uid {st.st_uid}, not {expected}"


def _user(uid):
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


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
        # what the header said when we looked, copied once: port names and offsets are
        # read from this private copy, never again from memory its creator can rewrite
        self.layout = ffi.new("struct vp_region_hdr *")
        ffi.memmove(self.layout, self.base, ffi.sizeof("struct vp_region_hdr"))
        self.nm_base = self.base + lib.VP_REGION_HDR_SIZE
        self.nm_size = size - lib.VP_REGION_HDR_SIZE
        self.mem_id = _mem_id(name)
        self._ports = []
        self._server = None         # the creator's fdpass.FdServer
        self._aliases = []          # the creator's descriptors naming its other ports
        self._claims = []           # a peer's (port index, rx) ring claims

    @classmethod
    def create(cls, name, ports, slots=1024, buf_size=2048, extra_bufs=0, rings=1):
        geom = ffi.new("struct vp_geom *", dict(nports=len(ports), tx_rings=rings, rx_rings=rings,
                                                 slots=slots, buf_size=buf_size, extra_bufs=extra_bufs))
        size = lib.vp_region_size(geom)
        if size == 0:
            raise RegionError(f"region {name}: bad geometry (ports={len(ports)} rings={rings} "
                              f"slots={slots} buf_size={buf_size}); slots 2..65536, buf_size 64..65536 multiple of 64")
        path = desc_path(name)
        desc = _publish_slot(name, path)
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
        self = None
        try:
            self = cls(name, fd, size, owner=True)
            names = [ffi.new("char[]", p.encode()) for p in ports]
            if lib.vp_region_format(self.base, size, geom, ffi.new("char *[]", names), self.mem_id,
                                    int.from_bytes(os.urandom(8), "little"), os.getpid()) != 0:
                raise RegionError(f"region {name}: format failed")
            ffi.memmove(self.layout, self.base, ffi.sizeof("struct vp_region_hdr"))
            err = ffi.new("char[256]")
            if lib.vp_region_check(ffi.cast("char *", self.layout), size, err, 256) != 0:
                # what every peer checks on attach: a region no peer could map is refused here
                raise RegionError(f"region {name}: {ffi.string(err).decode()}")
            self._server = _serve(name, path + SOCK_SUFFIX, fd)
            for p in ports:
                if p != name:
                    alias = desc_path(p)
                    afd = _publish_slot(name, alias)
                    self._aliases.append(alias)
                    os.write(afd, f"{ALIAS_MAGIC} {name} {os.getpid()}\n".encode())
                    os.close(afd)
        except RegionError:
            os.close(desc)
            os.unlink(path)             # ours, still empty (close() goes by the pid written in it)
            if self is not None:
                self.close()
            raise
        # published only once formatted and served: a peer that finds it finds a whole region
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
        ffi.memmove(self.layout, self.base, ffi.sizeof("struct vp_region_hdr"))
        return self

    @classmethod
    def attach(cls, name, owner=None):
        """Map the region `name` of user `owner` (a uid; default: this process's user).
        Only a sealed memfd of that user, published by that user, is mapped."""
        uid = os.geteuid() if owner is None else owner
        path = desc_path(name, uid)
        try:
            alias = _read_alias(_read_words(path, uid))
            if alias:                   # a port of a shared region: that region (one step only)
                name, path = alias[0], desc_path(alias[0], uid)
            desc = _read_desc(path, uid)
        except FileNotFoundError:
            raise RegionNotReady(f"region {name}: no such shm region ({path}); "
                                 "is the pipeline that owns it running?") from None
        except _NotADescriptor as e:
            raise RegionError(f"region {name}: {path} is not trusted: {e}") from None
        if desc is None:
            raise RegionNotReady(f"region {name}: not ready ({path} is not a region descriptor yet)")
        fd = _receive_memfd(name, path + SOCK_SUFFIX, desc[0], uid)
        try:
            size = _check_memfd(fd, name, uid)
        except RegionError:
            os.close(fd)
            raise
        self = cls(name, fd, size, owner=False)
        self.attached = True
        err = ffi.new("char[256]")
        if lib.vp_region_check(ffi.cast("char *", self.layout), size, err, 256) != 0:
            self.close()
            raise RegionError(f"region {name}: {ffi.string(err).decode()}")
        return self

    def port_names(self):
        return [ffi.string(self.layout.port[i].name).decode(errors="replace") for i in range(self.layout.nports)]

    def port(self, name, role, rings="both"):
        """Bind port `name` of this region; role is ROLE_KERNEL (switch) or ROLE_USER (peer).
        A peer of a shm: region claims the rings it uses ("tx": it sends, "rx": it
        receives, or "both"): one that another live process holds is refused."""
        names = self.port_names()
        if name not in names:
            raise RegionError(f"region {self.name} has no port {name!r} (has {', '.join(names)})")
        i = names.index(name)
        p = RingPort(name, self)
        err = ffi.new("char[256]")
        if lib.vp_port_bind(p.c, self.nm_base, self.nm_size, self.layout.port[i].nr_offset,
                            role, self.mem_id, err, 256) != 0:
            raise RegionError(f"port {name}: {ffi.string(err).decode()}")
        if role == ROLE_USER and getattr(self, "attached", False):
            for rx in ((0, 1) if rings == "both" else (int(rings == "rx"),)):
                self._claim(i, name, rx)
        self._ports.append(p)
        return p

    def _claim(self, i, name, rx):
        """Take ring `rx` (0: the port's TX ring, 1: its RX ring) of port i for this process,
        unless a live process holds it (two senders would interleave in one ring, two
        receivers would each take part of the traffic: netmap's rings have one user)."""
        me = os.getpid()
        for _ in range(1000):
            cur = self.hdr.port[i].rx_peer_pid if rx else self.hdr.port[i].peer_pid
            if cur == me:
                break
            if cur and _pid_alive(cur):
                self._release()
                raise RegionError(f"port {name}: pid {cur} already {'receives on' if rx else 'sends on'} it (a "
                                  "port's ring has one peer at a time); stop it first, or use another port")
            if lib.vp_region_claim(self.hdr, i, rx, cur, me):
                break
        else:
            raise RegionError(f"port {name}: its {'RX' if rx else 'TX'} ring keeps changing hands")
        self._claims.append((i, rx))

    def _release(self):
        for i, rx in self._claims:
            lib.vp_region_claim(self.hdr, i, rx, os.getpid(), 0)
        self._claims = []

    def owner_alive(self):
        return _pid_alive(self.layout.owner_pid)

    def close(self):
        if self.base is None:
            return
        if self.owner:
            self.hdr.state = 2
            for path in [desc_path(self.name)] + self._aliases:
                try:
                    words = _read_words(path)
                    if (_read_desc(path) or (0,))[0] == os.getpid() or (_read_alias(words) or (0, 0))[1] == os.getpid():
                        os.unlink(path)
                except (FileNotFoundError, _NotADescriptor):
                    pass
        else:
            self._release()
        if self._server:
            self._server.close()        # before the memfd closes: it is never handed out closed
            self._server = None
        for p in self._ports:
            p.region = None
        lib.vp_unmap_guarded(self.base, self.size)
        self.base = self.hdr = self.nm_base = self.layout = None
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


_pid_alive = hostos.pid_running


def _live(path, region):
    """Whether the descriptor at `path` (ours) is a running pipeline's: its socket answers
    (a dead or zombie owner's does not); _NotADescriptor when something else sits there."""
    try:
        words = _read_words(path)
        desc = _read_desc(path)
    except FileNotFoundError:
        return False
    alias = _read_alias(words)
    if alias:                       # a port of a live region, published by its pipeline
        target = desc_path(alias[0])
        try:
            return (_read_desc(target) or (0,))[0] == alias[1] and _live(target, alias[0])
        except (FileNotFoundError, _NotADescriptor):
            return False
    if desc is None:
        # not (yet) a descriptor: being written right now, or debris from a crash
        try:
            return os.stat(path).st_mtime >= time.time() - 5
        except FileNotFoundError:
            return False
    return fdpass.answers(path + SOCK_SUFFIX, os.geteuid())


def _serve(region, sock, fd):
    """Hand the memfd to this user's (and root's) peers from `sock`, replacing what a dead
    run or another user left there (the descriptor slot is ours already: no live pipeline
    of ours serves there)."""
    for _ in range(3):
        try:
            return fdpass.FdServer(sock, fd, {os.geteuid(), 0})
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise RegionError(f"region {region}: cannot serve it at {sock}: {e.strerror}") from None
        if fdpass.answers(sock, os.geteuid()):
            raise RegionError(f"region {region}: {sock} is served by another pipeline of ours")
        _remove_in_way(region, sock, None if _ours(sock) else _describe(sock, "a region's socket"))
    raise RegionError(f"region {region}: {sock} keeps reappearing (someone else is creating it)")


def _remove_in_way(region, path, why):
    """Remove what stands at one of our names (stale, or another user's when we may: root
    may; a sticky directory lets no one else). An empty directory goes too; a directory
    with something in it is left alone (its contents are not ours to judge)."""
    try:
        try:
            isdir = stat.S_ISDIR(os.lstat(path).st_mode)
        except FileNotFoundError:
            return
        if isdir:
            os.rmdir(path)          # never follows a link: one put there instead fails (ENOTDIR)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        what = "is a directory with files in it" if e.errno in (errno.ENOTEMPTY, errno.EEXIST) else \
            f"cannot be removed: {e.strerror}"
        raise RegionError(f"region {region}: {path} is in the way ({why or 'stale'}) and {what}; remove it as its "
                          "owner or root, or use another name") from None


def _receive_memfd(region, sock, pid, uid):
    """The region's memfd, handed over at `sock` (ring/fdpass.py): a socket of user `uid`,
    answered by a process of that user, with a memfd made for this region where the OS
    names fds (Linux)."""
    try:
        st = os.lstat(sock)
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid != uid:
            raise RegionError(f"region {region}: {sock} is not trusted: {_describe(sock, 'its socket')}")
        fd, server = fdpass.receive_fd(sock)
    except (FileNotFoundError, ConnectionRefusedError):
        raise RegionNotReady(f"region {region}: its pipeline (pid {pid}) is gone") from None
    except PermissionError:
        raise RegionError(f"region {region}: permission denied opening pid {pid}'s region "
                          "(another user's pipeline?)") from None
    except TimeoutError:
        raise RegionNotReady(f"region {region}: its pipeline (pid {pid}) does not answer") from None
    except OSError as e:
        raise RegionNotReady(f"region {region}: its pipeline (pid {pid}) did not hand over its memory: "
                             f"{e.strerror or e}") from None
    if server != uid:
        if fd is not None:
            os.close(fd)
        raise RegionError(f"region {region}: {sock} is answered by uid {server}, not {_user(uid)}")
    if fd is None:
        raise RegionError(f"region {region}: pid {pid} refused to hand its memory to {_user(os.geteuid())}")
    name = hostos.fd_name(fd)
    if name is not None and not name.startswith(f"/memfd:valepipe.{region} "):
        os.close(fd)
        raise RegionError(f"region {region}: what pid {pid} handed over is not its region's memfd ({name})")
    return fd


def _publish_slot(region, path):
    """Create the descriptor file of a new region (O_EXCL: never through a link), replacing
    what a dead run left there, or what another user put there when we may remove it
    (root may; /dev/shm is sticky, so others may not). Returns the open fd."""
    for _ in range(3):
        try:
            return os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            pass
        except OSError as e:
            raise RegionError(f"region {region}: cannot create {path}: {e.strerror}") from None
        try:
            if _live(path, region):
                raise RegionError(f"region {region}: {path} exists (another pipeline owns it)")
            why = None
        except _NotADescriptor as e:
            why = str(e)
        _remove_in_way(region, path, why)
    raise RegionError(f"region {region}: {path} keeps reappearing (someone else is creating it)")


def _check_memfd(fd, region, owner):
    """The size of a region's memfd, after checking it is what a pipeline of `owner` makes:
    a regular file of that user, sealed against shrinking and growing (so no one can cut
    the mapping short under us: no SIGBUS)."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise RegionError(f"region {region}: the published fd is not a memory file")
    if st.st_uid != owner:
        raise RegionError(f"region {region}: its memory belongs to uid {st.st_uid}, not {_user(owner)}")
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        raise RegionError(f"region {region}: the published fd is not a sealable memfd") from None
    if seals & SEALS != SEALS:
        raise RegionError(f"region {region}: its memfd is not sealed against resizing (seals {seals:#x}); "
                          "another process could shrink it under us")
    if st.st_size < lib.VP_REGION_HDR_SIZE:
        raise RegionNotReady(f"region {region}: not ready ({st.st_size} bytes)")
    return st.st_size


def remove_stale(region):
    """Remove this user's descriptor of `region` (or of a shared region's port) if no
    running pipeline owns it (what a run that died, or was given up on, left); returns
    whether one was removed."""
    path = desc_path(region)
    try:
        if _live(path, region):
            return False
        os.unlink(path)
    except (FileNotFoundError, _NotADescriptor):
        return False
    if _ours(path + SOCK_SUFFIX):
        try:
            os.unlink(path + SOCK_SUFFIX)
        except FileNotFoundError:
            pass
    return True


def remove_stale_of(pid):
    """Remove this user's descriptors (regions and shared regions' ports) published by
    process `pid` that no running pipeline serves: what a worker that died left, those of
    ports it added at run time included; returns the names removed."""
    prefix = os.path.basename(desc_path(""))
    removed = []
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return removed
    for f in names:
        if not f.startswith(prefix) or f.endswith(SOCK_SUFFIX) or not NAME_RE.fullmatch(f[len(prefix):]):
            continue
        try:
            words = _read_words(os.path.join(SHM_DIR, f))
        except (OSError, _NotADescriptor):
            continue
        desc, alias = (_read_desc(os.path.join(SHM_DIR, f)) if len(words) == 4 else None), _read_alias(words)
        if (desc and desc[0] == pid or alias and alias[1] == pid) and remove_stale(f[len(prefix):]):
            removed.append(f[len(prefix):])
    return removed


def _ours(sock):
    """Whether `sock` is a socket of this user (one of our regions', live or not)."""
    try:
        st = os.lstat(sock)
    except FileNotFoundError:
        return False
    return stat.S_ISSOCK(st.st_mode) and st.st_uid == os.geteuid()
