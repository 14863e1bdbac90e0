"""A pipeline's run directory: where it is, proof that no other user can change it or any
directory on the way to it, and its files written and removed only as their owner."""
import os
import stat

# what a pipeline keeps in its run directory while it runs (and FILE.tmp while writing one)
RUN_FILES = ("worker.ctl", "slowpath.sock", "slowpath.ctl", "rules.flows", "rules.state", "openflow.tables",
             "macs.json")
# what a restarted worker's slow path takes over: its rules (with OpenFlow's groups and
# meters they name) and NORMAL's MAC table
KEPT_FILES = ("rules.flows", "rules.state", "openflow.tables", "macs.json")
LONGEST_SOCKET = "slowpath.sock"
MAX_SOCKET_PATH = 107                              # sockaddr_un.sun_path, less its NUL


class RunDirError(RuntimeError):
    """A run directory that is not safe to use; the message says why and what to do."""


def base():
    """Where pipelines' run directories go: /run/valepipe for root; for a user
    $XDG_RUNTIME_DIR/valepipe, or else a /tmp directory of the user's own."""
    if os.geteuid() == 0:
        return "/run/valepipe"
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(xdg):
        return os.path.join(xdg, "valepipe")
    return f"/tmp/valepipe-{os.geteuid()}"


def default(name):
    return os.path.join(base(), name)


def _prefixes(path):
    p = "/"
    yield p
    for part in path.split("/"):
        if part:
            p = os.path.join(p, part)
            yield p


def check(path):
    """Refuse (RunDirError) a run directory that a user other than us and root could
    change: every existing component of its path, as written and with links resolved,
    belongs to root or us, and no directory on the way is writable by others unless it is
    sticky (as /tmp); the directory itself, if it exists, is ours and open to nobody else."""
    path = os.path.abspath(path)
    me = os.geteuid()
    check_chain(path, f"run directory {path}", "give [pipeline] run_dir a directory of your own, or set "
                "XDG_RUNTIME_DIR")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        raise RunDirError(f"run directory {path} is not a directory")
    if st.st_uid != me:
        raise RunDirError(f"run directory {path} belongs to uid {st.st_uid}, not to us (uid {me})")
    if st.st_mode & 0o077:
        # never "chmod 700 it": it may be /tmp or the base of every pipeline's directory
        raise RunDirError(f"run directory {path} is open to other users (mode {stat.S_IMODE(st.st_mode):04o}); "
                          "a run directory is the pipeline's alone: name a directory that does not exist yet "
                          f"(valepipe creates it, mode 0700), e.g. {os.path.join(path, 'NAME')}")


def check_chain(path, label, advice="use a directory of your own"):
    """Refuse (RunDirError, starting with `label`) a path on which a user other than us and
    root could change something: every existing component of it, as written and with links
    resolved, belongs to root or us, and no directory on the way is writable by others
    unless it is sticky (as /tmp)."""
    path = os.path.abspath(path)
    me = os.geteuid()
    for chain in (path, os.path.realpath(path)):
        for p in _prefixes(chain):
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                break                              # what is missing, we create
            if st.st_uid not in (0, me):
                raise RunDirError(f"{label}: {p} belongs to uid {st.st_uid}: other users could replace what "
                                  f"valepipe keeps there ({advice})")
            if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
                raise RunDirError(f"{label}: {p} is writable by other users (mode "
                                  f"{stat.S_IMODE(st.st_mode):04o}): they could replace what valepipe keeps there")


def missing(path):
    """The directories of `path` that do not exist yet, outermost first (what make() would
    create now)."""
    out, p = [], os.path.abspath(path)
    while not os.path.lexists(p):
        out.append(p)
        p = os.path.dirname(p)
    return out[::-1]


