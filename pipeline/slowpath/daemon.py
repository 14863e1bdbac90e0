"""The slow-path process: answers each worker's upcall batches with flows to install and
packets to execute. It trusts no message: every field is checked, bad ones are counted
and answered with an error, and one bad worker never stops the others. It never blocks
on one client: writes are queued per client, long translations and rule loads pause
between steps to serve the control socket, and every worker hears from it each second. A
translation that fails is answered with a drop and an error, counted (`xlate_errors`) and
logged once; the process keeps serving."""
import argparse
import json
import os
import time
import signal
import socket
import sys
from collections import OrderedDict

import msgpack

from pipeline import channel, config, control, hostos, rundir
from pipeline.slowpath.fields import flow_from_attrs
from pipeline.slowpath.flowtext import FlowError, format_rule, parse_flow
from pipeline.slowpath import ofctl
from pipeline.slowpath.ofproto import OFProto

RECENT_FLOWS = 65536
MAX_CLIENTS = 8               # connections to the slow-path socket (its worker's, and a successor's)
HELLO_S = 5.0                 # a connection silent this long after connecting is not a worker: dropped
KEEPALIVE_S = 1.0             # a worker that hears nothing for a few of these restarts us
SERVICE_S = 0.02              # longest stretch of translation between two turns of the control socket
MAX_CLIENT_OUT = 64 << 20     # replies queued for a worker that does not read: past it, dropped
MAX_RULES_REQUEST = 256 << 20 # add-flows of a few hundred thousand rules in one request
STEP_RULES = ofctl.STEP_RULES # rules parsed, inserted or written per step of a large rule change
LOAD_TURN_S = 0.05            # the start-up load works this long per turn of the loop
STATE_EVERY_S = 1.0          # rule counters written to rules.state at most this often
MAX_RULES_FILE = 1 << 30
MACS_SAVE_S = 1.0             # NORMAL's MAC table is saved at most this often (and at exit)
FORGET_MACS = 8               # MAC changes per upcall the workers act on at once; more: revalidation
LOGGED_ERRORS = 256           # distinct translation errors logged (each once)
# test-only fault injection: translating a flow that matches this ovs-ofctl match raises
FAULT_ENV = "VALEPIPE_SLOWPATH_FAULT"
RULES_HEADER = "# valepipe slow-path rules (ovs-ofctl syntax), rewritten on every change;\n" \
               "# a restarted slow path of this pipeline loads them instead of the config's flows\n"


class Client:
    def __init__(self, sock):
        self.sock = sock
        sock.setblocking(False)
        self.unpacker = channel.unpacker()
        self.recent = OrderedDict()         # upcall id -> actions, for packets of pending flows
        self.worker = None
        self.out = bytearray()              # encoded messages the socket has not taken yet
        self.gone = False
        self.reval_acked = 0                # the last revalidate_request seq whose round it finished
        self.cached = None                  # flows it caches, as of then (None: some, or unknown)
        self.since = time.monotonic()
        self.greeted = False                # it said hello (a worker)


