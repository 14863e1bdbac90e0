"""The control sockets (worker and slow path): msgpack request -> msgpack reply, one per
connection. Owner-only (0600) in an owner-only directory; served a little at a time from
its owner's loop, never blocking it: an idle or slow client costs nothing, a large request
arrives over several turns, long work and large replies proceed in steps (a handler that
returns a generator) while forwarding goes on. Oversized or malformed requests get an
error reply.
"""
import socket
import sys
import time
import types

import msgpack

from pipeline import hostos, rundir

MAX_REQUEST = 64 << 10
# a client that sends nothing for this long is answered with an error and dropped (it
# holds up nothing meanwhile)
REQUEST_TIME_S = 2.0
MAX_CLIENTS = 64
STEP_BUFFER = 1 << 20         # a streaming handler waits while this much is unsent
PROGRESS_S = 1.0              # a client that asked for it hears this often that its request is still going


class RequestFailed(Exception):
    """A handler's refusal, told to the client as it is (not as a bad request or a bug)."""


class ControlServer:
    """handlers: cmd -> fn(request) returning the result, or a generator that does its work
    in steps: it yields None to give the loop back, or a list to stream those items out;
    what it returns is the result (a streamed reply is the concatenation of its lists)."""

    def __init__(self, path, handlers, max_request=MAX_REQUEST):
        self.path, self.handlers, self.max_request = path, handlers, max_request
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ident = rundir.bind_unix(self.sock, path)
        self.sock.listen(64)
        self.sock.setblocking(False)
        self.clients = {}                          # socket -> _Client
        self.orphans = []                          # work whose client left before it was done

    def fds(self):
        """What to watch for reading (the listening socket and the clients)."""
        return [self.sock] + list(self.clients)

    def writers(self):
        """Clients with output waiting, or work that continues without input."""
        return [s for s, c in self.clients.items() if c.out or c.work is not None]

    def busy(self):
        """Work goes on without any socket being ready: poll again soon."""
        return bool(self.orphans) or any(c.work is not None for c in self.clients.values())

    def poll(self, budget_s=0.002, advance=True):
        """Accept, read, answer and write for each client, for about budget_s; with advance,
        also a step of each handler that works in steps (not when called from the middle of
        other work, which would then wait on those steps)."""
        deadline = time.monotonic() + budget_s
        waiting = [s for s, c in self.clients.items() if c.done is None and c.work is None]
        try:
            readable = hostos.ready([self.sock] + waiting)[0]
        except (OSError, ValueError):
            readable = {self.sock} | set(waiting)
        if self.sock in readable:
            self._accept()
        for c in list(self.clients.values()):
            if c.done is None and c.work is None:
                c.read(self._start) if c.sock in readable else c.check_idle()
            if advance and c.work is not None and len(c.out) < STEP_BUFFER:
                c.advance()
            if c.out or c.done:
                c.write()
            del self.clients[c.sock]
            if not c.closed:
                self.clients[c.sock] = c           # to the back: the next poll starts with others
            elif c.work is not None:
                # the client went away: a stream is abandoned, but work that changes state
                # (a rule set half loaded) is finished
                if c.streaming:
                    c.work.close()
                else:
                    self.orphans.append(c.work)
                c.work = None
            if time.monotonic() >= deadline:
                break
        for w in list(self.orphans) if advance else ():
            try:
                if next(w, StopIteration) is StopIteration:
                    self.orphans.remove(w)
            except Exception as e:
                print(f"valepipe: control request failed after its client left: {e!r}", file=sys.stderr)
                self.orphans.remove(w)

    def _accept(self):
        for _ in range(MAX_CLIENTS):
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.setblocking(False)
            c = _Client(conn, self.max_request)
            self.clients[conn] = c
            if len(self.clients) > MAX_CLIENTS:
                c.reply({"ok": False, "error": f"too many control clients (at most {MAX_CLIENTS})"})

    def _start(self, c, req):
        if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
            return c.reply({"ok": False, "error": "a request is a map with a 'cmd' string"})
        h = self.handlers.get(req["cmd"])
        if h is None:
            return c.reply({"ok": False, "error": f"unknown command {req['cmd']!r} (known: "
                                                 f"{', '.join(sorted(self.handlers))})"})
        c.progress = req.get("progress") is True
        c.run(lambda: h(req))

    def owns_path(self):
        """Our socket is still the one at self.path (no successor replaced it)."""
        return rundir.is_own(self.path, self.ident)

    def close(self):
        for c in self.clients.values():
            c.close()
        self.clients.clear()
        self.sock.close()
        rundir.unlink_own(self.path, self.ident)


