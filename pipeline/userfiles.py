"""Files a user names for valepipe (pid, log, stats, ready files, mirrors, pcap output;
configs, rule and trace files, captures): written only as a regular file of our own, never
through a link, a FIFO or a directory someone else can change; read with a bound."""
import errno
import os
import stat

from pipeline import rundir


class UserFileError(OSError):
    """A named file valepipe will not read or write; the message says why (one line)."""


def check_place(path, what):
    """Refuse (UserFileError) a file to write where another user could swap it: a symbolic
    link, FIFO, device, directory, a file of another user or with other hard links, or a
    directory on the way that another user owns or may write unless sticky (as /tmp)."""
    path = os.path.abspath(path)
    try:
        rundir.check_chain(os.path.dirname(path), f"{what} {path}")
    except rundir.RunDirError as e:
        raise UserFileError(str(e)) from None
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    _judge(st, path, what)


def _judge(st, path, what):
    me = os.geteuid()
    if not stat.S_ISREG(st.st_mode):
        raise UserFileError(f"{what} {path}: {kind_of(st)} of uid {st.st_uid}; valepipe writes only regular "
                            "files (give the path of a new or regular file)")
    if st.st_uid != me:
        raise UserFileError(f"{what} {path}: the file belongs to uid {st.st_uid}, not to us (uid {me}); remove it "
                            "or give another path")
    if st.st_nlink > 1:
        raise UserFileError(f"{what} {path}: the file has {st.st_nlink} hard links (it may be another file's "
                            "other name); remove it or give another path")


def kind_of(st):
    return ("a symbolic link" if stat.S_ISLNK(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else
            "a directory" if stat.S_ISDIR(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else
            "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a file")


def open_write(path, what, append=False, mode=0o644):
    """An fd to write `path` (created if missing; emptied unless append), after the checks
    of check_place, made on the open file itself: no link is followed, a FIFO neither
    blocks nor is written, nothing of another user is touched."""
    check_place(path, what)
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | (os.O_APPEND if append else 0), mode)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):     # a link; a FIFO nobody reads; a directory
            try:
                _judge(os.lstat(path), path, what)
            except OSError as e2:
                raise UserFileError(str(e2)) from None
        raise UserFileError(f"{what} {path}: {e.strerror}") from None
    try:
        _judge(os.fstat(fd), path, what)
        os.set_blocking(fd, True)
        if not append:
            os.ftruncate(fd, 0)
    except OSError as e:
        os.close(fd)
        raise e if isinstance(e, UserFileError) else UserFileError(f"{what} {path}: {e.strerror}") from None
    return fd


def write_text(path, what, text, mode=0o644):
    """Write `text` to `path` whole (PATH.tmp made exclusively, then renamed over PATH: a
    reader never sees half of it), with check_place's rules."""
    check_place(path, what)
    tmp = path + ".tmp"
    try:
        try:
            os.unlink(tmp)              # a leftover of ours (another user's in a sticky directory: EPERM)
        except FileNotFoundError:
            pass
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.rename(tmp, path)            # replaces a link there, never writes through it
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise UserFileError(f"{what} {path}: {e.strerror}") from None


def read_bytes(path, what, limit):
    """The bytes of `path` ('-': standard input), at most `limit` of them: a larger file is
    refused once `limit` is passed. Only a regular file is read: a FIFO (which would block
    until someone writes), a device (/dev/zero: endless) or a directory is refused at once."""
    try:
        if path == "-":
            import sys
            data = sys.stdin.buffer.read(limit + 1)
        else:
            # opened without blocking (a FIFO nobody writes would wait forever), judged on
            # the open file itself, then read
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise UserFileError(f"{what} {path}: {kind_of(st)}, not a regular file; valepipe reads "
                                        "only regular files (or - for standard input)")
                os.set_blocking(fd, True)
                data = f.read(limit + 1)
    except UserFileError:
        raise
    except OSError as e:
        raise UserFileError(f"{what} {path}: {e.strerror}") from None
    if len(data) > limit:
        raise UserFileError(f"{what} {path}: larger than {_size(limit)} (the most valepipe reads)")
    return data


def _size(n):
    return f"{n >> 20} MiB" if n >= 1 << 20 and not n % (1 << 20) else f"{n} bytes"
