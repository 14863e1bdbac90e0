"""The fast path's side of the miss channel: ship missed packets with their keys to the
slow path in one message per batch, install its flows, execute the packets it returns.

Never blocks the fast path: the socket is non-blocking, the outgoing queue is bounded,
and a missing slow path turns misses into counted `upcall_lost` drops.
"""
import errno
import socket
import time

from pipeline import channel
from pipeline._native import ffi, lib

MAX_OUTQ = 8 << 20          # bytes of upcalls waiting for the socket
PENDING_TIMEOUT_NS = 2_000_000_000
RECONNECT_S = 0.5


class Upcalls:
    def __init__(self, dp, socket_path, worker_id=0):
        self.dp = dp
        self.path = socket_path
        self.worker_id = worker_id
        self.sock = None
        self.up = False
        self.outq = bytearray()
        self.unpacker = channel.unpacker()
        self.c = ffi.new("struct vp_upcall_batch *")
        self.keys = {}                          # upcall id -> packed flow key, while pending
        self.next_try = 0.0
        self.st = dict(upcalls=0, upcall_flows=0, upcall_packets=0, replies=0, installed=0,
                       executed=0, execute_dropped=0, stale_replies=0, bad_messages=0,
                       pending_expired=0, connects=0, disconnects=0, flow_limit_hit=0, slow_path_flows=0)
        self._key_size = ffi.sizeof("struct vp_flow_key")

    # -- connection -----------------------------------------------------------------------
    def connect(self):
        now = time.monotonic()
        if self.up or now < self.next_try:
            return self.up
        self.next_try = now + RECONNECT_S
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(self.path)
        except OSError:
            s.close()
            return False
        s.setblocking(False)
        self.sock, self.up = s, True
        self.st["connects"] += 1
        self.outq += channel.encode({"v": channel.VERSION, "t": "hello", "worker": self.worker_id,
                                     "ports": [p.describe() for p in self.dp.ports]})
        self.flush()
        return True

    def _down(self):
        if self.sock:
            self.sock.close()
        self.sock, self.up = None, False
        self.outq.clear()
        self.unpacker = channel.unpacker()
        self.st["disconnects"] += 1
        # flows waiting for an answer that will never come: let them miss again later
        expired = ffi.new("uint32_t *")
        lib.vp_flow_sweep(self.dp.c, 0, 0, expired)
        self.st["pending_expired"] += expired[0]
        self.keys.clear()

    def flush(self):
        if not self.up or not self.outq:
            return
        try:
            n = self.sock.send(self.outq)
            del self.outq[:n]
        except BlockingIOError:
            pass
        except OSError:
            self._down()

    # -- fast path -> slow path ---------------------------------------------------------
    def send_misses(self, batch):
        if not self.up:
            self.connect()
        state = (lib.VP_CHAN_UP if len(self.outq) < MAX_OUTQ else lib.VP_CHAN_FULL) if self.up else lib.VP_CHAN_DOWN
        n = lib.vp_upcall_collect(self.dp.c, batch, self.c, state)
        if n == 0:
            return
        u, ofport, now = self.c, self.dp.ofport_of, time.monotonic()
        flows = []
        for j in range(u.nflows):
            i = u.flow_pkt[j]
            kb = bytes(ffi.buffer(ffi.addressof(batch.key[i]), self._key_size))
            self.keys[u.flow_id[j]] = (kb, now)
            flows.append({"id": u.flow_id[j], "key": channel.key_attrs(kb, ofport)})
        pkts = []
        for j in range(n):
            pk = batch.pkt[u.pkt_idx[j]]
            pkts.append([u.pkt_upcall[j], ofport(pk.port), bytes(ffi.buffer(pk.data, pk.len))])
        self.outq += channel.encode({"v": channel.VERSION, "t": "upcall", "flows": flows, "packets": pkts})
        self.st["upcalls"] += 1
        self.st["upcall_flows"] += len(flows)
        self.st["upcall_packets"] += n
        self.flush()

    # -- slow path -> fast path ---------------------------------------------------------
    def poll(self):
        """Read and apply whatever replies have arrived; returns how many were applied."""
        if not self.up:
            self.connect()
            return 0
        self.flush()
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return 0
        except OSError as e:
            if e.errno != errno.EAGAIN:
                self._down()
            return 0
        if not data:
            self._down()
            return 0
        try:
            self.unpacker.feed(data)
            done = 0
            for msg in self.unpacker:
                self._apply(msg)
                done += 1
            return done
        except (channel.ChannelError, ValueError, TypeError, KeyError) as e:
            self.st["bad_messages"] += 1
            self.last_error = str(e)
            self._down()
            return 0

    def _apply(self, msg):
        t = channel.check(msg)
        if t != "upcall_reply":
            if t == "error":
                self.last_error = str(msg.get("error"))
            return
        self.st["replies"] += 1
        for f in msg.get("flows", ()):
            kb = self.keys.pop(f.get("id"), (None,))[0] if isinstance(f, dict) else None
            if kb is None or not channel.actions_ok(f.get("actions")):
                self.st["stale_replies"] += 1
                continue
            if not channel.fast_path_runs(f["actions"]):
                # not cacheable here yet: the slow path executes every packet of this flow
                lib.vp_flow_remove(self.dp.c, ffi.from_buffer("struct vp_flow_key *", kb))
                self.st["slow_path_flows"] += 1
                continue
            if self.dp.install(kb, f["actions"]) < 0:
                self.st["flow_limit_hit"] += 1
            else:
                self.st["installed"] += 1
        self._execute(msg.get("execute", ()))

    def _execute(self, items):
        """Send the packets the slow path returned, one C call per output port."""
        per_port = {}
        for it in items:
            if not (isinstance(it, list) and len(it) == 2 and isinstance(it[1], bytes)
                    and channel.actions_ok(it[0]) and channel.fast_path_runs(it[0]) and 14 <= len(it[1]) <= 65535):
                self.st["bad_messages"] += 1
                continue
            for a in it[0]:
                if a[0] == "output":
                    idx = self.dp.ofport_to_index.get(a[1])
                    if idx is None:
                        self.dp.c.st.drops[lib.VP_DROP_NO_PORT] += 1
                        continue
                    per_port.setdefault(idx, []).append(it[1])
                else:
                    self.dp.c.st.drops[lib.VP_DROP_ACTION] += 1
        for idx, frames in per_port.items():
            lens = ffi.new("uint16_t[]", [len(f) for f in frames])
            sent = lib.vp_inject(self.dp.c, idx, b"".join(frames), lens, len(frames))
            self.st["executed"] += sent
            self.st["execute_dropped"] += len(frames) - sent

    def expire(self):
        """Idle flows leave the table; pending flows whose answer is overdue may miss again."""
        expired = ffi.new("uint32_t *")
        lib.vp_flow_sweep(self.dp.c, self.dp.idle_ns, PENDING_TIMEOUT_NS, expired)
        self.st["pending_expired"] += expired[0]
        old = time.monotonic() - PENDING_TIMEOUT_NS / 1e9
        for uid in [u for u, (_, t) in self.keys.items() if t < old]:
            del self.keys[uid]

    def close(self):
        if self.sock:
            self.sock.close()
        self.sock, self.up = None, False
