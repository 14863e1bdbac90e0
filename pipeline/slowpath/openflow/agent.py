"""The switch's OpenFlow 1.3 agent in the slow path: controllers (active, with backoff and
echo) and management tools (passive) drive the same tables, groups and meters that
`valepipe add-flow` changes; packet-ins, flow_removed and port_status go out to them. Every
request is answered as Open vSwitch answers it, a bad one with an OpenFlow error (counted
by type), never by dropping the connection. Runs in the slow path's loop, never blocking it:
long replies stream, waits (barrier, fresh counters) hold only their own connection."""
import struct
import sys
import time
import zlib

from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as osk

from pipeline import channel as wire
from pipeline.slowpath.classifier import Table
from pipeline.slowpath.fields import flow_from_attrs
from pipeline.slowpath.flowtext import FlowError, Rule, parse_actions
from pipeline.slowpath.openflow import codec, flows
from pipeline.slowpath.openflow.channel import MAX_OUT, Listener, Remote
from pipeline.slowpath.openflow.codec import OFError, bad_request
from pipeline.slowpath.openflow.groups import MAX_GROUPS, MAX_METERS, Tables
from pipeline.slowpath.xlate import Xlate

N_TABLES = 254
TURN_S = 0.02                  # longest stretch of OpenFlow work before the upcalls get a turn
WAIT_S = 2.0                   # a barrier or a stats request waits this long for the workers at most
REVALIDATE_EVERY_S = 0.05      # rule changes coalesce into one revalidation request per this
SAVE_EVERY_S = 1.0             # a controller's rule changes reach rules.flows within this (or at a barrier)
PORTS_WAIT_S = 10.0            # controllers are called once the worker named its ports, or after this
OFPTC_DEPRECATED_MASK = 3      # OpenFlow 1.3's table config bits (os-ken does not name it)
CAPABILITIES = ofp.OFPC_FLOW_STATS | ofp.OFPC_TABLE_STATS | ofp.OFPC_PORT_STATS | ofp.OFPC_GROUP_STATS
SLAVE_REFUSED = {ofp.OFPT_FLOW_MOD, ofp.OFPT_GROUP_MOD, ofp.OFPT_METER_MOD, ofp.OFPT_PORT_MOD, ofp.OFPT_TABLE_MOD,
                 ofp.OFPT_PACKET_OUT}
PIN_REASONS = {"action": ofp.OFPR_ACTION, "no_match": ofp.OFPR_NO_MATCH, "invalid_ttl": ofp.OFPR_INVALID_TTL}
FR_REASONS = {"idle_timeout": ofp.OFPRR_IDLE_TIMEOUT, "hard_timeout": ofp.OFPRR_HARD_TIMEOUT,
              "delete": ofp.OFPRR_DELETE, "group_delete": ofp.OFPRR_GROUP_DELETE}
ERROR_NAMES = {getattr(ofp, n): n[6:].lower() for n in dir(ofp) if n.startswith("OFPET_") and isinstance(getattr(ofp, n), int)}


def default_datapath_id(name):
    """A stable id from the pipeline's name (as OVS takes one from its bridge's MAC)."""
    return zlib.crc32(name.encode()) | 0x0000_0200_0000_0000