class _Client:
    """One control connection: reading its request, running the handler in steps, writing."""

    def __init__(self, sock, max_request):
        self.sock = sock
        self.unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max_request)
        self.max_request = max_request
        self.heard = time.monotonic()
        self.out = bytearray()
        self.work = None                           # a handler's generator, while it runs
        self.streaming = False
        self.progress = False                      # it asked to hear that long work goes on
        self.last_progress = time.monotonic()
        self.done = None                           # set once the reply is complete
        self.closed = False

    def check_idle(self):
        if time.monotonic() - self.heard > REQUEST_TIME_S:
            self.reply({"ok": False, "error": f"no complete request within {REQUEST_TIME_S:g} s"})

    def read(self, start):
        try:
            data = self.sock.recv(1 << 18)
        except (BlockingIOError, InterruptedError):
            return self.check_idle()
        except OSError:
            return self.close()
        if not data:
            return self.close()                    # gone before a whole request: nobody to answer
        self.heard = time.monotonic()
        try:
            self.unpacker.feed(data)
            for req in self.unpacker:
                return start(self, req)
        except msgpack.exceptions.BufferFull:
            self.reply({"ok": False, "error": f"request larger than {self.max_request} bytes"})
        except (ValueError, msgpack.exceptions.ExtraData, msgpack.exceptions.StackError) as e:
            self.reply({"ok": False, "error": f"bad request: {e}"})

    def run(self, call):
        try:
            result = call()
        except Exception as e:
            return self.fail(e)
        if isinstance(result, types.GeneratorType):
            self.work = result
        else:
            self.reply({"ok": True, "result": result})

    def advance(self):
        """One step of a handler that works in steps."""
        try:
            item = next(self.work)
        except StopIteration as e:
            self.work = None
            if self.streaming:
                self._put(None)                    # end of the stream
                self.done = True
            else:
                self.reply({"ok": True, "result": e.value})
            return
        except Exception as e:
            self.work = None
            return self.fail(e)
        if item is None:
            if self.progress and not self.streaming and time.monotonic() - self.last_progress >= PROGRESS_S:
                self.last_progress = time.monotonic()
                self._put({"ok": True, "progress": True})
            return
        if not self.streaming:
            self.streaming = True
            self._put({"ok": True, "stream": True})
        self._put(list(item))

    def fail(self, e):
        if isinstance(e, RequestFailed):
            msg = str(e)
        elif isinstance(e, (ValueError, OSError)):
            msg = f"bad request: {e}"
        else:                                      # a handler's bug must not stop the switch
            print(f"valepipe: control request failed: {e!r}", file=sys.stderr)
            msg = f"internal error: {e!r}"
        self.work = None
        self.reply({"ok": False, "error": msg})

    def reply(self, rep):
        self._put(rep)
        self.done = True

    def _put(self, obj):
        self.out += msgpack.packb(obj, use_bin_type=True)

    def write(self):
        while self.out:
            try:
                n = self.sock.send(self.out[:1 << 18])
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return self.close()
            del self.out[:n]
        if self.done:
            self.close()

    def close(self):
        self.closed = True
        self.sock.close()


def request(path, cmd, timeout=5.0, progress=False, **args):
    """Client side: send one request and return its result (raises on an error reply). A
    streamed reply comes as {"ok": true, "stream": true}, lists of items, then nil; its
    result is all the items. `timeout` bounds each wait, not the whole reply: with
    progress, the server says every PROGRESS_S that long work (a large rule change) is still
    going, so the client waits as long as that takes."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(msgpack.packb(dict(args, cmd=cmd, **({"progress": True} if progress else {})),
                                use_bin_type=True))
        up = msgpack.Unpacker(raw=False, max_buffer_size=64 << 20)
        items = None
        while True:
            data = s.recv(1 << 20)
            if not data:
                raise ConnectionError("control socket closed without a reply")
            up.feed(data)
            for rep in up:
                if items is not None:
                    if rep is None:
                        return items
                    if isinstance(rep, list):
                        items += rep
                        continue
                if not isinstance(rep, dict) or not rep.get("ok"):
                    raise RuntimeError(rep.get("error") if isinstance(rep, dict) else f"bad reply {rep!r}")
                if rep.get("progress") is True and items is None:
                    continue                        # still working: wait again
                if rep.get("stream"):
                    items = []
                    continue
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
