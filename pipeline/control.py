"""The worker's control socket: msgpack request -> msgpack reply, one per connection.

Owner-only (0600) in an owner-only directory; polled from the worker loop without
blocking; oversized or malformed requests get an error reply.
"""
import socket
import sys
import time

import msgpack

from pipeline import rundir

MAX_REQUEST = 64 << 10
# the worker answers between batches: a client that is slow to send its request (or sends
# none) gets an error after this long instead of holding up forwarding
REQUEST_TIME_S = 0.2


class RequestFailed(Exception):
    """A handler's refusal, told to the client as it is (not as a bad request or a bug)."""


class ControlServer:
    def __init__(self, path, handlers):
        self.path, self.handlers = path, handlers
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ident = rundir.bind_unix(self.sock, path)
        self.sock.listen(8)
        self.sock.setblocking(False)

    def poll(self):
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return
        with conn:
            try:
                reply = self._answer(self._read(conn))
            except RequestFailed as e:
                reply = {"ok": False, "error": str(e)}
            except msgpack.exceptions.BufferFull:
                reply = {"ok": False, "error": f"request larger than {MAX_REQUEST} bytes"}
            except (OSError, ValueError, msgpack.exceptions.StackError) as e:
                reply = {"ok": False, "error": f"bad request: {e}"}
            except Exception as e:               # a handler's bug must not stop the switch
                print(f"valepipe: control request failed: {e!r}", file=sys.stderr)
                reply = {"ok": False, "error": f"internal error: {e!r}"}
            try:
                conn.sendall(msgpack.packb(reply, use_bin_type=True))
            except OSError:
                pass

    def _read(self, conn):
        up = msgpack.Unpacker(raw=False, max_buffer_size=MAX_REQUEST)
        deadline = time.monotonic() + REQUEST_TIME_S
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ValueError(f"no complete request within {REQUEST_TIME_S} s")
            conn.settimeout(left)
            try:
                data = conn.recv(MAX_REQUEST)
            except socket.timeout:
                raise ValueError(f"no complete request within {REQUEST_TIME_S} s") from None
            if not data:
                raise ValueError("connection closed before a whole request")
            up.feed(data)
            for req in up:
                return req

    def _answer(self, req):
        if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
            return {"ok": False, "error": "a request is a map with a 'cmd' string"}
        h = self.handlers.get(req["cmd"])
        if h is None:
            return {"ok": False, "error": f"unknown command {req['cmd']!r} (known: {', '.join(sorted(self.handlers))})"}
        return {"ok": True, "result": h(req)}

    def owns_path(self):
        """Our socket is still the one at self.path (no successor replaced it)."""
        return rundir.is_own(self.path, self.ident)

    def close(self):
        self.sock.close()
        rundir.unlink_own(self.path, self.ident)


def request(path, cmd, timeout=5.0, **args):
    """Client side: send one request and return its result (raises on an error reply)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(msgpack.packb(dict(args, cmd=cmd), use_bin_type=True))
        up = msgpack.Unpacker(raw=False, max_buffer_size=64 << 20)
        while True:
            data = s.recv(1 << 20)
            if not data:
                raise ConnectionError("control socket closed without a reply")
            up.feed(data)
            for rep in up:
                if not rep.get("ok"):
                    raise RuntimeError(rep.get("error"))
                return rep["result"]
    finally:
        s.close()


def wait_ready(path, proc=None, timeout=20.0):
    """Client side: the worker's stats once it answers on `path` with its slow path connected
    (a starting pipeline); RuntimeError if `proc` exits first or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read() if getattr(proc, "stderr", None) else ""
            raise RuntimeError(f"pipeline exited {proc.returncode}: {err}")
        try:
            st = request(path, "stats")
            if st["upcall"]["channel_up"]:
                return st
        except (OSError, RuntimeError):
            pass
        if time.monotonic() >= deadline:
            raise RuntimeError(f"pipeline did not come up within {timeout:g} s ({path})")
        time.sleep(0.05)