class Agent:
    def __init__(self, slow, cfg, name="valepipe"):
        self.slow, self.of, self.name = slow, slow.ofproto, name
        self.dpid = cfg.get("datapath_id") or default_datapath_id(name)
        self.fail_mode = cfg.get("fail_mode", "secure")
        probe = cfg.get("inactivity_probe", 5.0)
        self.remotes = [Remote(t, probe, cfg.get("max_backoff", 8.0)) for t in cfg.get("controller", [])]
        self.listener = Listener(cfg["listen"], probe) if cfg.get("listen") else None
        self.fail_open_after = 3 * probe if probe else 15.0
        self.conns = []
        self.tables = Tables()
        self.of.ext = self.tables
        self._load_made()
        self.of.on_removed = self.rule_removed
        self.ports = {}                            # OpenFlow 1.0 port number -> ofp_port fields
        # controllers are called once the worker has said which ports it has (or after
        # PORTS_WAIT_S without it): a controller told of no ports at connection may mask
        # port_status while it configures (Faucet does) and never learn of them
        self.ports_known = False
        self.generation = None                     # the last master/slave request's generation_id
        self.started = self.last_connected = time.monotonic()
        self.dirty = False                         # rules changed since rules.flows was written
        self.saving = None                         # a save in progress (steps)
        self.last_save = 0.0
        self.save_every = SAVE_EVERY_S             # longer for large tables: saving stays a small share
        self.reval_due = None                      # rules changed: revalidation to request at this time
        self.stats_id = 0
        self.stats_replies = {}                    # request id -> {client: reply}
        self.st = dict(connections=0, disconnections=0, messages_in=0, messages_out=0, flow_mods=0, group_mods=0,
                       meter_mods=0, packet_outs=0, packet_ins=0, packet_ins_dropped=0, packet_ins_unsent=0,
                       flow_removed=0, port_status=0, barriers=0, barrier_timeouts=0, errors_sent=0,
                       bad_length=0, fail_open=0, internal_errors=0, echo_timeouts=0)
        self.errors_by_type = {}

    # -- the slow path's loop -------------------------------------------------------------------
    def fds(self):
        out = [s for r in self.remotes for s in r.fds()]
        return out + (self.listener.fds() if self.listener else [])

    def writers(self):
        out = [s for r in self.remotes for s in r.writers()]
        out += self.listener.writers() if self.listener else []
        return out + [c.sock for c in self.conns if not c.closed and (c.stream is not None or c.out)]

    def busy(self):
        return any(c.stream is not None or (c.wait is None and len(c.inbuf) >= 8) for c in self.conns)

    def poll(self, readable=None):
        """A turn: connections made and accepted, read, answered and written. readable:
        the sockets select() found readable (None: try them all)."""
        now = time.monotonic()
        for r in self.remotes if self.ports_known or now - self.started > PORTS_WAIT_S else ():
            if r.conn is None or r.conn.closed:
                c = r.step(now)
                if c is not None:
                    self._add(c)
        if self.listener and (readable is None or self.listener.sock in readable):
            for c in self.listener.accept():
                self._add(c)
        deadline = now + TURN_S
        for c in list(self.conns):
            if readable is None or c.sock in readable:
                c.fill()
            self._run(c, deadline)
            c.flush()
            c.keepalive(now)
            if c.closed:
                self._gone(c)
        self._packet_ins()
        self._housekeep(now)

    def _add(self, c):
        self.conns.append(c)
        self.st["connections"] += 1

    def _gone(self, c):
        self.conns.remove(c)
        self.st["disconnections"] += 1
        if c.echo_sent is not None:
            self.st["echo_timeouts"] += 1

    def _run(self, c, deadline):
        while not c.closed:
            if c.stream is not None:
                if len(c.out) > (1 << 20):
                    return
                try:
                    c.send(next(c.stream))
                    self.st["messages_out"] += 1
                except StopIteration:
                    c.stream = None
                continue
            if c.wait is not None:
                ready, then, until = c.wait
                if not ready() and time.monotonic() < until:
                    return
                c.wait = None
                then(ready())
                continue
            if self.slow.changing:
                return                              # a CLI change is under way: after it
            raw = c.next_message()
            if raw is None:
                return
            self.st["messages_in"] += 1
            self.handle(c, raw)
            if time.monotonic() > deadline:
                return

    def close(self):
        for c in self.conns:
            c.close()
        for r in self.remotes:
            r.close()
        if self.listener:
            self.listener.close()

    # -- messages ------------------------------------------------------------------------------
    def handle(self, c, raw):
        version, t, ln, xid = codec.HEADER.unpack_from(raw)
        if ln < 8:
            self.st["bad_length"] += 1
            return self.error(c, OFError(ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_BAD_LEN, f"length {ln}"), xid, raw)
        if not c.negotiated:
            if t == ofp.OFPT_HELLO:
                return self.hello(c, version, raw)
            if version != codec.VERSION:
                return self.error(c, OFError(ofp.OFPET_HELLO_FAILED, ofp.OFPHFC_INCOMPATIBLE,
                                             "no hello, and not OpenFlow 1.3"), xid, raw)
            c.negotiated = True                    # a peer that skipped the hello but speaks 1.3
        if version != codec.VERSION:
            return self.error(c, bad_request(ofp.OFPBRC_BAD_VERSION, f"version {version}"), xid, raw)
        try:
            m = codec.decode(raw)
            if t in SLAVE_REFUSED and c.role == ofp.OFPCR_ROLE_SLAVE:
                raise bad_request(ofp.OFPBRC_IS_SLAVE, "a slave may not change the switch")
            fn = self.HANDLERS.get(t)
            if fn is not None:
                fn(self, c, m)
        except OFError as e:
            self.error(c, e, xid, raw)
        except Exception as e:       # a bug here must not cost the connection, nor the slow path
            self.st["internal_errors"] += 1
            print(f"valepipe-slowpath: openflow: {type(e).__name__}: {e} (message type {t})", file=sys.stderr)
            self.error(c, bad_request(ofp.OFPBRC_EPERM, str(e)), xid, raw)

    def error(self, c, e, xid, raw):
        self.st["errors_sent"] += 1
        name = f"{ERROR_NAMES.get(e.type, e.type)}"
        self.errors_by_type[name] = self.errors_by_type.get(name, 0) + 1
        c.send(codec.error(xid, e.type, e.code, raw))
        if e.type == ofp.OFPET_HELLO_FAILED:
            c.flush()
            c.close()

    def hello(self, c, version, raw):
        versions = codec._hello_versions(raw)
        ok = codec.VERSION in versions if versions is not None else version >= codec.VERSION
        if not ok:
            return self.error(c, OFError(ofp.OFPET_HELLO_FAILED, ofp.OFPHFC_INCOMPATIBLE,
                                         "this switch speaks OpenFlow 1.3 only"), 0, raw)
        c.negotiated = True
        if any(r.conn is c for r in self.remotes) and self.of.standalone is not None:
            self._fail_open(False)

    def _echo(self, c, m):
        c.send(codec.echo_reply(m.xid, m.data))

    def _features(self, c, m):
        c.send(codec.features_reply(m.xid, self.dpid, N_TABLES, CAPABILITIES))

    def _get_config(self, c, m):
        c.send(codec.config_reply(m.xid, c.config_flags, c.miss_send_len))

    def _set_config(self, c, m):
        if m.flags & ofp.OFPC_FRAG_MASK not in (ofp.OFPC_FRAG_NORMAL,):
            raise OFError(ofp.OFPET_SWITCH_CONFIG_FAILED, ofp.OFPSCFC_BAD_FLAGS, f"fragment handling {m.flags:#x}")
        c.config_flags, c.miss_send_len = m.flags, m.miss_send_len

    def _barrier(self, c, m):
        """Answered once everything before it is in effect: every worker has rechecked the
        flows it caches against the rules (at once when none caches any). The rules reach
        rules.flows within SAVE_EVERY_S; OpenFlow asks no more (OVS keeps none)."""
        self.st["barriers"] += 1
        reply = codec.message(ofp.OFPT_BARRIER_REPLY, m.xid)
        if self.reval_due is None and self.slow.revalidated_through(self.slow.reval_seq) \
                or self.slow.caches_empty():
            self.reval_due = None if self.slow.caches_empty() else self.reval_due
            c.send(reply)
            return
        self.reval_due = None
        seq = self.slow.request_revalidation()
        self.st["barriers_waited"] = self.st.get("barriers_waited", 0) + 1

        def done(ok):
            if not ok:
                self.st["barrier_timeouts"] += 1
            c.send(reply)
        c.wait = (lambda: self.slow.revalidated_through(seq), done, time.monotonic() + WAIT_S)

    def _role(self, c, m):
        role = m.role
        if role not in (ofp.OFPCR_ROLE_NOCHANGE, ofp.OFPCR_ROLE_EQUAL, ofp.OFPCR_ROLE_MASTER, ofp.OFPCR_ROLE_SLAVE):
            raise OFError(ofp.OFPET_ROLE_REQUEST_FAILED, ofp.OFPRRFC_BAD_ROLE, f"role {role}")
        if role in (ofp.OFPCR_ROLE_MASTER, ofp.OFPCR_ROLE_SLAVE):
            if self.generation is not None and ((m.generation_id - self.generation) & (1 << 63)):
                raise OFError(ofp.OFPET_ROLE_REQUEST_FAILED, ofp.OFPRRFC_STALE, "stale generation_id")
            self.generation = m.generation_id
        if role == ofp.OFPCR_ROLE_MASTER:
            for o in self.conns:
                if o is not c and o.role == ofp.OFPCR_ROLE_MASTER:
                    o.role = ofp.OFPCR_ROLE_SLAVE
        if role != ofp.OFPCR_ROLE_NOCHANGE:
            c.role = role
        c.send(codec.role_reply(m.xid, c.role, self.generation if self.generation is not None else 0))

    def _get_async(self, c, m):
        a = c.async_masks
        c.send(codec.async_reply(m.xid, a["packet_in"], a["port_status"], a["flow_removed"]))

    def _set_async(self, c, m):
        c.async_masks = {"packet_in": m.packet_in_mask, "port_status": m.port_status_mask,
                         "flow_removed": m.flow_removed_mask}

    def _queue_config(self, c, m):
        c.send(codec.message(ofp.OFPT_QUEUE_GET_CONFIG_REPLY, m.xid, struct.pack("!I4x", m.port)))

    def _table_mod(self, c, m):
        if m.config & ~OFPTC_DEPRECATED_MASK:
            raise OFError(ofp.OFPET_TABLE_MOD_FAILED, ofp.OFPTMFC_BAD_CONFIG, f"table config {m.config:#x}")
        if m.table_id >= N_TABLES and m.table_id != ofp.OFPTT_ALL:
            raise OFError(ofp.OFPET_TABLE_MOD_FAILED, ofp.OFPTMFC_BAD_TABLE, f"table {m.table_id}")

    def _peer_error(self, c, m):
        self.st["errors_received"] = self.st.get("errors_received", 0) + 1

    # -- flow table ----------------------------------------------------------------------------
    def _flow_mod(self, c, m):
        self.st["flow_mods"] += 1
        cmd, tid = m.command, m.table_id
        if cmd not in (ofp.OFPFC_ADD, ofp.OFPFC_MODIFY, ofp.OFPFC_MODIFY_STRICT, ofp.OFPFC_DELETE,
                       ofp.OFPFC_DELETE_STRICT):
            raise OFError(ofp.OFPET_FLOW_MOD_FAILED, ofp.OFPFMFC_BAD_COMMAND, f"flow_mod command {cmd}")
        if (tid >= N_TABLES and tid != ofp.OFPTT_ALL) or (tid == ofp.OFPTT_ALL and cmd == ofp.OFPFC_ADD):
            raise OFError(ofp.OFPET_FLOW_MOD_FAILED, ofp.OFPFMFC_BAD_TABLE_ID, f"table {tid}")
        if m.flags & ~0x1F:
            raise OFError(ofp.OFPET_FLOW_MOD_FAILED, ofp.OFPFMFC_BAD_FLAGS, f"flags {m.flags:#x}")
        groups, meters = self.tables.groups.keys(), self.tables.meters.keys()
        if cmd == ofp.OFPFC_ADD:
            rule = flows.parse(flows.flow_text(m, groups, meters))
            if m.flags & ofp.OFPFF_CHECK_OVERLAP:
                t = self.of.tables.get(rule.table)
                for r in (t.rules() if t else ()):
                    if r.priority == rule.priority and r.key() != rule.key() and flows.overlaps(r, rule):
                        raise OFError(ofp.OFPET_FLOW_MOD_FAILED, ofp.OFPFMFC_OVERLAP, "overlaps a rule")
            self.of.add_flow(rule)
            flows.remember_instructions(rule, m.instructions_raw)
        elif cmd in (ofp.OFPFC_MODIFY, ofp.OFPFC_MODIFY_STRICT):
            pattern = flows.parse(flows.flow_text(m, groups, meters, add=False), mode="match")
            hit = self._select(m, pattern, strict=cmd == ofp.OFPFC_MODIFY_STRICT, filters=False)
            for r in hit:
                self.of.modify(r, pattern.actions, reset_counts=bool(m.flags & ofp.OFPFF_RESET_COUNTS))
                flows.remember_instructions(r, m.instructions_raw)
        else:
            pattern = flows.parse(flows.flow_text(m, add=False), mode="match")
            for r in self._select(m, pattern, strict=cmd == ofp.OFPFC_DELETE_STRICT, filters=True):
                self.of.remove(r)
                self.rule_removed(r, "delete")
        if m.buffer_id != codec.NO_BUFFER:
            self._changed()
            raise bad_request(ofp.OFPBRC_BUFFER_UNKNOWN, "this switch keeps no buffers")
        self._changed()

    def _select(self, m, pattern, strict, filters):
        pattern.cookie, pattern.cookie_mask = m.cookie, m.cookie_mask
        pattern.table_given = m.table_id != ofp.OFPTT_ALL
        pattern.table = m.table_id if pattern.table_given else 0
        if strict:
            hit = [r for r in self.of.rules() if r.priority == m.priority and r.match == pattern.match
                   and (not pattern.table_given or r.table == pattern.table)
                   and not (r.cookie ^ m.cookie) & m.cookie_mask]
        else:
            hit = [r for r in self.of.rules() if pattern.covers(r)]
        if filters:
            hit = [r for r in hit if flows.outputs_to(r, m.out_port, m.out_group)]
        return hit

    def rule_removed(self, r, reason):
        """A rule timed out or was deleted: flow_removed to those who asked for it."""
        if "send_flow_rem" not in r.flags:
            return
        code = FR_REASONS[reason]
        now = time.monotonic()
        dur = max(0.0, now - self.of.created.get(id(r), now))
        msg = None
        for c in self.conns:
            if c.wants("flow_removed", code):
                if msg is None:
                    msg = codec.flow_removed(0, r.cookie, r.priority, code, r.table, int(dur), int(dur % 1 * 1e9),
                                             r.idle_timeout, r.hard_timeout, r.n_packets, r.n_bytes,
                                             flows.rule_match(r))
                c.send(msg)
                self.st["flow_removed"] += 1
        self._changed()

    def _changed(self):
        self.dirty = True
        if self.reval_due is None:
            self.reval_due = time.monotonic() + REVALIDATE_EVERY_S

    def _start_save(self):
        self.dirty = False
        self.last_save = time.monotonic()
        self.saving = self.slow.save_rules_steps()

    # -- groups and meters -----------------------------------------------------------------------
    def _group_mod(self, c, m):
        self.st["group_mods"] += 1
        gone = self.tables.group_mod(m, time.monotonic())
        self.tables.remember("groups", None if m.command == ofp.OFPGC_DELETE else m.group_id, m.raw, gone)
        self._remove_rules_naming("group", gone, "group_delete")
        self._changed()

    def _meter_mod(self, c, m):
        self.st["meter_mods"] += 1
        gone = self.tables.meter_mod(m, time.monotonic())
        self.tables.remember("meters", None if m.command == ofp.OFPMC_DELETE else m.meter_id, m.raw, gone)
        self._remove_rules_naming("meter", gone, "delete")
        self.push_meters()
        self._changed()

    def _remove_rules_naming(self, kind, ids, reason):
        """Rules cannot outlive the groups or meters they name (as in Open vSwitch)."""
        for i in ids:
            for r in [r for r in self.of.rules() if (kind, i) in r.actions]:
                self.of.remove(r)
                self.rule_removed(r, reason)

    def _load_made(self):
        """The groups and meters the last slow path had (saved with its rules): their
        group_mods and meter_mods again, meters first (rules and buckets name them), a
        group after those its buckets name."""
        made = self.slow.load_openflow_tables()
        if not made:
            return
        now, left = time.monotonic(), 0
        for kind, apply in (("meters", self.tables.meter_mod), ("groups", self.tables.group_mod)):
            todo = [(i, bytes(r)) for i, r in made.get(kind, {}).items()]
            while todo:
                failed = []
                for ident, raw in todo:
                    try:
                        apply(codec.decode(raw), now)
                        self.tables.made[kind][ident] = raw
                    except (OFError, struct.error, ValueError, TypeError):
                        failed.append((ident, raw))
                if len(failed) == len(todo):
                    left += len(failed)
                    break
                todo = failed
        if left:
            print(f"valepipe-slowpath: {left} saved groups/meters could not be made again", file=sys.stderr)

    def push_meters(self, clients=None):
        msg = {"v": wire.VERSION, "t": "meters", "meters": self.tables.datapath_meters()}
        for cl in clients or list(self.slow.clients.values()):
            self.slow.send(cl, msg)

    # -- ports ---------------------------------------------------------------------------------
    def ports_changed(self, described):
        """The worker's ports (its hello): port_status for what was added, went or changed."""
        self.ports_known = True
        new = {}
        for p in described:
            if not isinstance(p, dict):
                continue
            no = p.get("port") if isinstance(p.get("port"), int) else p.get("ofport")
            if not isinstance(no, int) or isinstance(no, bool) or not 0 < no <= 0xFFFF:
                continue
            uri = str(p.get("uri", ""))
            if uri.startswith("(removed"):
                continue
            up, link = p.get("up", p.get("ofport") is not None), p.get("link")
            name = uri.split(":", 1)[-1].split("@", 1)[0] or uri
            if no == flows.LOCAL10:
                name = self.name
            state = ofp.OFPPS_LINK_DOWN if link in ("down", "no-carrier", "gone") else ofp.OFPPS_LIVE
            new[no] = {"port_no": flows.port_to_of(no), "name": name[:15],
                       "hw_addr": bytes([0x02]) + zlib.crc32(f"{self.dpid}:{uri}".encode()).to_bytes(4, "big") + bytes([no & 0xFF]),
                       "config": 0 if up else ofp.OFPPC_PORT_DOWN, "state": state,
                       "curr": ofp.OFPPF_10GB_FD | ofp.OFPPF_COPPER, "curr_speed": 10_000_000, "max_speed": 10_000_000}
        old, self.ports = self.ports, new
        for no, p in new.items():
            if no not in old:
                self._port_status(ofp.OFPPR_ADD, p)
            elif old[no] != p:
                self._port_status(ofp.OFPPR_MODIFY, p)
        for no, p in old.items():
            if no not in new:
                self._port_status(ofp.OFPPR_DELETE, p)
        live = {no for no, p in new.items() if p["state"] == ofp.OFPPS_LIVE and not p["config"]}
        if live != self.tables.live_ports:
            self.tables.live_ports = live
            self._changed()                         # fast-failover buckets follow

    def _port_status(self, reason, p):
        msg = codec.port_status(0, reason, p)
        for c in self.conns:
            if c.wants("port_status", reason):
                c.send(msg)
                self.st["port_status"] += 1

    def _port_mod(self, c, m):
        no = flows.port_to_flow(m.port_no)
        p = self.ports.get(no)
        if p is None:
            raise OFError(ofp.OFPET_PORT_MOD_FAILED, ofp.OFPPMFC_BAD_PORT, f"port {m.port_no:#x}")
        if m.hw_addr != p["hw_addr"]:
            raise OFError(ofp.OFPET_PORT_MOD_FAILED, ofp.OFPPMFC_BAD_HW_ADDR, "hw_addr is not the port's")
        if m.mask & ~ofp.OFPPC_PORT_DOWN:
            raise OFError(ofp.OFPET_PORT_MOD_FAILED, ofp.OFPPMFC_BAD_CONFIG, f"config mask {m.mask:#x}")
        if m.mask & ofp.OFPPC_PORT_DOWN:
            for cl in list(self.slow.clients.values()):
                self.slow.send(cl, {"v": wire.VERSION, "t": "port_mod", "ofport": no,
                                    "up": not m.config & ofp.OFPPC_PORT_DOWN})

    # -- packets -------------------------------------------------------------------------------
    def _packet_out(self, c, m):
        self.st["packet_outs"] += 1
        if m.buffer_id != codec.NO_BUFFER:
            raise bad_request(ofp.OFPBRC_BUFFER_UNKNOWN, "this switch keeps no buffers")
        if not (0 < m.in_port < ofp.OFPP_MAX or m.in_port in (ofp.OFPP_CONTROLLER, ofp.OFPP_LOCAL)):
            raise bad_request(ofp.OFPBRC_BAD_PORT, f"in_port {m.in_port:#x}")
        if not 14 <= len(m.data) <= 65535:
            raise bad_request(ofp.OFPBRC_BAD_LEN, f"a packet of {len(m.data)} bytes")
        text = ",".join(flows.actions_text(m.actions, self.tables.groups.keys(), packet_out=True))
        try:
            acts = parse_actions(text, 0) if text else []
        except FlowError as e:
            raise OFError(ofp.OFPET_BAD_ACTION, ofp.OFPBAC_BAD_ARGUMENT, str(e)) from None
        in_port = flows.port_to_flow(m.in_port)
        flow = flow_of_frame(m.data, in_port)
        res = Xlate(self.of.tables, self.of.ports, self.of.macs, may_learn=True, ext=self.tables).translate(
            flow, start=acts)
        self._deliver(in_port, res, m.data)

    def _deliver(self, in_port, res, frame):
        """A packet-out's translation: packet-ins for its controller actions, the rest to
        the worker's datapath."""
        for pin in res.packet_ins:
            self.of.packet_in(in_port, pin["reason"], frame, pin, res.actions[:pin["at"]])
        rest = [a for a in res.actions if a[0] != "controller"]
        if not any(a[0] == "output" for a in rest):
            return
        clients = list(self.slow.clients.values())
        if not clients:
            self.st["packet_outs_unsent"] = self.st.get("packet_outs_unsent", 0) + 1
            return
        self.slow.send(clients[0], {"v": wire.VERSION, "t": "execute", "packets": [[rest, frame, None, in_port]]})

    def _packet_ins(self):
        q = self.of.packet_ins
        while q:
            item = q.popleft()
            pin = item.get("pin") or {}
            reason = ofp.OFPR_NO_MATCH if pin.get("table_miss") else PIN_REASONS.get(item["reason"], ofp.OFPR_ACTION)
            targets = [c for c in self.conns if c.wants("packet_in", reason)]
            if not targets:
                self.st["packet_ins_unsent"] += 1
                continue
            frame = rewritten(item["packet"], item.get("before") or ())
            max_len = pin.get("max_len", 0xFFFF)
            data = frame if max_len == ofp.OFPCML_NO_BUFFER else frame[:max_len]
            fields = [("in_port", flows.port_to_of(item["in_port"]))]
            if pin.get("metadata"):
                fields.append(("metadata", pin["metadata"]))
            msg = codec.packet_in(0, codec.NO_BUFFER, len(frame), reason, pin.get("table", 0), pin.get("cookie", 0),
                                  codec.match_bytes(fields), data)
            for c in targets:
                if len(c.out) > MAX_OUT:
                    self.st["packet_ins_dropped"] += 1
                    continue
                c.send(msg)
                self.st["packet_ins"] += 1

    # -- statistics ----------------------------------------------------------------------------
    def _multipart(self, c, m):
        if m.mp_flags & ofp.OFPMPF_REQ_MORE:
            raise bad_request(ofp.OFPBRC_MULTIPART_BUFFER_OVERFLOW, "multipart requests in several parts")
        t = m.mp_type
        fn = MULTIPART.get(t)
        if fn is None:
            raise bad_request(ofp.OFPBRC_BAD_MULTIPART, f"multipart type {t}")
        fresh = t in (ofp.OFPMP_FLOW, ofp.OFPMP_AGGREGATE, ofp.OFPMP_TABLE, ofp.OFPMP_GROUP)
        worker = t in (ofp.OFPMP_PORT_STATS, ofp.OFPMP_METER)
        if t == ofp.OFPMP_PORT_STATS and m.id != ofp.OFPP_ANY and flows.port_to_flow(m.id) not in self.ports:
            raise bad_request(ofp.OFPBRC_BAD_PORT, f"port {m.id:#x}")
        if t == ofp.OFPMP_TABLE_FEATURES and m.body:
            raise OFError(ofp.OFPET_TABLE_FEATURES_FAILED, ofp.OFPTFFC_EPERM, "the tables' features are fixed")

        def answer(_ok, replies=None):
            c.stream = self._stream(m, fn(self, m, replies) if worker else fn(self, m))
        if fresh and not self.slow.caches_empty():
            seq = self.slow.request_revalidation()        # rule counters as of now
            c.wait = (lambda: self.slow.revalidated_through(seq), answer, time.monotonic() + WAIT_S)
        elif worker:
            self.stats_id += 1
            rid = self.stats_id
            self.stats_replies[rid] = {}
            clients = list(self.slow.clients.values())
            for cl in clients:
                self.slow.send(cl, {"v": wire.VERSION, "t": "stats_request", "id": rid})
            c.wait = (lambda: len(self.stats_replies.get(rid, ())) >= len(clients),
                      lambda ok: answer(ok, self.stats_replies.pop(rid, {})), time.monotonic() + WAIT_S)
        else:
            answer(True)

    def stats_reply(self, client, msg):
        rid = msg.get("id")
        if isinstance(rid, int) and rid in self.stats_replies:
            self.stats_replies[rid][id(client)] = msg

    def _stream(self, m, bodies):
        """The replies, made a slice of entries at a time as the connection drains; an
        error found on the way ends them with that error."""
        batch, size = [], 0
        try:
            for b in bodies:
                if batch and size + len(b) > codec.MAX_LEN - 16:
                    yield _more(codec.multipart_replies(m.xid, m.mp_type, batch)[0])
                    batch, size = [], 0
                batch.append(b)
                size += len(b)
        except OFError as e:
            self.st["errors_sent"] += 1
            yield codec.error(m.xid, e.type, e.code, m.raw)
            return
        yield codec.multipart_replies(m.xid, m.mp_type, batch)[0]

    def _mp_desc(self, m):
        from importlib.metadata import PackageNotFoundError, version
        try:
            v = version("valepipe")
        except PackageNotFoundError:
            v = "?"
        yield struct.pack(ofp.OFP_DESC_PACK_STR, b"valepipe", b"valepipe (netmap rings, slow path in Python)",
                          f"valepipe {v}".encode(), b"None", self.name.encode()[:255])

    def _rules_for(self, m):
        pattern = Rule(match={})
        if m.match._fields2:
            pattern = flows.parse(flows.match_text(m.match) or "priority=0", mode="match")
        pattern.cookie, pattern.cookie_mask = m.cookie, m.cookie_mask
        pattern.table_given = m.table_id != ofp.OFPTT_ALL
        pattern.table = m.table_id if pattern.table_given else 0
        return [r for r in self.of.rules() if pattern.covers(r) and flows.outputs_to(r, m.out_port, m.out_group)]

    def _mp_flow(self, m):
        if m.table_id >= N_TABLES and m.table_id != ofp.OFPTT_ALL:
            raise bad_request(ofp.OFPBRC_BAD_TABLE_ID, f"table {m.table_id}")
        now = time.monotonic()
        for r in self._rules_for(m):
            dur = max(0.0, now - self.of.created.get(id(r), now))
            yield codec.flow_stats(r.table, int(dur), int(dur % 1 * 1e9), r.priority, r.idle_timeout,
                                   r.hard_timeout, flows.rule_flags(r), r.cookie, r.n_packets, r.n_bytes,
                                   flows.rule_match(r), flows.rule_instructions(r))

    def _mp_aggregate(self, m):
        rules = self._rules_for(m)
        yield struct.pack(ofp.OFP_AGGREGATE_STATS_REPLY_PACK_STR, sum(r.n_packets for r in rules),
                          sum(r.n_bytes for r in rules), len(rules))

    def _mp_table(self, m):
        for tid in range(N_TABLES):
            t = self.of.tables.get(tid)
            yield struct.pack(ofp.OFP_TABLE_STATS_PACK_STR, tid, len(t.by_key) if t else 0,
                              t.lookups if t else 0, t.matched if t else 0)

    def _mp_port_desc(self, m):
        for no in sorted(self.ports):
            yield codec.port_bytes(self.ports[no])

    def _mp_port_stats(self, m, replies):
        now = time.monotonic()
        totals = {}
        for msg in (replies or {}).values():
            for p in msg.get("ports", []) if isinstance(msg.get("ports"), list) else []:
                if isinstance(p, dict) and isinstance(p.get("ofport"), int):
                    totals[p["ofport"]] = p
        dur = now - self.started
        for no in sorted(self.ports):
            if m.id != ofp.OFPP_ANY and flows.port_to_flow(m.id) != no:
                continue
            s = totals.get(no, {})
            g = lambda k: s.get(k, 0) if isinstance(s.get(k, 0), int) and 0 <= s.get(k, 0) < 1 << 64 else 0
            yield struct.pack(ofp.OFP_PORT_STATS_PACK_STR, flows.port_to_of(no), g("rx_packets"), g("tx_packets"),
                              g("rx_bytes"), g("tx_bytes"), g("rx_dropped"), g("tx_dropped"), g("rx_errors"),
                              0, 0, 0, 0, 0, int(dur), int(dur % 1 * 1e9))

    def _mp_queue(self, m):
        return iter(())

    def _mp_group_desc(self, m):
        for g in sorted(self.tables.groups.values(), key=lambda g: g.id):
            body = b"".join(codec.serialized(b.raw) for b in g.buckets)
            yield struct.pack(ofp.OFP_GROUP_DESC_STATS_PACK_STR, 8 + len(body), g.type, g.id) + body

    def _mp_group(self, m):
        now = time.monotonic()
        for g in sorted(self.tables.groups.values(), key=lambda g: g.id):
            if m.id not in (ofp.OFPG_ALL, g.id):
                continue
            refs = sum(1 for r in self.of.rules() if ("group", g.id) in r.actions)
            dur = now - g.created
            counters = b"".join(struct.pack(ofp.OFP_BUCKET_COUNTER_PACK_STR, b.n_packets, b.n_bytes) for b in g.buckets)
            yield struct.pack(ofp.OFP_GROUP_STATS_PACK_STR, 40 + len(counters), g.id, refs, g.n_packets, g.n_bytes,
                              int(dur), int(dur % 1 * 1e9)) + counters

    def _mp_group_features(self, m):
        types = sum(1 << t for t in (ofp.OFPGT_ALL, ofp.OFPGT_SELECT, ofp.OFPGT_INDIRECT, ofp.OFPGT_FF))
        caps = ofp.OFPGFC_SELECT_WEIGHT | ofp.OFPGFC_SELECT_LIVENESS | ofp.OFPGFC_CHAINING
        acts = sum(1 << a for a in ACTION_TYPES)
        yield struct.pack(ofp.OFP_GROUP_FEATURES_PACK_STR, types, caps, *[MAX_GROUPS] * 4, *[acts] * 4)

    def _mp_meter_features(self, m):
        caps = ofp.OFPMF_KBPS | ofp.OFPMF_PKTPS | ofp.OFPMF_BURST | ofp.OFPMF_STATS
        yield struct.pack(ofp.OFP_METER_FEATURES_PACK_STR, MAX_METERS, 1 << ofp.OFPMBT_DROP, caps, 1, 0)

    def _mp_meter_config(self, m):
        for mt in sorted(self.tables.meters.values(), key=lambda x: x.id):
            if m.id not in (ofp.OFPM_ALL, mt.id):
                continue
            bands = b"".join(codec.serialized(b) for b in mt.bands)
            yield struct.pack(ofp.OFP_METER_CONFIG_PACK_STR, 8 + len(bands), mt.flags, mt.id) + bands

    def _mp_meter(self, m, replies):
        counts = {}
        for msg in (replies or {}).values():
            for e in msg.get("meters", []) if isinstance(msg.get("meters"), list) else []:
                if isinstance(e, list) and len(e) == 5 and all(isinstance(x, int) for x in e):
                    old = counts.get(e[0], [0, 0, 0, 0])
                    counts[e[0]] = [a + b for a, b in zip(old, e[1:])]
        now = time.monotonic()
        for mt in sorted(self.tables.meters.values(), key=lambda x: x.id):
            if m.id not in (ofp.OFPM_ALL, mt.id):
                continue
            pk, by, dp, db = counts.get(mt.slot, [0, 0, 0, 0])
            nflows = sum(1 for r in self.of.rules() if ("meter", mt.id) in r.actions)
            bands = b"".join(struct.pack(ofp.OFP_METER_BAND_STATS_PACK_STR, dp if i == 0 else 0, db if i == 0 else 0)
                             for i, _ in enumerate(mt.bands))
            dur = now - mt.created
            yield struct.pack(ofp.OFP_METER_STATS_PACK_STR, mt.id, 40 + len(bands), nflows, pk, by, int(dur),
                              int(dur % 1 * 1e9)) + bands

    def _mp_table_features(self, m):
        for tid in range(N_TABLES):
            yield codec.serialized(table_features(tid))

    # -- timers ----------------------------------------------------------------------------------
    def _housekeep(self, now):
        if self.saving is not None:
            try:
                next(self.saving)
            except StopIteration:
                self.saving = None
                # a table that takes long to write is written less often (~5% of the time)
                self.save_every = max(SAVE_EVERY_S, 20 * (time.monotonic() - self.last_save))
            except OSError as e:
                self.saving = None
                self.dirty = True
                self.st["save_errors"] = self.st.get("save_errors", 0) + 1
                print(f"valepipe-slowpath: openflow: cannot save the rules: {e}", file=sys.stderr)
        elif self.dirty and now - self.last_save >= self.save_every:
            self._start_save()
        if self.reval_due is not None and now >= self.reval_due:
            self.reval_due = None
            self.slow.request_revalidation()
        up = any(r.connected() for r in self.remotes)
        if up:
            self.last_connected = now
        if self.fail_mode == "standalone" and self.remotes and not up and self.of.standalone is None \
                and now - self.last_connected >= self.fail_open_after:
            self._fail_open(True)

    def _fail_open(self, on):
        """standalone: with no controller for a while the switch forwards as a learning switch
        (NORMAL), over its rules; a controller's return ends it (Open vSwitch's fail-open)."""
        if on:
            t = Table(0)
            t.insert(Rule(match={}, actions=[("normal",)], priority=0))
            self.of.standalone = {0: t}
            self.st["fail_open"] += 1
            print("valepipe-slowpath: openflow: no controller; standalone: forwarding as a learning switch",
                  file=sys.stderr)
        else:
            self.of.standalone = None
            print("valepipe-slowpath: openflow: a controller is back; its rules apply again", file=sys.stderr)
        self.slow.request_revalidation()

    def stats(self):
        return dict(self.st, errors_by_type=dict(self.errors_by_type), controllers_connected=sum(
            1 for r in self.remotes if r.connected()), connections_open=len(self.conns),
            fail_open_now=self.of.standalone is not None, groups=len(self.tables.groups),
            meters=len(self.tables.meters), datapath_id=f"{self.dpid:#018x}",
            listen_port=self.listener.port if self.listener else None,
            connections_refused=self.listener.refused if self.listener else 0)

    HANDLERS = {ofp.OFPT_ECHO_REQUEST: _echo, ofp.OFPT_FEATURES_REQUEST: _features,
                ofp.OFPT_GET_CONFIG_REQUEST: _get_config, ofp.OFPT_SET_CONFIG: _set_config,
                ofp.OFPT_BARRIER_REQUEST: _barrier, ofp.OFPT_ROLE_REQUEST: _role, ofp.OFPT_GET_ASYNC_REQUEST: _get_async,
                ofp.OFPT_SET_ASYNC: _set_async, ofp.OFPT_FLOW_MOD: _flow_mod, ofp.OFPT_GROUP_MOD: _group_mod,
                ofp.OFPT_METER_MOD: _meter_mod, ofp.OFPT_PORT_MOD: _port_mod, ofp.OFPT_TABLE_MOD: _table_mod,
                ofp.OFPT_PACKET_OUT: _packet_out, ofp.OFPT_MULTIPART_REQUEST: _multipart,
                ofp.OFPT_QUEUE_GET_CONFIG_REQUEST: _queue_config, ofp.OFPT_ERROR: _peer_error}