class SlowPath:
    name = "valepipe"                   # the pipeline's name, the bridge `trace` shows

    def __init__(self, ofproto, rules_file=None, macs_file=None):
        self.ofproto = ofproto
        self.rules_file = rules_file
        self.state_file = rules_file and os.path.join(os.path.dirname(rules_file), "rules.state")
        # OpenFlow's groups and meters (the group_mods/meter_mods that made them), kept with
        # the rules that name them
        self.tables_file = rules_file and os.path.join(os.path.dirname(rules_file), "openflow.tables")
        self.macs_file = macs_file
        self.st = dict(upcalls=0, flows=0, packets=0, bad_messages=0, unknown_flow_packets=0, slow_flows=0,
                       revalidated=0, rule_changes=0, rules_saved=0, rules_save_errors=0, state_saved=0,
                       state_save_errors=0, changes_refused=0, xlate_errors=0, macs_saved=0, macs_save_errors=0)
        self.counted = False        # rule counters moved since rules.state was written
        self.last_state = 0.0
        self.state_every = STATE_EVERY_S
        self.owner = lambda: True   # serve() tells: is this still the pipeline's slow path
        self.clients = {}
        self.ctl = None             # the control server, served between translation steps too
        self.changing = False       # a rule change is under way (in steps): the next one waits
        self.loading = None         # the start-up load while it runs (a generator; see load)
        self.loaded_at = 0.0
        self.macs_seen = 0          # MAC table change count last revalidated for
        self.agent = None           # the OpenFlow agent, with an [openflow] config
        self.reval_seq = 0          # revalidate_requests sent, numbered; workers say when each is done
        self.reval_sent = {}        # seq -> when it was sent (recent ones)
        self.macs_saved = 0         # ... and last saved
        self.last_reval = self.last_expire = self.last_macs_save = 0.0
        self.last_keepalive = self.last_service = 0.0
        self.logged = set()
        self.fault = None
        if os.environ.get(FAULT_ENV):
            self.fault = parse_flow(os.environ[FAULT_ENV], mode="match").match

    # -- control requests (valepipe add-flow / del-flows / mod-flows / dump-flows) -------------
    def control_handlers(self):
        # rule changes and dumps run in steps of STEP_RULES rules: upcalls are answered
        # while a large set loads
        def add_flows(req):
            texts = req.get("flows")
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise ValueError("add-flows takes a list of flow strings")
            rules = []                                 # all or nothing: every rule parses first

            def parse(t):
                rules.append(parse_flow(t))
                self.ofproto.check_references(rules[-1].actions)
            yield from ofctl.in_steps(texts, parse)

            def add_all():
                yield from ofctl.in_steps(rules, self.ofproto.add_flow)
                return len(rules)
            return (yield from self.change(add_all()))

        of = self.ofproto

        def stepped(fn):
            """A change made in steps by ofctl (del-flows, mod-flows, replace-flows)."""
            def run(req):
                return (yield from self.change(fn(of, req)))
            return run

        def dump(show):
            """A dump streamed STEP_RULES rules at a time; it shows what a restart keeps."""
            def run(req):
                while self.loading:                     # the rules a restart keeps are still loading
                    yield None
                self.save_state()
                rules = show(req)
                for k in range(0, len(rules), STEP_RULES):
                    yield rules[k:k + STEP_RULES]
                return []                       # the result when there was nothing to stream
            return run

        def dump_rules(req):
            now = time.monotonic()
            rules = ofctl.selected(of, _text(req, "match"), req.get("strict") is True)
            return _Rendered(rules, lambda r: ofctl.rule_data(of, r, now))

        def trace(req):
            from pipeline.slowpath.trace import render, trace_input
            return render(self.ofproto, trace_input(_text(req, "flow")), bridge=self.name)[0]

        return {"add-flows": _errors(add_flows), "trace": _errors(trace),
                "del-flows": _errors(stepped(ofctl.delete)), "mod-flows": _errors(stepped(ofctl.modify)),
                "dump-flows": dump(lambda req: _Rendered(list(of.rules()), lambda r: of.dump([r])[0])),
                "fdb-show": lambda req: self.ofproto.macs.show(),
                "fdb-flush": lambda req: self.fdb_flush(),
                "stats": lambda req: dict(self.st, **self.ofproto.st, rules_loading=self.loading is not None,
                                          **({"openflow": self.agent.stats()} if self.agent else {})),
                # ovs-ofctl habits (pipeline/slowpath/ofctl.py): filters, --strict, replace, batch trace
                "dump-rules": _errors(dump(dump_rules)),
                "replace-flows": _errors(stepped(ofctl.replace)),
                "trace-many": _errors(lambda req: ofctl.trace(self, req))}

    def handle(self, client, msg):
        t = channel.check(msg)
        if t == "hello":
            client.greeted = True
            client.worker = msg.get("worker")
            ports = msg.get("ports")
            if isinstance(ports, list):
                ports = [p for p in ports if isinstance(p, dict)]
                self.ofproto.set_ports([p["ofport"] for p in ports if isinstance(p.get("ofport"), int)])
                # a deleted port's MACs go with it: a host that comes back on another port
                # is flooded to, not sent to the old one, until it speaks again
                numbered = [(p.get("kind") == "removed", p["port"]) for p in ports if type(p.get("port")) is int]
                gone = {n for removed, n in numbered if removed} - {n for removed, n in numbered if not removed}
                if self.ofproto.macs.forget_ports(gone):
                    self.macs_changed()
                if self.agent:
                    self.agent.ports_changed(ports)
            if self.agent:
                self.agent.push_meters([client])
                self.request_revalidation()         # its cached flows' counters, as of now
            return None
        if t == "revalidate":
            return self.revalidate(msg)
        if t == "revalidated":
            if isinstance(msg.get("seq"), int) and msg["seq"] > client.reval_acked:
                client.reval_acked = msg["seq"]
                client.cached = msg.get("cached") if type(msg.get("cached")) is int else None
            return None
        if t == "stats_reply":
            if self.agent:
                self.agent.stats_reply(client, msg)
            return None
        if t != "upcall":
            raise channel.ChannelError(f"a worker does not send {t!r}")
        flows, pkts = msg.get("flows", []), msg.get("packets", [])
        if not isinstance(flows, list) or not isinstance(pkts, list):
            raise channel.ChannelError("upcall: flows and packets must be arrays")
        self.st["upcalls"] += 1
        self.counted = True                           # rules hit (used), packets counted
        out_flows, execute = [], []
        for f in flows:
            if not (isinstance(f, dict) and isinstance(f.get("id"), int) and isinstance(f.get("key"), dict)):
                raise channel.ChannelError("upcall: a flow needs an integer id and a key map")
            self.between()
            reply, res = self.translate(f, may_learn=True)
            # wire forms; the packet-ins' OpenFlow context (table, cookie, max_len) beside them
            # the rules, groups and buckets it went through: packets handled here are credited to them
            client.recent[f["id"]] = (reply["actions"], (res.rules + res.groups) if res else [],
                                      res.packet_ins if res else [])
            if len(client.recent) > RECENT_FLOWS:
                client.recent.popitem(last=False)
            if res and not channel.fast_path_runs(res.actions):
                self.st["slow_flows"] += 1
            out_flows.append(reply)
        self.st["flows"] += len(flows)
        if out_flows:
            client.cached = None                      # it may cache these
        for p in pkts:
            if not (isinstance(p, list) and len(p) in (3, 4) and isinstance(p[0], int) and isinstance(p[2], bytes)
                    and (len(p) == 3 or isinstance(p[3], bytes))):
                raise channel.ChannelError("upcall: a packet is [flow id, in_port, bytes] or with its offload "
                                           "metadata [flow id, in_port, bytes, offload]")
            actions, rules, pins = client.recent.get(p[0], (None, (), ()))
            if actions is None:
                self.st["unknown_flow_packets"] += 1
                continue
            for r in rules:
                r.n_packets += 1
                r.n_bytes += len(p[2])
            rest = []
            for i, a in enumerate(actions):
                if a[0] == "controller":
                    pin = next((x for x in pins if x["at"] == i), None)
                    self.ofproto.packet_in(p[1], a[1], p[2], pin, actions[:i])
                    # OVS's userspace datapath parses the packet anew after a userspace()
                    # action: later rewrites take their offsets from that parse
                    rest.append(["reparse"])
                else:
                    rest.append(a)
            rest = _drop_idle_reparses(rest)
            if any(a[0] == "controller" for a in actions) and not any(a[0] == "output" for a in rest):
                continue                              # consumed by the controller queue, counted there
            # a drop comes back too (the fast path counts it), with its offload metadata (GSO,
            # partial checksum: for the fast path to apply at output, or nil) and the port it
            # came in on (the worker settles each packet it sent up by port)
            execute.append([rest, p[2], p[3] if len(p) > 3 else None, p[1]])
        self.st["packets"] += len(execute)
        reply = {"v": channel.VERSION, "t": "upcall_reply", "flows": out_flows, "execute": execute}
        if self.ofproto.macs.changes != self.macs_seen:
            forget = self.macs_changed()
            if forget:
                # this worker applies it after installing this reply's flows, which may
                # have been translated before the MAC was learned
                reply["forget_macs"] = forget
        return reply

    def macs_changed(self):
        """NORMAL learned or moved MACs: every worker drops what it cached to and from them
        (when there are few) and rechecks all it cached. Returns the MACs to forget."""
        changed = self.ofproto.macs.take_changed()
        forget = [[m.to_bytes(6, "big"), -1 if port is None else port] for m, port in sorted(changed.items())] \
            if len(changed) <= FORGET_MACS else []
        self.request_revalidation(forget)
        return forget

    def translate(self, f, may_learn=False):
        """(reply entry, xlate Result) for one flow of an upcall or a revalidation; a
        translation that raises, or gives what the channel cannot carry, is answered
        with a drop and an error (and None for the result), counted and logged once."""
        try:
            if self.fault is not None and self._fault_hit(f["key"]):
                raise RuntimeError(f"injected translation fault ({FAULT_ENV})")
            # an upcall's rules are used now; revalidation says so itself, for flows with packets
            res = self.ofproto.translate(f["key"], may_learn=may_learn, touch=may_learn is True)
            entry = {"id": f["id"], "actions": channel.actions_to_wire(res.actions),
                     "mask": channel.mask_to_wire(res.wc)}
            if not channel.actions_ok(entry["actions"]) or channel.mask_from_wire(entry["mask"]) is None:
                raise ValueError(f"translation gave what the channel cannot carry: {res.actions}"[:300])
            return entry, res
        except Exception as e:                       # one bad translation never stops the switch
            why = f"{type(e).__name__}: {e}"[:300]
            self.st["xlate_errors"] += 1
            self._log_once(why, f"translation failed ({why}) for flow {_describe(f['key'])}; "
                                "answered with drop (counted as xlate_errors)")
            return {"id": f["id"], "actions": [["drop"]], "error": why}, None

    def internal_error(self, e):
        """A message whose handling failed outside any one translation: counted, logged once,
        answered with an error (the worker's pending flows then time out and ask again)."""
        why = f"{type(e).__name__}: {e}"[:300]
        self.st["internal_errors"] = self.st.get("internal_errors", 0) + 1
        self._log_once(why, f"internal error answering a worker ({why}); still serving")
        return {"v": channel.VERSION, "t": "error", "error": why}

    def _log_once(self, why, line):
        if why not in self.logged and len(self.logged) < LOGGED_ERRORS:
            self.logged.add(why)
            print(f"valepipe-slowpath: {line}", file=sys.stderr, flush=True)

    def _fault_hit(self, key):
        flow = flow_from_attrs(key)
        return all(flow.get(k, 0) & m == v for k, (v, m) in self.fault.items())


    def change(self, steps):
        """Make a rule change durable or not at all: applied (by the generator `steps`, a
        step at a time), then saved; if the save fails (disk full, ...) the tables go back
        to what they were (in steps too) and the request fails. One change at a time."""
        while self.changing:
            yield None
        self.changing = True
        self.ofproto.begin()
        try:
            n = yield from steps
            yield from self.save_rules_steps()
        except Exception as e:
            yield from self.ofproto.rollback_steps(STEP_RULES)
            # upcalls answered while it was half made: what they cached is checked again
            self.request_revalidation()
            if not isinstance(e, OSError):
                raise
            self.st["changes_refused"] += 1
            raise control.RequestFailed(f"cannot save the rules to {self.rules_file}: {e.strerror or e}; "
                                        "the change was not made") from None
        except BaseException:                   # closed (GeneratorExit): no more steps
            self.ofproto.rollback()
            raise
        finally:
            self.changing = False
        self.ofproto.commit()
        self.st["rule_changes"] += 1
        self.request_revalidation()
        return n

    def load(self, texts, source, with_state):
        """Start loading the rules `texts` (text, or rules parsed already; from `source`) in steps that serve() runs between
        turns of its loop: the worker connects at once and hears keepalives while a large
        set loads (upcalls wait in the socket until it is done), so a restart with 100,000
        rules is never taken for a hang. with_state: counters and times from rules.state.
        A rule that does not parse ends the process (status 2), as before it served."""
        def steps():
            self.changing = True                # a rule change waits for the load
            try:
                def add(t):
                    try:
                        self.ofproto.add_flow(parse_flow(t) if isinstance(t, str) else t)
                    except FlowError as e:
                        print(f"valepipe-slowpath: {source}: {e}", file=sys.stderr, flush=True)
                        raise SystemExit(2) from None
                yield from ofctl.in_steps(texts, add)
                if with_state:
                    # each rule's match text (what rules.state names it by) made in steps
                    rules = list(self.ofproto.rules())
                    for k in range(0, len(rules), STEP_RULES):
                        self.ofproto.rule_state(rules[k:k + STEP_RULES])
                        yield None
                    self.load_state()
                try:
                    yield from self.save_rules_steps()
                except OSError as e:
                    print(f"valepipe-slowpath: cannot save the rules (at start) to {self.rules_file}: "
                          f"{e.strerror or e}", file=sys.stderr)
            finally:
                self.changing = False
        self.loading = steps()

    def load_turn(self):
        """A turn's worth of the start-up load."""
        end = time.monotonic() + LOAD_TURN_S
        while self.loading is not None and time.monotonic() < end:
            if next(self.loading, StopIteration) is StopIteration:
                self.loading, self.loaded_at = None, time.monotonic()

    def save_rules(self):
        """The rule tables as ovs-ofctl text (rules.flows) and their counters and times
        (rules.state), rewritten atomically and synced on every change, so a slow path
        restarted after a crash comes back with the rules it had. Raises OSError."""
        for _ in self.save_rules_steps():
            pass

    def save_rules_steps(self):
        """save_rules, the rules formatted STEP_RULES at a time (a generator)."""
        if not self.rules_file:
            return
        if not self.owner():
            raise OSError(f"{self.rules_file} belongs to a newer slow path of this pipeline")
        parts, state, rules = [RULES_HEADER], [], list(self.ofproto.rules())
        for k in range(0, len(rules), STEP_RULES):
            parts.extend(format_rule(r) + "\n" for r in rules[k:k + STEP_RULES])
            state += self.ofproto.rule_state(rules[k:k + STEP_RULES])
            yield None
        text = "".join(parts)
        files = {self.rules_file: text.encode(),
                 self.state_file: msgpack.packb({"v": 1, "rules": state}, use_bin_type=True)}
        made = getattr(self.ofproto.ext, "made", None)
        if made is not None:
            files[self.tables_file] = msgpack.packb({"v": 1, **made}, use_bin_type=True)
        try:
            rundir.write_files(files)
        except OSError:
            self.st["rules_save_errors"] += 1
            raise
        self.st["rules_saved"] += 1
        self.counted, self.last_state = False, time.monotonic()

    def save_state(self):
        """Rule counters to rules.state, if they moved since it was written."""
        if not (self.counted and self.state_file and self.owner()):
            return
        t0 = self.last_state = time.monotonic()
        self.counted = False
        try:
            rundir.write_files({self.state_file: self._state()})
            self.st["state_saved"] += 1
            # large tables: at most ~5% of the slow path's time goes to saving counters
            self.state_every = max(STATE_EVERY_S, 20 * (time.monotonic() - t0))
        except OSError as e:
            self.counted = True
            self.st["state_save_errors"] += 1
            if self.st["state_save_errors"] == 1:
                print(f"valepipe-slowpath: cannot save rule counters to {self.state_file}: {e.strerror or e}",
                      file=sys.stderr)

    def load_state(self):
        """Counters and times of the rules loaded from rules.flows, as rules.state kept
        them: a restart does not reset them, nor the clock of their timeouts."""
        try:
            raw = rundir.read_own(self.state_file, MAX_RULES_FILE)
            if raw is None:
                return
            doc = msgpack.unpackb(raw, raw=False, strict_map_key=False)
            if not (isinstance(doc, dict) and doc.get("v") == 1 and isinstance(doc.get("rules"), list)):
                raise ValueError("not a rules.state of this version")
            self.st["state_restored"] = self.ofproto.restore_rule_state(doc["rules"])
        except (OSError, ValueError) as e:
            print(f"valepipe-slowpath: {self.state_file}: {e}; rule counters start from zero", file=sys.stderr)

    def load_openflow_tables(self):
        """The groups and meters saved with the rules: {"groups": {id: message}, "meters":
        {...}}, or None (none saved, or a file that is not one: said once)."""
        if not self.tables_file:
            return None
        try:
            raw = rundir.read_own(self.tables_file, MAX_RULES_FILE)
            if raw is None:
                return None
            doc = msgpack.unpackb(raw, raw=False, strict_map_key=False)
            if not (isinstance(doc, dict) and doc.get("v") == 1 and all(
                    isinstance(doc.get(k), dict) and all(isinstance(i, int) and isinstance(m, bytes)
                                                         for i, m in doc[k].items()) for k in ("groups", "meters"))):
                raise ValueError("not an openflow.tables of this version")
            return doc
        except (OSError, ValueError, msgpack.exceptions.ExtraData) as e:
            print(f"valepipe-slowpath: {self.tables_file}: {e}; groups and meters start empty", file=sys.stderr)
            return None

    def _state(self):
        return msgpack.packb({"v": 1, "rules": self.ofproto.rule_state()}, use_bin_type=True)

    def try_save_rules(self, why):
        try:
            self.save_rules()
        except OSError as e:
            print(f"valepipe-slowpath: cannot save the rules ({why}) to {self.rules_file}: {e.strerror or e}",
                  file=sys.stderr)

    def request_revalidation(self, forget_macs=(), flush=False):
        """Workers re-translate what they cached (after rules or MAC entries changed), having
        first dropped what they cached to or from `forget_macs` (everything: `flush`), and
        push its counters to the rules; returns the request's seq (revalidated_through)."""
        self.macs_seen = self.ofproto.macs.changes
        self.last_reval = time.monotonic()
        self.reval_seq += 1
        self.reval_sent[self.reval_seq] = self.last_reval
        if len(self.reval_sent) > 4096:
            acked = min((cl.reval_acked for cl in self.clients.values()), default=self.reval_seq)
            self.reval_sent = {k: v for k, v in self.reval_sent.items() if k >= acked}
        msg = {"v": channel.VERSION, "t": "revalidate_request", "seq": self.reval_seq}
        if forget_macs:
            msg["forget_macs"] = list(forget_macs)
        if flush:
            msg["flush"] = True
        for cl in list(self.clients.values()):
            self.send(cl, msg)
        return self.reval_seq

    def revalidated_through(self, seq):
        """Every worker has rechecked its cached flows since request `seq` was sent."""
        return all(cl.reval_acked >= seq for cl in self.clients.values())

    def caches_empty(self):
        """No worker caches a flow (a rule change then needs no revalidation to be in effect)."""
        return all(cl.cached == 0 for cl in self.clients.values())

    def stats_fresh(self):
        """The moment up to which every worker's flow counters have reached the rules."""
        if not self.clients:
            return time.monotonic()
        return min(self.reval_sent.get(cl.reval_acked, 0.0) for cl in self.clients.values())

    # -- clients: queued writes, never blocking ----------------------------------------------
    def send(self, cl, msg):
        if cl.gone:
            return
        cl.out += channel.encode(msg)
        self.flush(cl)
        if len(cl.out) > MAX_CLIENT_OUT:
            self.st["clients_dropped"] = self.st.get("clients_dropped", 0) + 1
            self.drop(cl)                 # it reads nothing: it sees the channel go down

    def flush(self, cl):
        while cl.out and not cl.gone:
            try:
                n = cl.sock.send(cl.out[:1 << 20])
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return self.drop(cl)
            del cl.out[:n]

    def drop(self, cl):
        if not cl.gone:
            cl.gone = True
            self.clients.pop(cl.sock, None)
            cl.sock.close()

    def accept(self, ls):
        """Take the connections waiting; only the pipeline's worker should hold one: past
        MAX_CLIENTS (a worker and its successor, with room to spare) they are refused, and a
        client that has not said hello within HELLO_S is dropped, so idle connections can
        neither use up the process's descriptors nor keep the worker out."""
        for _ in range(64):
            try:
                c, _ = ls.accept()
            except OSError:
                return
            if len(self.clients) >= MAX_CLIENTS:
                c.close()
                self.st["clients_refused"] = self.st.get("clients_refused", 0) + 1
                self._log_once("too many clients", f"more than {MAX_CLIENTS} connections to the slow-path socket "
                                                   "(only the worker should connect): extra ones refused "
                                                   "(counted as clients_refused)")
                continue
            self.clients[c] = Client(c)

    def drop_silent(self):
        """Connections that never said hello: not a worker, or a stuck one."""
        if self.loading:
            return                          # nothing is read while the rules load
        old = time.monotonic() - HELLO_S
        for cl in [cl for cl in self.clients.values() if not cl.greeted and max(cl.since, self.loaded_at) < old]:
            self.st["clients_silent"] = self.st.get("clients_silent", 0) + 1
            self.drop(cl)

    def read(self, cl):
        """Answer what a worker sent; a message that breaks the protocol ends its channel."""
        try:
            data = cl.sock.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            return self.drop(cl)
        try:
            cl.unpacker.feed(data)
            for msg in cl.unpacker:
                try:
                    reply = self.handle(cl, msg)
                except channel.ChannelError:
                    raise
                except Exception as e:              # a bug of ours: answer, count, keep serving
                    reply = self.internal_error(e)
                if cl.gone:
                    return
                if reply is not None:
                    self.send(cl, reply)
        except (channel.ChannelError, ValueError, TypeError) as e:
            self.st["bad_messages"] += 1
            why = str(e) if isinstance(e, channel.ChannelError) else f"malformed msgpack ({type(e).__name__}: {e})"
            self.send(cl, {"v": channel.VERSION, "t": "error", "error": why})
            self.flush(cl)
            self.drop(cl)

    def service(self, advance=True):
        """A turn of everything but reading upcalls: timers, keepalives, queued writes and the
        control socket (with advance, a step of a long change or dump too). Between two
        translations as well, so none of them waits on an upcall."""
        now = time.monotonic()
        self.last_service = now
        if self.loading is not None and advance:
            self.load_turn()
        self.housekeep()
        if now - self.last_keepalive >= KEEPALIVE_S:
            self.last_keepalive = now
            for cl in list(self.clients.values()):
                self.send(cl, {"v": channel.VERSION, "t": "echo"})
        for cl in list(self.clients.values()):
            self.flush(cl)
        if self.ctl:
            self.ctl.poll(budget_s=0.005, advance=advance)

    def between(self):
        # long control work goes on between upcall batches, not inside one
        if time.monotonic() - self.last_service >= SERVICE_S:
            self.service(advance=False)

    def housekeep(self):
        """Rule timeouts and MAC aging once a second; MAC table changes revalidate at once,
        and the table is saved (at most once a second) for a restarted slow path."""
        now = time.monotonic()
        if now - self.last_expire >= 1.0:
            self.last_expire = now
            self.drop_silent()
            self.ofproto.macs.expire()
            fresh = self.stats_fresh() if self.agent else None
            if self.ofproto.expire(fresh=fresh):
                self.try_save_rules("after rules timed out")
                self.request_revalidation()           # what the expired rules did must go
            elif getattr(self.ofproto, "idle_unsure", False):
                self.request_revalidation()           # idle by the counters it has: fresh ones first
        if self.counted and now - self.last_state >= self.state_every:
            self.save_state()
        if self.ofproto.macs.changes != self.macs_seen:
            self.macs_changed()
        if self.ofproto.macs.changes != self.macs_saved and now - self.last_macs_save >= MACS_SAVE_S:
            self.save_macs()

    def fdb_flush(self):
        """Forget every learned MAC (ovs-appctl fdb/flush): workers drop every cached flow,
        so traffic that was cached reaches NORMAL again and is learned anew."""
        n = len(self.ofproto.macs.entries)
        self.ofproto.macs.entries.clear()
        self.ofproto.macs.take_changed()
        self.ofproto.macs.changes += 1
        self.request_revalidation(flush=True)
        self.save_macs()
        return n

    def save_macs(self):
        """NORMAL's MAC table, with ages, beside the rules (written atomically)."""
        self.macs_saved, self.last_macs_save = self.ofproto.macs.changes, time.monotonic()
        if not (self.macs_file and self.owner()):
            return
        try:
            rundir.write_files({self.macs_file: json.dumps(self.ofproto.macs.snapshot()).encode()})
            self.st["macs_saved"] += 1
        except OSError as e:
            self.st["macs_save_errors"] += 1
            if self.st["macs_save_errors"] == 1:
                print(f"valepipe-slowpath: cannot save the MAC table to {self.macs_file}: {e.strerror or e}",
                      file=sys.stderr)

    def load_macs(self):
        """NORMAL's MAC table as a slow path before this one left it, aged since."""
        try:
            raw = rundir.read_own(self.macs_file, MAX_RULES_FILE)
            if raw is not None:
                self.st["macs_restored"] = self.ofproto.macs.restore(json.loads(raw))
        except (OSError, ValueError) as e:
            print(f"valepipe-slowpath: {self.macs_file}: {e}; NORMAL's MAC table starts empty", file=sys.stderr)
        self.macs_saved = self.ofproto.macs.changes

    def revalidate(self, msg):
        flows = msg.get("flows", [])
        if not isinstance(flows, list):
            raise channel.ChannelError("revalidate: flows must be an array")
        out = []
        self.counted = True
        for f in flows:
            if not (isinstance(f, dict) and isinstance(f.get("id"), int) and isinstance(f.get("key"), dict)):
                raise channel.ChannelError("revalidate: a flow needs an integer id and a key map")
            packets = _count(f.get("packets"))
            # a flow that carried packets since the last round keeps the MAC entry of its
            # source alive, as Open vSwitch's revalidators do with the statistics they push;
            # one through NORMAL that would learn something new is not kept cached
            entry, res = self.translate(f, may_learn="refresh" if packets else "check")
            if res is not None and res.relearn:
                entry["uncache"] = True              # its next packet comes here and is learned
            for r in res.rules if res else ():        # stats go to the rules that produced the flow
                r.n_packets += packets
                r.n_bytes += _count(f.get("bytes"))
                if packets:
                    r.used = time.monotonic()
            for g in res.groups if res else ():       # and to the groups and buckets it went through
                g.n_packets += packets
                g.n_bytes += _count(f.get("bytes"))
            out.append(entry)
        self.st["revalidated"] += len(out)
        return {"v": channel.VERSION, "t": "revalidate_reply", "flows": out}


