"""The fast path's side of the miss channel: ship missed packets with their keys to the
slow path in one message per batch, install its flows, execute the packets it returns.

Never blocks the fast path: the socket is non-blocking, the outgoing queue is bounded,
and a missing slow path turns misses into counted `upcall_lost` drops. Every packet sent
up is settled: executed from the slow path's answer, or counted by port (`slowpath_drop`
when the answer leaves it out, `upcall_disconnect` when the channel goes down first).
"""
import socket
import time
from collections import deque

from pipeline import channel
from pipeline._native import ffi, lib
from pipeline.datapath import DatapathError, key_mask

MAX_OUTQ = 8 << 20          # bytes of upcalls waiting for the socket
PENDING_TIMEOUT_NS = 2_000_000_000
# under overload, new misses are dropped (counted as upcall_queue) rather than queued past
# what the slow path answers within this long: an answer that comes after its flow's
# pending entry expired is work thrown away, and more queued only makes all answers later
ANSWER_WITHIN_S = 1.0
MIN_INFLIGHT = 256            # flows in flight allowed whatever the measured answer rate
RATE_WINDOW_S = 0.25          # busy time over which the answer rate is measured
KEYS_KEEP_S = 30.0            # a flow's key waits this long for a late answer (installed if still valid)
RECONNECT_S = 0.05            # a failed connect to a unix socket costs microseconds
REVALIDATE_CHUNK = 512        # flows per revalidate message
HEARTBEAT_S = 5.0             # a connected slow path says something every second; silent this long: hung
OFFLOAD_SIZE = ffi.sizeof("struct vp_offload")