MULTIPART = {ofp.OFPMP_DESC: Agent._mp_desc, ofp.OFPMP_FLOW: Agent._mp_flow, ofp.OFPMP_AGGREGATE: Agent._mp_aggregate,
             ofp.OFPMP_TABLE: Agent._mp_table, ofp.OFPMP_PORT_DESC: Agent._mp_port_desc,
             ofp.OFPMP_PORT_STATS: Agent._mp_port_stats, ofp.OFPMP_QUEUE: Agent._mp_queue,
             ofp.OFPMP_GROUP_DESC: Agent._mp_group_desc, ofp.OFPMP_GROUP: Agent._mp_group,
             ofp.OFPMP_GROUP_FEATURES: Agent._mp_group_features, ofp.OFPMP_METER_FEATURES: Agent._mp_meter_features,
             ofp.OFPMP_METER_CONFIG: Agent._mp_meter_config, ofp.OFPMP_METER: Agent._mp_meter,
             ofp.OFPMP_TABLE_FEATURES: Agent._mp_table_features}
ACTION_TYPES = (ofp.OFPAT_OUTPUT, ofp.OFPAT_GROUP, ofp.OFPAT_PUSH_VLAN, ofp.OFPAT_POP_VLAN, ofp.OFPAT_SET_FIELD,
                ofp.OFPAT_DEC_NW_TTL, ofp.OFPAT_SET_NW_TTL)
