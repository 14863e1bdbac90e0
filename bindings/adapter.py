"""Emulated adapters: an OS interface presented to the pipeline as a netmap port.

A private region holds the port's rings; the pipeline is their user, and a binding's C
rx/tx (called from rxsync/txsync in the stages) is their kernel side. A kind subclasses
Adapter, opens its fds in `open`, and registers in pipeline/ports.py.
"""
import contextlib
import errno
import os
import re

from bindings.link import Link
from pipeline._native import ffi, lib
from ring.region import ROLE_KERNEL, ROLE_USER, Region, RegionError

IO_STATS = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "rx_truncated", "rx_kernel_drops",
            "rx_errors", "tx_errors", "tx_again", "tx_discarded", "syscalls", "rx_gso", "rx_csum_partial",
            "tx_link_down", "rx_worker_restart")
# the binding's losses, by reason: frames that came in and were dropped before the pipeline
# saw them (each port's in_drops), and frames it was given to send that never left (its drops)
RX_LOSSES = ("rx_truncated", "rx_kernel_drops", "rx_errors", "rx_worker_restart")
# a port's counters kept across workers (struct vp_io_keep, in the supervisor's memory), by
# uri; set by pipeline/takeover.py before a worker opens its ports
KEEP = {}
TX_LOSSES = ("tx_errors", "tx_discarded", "tx_link_down")
IFNAME_RE = re.compile(r"[A-Za-z0-9_.:-]{1,15}")     # fullmatch(): $ would take a final newline
NETNS_DIR = "/run/netns"


class AdapterError(Exception):
    """A port could not be opened; the message says why and, where it can, what to do."""


def parse_uri(uri, kind, options):
    """`KIND:BODY[@opt=value,flag,...]` -> (body, {opt: value}); options maps each allowed
    option to its default (a bool default makes it a flag)."""
    if not uri.startswith(kind + ":"):
        raise AdapterError(f"{uri!r} is not a {kind}: port")
    body, _, opts = uri[len(kind) + 1:].partition("@")
    out = dict(options)
    for item in filter(None, opts.split(",")):
        k, eq, v = item.partition("=")
        if k not in options:
            raise AdapterError(f"{uri!r}: unknown option {k!r}; {kind}: ports take "
                               + (", ".join(sorted(options)) or "no options"))
        if isinstance(options[k], bool):
            if eq and v not in ("yes", "no", "true", "false", "1", "0"):
                raise AdapterError(f"{uri!r}: {k} is a flag (yes/no), not {v!r}")
            out[k] = not eq or v in ("yes", "true", "1")
        elif isinstance(options[k], int):
            if not (v.isascii() and v.isdigit()):   # int() would take '١', ' 2', '+2', '1_0'
                raise AdapterError(f"{uri!r}: {k} must be a number, not {v!r}")
            if int(v) > 2 ** 31 - 1:                # C takes it as an int
                raise AdapterError(f"{uri!r}: {k} must be at most {2 ** 31 - 1}, not {v}")
            out[k] = int(v)
        else:
            out[k] = v
    if not body:
        raise AdapterError(f"{uri!r}: missing the {kind} name")
    return body, out


def check_ifname(uri, name):
    if not IFNAME_RE.fullmatch(name):
        raise AdapterError(f"{uri!r}: {name!r} is not an interface name (1-15 of [A-Za-z0-9_.:-])")


@contextlib.contextmanager
def in_netns(name):
    """Run the block in network namespace `name` (as `ip netns` names it); sockets and
    devices opened inside stay bound to it after we switch back. None: stay here."""
    if not name:
        yield
        return
    if "/" in name or name in (".", ".."):
        raise AdapterError(f"netns {name!r}: not a namespace name")
    if not hasattr(lib, "setns"):           # built without bindings/netns.h: not Linux
        raise AdapterError(f"netns {name!r}: network namespaces are Linux's; not available on this OS")
    try:
        target = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise AdapterError(f"no network namespace {name!r} (ip netns list shows them)") from None
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if lib.setns(target, lib.CLONE_NEWNET) != 0:
            e = ffi.errno
            raise AdapterError(f"cannot enter netns {name!r}: {os.strerror(e)}"
                               + (" (needs CAP_SYS_ADMIN)" if e == errno.EPERM else ""))
        try:
            yield
        finally:
            if lib.setns(home, lib.CLONE_NEWNET) != 0:
                raise OSError(ffi.errno, "cannot return to the original network namespace")
    finally:
        os.close(target)
        os.close(home)


