"""The slow-path process: answers each worker's upcall batches with flows to install and
packets to execute. It trusts no message: every field is checked, bad ones are counted
and answered with an error, and one bad worker never stops the others."""
import argparse
import os
import select
import signal
import socket
import sys
from collections import OrderedDict

from pipeline import channel, config
from pipeline.slowpath import execute
from pipeline.slowpath.flowtext import FlowError
from pipeline.slowpath.ofproto import OFProto

RECENT_FLOWS = 65536


class Client:
    def __init__(self, sock):
        self.sock = sock
        self.unpacker = channel.unpacker()
        self.recent = OrderedDict()         # upcall id -> actions, for packets of pending flows
        self.worker = None


class SlowPath:
    def __init__(self, ofproto):
        self.ofproto = ofproto
        self.st = dict(upcalls=0, flows=0, packets=0, bad_messages=0, unknown_flow_packets=0, slow_flows=0)

    def handle(self, client, msg):
        t = channel.check(msg)
        if t == "hello":
            client.worker = msg.get("worker")
            ports = msg.get("ports")
            if isinstance(ports, list):
                self.ofproto.set_ports([p["ofport"] for p in ports if isinstance(p, dict)
                                        and isinstance(p.get("ofport"), int)])
            return None
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
            res = self.ofproto.translate(f["key"])
            client.recent[f["id"]] = res.actions
            if len(client.recent) > RECENT_FLOWS:
                client.recent.popitem(last=False)
            if not channel.fast_path_runs(res.actions):
                self.st["slow_flows"] += 1
            out_flows.append({"id": f["id"], "actions": res.actions, "mask": res.wc})
        self.st["flows"] += len(flows)
        for p in pkts:
            if not (isinstance(p, list) and len(p) == 3 and isinstance(p[0], int) and isinstance(p[2], bytes)):
                raise channel.ChannelError("upcall: a packet is [flow id, in_port, bytes]")
            actions = client.recent.get(p[0])
            if actions is None:
                self.st["unknown_flow_packets"] += 1
                continue
            if channel.fast_path_runs(actions):
                execute.append([actions, p[2]])
            else:                                   # modified here, sent back ready to output
                execute.extend([[["output", port]], frame] for port, frame in execute_apply(actions, p[2]))
        self.st["packets"] += len(execute)
        return {"v": channel.VERSION, "t": "upcall_reply", "flows": out_flows, "execute": execute}


def execute_apply(actions, frame):
    return execute.apply(frame, actions)


def serve(path, slow, stop=lambda: False):
    if os.path.exists(path):
        os.unlink(path)
    ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        ls.bind(path)
    finally:
        os.umask(old)
    ls.listen(16)
    clients = {}
    try:
        while not stop():
            r, _, _ = select.select([ls] + list(clients), [], [], 0.2)
            for s in r:
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
                        reply = slow.handle(cl, msg)
                        if reply is not None:
                            s.sendall(channel.encode(reply))
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
        if os.path.exists(path):
            os.unlink(path)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="valepipe-slowpath", description="valepipe slow-path daemon")
    ap.add_argument("--socket", required=True, help="unix socket path to listen on")
    ap.add_argument("--config", help="pipeline config whose [slowpath] flows to load")
    a = ap.parse_args(argv)
    try:
        ofproto = OFProto(config.load(a.config).flows if a.config else [])
    except (config.ConfigError, FlowError) as e:
        print(f"valepipe-slowpath: {e}", file=sys.stderr)
        sys.exit(2)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    serve(a.socket, SlowPath(ofproto), stop=lambda: bool(stopping))