class Upcalls:
    def __init__(self, dp, socket_path, worker_id=0, rate=0):
        self.dp = dp
        self.path = socket_path
        self.worker_id = worker_id
        self.sock = None
        self.up = False
        self.outq = bytearray()
        self.unpacker = channel.unpacker()
        self.c = ffi.new("struct vp_upcall_batch *")
        if rate:                                # new flows per second per input port
            self.c.rate_interval_ns = max(1, int(1e9 / rate))
            self.c.rate_burst_ns = self.c.rate_interval_ns * max(1, rate // 10)
        self.keys = {}                          # upcall id -> packed flow key, while pending
        self.next_try = 0.0
        self.reval_cursor = None                # pool position of the next revalidation chunk
        self.reval = {}                         # entry -> key bytes sent for revalidation
        self.reported = {}                      # entry -> (packets, bytes) already reported
        self.reval_outstanding = 0              # revalidate messages not answered yet
        self.reval_again = False                # a request came during the round in progress
        # per upcall message sent or queued, in order: dp port -> packets the slow path owes
        # an answer for; its upcall_replies come back in the same order
        self.owed = deque()
        self.sent_at = deque()                  # per upcall message, alongside owed: (time sent, flows)
        self.inflight_flows = 0                 # flows in the messages not answered yet
        self.answer_rate = 0.0                  # flows/s the slow path answers when busy (0: not measured)
        self.last_reply = 0.0
        self.busy_s = self.busy_flows = 0       # the measuring window so far
        self.reval_seq = 0                      # revalidation requests heard: a late answer from before one is stale
        self.last_heard = 0.0                   # when the slow path last sent anything
        self.reval_wanted = self.reval_acked = 0  # revalidate_request seqs asked for / answered
        self.on_port_mod = None                 # fn(ofport, up): an OpenFlow port_mod (the worker's)
        self.st = dict(upcalls=0, upcall_flows=0, upcall_packets=0, replies=0, installed=0,
                       executed=0, execute_dropped=0, stale_replies=0, bad_messages=0,
                       pending_expired=0, connects=0, disconnects=0, flow_limit_hit=0, slow_path_flows=0,
                       revalidations=0, revalidations_done=0, revalidated=0, revalidated_changed=0,
                       revalidated_removed=0, megaflows_installed=0, megaflows_removed=0,
                       xlate_errors=0, forgotten=0, late_installed=0)
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
        self.last_heard = now
        self.st["connects"] += 1
        self.outq += channel.encode({"v": channel.VERSION, "t": "hello", "worker": self.worker_id,
                                     "ports": [p.describe() for p in self.dp.ports]})
        if not self.flush():
            return False
        if self.st["connects"] > 1:
            # a slow path that came back (restarted, maybe with other rules) checks every
            # cached flow before it is trusted again
            self.start_revalidation()
        return True

    def _down(self):
        if self.sock:
            self.sock.close()
        self.sock, self.up = None, False
        # queued here, in the socket or in the slow path's backlog: none will be answered
        for owed in self.owed:
            self._settle(owed, lib.VP_DROP_UPCALL_DISCONNECT)
        self.owed.clear()
        self.sent_at.clear()
        self.inflight_flows = 0
        self.outq.clear()
        self.unpacker = channel.unpacker()
        self.reval_wanted = self.reval_acked = 0     # a new slow path counts its requests anew
        self.st["disconnects"] += 1
        self.reval_outstanding = 0
        self.reval_cursor = None
        self._round_done()
        # flows waiting for an answer that will never come: let them miss again later
        expired = ffi.new("uint32_t *")
        lib.vp_flow_sweep(self.dp.c, 0, 0, expired)
        self.st["pending_expired"] += expired[0]
        self.keys.clear()

    def flush(self):
        """Send what the socket takes now; False when the channel is (or just went) down."""
        if not self.up:
            return False
        if not self.outq:
            return True
        try:
            n = self.sock.send(self.outq)
            del self.outq[:n]
        except BlockingIOError:
            pass
        except OSError:
            self._down()
        return self.up

    def _settle(self, owed, reason):
        """Packets the slow path will not return: a drop for the port each came in on."""
        c = self.dp.c
        for i, n in owed.items():
            if n > 0:
                c.st.drops[reason] += n
                c.port_drops[i][reason] += n
                c.upcall_inflight[i] = max(0, c.upcall_inflight[i] - n)
        owed.clear()

    def fds(self):
        """What to wake the worker for: the slow path's answers."""
        return [self.sock.fileno()] if self.sock else []

    def silent_for(self):
        """Seconds since a connected slow path last sent anything (0 when not connected)."""
        return time.monotonic() - self.last_heard if self.up else 0.0

    # -- fast path -> slow path ---------------------------------------------------------
    def send_misses(self, batch):
        if not self.up:
            self.connect()
        now = time.monotonic()
        n = lib.vp_upcall_collect(self.dp.c, batch, self.c, self._state(now))
        if n == 0:
            return
        u, ofport = self.c, self.dp.ofport_of
        flows = []
        for j in range(u.nflows):
            i = u.flow_pkt[j]
            kb = bytes(ffi.buffer(ffi.addressof(batch.key[i]), self._key_size))
            self.keys[u.flow_id[j]] = (kb, now, self.reval_seq)
            flows.append({"id": u.flow_id[j], "key": channel.key_attrs(kb, ofport)})
        pkts = []
        for j in range(n):
            pk = batch.pkt[u.pkt_idx[j]]
            item = [u.pkt_upcall[j], ofport(pk.port), bytes(ffi.buffer(pk.data, pk.len))]
            if pk.ol.flags or pk.ol.gso_type:       # a super-frame or partial checksum: say so
                item.append(bytes(ffi.buffer(ffi.addressof(pk, "ol"), OFFLOAD_SIZE)))
            pkts.append(item)
        self.owed.append({i: u.port_pkts[i] for i in range(len(self.dp.ports)) if u.port_pkts[i]})
        self.sent_at.append((now, len(flows)))
        self.inflight_flows += len(flows)
        self.outq += channel.encode({"v": channel.VERSION, "t": "upcall", "flows": flows, "packets": pkts})
        self.st["upcalls"] += 1
        self.st["upcall_flows"] += len(flows)
        self.st["upcall_packets"] += n
        self.flush()

    def _state(self, now):
        """The channel as this batch's misses see it: down, full (misses dropped as
        upcall_queue) or up. Full when the queue is at its byte bound, or holds more than
        the slow path answers within ANSWER_WITHIN_S (at its measured rate), or its oldest
        upcall waits longer than that."""
        if not self.up:
            return lib.VP_CHAN_DOWN
        if len(self.outq) >= MAX_OUTQ:
            return lib.VP_CHAN_FULL
        if self.sent_at and (now - self.sent_at[0][0] > ANSWER_WITHIN_S or self.answer_rate and
                             self.inflight_flows >= max(MIN_INFLIGHT, self.answer_rate * ANSWER_WITHIN_S)):
            return lib.VP_CHAN_FULL
        return lib.VP_CHAN_UP

    def _answered(self):
        """An upcall_reply came: measure how fast the slow path answers while busy (its time
        on this message: since the later of the previous answer and this message's sending)."""
        now = time.monotonic()
        sent, nflows = self.sent_at.popleft() if self.sent_at else (now, 0)
        self.inflight_flows = max(0, self.inflight_flows - nflows)
        self.busy_s += max(0.0, now - max(self.last_reply, sent))
        self.busy_flows += nflows
        self.last_reply = now
        if self.busy_s >= RATE_WINDOW_S:
            rate = self.busy_flows / self.busy_s
            self.answer_rate = rate if not self.answer_rate else 0.7 * self.answer_rate + 0.3 * rate
            self.busy_s = self.busy_flows = 0

    # -- slow path -> fast path ---------------------------------------------------------
    def poll(self):
        """Read and apply whatever replies have arrived, then commit what they did (the
        packets they executed are published); returns how many were applied. Safe against
        the channel going down at any point: each step checks it is still up."""
        try:
            return self._poll()
        finally:
            lib.vp_commit(self.dp.c)

    def _poll(self):
        if not self.up:
            self.connect()
            return 0
        if not self.flush():
            return 0
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return 0
        except OSError:
            self._down()
            return 0
        if not data:
            self._down()
            return 0
        self.last_heard = time.monotonic()
        done = 0
        try:
            self.unpacker.feed(data)
            for msg in self.unpacker:
                self._apply(msg)
                done += 1
                if not self.up:
                    break
        except (channel.ChannelError, DatapathError, ValueError, TypeError, KeyError, AttributeError) as e:
            # whatever the slow path sent, the fast path survives it: count, reconnect later
            self.st["bad_messages"] += 1
            self.last_error = str(e)
            self._down()
        return done

    def _apply(self, msg):
        t = channel.check(msg)
        if t == "revalidate_request":
            self.reval_seq += 1
            self._forget(msg)
            if _is_int(msg.get("seq")):
                self.reval_wanted = max(self.reval_wanted, msg["seq"])
            self.start_revalidation()
            return
        if t in ("execute", "stats_request", "meters", "port_mod"):
            from pipeline.openflow_datapath import apply         # OpenFlow's requests
            apply(self, t, msg)
            return
        if t == "revalidate_reply":
            self._revalidated(_list(msg, "flows"))
            return
        if t != "upcall_reply":
            if t == "error":
                self.last_error = str(msg.get("error"))
            return
        if not self.owed:
            raise channel.ChannelError("an upcall_reply with no upcall outstanding")
        owed = self.owed.popleft()
        self._answered()
        try:
            self._reply(msg, owed)
        finally:
            # what the answer did not return stays with the slow path (controller, unknown flow)
            self._settle(owed, lib.VP_DROP_SLOWPATH)

    def _reply(self, msg, owed):
        self.st["replies"] += 1
        for f in _list(msg, "flows"):
            fid = f.get("id") if isinstance(f, dict) else None
            kb, sent, seq = self.keys.pop(fid, (None, 0, 0)) if _is_int(fid) else (None, 0, 0)
            # an answer later than its pending entry (its packets settled all the same, by
            # `owed`) still caches the flow, unless rules or MACs changed since it was asked
            late = kb is not None and time.monotonic() - sent > PENDING_TIMEOUT_NS / 1e9
            if late and seq != self.reval_seq:
                kb = None
            actions = channel.actions_from_wire(f.get("actions")) if kb is not None else None
            if actions is None:
                self.st["stale_replies"] += 1
                continue
            if f.get("error"):
                self.st["xlate_errors"] += 1        # answered with a drop, no megaflow
            if not channel.fast_path_runs(actions):
                # not cacheable here yet: the slow path executes every packet of this flow
                lib.vp_flow_remove(self.dp.c, ffi.from_buffer("struct vp_flow_key *", kb))
                self.st["slow_path_flows"] += 1
                continue
            wc = channel.mask_from_wire(f.get("mask"))
            mf = self.dp.install_megaflow(kb, wc, actions) if wc is not None else -1
            if mf >= 0:
                self.st["megaflows_installed"] += 1
            if self.dp.install(kb, actions, mf) < 0:
                self.st["flow_limit_hit"] += 1
            else:
                self.st["installed"] += 1
                self.st["late_installed"] += late
        self._forget(msg)
        self._execute(_list(msg, "execute"), owed)

    def _forget(self, msg):
        """NORMAL learned where these MACs are ([mac, ofport], ofport -1 when one aged out):
        what was cached to them (flooding, or their old port), or from them on another
        port, goes now, before any later packet can use it."""
        if msg.get("flush") is True:
            self.st["forgotten"] += lib.vp_flows_forget_mac(self.dp.c, ffi.NULL, lib.VP_MAX_PORTS)
        for item in _list(msg, "forget_macs")[:16]:
            if isinstance(item, list) and len(item) == 2 and isinstance(item[0], bytes) and len(item[0]) == 6 \
                    and _is_int(item[1]):
                home = self.dp.ofport_to_index.get(item[1], lib.VP_MAX_PORTS)
                self.st["forgotten"] += lib.vp_flows_forget_mac(self.dp.c, item[0], home)

    def _execute(self, items, owed):
        """Run the packets the slow path returned through the C execute stage, one by one
        (only first packets of flows get here). Each is one the slow path owed for its input
        port; one it does not owe is refused."""
        c = self.dp.c
        for it in items:
            # [actions, frame, offload metadata or nil, in_port]; older slow paths send
            # [actions, frame] or [actions, frame, metadata]
            i = self.dp.ofport_to_index.get(it[3], -1) if isinstance(it, list) and len(it) == 4 and _is_int(it[3]) else -1
            if i < 0:      # an older slow path names no port: the first one still owed
                i = next((k for k, n in owed.items() if n > 0), -1)
            if owed.get(i, 0) <= 0:
                self.st["bad_messages"] += 1
                continue
            owed[i] -= 1
            c.upcall_inflight[i] = max(0, c.upcall_inflight[i] - 1)
            meta = it[2] if isinstance(it, list) and len(it) > 2 else None
            actions = channel.actions_from_wire(it[0]) if isinstance(it, list) and len(it) in (2, 3, 4) else None
            if not (isinstance(it, list) and len(it) in (2, 3, 4) and isinstance(it[1], bytes)
                    and actions is not None and channel.fast_path_runs(actions) and 1 <= len(it[1]) <= 65535
                    and (meta is None or isinstance(meta, bytes) and len(meta) == OFFLOAD_SIZE)):
                self.st["bad_messages"] += 1
                c.st.drops[lib.VP_DROP_BAD_REPLY] += 1
                c.port_drops[i][lib.VP_DROP_BAD_REPLY] += 1
                continue
            drops0 = sum(c.st.drops)
            try:
                aid = self.dp.action_id(actions)
            except DatapathError:
                aid = 0xFFFFFFFF            # refused by the datapath: counted as bad_reply below
            # the C side checks the metadata against the packet before using it
            ol = ffi.from_buffer("struct vp_offload *", meta) if meta is not None else ffi.NULL
            sent = lib.vp_execute_packet(c, aid, it[1], len(it[1]), ol, i)
            self.st["executed"] += sent
            self.st["execute_dropped"] += sum(c.st.drops) - drops0

    # -- revalidation: re-translate installed flows after rules change ------------------------
    def start_revalidation(self):
        """Recheck every cached flow; returns the number of the round that will have done
        it. A request during a round gets another round after it (restarting the round
        instead would starve the flows at its end while requests keep coming)."""
        if self.reval_cursor is None and self.reval_outstanding == 0:
            self.st["revalidations"] += 1
            self.reval_cursor = 0
            return self.st["revalidations"]
        self.reval_again = True
        return self.st["revalidations"] + 1

    def revalidate_step(self):
        """Send the next chunk of installed flows (keys + stats since last time): exact
        flows first, then megaflows (ids past the flow limit)."""
        if self.reval_cursor is None or not self.up or len(self.outq) > MAX_OUTQ // 2:
            return
        limit = self.dp.c.flows.limit
        buf, nxt = ffi.new("uint32_t[]", REVALIDATE_CHUNK), ffi.new("uint32_t *")
        mega = self.reval_cursor >= limit
        table = self.dp.c.mflows if mega else self.dp.c.flows
        dump = lib.vp_megaflow_dump if mega else lib.vp_flow_dump
        n = dump(self.dp.c, self.reval_cursor - (limit if mega else 0), buf, REVALIDATE_CHUNK, nxt)
        if nxt[0] < table.limit:
            self.reval_cursor = nxt[0] + (limit if mega else 0)
        else:
            self.reval_cursor = None if mega else limit
        flows, ofport = [], self.dp.ofport_of
        for j in range(n):
            e = buf[j]
            uid = e + limit if mega else e
            ent = table.entries[e]
            kb = bytes(ffi.buffer(ffi.addressof(ent, "key"), self._key_size))
            last = self.reported.get(uid, (0, 0)) if self.reval.get(uid, kb) == kb else (0, 0)
            self.reported[uid] = (ent.packets, ent.bytes)
            self.reval[uid] = kb
            flows.append({"id": uid, "key": channel.key_attrs(kb, ofport),
                          "packets": ent.packets - last[0], "bytes": ent.bytes - last[1]})
        if flows:
            self.outq += channel.encode({"v": channel.VERSION, "t": "revalidate", "flows": flows})
            self.reval_outstanding += 1
            self.flush()
        self._round_done()

    def _round_done(self):
        if self.reval_cursor is None and self.reval_outstanding == 0:
            if self.reval_again:
                self.reval_again = False
                self.st["revalidations"] += 1
                self.reval_cursor = 0
            else:
                self.st["revalidations_done"] = self.st["revalidations"]
                if self.reval_wanted > self.reval_acked and self.up:
                    # the slow path waits on this (an OpenFlow barrier, fresh counters): every
                    # flow cached was rechecked by a round that started after the request
                    self.reval_acked = self.reval_wanted
                    self.outq += channel.encode({"v": channel.VERSION, "t": "revalidated", "seq": self.reval_acked,
                                                 "cached": self.dp.c.flows.count + self.dp.c.mflows.count})

    def _revalidated(self, flows):
        self.reval_outstanding = max(0, self.reval_outstanding - 1)
        self._round_done()
        limit = self.dp.c.flows.limit
        for f in flows:
            actions = channel.actions_from_wire(f.get("actions")) if isinstance(f, dict) else None
            if actions is None:
                self.st["bad_messages"] += 1
                continue
            uid = f.get("id")
            kb = self.reval.get(uid) if _is_int(uid) else None
            if kb is None:
                continue
            self.st["revalidated"] += 1
            # "uncache": its next packet must reach the slow path (NORMAL would learn from it)
            keep = channel.fast_path_runs(actions) and f.get("uncache") is not True
            if uid >= limit:
                self._revalidated_megaflow(uid - limit, kb, actions, channel.mask_from_wire(f.get("mask")), keep)
                continue
            key = ffi.from_buffer("struct vp_flow_key *", kb)
            if lib.vp_flow_find(self.dp.c, key) != uid:
                continue                        # gone or replaced since it was sent
            if keep:
                aid = self.dp.action_id(actions)
                if self.dp.c.flows.entries[uid].action != aid:
                    self.dp.c.flows.entries[uid].action = aid
                    self.st["revalidated_changed"] += 1
            else:
                lib.vp_flow_remove(self.dp.c, key)
                self.reval.pop(uid, None)
                self.reported.pop(uid, None)
                self.st["revalidated_removed"] += 1

    def _revalidated_megaflow(self, e, kb, actions, wc, keep):
        """A megaflow stays if translation gives it the same mask now (with the actions it
        gives now: its exact-match caches follow); otherwise it goes, and the next packet
        sets up the right one."""
        ent = self.dp.c.mflows.entries[e]
        if ent.action < 0 or bytes(ffi.buffer(ffi.addressof(ent, "key"), self._key_size)) != kb:
            return
        same_mask = wc is not None and bytes(ffi.buffer(key_mask(wc))) == bytes(
            ffi.buffer(ffi.addressof(self.dp.c.masks[ent.upcall_id])))
        if same_mask and keep:
            aid = self.dp.action_id(actions)
            if aid != ent.action:
                ent.action = aid
                ent.gen = (ent.gen + 1) & 0xFFFFFFFF    # its exact-match caches are stale now
                self.st["revalidated_changed"] += 1
            return
        lib.vp_megaflow_remove_entry(self.dp.c, e)
        self.reval.pop(e + self.dp.c.flows.limit, None)
        self.st["megaflows_removed"] += 1

    def expire(self):
        """Idle flows leave the table; pending flows whose answer is overdue may miss again."""
        expired = ffi.new("uint32_t *")
        lib.vp_flow_sweep(self.dp.c, self.dp.idle_ns, PENDING_TIMEOUT_NS, expired)
        self.st["megaflows_removed"] += lib.vp_megaflow_sweep(self.dp.c, self.dp.idle_ns)     # idle: expired
        lib.vp_megaflow_rerank(self.dp.c)
        self.st["pending_expired"] += expired[0]
        old = time.monotonic() - KEYS_KEEP_S
        for uid in [u for u, (_, t, _) in self.keys.items() if t < old]:
            del self.keys[uid]

    def disconnect(self):
        """Drop the channel (its unanswered upcalls are counted); the loop reconnects."""
        if self.up:
            self._down()

    close = disconnect


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _list(msg, name):
    v = msg.get(name, [])
    if not isinstance(v, list):
        raise channel.ChannelError(f"{msg.get('t')}: {name} must be an array")
    return v