MATCH_FIELDS = [n for i, (n, _, _) in sorted(codec.OXM.items()) if n not in codec.OXM_UNSUPPORTED]
SET_FIELDS = ["eth_dst", "eth_src", "vlan_vid", "vlan_pcp", "ip_dscp", "ipv4_src", "ipv4_dst", "tcp_src", "tcp_dst",
              "udp_src", "udp_dst", "ipv6_src", "ipv6_dst", "metadata"]


def _more(msg):
    """A multipart reply marked as not the last (OFPMPF_REPLY_MORE)."""
    return msg[:10] + struct.pack("!H", ofp.OFPMPF_REPLY_MORE) + msg[12:]


def table_features(tid):
    """What table `tid` supports, as os-ken's OFPTableFeaturesStats."""
    P, T = osk, ofp
    inst = [P.OFPInstructionId(t) for t in (T.OFPIT_GOTO_TABLE, T.OFPIT_WRITE_METADATA, T.OFPIT_APPLY_ACTIONS,
                                            T.OFPIT_CLEAR_ACTIONS, T.OFPIT_METER)]
    if tid == N_TABLES - 1:
        inst = [i for i in inst if i.type != T.OFPIT_GOTO_TABLE]
    acts = [P.OFPActionId(a) for a in ACTION_TYPES]
    oxm = [P.OFPOxmId(n) for n in MATCH_FIELDS]
    props = [P.OFPTableFeaturePropInstructions(type_=T.OFPTFPT_INSTRUCTIONS, instruction_ids=inst),
             P.OFPTableFeaturePropNextTables(type_=T.OFPTFPT_NEXT_TABLES, table_ids=list(range(tid + 1, N_TABLES))),
             P.OFPTableFeaturePropActions(type_=T.OFPTFPT_APPLY_ACTIONS, action_ids=acts),
             P.OFPTableFeaturePropActions(type_=T.OFPTFPT_WRITE_ACTIONS, action_ids=[]),      # no action set
             P.OFPTableFeaturePropOxm(type_=T.OFPTFPT_MATCH, oxm_ids=oxm),
             P.OFPTableFeaturePropOxm(type_=T.OFPTFPT_WILDCARDS, oxm_ids=oxm),
             P.OFPTableFeaturePropOxm(type_=T.OFPTFPT_WRITE_SETFIELD, oxm_ids=[]),
             P.OFPTableFeaturePropOxm(type_=T.OFPTFPT_APPLY_SETFIELD, oxm_ids=[P.OFPOxmId(n) for n in SET_FIELDS])]
    return P.OFPTableFeaturesStats(table_id=tid, name=f"table{tid}".encode(), metadata_match=(1 << 64) - 1,
                                   metadata_write=(1 << 64) - 1, config=0, max_entries=1_000_000, properties=props)


