"""What differs between the OSes valepipe runs on (Linux, FreeBSD), in one place: where
shm: names live, a socket peer's uid, timer slack, the death signal, CPU pinning, pids.

Linux keeps its calls (prctl, sched_setaffinity, SO_PEERCRED, /proc); FreeBSD's
are in hostos.c, compiled only there (pipeline/native_build.py)."""
import ctypes
import os
import select
import socket
import struct
import sys

NAME = "freebsd" if sys.platform.startswith("freebsd") else sys.platform
LINUX = NAME == "linux"

# shm: region names: a directory every user may create in, sticky (only a name's owner or
# root may remove it); FreeBSD has no /dev/shm
SHM_DIR = "/dev/shm" if LINUX else "/tmp"

PR_SET_PDEATHSIG = 1
_UCRED = struct.Struct("3i")                  # Linux's struct ucred: pid, uid, gid
# loaded now, not in a child between fork and exec (die_with_parent is a preexec_fn there)
_LIBC = ctypes.CDLL(None, use_errno=True) if LINUX else None


def _lib():
    from pipeline._native import lib
    return lib


def _check(err, what):
    if err:
        raise OSError(err, f"{what}: {os.strerror(err)}")


def die_with_parent(sig):
    """Have `sig` sent to this process when its parent exits (never outlive it)."""
    if LINUX:
        _LIBC.prctl(PR_SET_PDEATHSIG, sig)
    else:
        _check(_lib().vp_die_with_parent(sig), "procctl(PROC_PDEATHSIG_CTL)")


PR_SET_NAME = 15


def set_title(title):
    """Name this process as `ps` shows it (a forked worker would look like its supervisor):
    on Linux its comm (PR_SET_NAME, 15 bytes: top, ps -e) and its command line, rewritten
    in place within the space the original one had (ps aux); elsewhere nothing."""
    if not LINUX:
        return
    raw = title.encode()
    _LIBC.prctl(PR_SET_NAME, ctypes.c_char_p(raw[:15]), 0, 0, 0)
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])      # arg_start, arg_end (stat fields 48, 49)
    except (OSError, IndexError, ValueError):
        return
    if start and end > start:
        # the original argv strings: copied by Python at start, read only by /proc/PID/cmdline
        text = raw[:end - start - 1]
        ctypes.memmove(start, text + b"\0" * (end - start - len(text)), end - start)


def allowed_cpus():
    """The CPUs this process may run on (Linux: its affinity, within its cpuset; elsewhere
    all of them)."""
    if LINUX:
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def module_command(module):
    """argv to run this package's `module` in a child Python (with module_env()). -P: `-m`
    would put the working directory first on sys.path, and a `pipeline/` there (anyone's,
    in /tmp) would run in its place, as the user running valepipe (root)."""
    return [sys.executable, "-P", "-m", module]


def module_env():
    """The environment for module_command: this package's own root first on PYTHONPATH, so
    the child imports the code its parent runs (a checkout, a copy, or an installed one)."""
    import pipeline
    root = os.path.dirname(os.path.dirname(os.path.abspath(pipeline.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def set_cpus(cpus):
    """Run this process on exactly `cpus` (OSError if the OS refuses)."""
    if LINUX:
        os.sched_setaffinity(0, cpus)
    else:
        from pipeline._native import ffi
        cpus = sorted(cpus)
        _check(_lib().vp_set_cpus(ffi.new("int[]", cpus), len(cpus)), "cpuset_setaffinity")


def peer_uid(sock):
    """The uid of the process at the other end of a connected unix socket."""
    if LINUX:
        return _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))[1]
    from pipeline._native import ffi
    uid = ffi.new("uint32_t *")
    _check(_lib().vp_peer_uid(sock.fileno(), uid), "getpeereid")
    return uid[0]


def pid_running(pid):
    """Whether `pid` runs (a zombie does not: a crashed owner may wait a while for its
    parent to reap it)."""
    if pid <= 0:
        return False
    if not LINUX:
        return _lib().vp_pid_running(pid) != 0
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return False
    except OSError:
        return True
    return state not in (b"Z", b"X")


def cpu_seconds(pid):
    """User + system CPU seconds process `pid` has used (Linux's /proc; None elsewhere or
    when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def fd_name(fd):
    """What the OS calls this process's `fd` (Linux: /proc/self/fd's link, e.g.
    "/memfd:NAME (deleted)"), or None where it does not say."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}") if LINUX else None
    except OSError:
        return None


PR_SET_TIMERSLACK = 29


def fine_timers():
    """Sleeps of microseconds take microseconds (Linux rounds a thread's timers up by 50 us
    by default; the worker's idle naps are shorter than that). Nothing to do elsewhere."""
    if LINUX:
        _LIBC.prctl(PR_SET_TIMERSLACK, 1000)


def ready(readers, writers=(), timeout_s=0.0):
    """(readable, writable): which of these sockets (objects with fileno()) are ready, within
    timeout_s. poll(2), as Linux and FreeBSD both have it: no limit on fd numbers (select()
    refuses any fd past 1023: a process holding many connections crashed)."""
    byfd, events = {}, {}
    for s, ev in [(s, select.POLLIN) for s in readers] + [(s, select.POLLOUT) for s in writers]:
        fd = s.fileno()
        byfd[fd], events[fd] = s, events.get(fd, 0) | ev
    p = select.poll()
    for fd, ev in events.items():
        p.register(fd, ev)
    readable, writable = set(), set()
    for fd, ev in p.poll(max(0, int(timeout_s * 1000 + 0.999))):
        s = byfd[fd]
        # hang-up and errors count as readable: the read that follows finds out
        if ev & (select.POLLIN | select.POLLHUP | select.POLLERR | select.POLLNVAL):
            readable.add(s)
        if ev & select.POLLOUT:
            writable.add(s)
    return readable, writable
