"""The slow-path process: answers each worker's upcall batches with flows to install and
packets to execute. It trusts no message: every field is checked, bad ones are counted
and answered with an error, and one bad worker never stops the others. A translation
that fails is answered with a drop and an error, counted (`xlate_errors`) and logged
once; the process keeps serving."""
import argparse
import json
import os
import time
import select
import signal
import socket
import sys
from collections import OrderedDict

from pipeline import channel, config, control
from pipeline.slowpath.fields import flow_from_attrs
from pipeline.slowpath.flowtext import FlowError, format_rule, parse_actions, parse_flow
from pipeline.slowpath.ofproto import OFProto

RECENT_FLOWS = 65536
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
        self.unpacker = channel.unpacker()
        self.recent = OrderedDict()         # upcall id -> actions, for packets of pending flows
        self.worker = None


class SlowPath:
    def __init__(self, ofproto, rules_file=None, macs_file=None):
        self.ofproto = ofproto
        self.rules_file = rules_file
        self.macs_file = macs_file
        self.st = dict(upcalls=0, flows=0, packets=0, bad_messages=0, unknown_flow_packets=0, slow_flows=0,
                       revalidated=0, rule_changes=0, xlate_errors=0)
        self.clients = {}
        self.macs_seen = 0          # MAC table change count last revalidated for
        self.macs_saved = 0         # ... and last saved
        self.last_reval = self.last_expire = self.last_macs_save = 0.0
        self.logged = set()
        self.fault = None
        if os.environ.get(FAULT_ENV):
            self.fault = parse_flow(os.environ[FAULT_ENV], mode="match").match

    # -- control requests (valepipe add-flow / del-flows / mod-flows / dump-flows) -------------
    def control_handlers(self):
        def changed(n):
            self.st["rule_changes"] += 1
            self.save_rules()
            self.request_revalidation()
            return n

        def add_flows(req):
            texts = req.get("flows")
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise ValueError("add-flows takes a list of flow strings")
            rules = [parse_flow(t) for t in texts]     # all or nothing
            for r in rules:
                self.ofproto.add_flow(r)
            return changed(len(rules))

        def del_flows(req):
            return changed(self.ofproto.del_flows(parse_flow(_text(req, "match"), mode="match")))

        def mod_flows(req):
            text = _text(req, "flow")
            m = parse_flow(text, mode="match")
            if "actions=" not in text:
                raise ValueError("mod-flows needs actions=")
            return changed(self.ofproto.mod_flows(m, parse_actions(text.split("actions=", 1)[1], m.table, text)))

        def trace(req):
            from pipeline.slowpath.trace import attrs_of_packet, flow_of_text, render
            text = _text(req, "flow").strip()
            head, _, tail = text.rpartition(" ")
            if head and all(c in "0123456789abcdefABCDEF" for c in tail) and len(tail) >= 28:
                port = parse_flow(head, mode="match").match.get("in_port", (0, 0))[0]
                flow = flow_from_attrs(attrs_of_packet(tail, port))
            else:
                flow = flow_of_text(text)
            return render(self.ofproto, flow)[0]

        return {"add-flows": _errors(add_flows), "trace": _errors(trace), "del-flows": _errors(del_flows), "mod-flows": _errors(mod_flows),
                "dump-flows": lambda req: self.ofproto.dump(),
                "fdb-show": lambda req: self.ofproto.macs.show(),
                "fdb-flush": lambda req: self.fdb_flush(),
                "stats": lambda req: dict(self.st, **self.ofproto.st)}

    def handle(self, client, msg):
        t = channel.check(msg)
        if t == "hello":
            client.worker = msg.get("worker")
            ports = msg.get("ports")
            if isinstance(ports, list):
                self.ofproto.set_ports([p["ofport"] for p in ports if isinstance(p, dict)
                                        and isinstance(p.get("ofport"), int)])
            return None
        if t == "revalidate":
            return self.revalidate(msg)
        if t != "upcall":
            raise channel.ChannelError(f"a worker does not send {t!r}")
        flows, pkts = msg.get("flows", []), msg.get("packets", [])
        if not isinstance(flows, list) or not isinstance(pkts, list):
            raise channel.ChannelError("upcall: flows and packets must be arrays")
        self.st["upcalls"] += 1
        out_flows, execute = [], []
        for f in flows:
            if not (isinstance(f, dict) and isinstance(f.get("id"), int) and isinstance(f.get("key"), dict)):
                raise channel.ChannelError("upcall: a flow needs an integer id and a key map")
            reply, res = self.translate(f, may_learn=True)
            client.recent[f["id"]] = (reply["actions"], res.rules if res else [])   # wire forms
            if len(client.recent) > RECENT_FLOWS:
                client.recent.popitem(last=False)
            if res and not channel.fast_path_runs(res.actions):
                self.st["slow_flows"] += 1
            out_flows.append(reply)
        self.st["flows"] += len(flows)
        for p in pkts:
            if not (isinstance(p, list) and len(p) == 3 and isinstance(p[0], int) and isinstance(p[2], bytes)):
                raise channel.ChannelError("upcall: a packet is [flow id, in_port, bytes]")
            actions, rules = client.recent.get(p[0], (None, ()))
            if actions is None:
                self.st["unknown_flow_packets"] += 1
                continue
            for r in rules:
                r.n_packets += 1
                r.n_bytes += len(p[2])
            rest = [a for a in actions if a[0] != "controller"]
            for a in actions:
                if a[0] == "controller":
                    self.ofproto.packet_in(p[1], a[1], p[2])
            if len(rest) < len(actions) and not any(a[0] == "output" for a in rest):
                continue                              # consumed by the controller queue, counted there
            execute.append([rest, p[2]])              # a drop comes back too: the fast path counts it
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
        forget = [m.to_bytes(6, "big") for m in sorted(changed)] if len(changed) <= FORGET_MACS else []
        self.request_revalidation(forget)
        return forget

    def translate(self, f, may_learn=False):
        """(reply entry, xlate Result) for one flow of an upcall or a revalidation; a
        translation that raises, or gives what the channel cannot carry, is answered
        with a drop and an error (and None for the result), counted and logged once."""
        try:
            if self.fault is not None and self._fault_hit(f["key"]):
                raise RuntimeError(f"injected translation fault ({FAULT_ENV})")
            res = self.ofproto.translate(f["key"], may_learn=may_learn, touch=bool(may_learn))
            entry = {"id": f["id"], "actions": channel.actions_to_wire(res.actions),
                     "mask": channel.mask_to_wire(res.wc)}
            if not channel.actions_ok(entry["actions"]) or channel.mask_from_wire(entry["mask"]) is None:
                raise ValueError(f"translation gave what the channel cannot carry: {res.actions}"[:300])
            return entry, res
        except Exception as e:                       # one bad translation never stops the switch
            why = f"{type(e).__name__}: {e}"[:300]
            self.st["xlate_errors"] += 1
            if why not in self.logged and len(self.logged) < LOGGED_ERRORS:
                self.logged.add(why)
                print(f"valepipe-slowpath: translation failed ({why}) for flow {_describe(f['key'])}; "
                      "answered with drop (counted as xlate_errors)", file=sys.stderr, flush=True)
            return {"id": f["id"], "actions": [["drop"]], "error": why}, None

    def internal_error(self, e):
        """A message whose handling failed outside any one translation: counted, logged once,
        answered with an error (the worker's pending flows then time out and ask again)."""
        why = f"{type(e).__name__}: {e}"[:300]
        self.st["internal_errors"] = self.st.get("internal_errors", 0) + 1
        if why not in self.logged and len(self.logged) < LOGGED_ERRORS:
            self.logged.add(why)
            print(f"valepipe-slowpath: internal error answering a worker ({why}); still serving",
                  file=sys.stderr, flush=True)
        return channel.encode({"v": channel.VERSION, "t": "error", "error": why})

    def _fault_hit(self, key):
        flow = flow_from_attrs(key)
        return all(flow.get(k, 0) & m == v for k, (v, m) in self.fault.items())


    def save_rules(self):
        """The rule tables as ovs-ofctl text, rewritten (atomically) on every change, so a
        slow path restarted after a crash comes back with the rules it had."""
        if self.rules_file:
            _save_atomically(self.rules_file, RULES_HEADER + "".join(format_rule(r) + "\n" for r in self.ofproto.rules()),
                             self.st, "rules")

    def request_revalidation(self, forget_macs=(), flush=False):
        """Workers re-translate what they cached (after rules or MAC entries changed), having
        first dropped what they cached to or from `forget_macs` (everything: `flush`)."""
        self.macs_seen = self.ofproto.macs.changes
        self.last_reval = time.monotonic()
        msg = {"v": channel.VERSION, "t": "revalidate_request"}
        if forget_macs:
            msg["forget_macs"] = list(forget_macs)
        if flush:
            msg["flush"] = True
        for cl in self.clients.values():
            try:
                cl.sock.sendall(channel.encode(msg))
            except OSError:
                pass

    def housekeep(self):
        """Rule timeouts and MAC aging once a second; MAC table changes revalidate at once,
        and the table is saved (at most once a second) for a restarted slow path."""
        now = time.monotonic()
        if now - self.last_expire >= 1.0:
            self.last_expire = now
            self.ofproto.macs.expire()
            if self.ofproto.expire():
                self.save_rules()
                self.request_revalidation()           # what the expired rules did must go
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
        if self.macs_file:
            _save_atomically(self.macs_file, json.dumps(self.ofproto.macs.snapshot()), self.st, "macs")

    def revalidate(self, msg):
        flows = msg.get("flows", [])
        if not isinstance(flows, list):
            raise channel.ChannelError("revalidate: flows must be an array")
        out = []
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
            out.append(entry)
        self.st["revalidated"] += len(out)
        return {"v": channel.VERSION, "t": "revalidate_reply", "flows": out}


