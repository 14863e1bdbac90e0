"""One OpenFlow connection of the switch: a non-blocking TCP socket, message framing, the
hello (version negotiation), echo keepalive and the connection's own settings (role,
asynchronous message masks). Active connections (to a controller) are remade with
backoff by their Remote; passive ones come from a Listener (`ovs-ofctl` and friends).
Nothing here blocks: the slow path's loop reads and writes what the sockets take."""
import errno
import socket
import struct
import time

from os_ken.ofproto import ofproto_v1_3 as ofp

from pipeline.slowpath.openflow import codec, parse_target

MAX_OUT = 8 << 20              # bytes queued for a controller: past it, packet-ins are dropped (counted)
MAX_IN = 1 << 20               # bytes read ahead while a connection waits (barrier, stats)
READ = 1 << 16
PASSIVE_PROBE_S = 60.0


def _family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class Conn:
    """A connection after TCP is up: framing and the per-connection OpenFlow state."""

    def __init__(self, sock, name, probe_s, passive=False):
        self.sock, self.name, self.probe_s, self.passive = sock, name, probe_s, passive
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.inbuf, self.out = bytearray(), bytearray()
        self.negotiated = False
        self.closed = False
        self.last_rx = self.connected_at = time.monotonic()
        self.echo_sent = None
        self.xid = 0
        self.role = ofp.OFPCR_ROLE_EQUAL
        # OFP_DEFAULT_MISS_SEND_LEN; a management connection (passive) gets asynchronous
        # messages only once it sets one (Open vSwitch's rule for service connections)
        self.miss_send_len = 0 if passive else 128
        self.config_flags = 0
        self.set_async_defaults()
        self.wait = None                # (ready(), on_ready(), deadline): later messages wait
        self.stream = None              # a multipart reply still being made (a generator)
        self.send(codec.hello())

    def set_async_defaults(self):
        # OpenFlow 1.3's defaults: [master/equal, slave] bitmaps of reasons
        every_pin = (1 << ofp.OFPR_NO_MATCH) | (1 << ofp.OFPR_ACTION) | (1 << ofp.OFPR_INVALID_TTL)
        every_ps = (1 << ofp.OFPPR_ADD) | (1 << ofp.OFPPR_DELETE) | (1 << ofp.OFPPR_MODIFY)
        every_fr = (1 << ofp.OFPRR_IDLE_TIMEOUT) | (1 << ofp.OFPRR_HARD_TIMEOUT) | (1 << ofp.OFPRR_DELETE) \
            | (1 << ofp.OFPRR_GROUP_DELETE)
        self.async_masks = {"packet_in": [every_pin, 0], "port_status": [every_ps, every_ps],
                            "flow_removed": [every_fr, 0]}

    def wants(self, kind, reason):
        """Whether this connection is sent an asynchronous message of `kind` for `reason`."""
        if not self.negotiated or (self.passive and not self.miss_send_len):
            return False
        masks = self.async_masks[kind]
        return bool(masks[1 if self.role == ofp.OFPCR_ROLE_SLAVE else 0] >> reason & 1)

    def next_xid(self):
        self.xid = (self.xid + 1) & 0xFFFFFFFF
        return self.xid

    def send(self, data):
        if not self.closed:
            self.out += data

    def flush(self):
        while self.out and not self.closed:
            try:
                n = self.sock.send(self.out[:1 << 20])
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.close()
                return
            del self.out[:n]

    def fill(self):
        """Read what the socket has (unless much is already waiting); False when it closed."""
        if self.closed or len(self.inbuf) > MAX_IN:
            return not self.closed
        try:
            data = self.sock.recv(READ)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            data = b""
        if not data:
            self.close()
            return False
        self.inbuf += data
        self.last_rx = time.monotonic()
        self.echo_sent = None
        return True

    def next_message(self):
        """The next whole message, or None. A length below the header's is answered and
        skipped (a header's worth), so a broken peer cannot wedge the stream."""
        if len(self.inbuf) < 8:
            return None
        ln = struct.unpack_from("!H", self.inbuf, 2)[0]
        if ln < 8:
            raw = bytes(self.inbuf[:8])
            del self.inbuf[:8]
            return raw
        if len(self.inbuf) < ln:
            return None
        raw = bytes(self.inbuf[:ln])
        del self.inbuf[:ln]
        return raw

    def keepalive(self, now):
        """Echo after probe_s of silence; a peer silent for twice that is gone."""
        if self.closed or not self.probe_s:
            return
        idle = now - self.last_rx
        if idle >= 2 * self.probe_s:
            self.close()
        elif idle >= self.probe_s and self.echo_sent is None and self.negotiated:
            self.echo_sent = now
            self.send(codec.echo_request(self.next_xid()))

    def close(self):
        if not self.closed:
            self.closed = True
            try:
                self.sock.close()
            except OSError:
                pass