def interface_rx_packets(ifname):
    """The frames interface `ifname` of the current network namespace has received (its
    rx_packets), or None: /proc/thread-self/net is the calling thread's namespace's."""
    try:
        with open("/proc/thread-self/net/dev") as f:
            for line in f:
                name, sep, rest = line.partition(":")
                if sep and name.strip() == ifname:
                    return int(rest.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def default_slots(offload):
    """Slots per ring: ports whose frames may be 64 KB super-frames have buffers that large,
    and fewer of them (256 x 64 KB per ring is plenty in flight)."""
    return 256 if offload else 1024


class Adapter:
    """The rings of one emulated port: `user` for the pipeline, `io.kport` for the binding.
    With offload, each frame in the rings has a virtio_net_hdr in front (GSO, partial
    checksums) and buffers take a 64 KB frame."""
    kind = "?"
    link = None                  # bindings.link.Link: the interface under the port, if any

    def __init__(self, uri, name, queues=1, slots=None, offload=False):
        if not 1 <= queues <= lib.VP_MAX_RINGS:
            raise AdapterError(f"{uri!r}: queues must be 1..{lib.VP_MAX_RINGS}")
        self.uri = uri
        slots = slots or default_slots(offload)
        buf_size = lib.VP_VNET_BUF_SIZE if offload else 2048
        try:
            self.region = Region.private(name, [name], slots=slots, rings=queues, buf_size=buf_size)
            self.user = self.region.port(name, ROLE_USER)
        except RegionError as e:
            raise AdapterError(f"{uri!r}: {e}") from None
        self.io = ffi.new("struct vp_io *")
        self.keep = KEEP.get(uri)
        self.io.st = ffi.addressof(self.keep.st) if self.keep is not None else ffi.addressof(self.io.own)
        self.io.nq = queues
        for i in range(4):
            self.io.fd[i] = -1
        err = ffi.new("char[256]")
        if lib.vp_port_bind(ffi.addressof(self.io.kport), self.region.nm_base, self.region.nm_size,
                            self.region.hdr.port[0].nr_offset, ROLE_KERNEL, self.region.mem_id, err, 256):
            self.region.close()
            raise AdapterError(f"{uri!r}: {ffi.string(err).decode()}")
        self.io.vnet_hdr = lib.VP_VNET_HDR_LEN if offload else 0
        lib.vp_io_attach(self.user.c, self.io)
        self.info = {"offload": offload}
        self._errors_seen = self.io.st.errors_seen      # kept counters: the last worker's were logged

    @contextlib.contextmanager
    def opening(self):
        """Where a kind opens its fds: if that fails, the port is closed again at once."""
        try:
            yield
        except BaseException:
            self.close()
            raise

    def watch_link(self, ifname=None, ifindex=None, bring_up=False, netns=None):
        """Inside the port's namespace (netns: its name, for hints): follow the link state of
        the interface under the port; bring it up first if it is a TAP and bring_up is set
        (uri option up=yes)."""
        try:
            self.link = Link(ifname, ifindex)
            self.link.netns, self.link.left_down = netns, not bring_up
            try:
                if bring_up and self.link.is_tap() and self.link.bring_up():
                    self.info["brought_up"] = True
            except PermissionError:
                # a user's own persistent TAP opens without CAP_NET_ADMIN; it stays down
                # and the link state says so
                self.info["brought_up"] = False
            self.io.mtu = self.link.mtu()
        except OSError as e:
            if e.errno == errno.ENODEV:
                raise AdapterError(f"{self.uri}: no interface {ifname or ifindex!r} (ip link shows them)") from None
            raise AdapterError(f"{self.uri}: interface {ifname or ifindex}: {e.strerror}") from None

    def account_restart(self, ifname, ifindex, netns=None):
        """Called as the port's sockets open, by kinds whose sockets see every frame the
        interface receives. With counters kept across workers (KEEP), the interface's own
        rx counter is compared with what the port accounted for at the first quiet moment
        after (settle_books: nothing then is on its way between them): what a worker that
        died left in its socket, or what came before the next one opened, is counted as
        rx_worker_restart, so the port's books close over a crash."""
        k = self.keep
        if k is None:
            return
        if not k.used or k.ifindex != ifindex:
            # a first open (or a new interface of the name): the books start now, before the
            # sockets (inside the port's namespace: /proc/thread-self/net is its)
            rx = interface_rx_packets(ifname)
            if rx is None:
                return
            k.if_rx_base, k.seen_base, k.used, k.ifindex = rx, self._seen(), 1, ifindex
        self._books = (ifname, ifindex, netns)
        self._quiet_seen = None

    def _seen(self):
        self.poll_kernel_stats()
        return sum(getattr(self.io.st, f) for f in ("rx_packets",) + RX_LOSSES)

    def settle_books(self):
        """The worker's look (ten times a second) while account_restart's count is due."""
        if getattr(self, "_books", None) is None:
            return
        seen = self._seen()
        if seen != self._quiet_seen:                # frames still coming: not now
            self._quiet_seen = seen
            return
        ifname, ifindex, netns = self._books
        with in_netns(netns):
            rx = interface_rx_packets(ifname)
        if rx is None:
            return
        k, st = self.keep, self.io.st
        lost = (rx - k.if_rx_base) - (seen - k.seen_base)
        if lost > 0:
            st.rx_worker_restart += lost
            seen += lost
        k.if_rx_base, k.seen_base = rx, seen
        self._books = None

    def link_change(self):
        """A sentence when the link changed since the last call (for the worker's log)."""
        return self.link.change() if self.link else None

    def follow_link(self):
        """The worker's look at the link (ten times a second): while it is not up, frames
        to send are dropped and counted (tx_link_down). Returns what the caller must do
        between batches: "release" (the interface is gone: close its fds, or a socket of a
        removed device wakes the worker's poll for ever), "reopen" (an interface of the
        same name is back, as QEMU re-creates its TAP when a guest restarts), or None."""
        if not self.link:
            return None
        st = self.link.state()
        self._act_on(st["link"])
        self.settle_books()
        if self.io.link_down == lib.VP_LINK_GONE:
            return "reopen" if self.can_reopen and self.link.returned() else None
        return "release" if st["link"] == "gone" else None

    def _act_on(self, link):
        """A look at the link becomes what the datapath acts on: frames refused meanwhile
        get their reason, and while it is not up frames to send are dropped (tx_link_down).
        A link that went is follow_link's to release (its fds are closed there)."""
        self.settle_refused(link)
        if link != "gone" and self.io.link_down != lib.VP_LINK_GONE:
            self.io.link_down = 0 if link == "up" else lib.VP_LINK_DOWN

    def settle_refused(self, link):
        """Frames the device refused while the link looked up (vp_io_tx_refused): with the
        link now not up, that was why (tx_link_down, as the frames after them); with it up,
        they were device errors, reported in the log."""
        n = self.io.tx_unsure
        if not n:
            return
        self.io.tx_unsure = 0
        if link != "up":
            self.io.st.tx_errors -= n
            self.io.st.tx_link_down += n
        else:
            self.io.st.last_errno = self.io.tx_unsure_errno
            self.io.st.errors_seen += 1

    can_reopen = False            # kinds whose open_io() can run again on a new interface

    def release(self):
        """The interface is gone: close the kind's fds; the rings and counters stay."""
        self.poll_kernel_stats()
        self.io.link_down = lib.VP_LINK_GONE
        self.close_io()

    def reopen(self):
        """Open the interface of the port's name again (AdapterError if it cannot be yet);
        the rings, counters and the port's place in the datapath are kept."""
        gone = self.link
        try:
            self.open_io()
        except AdapterError:
            self.close_io()
            if self.link is not gone:               # made before the failure: keep following the old one
                self.link.close()
                self.link = gone
            raise
        gone.close()
        self.link.last = "gone"                     # its next change() says "link up"
        self.io.tx_inflight = 0
        self.io.link_down = 0
        self.reopened = getattr(self, "reopened", 0) + 1

    def open_io(self):
        """Open the kind's fds (and watch_link) for the port's interface; kinds override."""
        raise AdapterError(f"{self.uri}: cannot be re-opened")

    def fds(self):
        """What the worker may poll() on when idle."""
        return [self.io.fd[i] for i in range(self.io.nq) if self.io.fd[i] >= 0]

    def poll_kernel_stats(self):
        """Refresh counters the kernel keeps (drops before we read); kinds override."""

    def stats(self):
        self.poll_kernel_stats()
        st = {k: getattr(self.io.st, k) for k in IO_STATS}
        st["last_error"] = os.strerror(self.io.st.last_errno) if self.io.st.last_errno else None
        if self.link:
            ls = self.link.state()
            st.update(link=ls["link"], speed_mbps=ls["speed_mbps"], mtu=self.io.mtu)
            # what stats says is what the datapath acts on from now, not up to 100 ms later
            # (follow_link's next look): a frame sent after "no-carrier" was shown is counted
            # tx_link_down, not a device error
            self._act_on(ls["link"])
        if getattr(self, "reopened", 0):
            st["reopened"] = self.reopened
        return dict(st, **self.info)

    def losses(self):
        """The binding's dropped frames by reason (RX_LOSSES, TX_LOSSES), for the ledger."""
        self.poll_kernel_stats()
        return {k: getattr(self.io.st, k) for k in RX_LOSSES + TX_LOSSES}

    def new_error(self):
        """The last error, once per new error (for the worker's log), else None."""
        if self.io.st.errors_seen == self._errors_seen:
            return None
        n = self.io.st.errors_seen - self._errors_seen
        self._errors_seen = self.io.st.errors_seen
        return f"{self.uri}: {os.strerror(self.io.st.last_errno)} ({n} new; tx_errors={self.io.st.tx_errors}, rx_errors={self.io.st.rx_errors})"

    def close_io(self):
        """Close the kind's fds and state; kinds override."""
        for i in range(4):
            if self.io.fd[i] >= 0:
                os.close(self.io.fd[i])
                self.io.fd[i] = -1

    def close(self):
        if self.region is None:
            return
        lib.vp_io_attach(self.user.c, ffi.NULL)
        self.close_io()
        if self.link:
            self.link.close()
        self.region.close()
        self.region = None
