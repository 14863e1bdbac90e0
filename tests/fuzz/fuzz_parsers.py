#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris) of what valepipe parses from others: rule text,
config files, and channel messages at both ends (the slow path and the worker).

`python tests/fuzz/fuzz_parsers.py TARGET [libFuzzer options] [CORPUS...]`; TARGET one of
flowtext, config, slowpath_message, worker_message. An exception other than the parser's
own error type is a finding (atheris stops and writes the input as crash-*)."""
import contextlib
import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

try:                        # the targets also run without atheris, on stored inputs (tests)
    import atheris
    instrumented = atheris.instrument_imports
except ImportError:
    atheris, instrumented = None, contextlib.nullcontext

with instrumented():
    import msgpack
    from pipeline import channel, config
    from pipeline.slowpath import flowtext
    from pipeline.slowpath.daemon import Client, SlowPath
    from pipeline.slowpath.ofproto import OFProto

RULES = ["priority=10,udp,tp_dst=53,actions=mod_nw_dst:10.0.0.9,output:2",
         "priority=5,dl_vlan=7,actions=strip_vlan,resubmit(,1)", "table=1,actions=NORMAL",
         "priority=1,ipv6,actions=mod_vlan_vid:9,output:3", "priority=0,actions=controller"]


def fuzz_flowtext(data):
    text = data.decode("utf-8", "replace")
    try:
        rule = flowtext.parse_flow(text)
    except flowtext.FlowError:
        return
    # what valepipe prints for a rule it accepted, it accepts again, as the same rule
    again = flowtext.parse_flow(flowtext.format_rule(rule))
    if again.key() != rule.key():
        raise AssertionError(f"{text!r} printed as {flowtext.format_rule(rule)!r} parses differently")


def fuzz_config(data):
    try:
        config.parse(data.decode("utf-8", "replace"), "fuzz.toml")
    except config.ConfigError:
        pass


_slow = None


def fuzz_slowpath_message(data):
    """Bytes from a worker, as the slow path's socket reader takes them."""
    global _slow
    if _slow is None:
        _slow = (SlowPath(OFProto(flows=RULES, ports=[1, 2, 3])), Client(socket.socketpair()[0]))
    sp, client = _slow
    up = channel.unpacker()
    up.feed(data)
    try:
        for msg in up:
            sp.handle(client, msg)
    except (channel.ChannelError, msgpack.exceptions.ExtraData, msgpack.exceptions.FormatError,
            msgpack.exceptions.StackError, msgpack.exceptions.BufferFull, ValueError):
        pass


_worker = None


def fuzz_worker_message(data):
    """Bytes from a slow path, as the worker applies them to its datapath."""
    global _worker
    if _worker is None:
        _worker = _make_worker()
    up_, unpack = _worker, channel.unpacker()
    unpack.feed(data)
    try:
        for msg in unpack:
            up_._apply(msg)
    except (channel.ChannelError, msgpack.exceptions.ExtraData, msgpack.exceptions.FormatError,
            msgpack.exceptions.StackError, msgpack.exceptions.BufferFull, ValueError):
        pass
    for i in range(4):                                 # keep pending flows to answer
        up_.keys.setdefault(i, (_worker_key, 0))


def _make_worker():
    global _worker_key
    from pipeline._native import ffi, lib
    from pipeline.datapath import Datapath
    from pipeline.ports import close_ports, open_ports
    from pipeline.upcall import Upcalls
    # libFuzzer ends the process without atexit: whoever runs this removes /dev/shm/valepipe.TAG*
    tag = os.environ.get("VP_FUZZ_TAG", f"fz{os.getpid()}")
    ports = open_ports([{"uri": f"shm:{tag}a", "ofport": 1}, {"uri": f"shm:{tag}b", "ofport": 2}])
    import atexit
    atexit.register(close_ports, ports)
    dp = Datapath(ports, flow_limit=1024, batch=64)
    dp.ofport_of = lambda i: ports[i].ofport
    up = Upcalls(dp, "/nonexistent/slowpath.sock")
    key = ffi.new("struct vp_flow_key *")
    frame = bytes.fromhex("0200000000020200000000010800450000200001000040117ab60a0000010a0000020400003500" + "0c0000" * 4)
    lib.vp_extract_one(frame, len(frame), 0, key, ffi.new("uint64_t[16]"))
    _worker_key = bytes(ffi.buffer(key))
    return up


TARGETS = {"flowtext": fuzz_flowtext, "config": fuzz_config, "slowpath_message": fuzz_slowpath_message,
           "worker_message": fuzz_worker_message}


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer options] [corpus dirs]")
    target = TARGETS[sys.argv.pop(1)]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