class Remote:
    """An active connection to one controller, remade with exponential backoff."""

    def __init__(self, target, probe_s, max_backoff_s):
        self.target = target
        self.host, self.port = parse_target(target, passive=False)
        self.probe_s, self.max_backoff = probe_s, max_backoff_s
        self.sock = None               # connecting
        self.conn = None               # connected
        self.backoff = 1.0
        self.next_try = 0.0
        self.connects = self.failures = 0

    def fds(self):
        return [self.conn.sock] if self.conn and not self.conn.closed else []

    def writers(self):
        if self.sock is not None:
            return [self.sock]
        return [self.conn.sock] if self.conn and not self.conn.closed and self.conn.out else []

    def step(self, now):
        """Start a connection when one is due; finish one in progress. Returns a new Conn."""
        if self.conn is not None and self.conn.closed:
            self.conn = None
            self._retry(now, lost=True)
        if self.conn is not None:
            return None
        if self.sock is None:
            if now < self.next_try:
                return None
            s = socket.socket(_family(self.host), socket.SOCK_STREAM)
            s.setblocking(False)
            rc = s.connect_ex((self.host, self.port))
            if rc not in (0, errno.EINPROGRESS):
                s.close()
                self._retry(now)
                return None
            self.sock, self.started = s, now
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.sock.close()
            self.sock = None
            self._retry(now)
            return None
        try:
            self.sock.getpeername()
        except OSError:
            if now - self.started > max(self.probe_s, 5.0):
                self.sock.close()
                self.sock = None
                self._retry(now)
            return None                 # still connecting
        self.conn = Conn(self.sock, self.target, self.probe_s)
        self.sock = None
        self.connects += 1
        return self.conn

    def _retry(self, now, lost=False):
        """Try again after the backoff, doubled each time up to max_backoff (a connection
        that was up starts the count again)."""
        self.failures += 1
        if lost:
            self.backoff = 1.0
        self.next_try = now + self.backoff
        self.backoff = min(self.max_backoff, self.backoff * 2)

    def connected(self):
        """Up (hello done) since the given moment?"""
        return self.conn is not None and not self.conn.closed and self.conn.negotiated

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.conn is not None:
            self.conn.close()


class Listener:
    """ptcp:PORT[:ADDR]: connections a management tool makes to the switch."""

    MAX = 64

    def __init__(self, target, probe_s):
        host, port = parse_target(target, passive=True)
        self.sock = socket.socket(_family(host), socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.probe_s = probe_s
        self.conns = []

    def fds(self):
        return [self.sock] + [c.sock for c in self.conns if not c.closed]

    def writers(self):
        return [c.sock for c in self.conns if not c.closed and c.out]

    def accept(self):
        new = []
        self.conns = [c for c in self.conns if not c.closed]
        while len(self.conns) < self.MAX:
            try:
                s, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError, OSError):
                break
            # a management tool is probed less eagerly (Open vSwitch's service connections: 60 s)
            c = Conn(s, f"ptcp:{addr[0]}:{addr[1]}", max(self.probe_s, PASSIVE_PROBE_S), passive=True)
            self.conns.append(c)
            new.append(c)
        return new

    def close(self):
        for c in self.conns:
            c.close()
        self.sock.close()