def _save_atomically(path, text, st, what):
    """Write `text` to `path` through a temporary file and a rename; failures are counted
    (`<what>_save_errors`) and said on stderr, never raised."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
        st[f"{what}_saved"] = st.get(f"{what}_saved", 0) + 1
    except OSError as e:
        st[f"{what}_save_errors"] = st.get(f"{what}_save_errors", 0) + 1
        print(f"valepipe-slowpath: cannot save {what} to {path}: {e.strerror}", file=sys.stderr)


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


def _errors(fn):
    """Turn a bad rule into an error reply that says why."""
    def run(req):
        try:
            return fn(req)
        except FlowError as e:
            raise ValueError(str(e)) from None
    return run


def serve(path, slow, stop=lambda: False, control_path=None):
    if os.path.exists(path):
        os.unlink(path)
    ctl = control.ControlServer(control_path, slow.control_handlers()) if control_path else None
    ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        ls.bind(path)
    finally:
        os.umask(old)
    ls.listen(16)
    clients = slow.clients
    try:
        while not stop():
            r, _, _ = select.select([ls] + list(clients) + ([ctl.sock] if ctl else []), [], [], 0.05)
            slow.housekeep()
            for s in r:
                if ctl and s is ctl.sock:
                    ctl.poll()
                    continue
                if s is ls:
                    c, _ = ls.accept()
                    clients[c] = Client(c)
                    continue
                cl = clients[s]
                try:
                    data = s.recv(1 << 20)
                except OSError:
                    data = b""
                if not data:
                    del clients[s]
                    s.close()
                    continue
                try:
                    cl.unpacker.feed(data)
                    for msg in cl.unpacker:
                        try:
                            reply = slow.handle(cl, msg)
                            out = channel.encode(reply) if reply is not None else None
                        except channel.ChannelError:
                            raise
                        except Exception as e:          # a bug of ours: answer, count, keep serving
                            out = slow.internal_error(e)
                        if out is not None:
                            s.sendall(out)
                except (channel.ChannelError, ValueError, TypeError) as e:
                    slow.st["bad_messages"] += 1
                    why = str(e) if isinstance(e, channel.ChannelError) else f"malformed msgpack ({type(e).__name__}: {e})"
                    try:
                        s.sendall(channel.encode({"v": channel.VERSION, "t": "error", "error": why}))
                    except OSError:
                        pass
                    del clients[s]
                    s.close()
                except OSError:
                    del clients[s]
                    s.close()
    finally:
        for s in clients:
            s.close()
        ls.close()
        if ctl:
            ctl.close()
        if os.path.exists(path):
            os.unlink(path)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="valepipe-slowpath", description="valepipe slow-path daemon")
    ap.add_argument("--socket", required=True, help="unix socket path to listen on")
    ap.add_argument("--config", help="pipeline config whose [slowpath] flows to load")
    ap.add_argument("--control", help="control socket for add-flow/del-flows/mod-flows/dump-flows "
                                      "(default: slowpath.ctl beside --socket)")
    ap.add_argument("--rules", help="file the rules are kept in across restarts (default: rules.flows "
                                    "beside --socket); when it exists it is loaded instead of the config's flows")
    ap.add_argument("--macs", help="file NORMAL's MAC table is kept in across restarts (default: macs.json "
                                   "beside --socket)")
    a = ap.parse_args(argv)
    rules_file = a.rules or os.path.join(os.path.dirname(os.path.abspath(a.socket)), "rules.flows")
    macs_file = a.macs or os.path.join(os.path.dirname(os.path.abspath(a.socket)), "macs.json")
    source = rules_file
    try:
        if os.path.exists(rules_file):
            with open(rules_file) as f:
                flows = [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
            source = rules_file
        else:
            flows, source = (config.load(a.config).flows if a.config else []), a.config
        ofproto = OFProto(flows)
    except (config.ConfigError, FlowError, OSError) as e:
        print(f"valepipe-slowpath: {source}: {e}", file=sys.stderr)
        sys.exit(2)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    ctl = a.control or os.path.join(os.path.dirname(os.path.abspath(a.socket)), "slowpath.ctl")
    try:
        with open(macs_file) as f:
            ofproto.macs.restore(json.load(f))
    except (OSError, ValueError):
        pass                                            # none yet, or unreadable: start empty
    slow = SlowPath(ofproto, rules_file, macs_file)
    slow.macs_saved = ofproto.macs.changes
    slow.save_rules()
    try:
        serve(a.socket, slow, stop=lambda: bool(stopping), control_path=ctl)
    finally:
        slow.save_macs()