def flow_of_frame(frame, in_port):
    """The slow path's flow of a frame, by the fast path's own extract."""
    from pipeline._native import ffi, lib
    key = ffi.new("struct vp_flow_key *")
    perr = ffi.new("uint64_t[]", lib.VP_PERR_N)
    lib.vp_extract_one(frame, len(frame), 0, key, perr)
    return flow_from_attrs(wire.key_attrs(bytes(ffi.buffer(key)), lambda i: in_port))


def rewritten(frame, actions):
    """The frame as the datapath actions before a controller action left it (sets, VLAN
    pushes and pops run by the fast path's own code)."""
    mods = [a for a in wire.actions_from_wire([list(x) for x in actions]) or () if a[0] in ("set", "push_vlan", "pop_vlan")]
    if not mods:
        return frame
    from pipeline._native import ffi, lib
    from pipeline.datapath import SET_FIELDS as DP_FIELDS
    buf = ffi.new("uint8_t[]", len(frame) + 4 * len(mods) + 64)
    ffi.memmove(buf, frame, len(frame))
    n = len(frame)
    op = ffi.new("struct vp_op *")
    for a in mods:
        ffi.memmove(op, b"\0" * ffi.sizeof("struct vp_op"), ffi.sizeof("struct vp_op"))
        if a[0] == "set":
            if a[1] not in DP_FIELDS:
                continue
            op.kind, op.field = lib.VP_OP_SET, DP_FIELDS[a[1]][0]
            op.value = a[2].to_bytes(16, "big")
            op.mask = a[3].to_bytes(16, "big")
        elif a[0] == "push_vlan":
            op.kind, op.tpid, op.tci = lib.VP_OP_PUSH_VLAN, a[1], a[2]
        else:
            op.kind = lib.VP_OP_POP_VLAN
        cap = len(frame) + 4 * len(mods) + 64
        # one op at a time, with whichever entry point the execute stage has
        n = (lib.vp_op_apply(op, buf, n, cap) if hasattr(lib, "vp_op_apply") else lib.vp_ops_apply(op, 1, buf, n, cap)) or n
    return bytes(ffi.buffer(buf, n))