def make(path):
    """Create the run directory (and what is missing on the way) owner-only, after and
    again before trusting it (check); returns the directories this call created, outermost
    first, so the caller removes exactly those."""
    path = os.path.abspath(path)
    check(path)
    created = []
    for p in missing(path):
        try:
            os.mkdir(p, 0o700)                     # not makedirs: its parents ignore the mode
        except FileExistsError:
            continue                               # made meanwhile: check() below judges it
        created.append(p)
    try:
        check(path)                                # nobody swapped anything in meanwhile
    except RunDirError:
        remove_dirs(created)
        raise
    return created


def make_for_config(path):
    """make(path) for a pipeline's [pipeline].run_dir: a directory that cannot be made is
    said as that setting's fault (RuntimeError)."""
    try:
        return make(path)
    except OSError as e:
        raise RuntimeError(f"[pipeline].run_dir {path!r}: cannot use it: {e.strerror or e}") from None


def remove_dirs(created):
    for d in reversed(created):
        try:
            os.rmdir(d)
        except OSError:
            break   # not empty: something else lives there now


def claim(path, keep=()):
    """Clear a run directory of a pipeline that is gone (but the files in `keep`); refuse
    one whose pipeline answers. Returns the files removed."""
    from pipeline import control
    ctl = os.path.join(path, "worker.ctl")
    if os.path.exists(ctl):
        try:
            control.request(ctl, "stats", timeout=2.0)
        except TimeoutError:
            # the socket took the connection, so a live process listens on it: one stopped
            # (SIGSTOP) or hung would take its run directory back when resumed
            raise RuntimeError(f"a pipeline holds run directory {path} but does not answer (stopped or hung?); "
                               "end it (valepipe list shows it), or give this one another [pipeline] name "
                               "or run_dir") from None
        except (OSError, RuntimeError):
            pass                                   # nobody home: left by a run that died
        else:
            raise RuntimeError(f"a pipeline is already running with run directory {path} "
                               "(stop it, or give this one another [pipeline] name or run_dir)")
    return remove_files(path, keep)


def remove_files(path, keep=()):
    removed = []
    for f in RUN_FILES:
        for name in (f, f + ".tmp"):
            if f in keep and name == f:
                continue
            try:
                os.unlink(os.path.join(path, name))
                removed.append(name)
            except FileNotFoundError:
                pass
    return removed


def write_files(contents):
    """{path: bytes}: each written to PATH.tmp (created exclusively, never through a link
    someone left there) and flushed to disk, then all renamed over their paths and the
    directory synced, so a crash leaves the old or the new version of each. Raises OSError
    (ENOSPC, EDQUOT, EIO, ...) having changed nothing."""
    tmps = []
    try:
        for path, data in contents.items():
            tmp = path + ".tmp"
            try:
                os.unlink(tmp)                     # a leftover (or a link): replaced, never followed
            except FileNotFoundError:
                pass
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            tmps.append(tmp)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for tmp, path in zip(tmps, contents):
            os.rename(tmp, path)
        tmps = []
        for d in {os.path.dirname(os.path.abspath(p)) for p in contents}:
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    finally:
        for tmp in tmps:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def read_own(path, limit):
    """The bytes of `path` if it is a regular file of ours of at most `limit` bytes (None
    if there is none); never through a link. Raises OSError saying what is wrong."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise OSError(f"{path} is not a regular file of uid {os.geteuid()}")
        if st.st_size > limit:
            raise OSError(f"{path} is larger than {limit} bytes")
        return f.read(limit + 1)[:limit]


def bind_unix(sock, path):
    """Bind a unix socket at `path`, owner-only, replacing a dead one there; returns its
    identity for unlink_own."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    st = os.lstat(path)
    return st.st_dev, st.st_ino


def is_own(path, ident):
    """`path` is still the file `ident` named (not a successor's, not gone)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == ident


def unlink_own(path, ident):
    """Remove `path` only if it is still ours: a process that outlived its time (stopped,
    then resumed) must not remove what its successor made."""
    if is_own(path, ident):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
