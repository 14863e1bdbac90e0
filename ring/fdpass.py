"""A region's memory handed to its peers over a unix socket (SCM_RIGHTS): how a peer gets
the owner's memfd on every OS (FreeBSD has no /proc/PID/fd to open it through).

The owner serves from a thread of its own, so a peer is answered whatever the owner's
main loop is doing; each side checks the other's uid through the socket itself."""
import array
import os
import select
import socket
import stat
import threading
import time

from pipeline import hostos

MAGIC = b"valepipe-fd/1"
ANSWER_S = 2.0            # a peer waits this long for the owner's answer


class FdServer:
    """Serves `fd` to processes of uid `uids` connecting to a new unix socket at `path`
    (owner-only), until close(). The path must be free (bind refuses an existing name,
    whatever it is, and never follows a link)."""

    def __init__(self, path, fd, uids):
        self.path, self._fd, self._uids, self._pid = path, fd, set(uids), os.getpid()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.bind(path)
            # the mode bind gave it never lets another user connect (umask 022 leaves no
            # write bit for them), and the uid check below refuses them anyway
            os.chmod(path, 0o600)
            st = os.lstat(path)
            self._inode = (st.st_dev, st.st_ino)
            self._sock.listen(64)
        except OSError:
            self._sock.close()
            raise
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._serve, name=f"valepipe fd server {path}", daemon=True)
        self._thread.start()

    def _serve(self):
        p = select.poll()
        p.register(self._sock.fileno(), select.POLLIN)
        p.register(self._wake_r, select.POLLIN)
        while True:
            if any(fd == self._wake_r for fd, _ in p.poll()):
                return
            try:
                conn, _ = self._sock.accept()
            except OSError:
                time.sleep(0.05)                # out of fds, say: not a busy loop
                continue
            with conn:
                try:
                    conn.settimeout(ANSWER_S)
                    if hostos.peer_uid(conn) in self._uids:
                        socket.send_fds(conn, [MAGIC], [self._fd])
                except OSError:
                    pass                        # the peer went away: its loss

    def close(self):
        """Stop serving and remove the socket (only this process's own: the same inode,
        not one a successor bound at the same name since)."""
        if self._sock is None:
            return
        if os.getpid() == self._pid:
            os.write(self._wake_w, b"x")
            self._thread.join(10)
            try:
                st = os.lstat(self.path)
                if (st.st_dev, st.st_ino) == self._inode:
                    os.unlink(self.path)
            except FileNotFoundError:
                pass
        self._sock.close()
        self._sock = None
        os.close(self._wake_r)
        os.close(self._wake_w)


def receive_fd(path):
    """(fd or None, uid of the process that answered) from the FdServer at `path`; fd is
    None when it refused us. OSError (FileNotFoundError, ConnectionRefusedError: nobody
    serves there; PermissionError; TimeoutError) when no answer came."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(ANSWER_S)
        s.connect(path)
        uid = hostos.peer_uid(s)
        fds = array.array("i")
        msg, anc, _, _ = s.recvmsg(len(MAGIC), socket.CMSG_SPACE(4 * fds.itemsize),
                                   getattr(socket, "MSG_CMSG_CLOEXEC", 0))
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    if msg == MAGIC and len(fds) == 1:
        os.set_inheritable(fds[0], False)
        return fds[0], uid
    for fd in fds:
        os.close(fd)
    return None, uid


def answers(path, uid):
    """Whether a process of `uid` serves at `path`, a socket of that uid (a live owner)."""
    try:
        st = os.lstat(path)
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid != uid:
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(ANSWER_S)
            s.connect(path)
            return hostos.peer_uid(s) == uid
    except OSError:
        return False