def _drop_idle_reparses(actions):
    """A reparse matters only to the rewrites after it, up to the next one."""
    out, rewrites = [], False
    for a in reversed(actions):
        if a[0] == "reparse":
            if not rewrites:
                continue
            rewrites = False
        elif a[0] == "set":
            rewrites = True
        out.append(a)
    return out[::-1]


def _describe(key):
    from pipeline.slowpath.trace import describe_flow
    try:
        return describe_flow(flow_from_attrs(key))
    except Exception:                                   # the key may be what broke translation
        return repr(key)[:200]


def _count(v):
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 63 else 0


def _text(req, key):
    v = req.get(key, "")
    if not isinstance(v, str) or len(v) > 65536:
        raise ValueError(f"{key} must be a flow string")
    return v


class _Rendered:
    """Rules rendered only when a slice of them is taken (a dump streams in slices)."""

    def __init__(self, rules, render):
        self.rules, self.render = rules, render

    def __len__(self):
        return len(self.rules)

    def __getitem__(self, part):
        return [self.render(r) for r in self.rules[part]]


def _errors(fn):
    """Turn a bad rule into an error reply that says why."""
    def run(req):
        try:
            return fn(req)
        except FlowError as e:
            raise ValueError(str(e)) from None
    return run


def serve(path, slow, stop=lambda: False, control_path=None):
    ctl = control.ControlServer(control_path, slow.control_handlers(), max_request=MAX_RULES_REQUEST) \
        if control_path else None
    slow.ctl = ctl
    ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ident = rundir.bind_unix(ls, path)
    ls.listen(16)
    ls.setblocking(False)
    # the pipeline's slow path while the socket at `path` is ours: one that was stopped and
    # resumed after its worker started another finds a successor's socket there, and goes
    slow.owner = lambda: rundir.is_own(path, ident)
    clients = slow.clients
    next_check = 0.0
    try:
        while not stop():
            agent = slow.agent
            wl = [s for s, c in clients.items() if c.out] + (ctl.writers() if ctl else []) \
                + (agent.writers() if agent else [])
            busy = (ctl and ctl.busy()) or (agent and agent.busy()) or slow.loading
            r, _ = hostos.ready([ls] + list(clients) + (ctl.fds() if ctl else []) + (agent.fds() if agent else []),
                                wl, 0 if busy else 0.05)
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + 1.0
                if not slow.owner():
                    print(f"valepipe-slowpath: {path} is no longer mine (a newer slow path took over); exiting",
                          file=sys.stderr)
                    break
            slow.service()
            if ls in r:
                slow.accept(ls)
            for s in r if slow.loading is None else ():     # upcalls wait for the rules
                cl = clients.get(s)
                if cl is not None:
                    slow.read(cl)
            if agent:
                agent.poll(set(r))
    finally:
        if slow.agent:
            slow.agent.close()
        slow.save_state()
        slow.save_macs()
        for cl in list(clients.values()):
            slow.drop(cl)
        ls.close()
        if ctl:
            ctl.close()
        rundir.unlink_own(path, ident)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="valepipe-slowpath", description="valepipe slow-path daemon")
    ap.add_argument("--socket", required=True, help="unix socket path to listen on")
    ap.add_argument("--config", help="pipeline config whose [slowpath] flows to load")
    ap.add_argument("--name", default="valepipe", help="the pipeline's name (trace shows it as the bridge)")
    ap.add_argument("--control", help="control socket for add-flow/del-flows/mod-flows/dump-flows "
                                      "(default: slowpath.ctl beside --socket)")
    ap.add_argument("--rules", help="file the rules are kept in across restarts (default: rules.flows "
                                    "beside --socket); when it exists it is loaded instead of the config's flows")
    ap.add_argument("--macs", help="file NORMAL's MAC table is kept in across restarts (default: macs.json "
                                   "beside --socket)")
    a = ap.parse_args(argv)
    here = os.path.dirname(os.path.abspath(a.socket))
    rules_file = os.path.abspath(a.rules or os.path.join(here, "rules.flows"))
    macs_file = os.path.abspath(a.macs or os.path.join(here, "macs.json"))
    source = rules_file
    try:
        for d in {here, os.path.dirname(rules_file)}:
            rundir.check(d)                           # nothing of another user's is loaded or written
        text = rundir.read_own(rules_file, MAX_RULES_FILE)
        if text is not None:
            flows = [ln.strip() for ln in text.decode("utf-8", "replace").splitlines()
                     if ln.strip() and not ln.lstrip().startswith("#")]
        else:
            # the config's rules (at most 1 MiB of them) are checked before serving: a first
            # start with a bad one is refused (rules.flows, which can be far larger, loads in steps)
            flows, source = (config.load(a.config).flows if a.config else []), a.config
            flows = [parse_flow(f) for f in flows]
    except (config.ConfigError, FlowError, OSError, rundir.RunDirError) as e:
        print(f"valepipe-slowpath: {source}: {e}", file=sys.stderr)
        sys.exit(2)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    ctl = a.control or os.path.join(here, "slowpath.ctl")
    slow = SlowPath(OFProto(), rules_file, macs_file)
    slow.name = a.name
    openflow = None
    try:
        openflow = config.load(a.config).openflow if a.config else None
        if openflow:
            from pipeline.slowpath.openflow.agent import Agent   # os-ken only when asked for
            slow.agent = Agent(slow, openflow, a.name)
    except (config.ConfigError, OSError) as e:
        where = f" listen {openflow['listen']!r}" if isinstance(e, OSError) and openflow and openflow.get("listen") else ""
        print(f"valepipe-slowpath: {a.config}: [openflow]{where}: {e.strerror if isinstance(e, OSError) and e.strerror else e}",
              file=sys.stderr)
        sys.exit(2)
    slow.load_macs()
    slow.load(flows, source, with_state=text is not None)
    serve(a.socket, slow, stop=lambda: bool(stopping), control_path=ctl)
