"""End to end across processes: a pipeline (worker + slow path) in its own process, the
test as the user side of its shm: ports. N packets of M flows in, exactly N out on the
right ports with identical bytes, counters equal, first packet of each flow upcalled."""
import os
import random
import signal
import socket
import time

import msgpack
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.conftest import wait_for
from pipeline.peer import PortPeer


def cfg(tag, flows, ports=("a", "b", "c"), share=False):
    out = [f'[pipeline]\nname = "{tag}"\nrun_dir = "@RUN@"\n']
    for i, p in enumerate(ports):
        uri = f"shm:{tag}{p}" + (f"@share={tag}{ports[0]}" if share and i else "")
        out.append(f'[[port]]\nuri = "{uri}"\nslots = 256\n')
    out.append("[slowpath]\nflows = [" + ", ".join(f'"{f}"' for f in flows) + "]\n")
    return "\n".join(out)


def frame(flow, seq, size=80):
    pay = seq.to_bytes(4, "big") + bytes(max(0, size - 46))
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") /
                 IP(src=f"10.1.{flow // 250}.{flow % 250 + 1}", dst="10.2.0.1") / UDP(sport=1000 + flow, dport=53) / pay)


class Peer(PortPeer):
    """The user side of one shm: port (the public pipeline.peer API), keeping what arrived."""

    def __init__(self, uri):
        super().__init__(uri)
        self.got = []

    def send_all(self, frames, others=(), window=192):
        """Send everything, keeping at most `window` packets beyond what the receivers
        (others) have read: the switch drops (and counts) when an output ring is full."""
        i, base = 0, sum(len(o.got) for o in others)
        deadline = time.monotonic() + 30
        while i < len(frames):
            for o in others:
                o.drain()
            room = window - (i - (sum(len(o.got) for o in others) - base)) if others else 128
            if room > 0:
                i += self.port.send(frames[i:i + min(room, 64)])
            assert time.monotonic() < deadline, "ring never drained"
        return i

    def drain(self):
        self.got += self.recv(1024)
        return len(self.got)


class Peers(dict):
    """name -> Peer; `with peers(...) as ps:` closes them all at the end."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for p in self.values():
            p.close()


def peers(tag, names="abc", share=False):
    """The user sides of shm: ports {tag}{name}."""
    return Peers({n: Peer(f"shm:{tag}{n}" + (f"@share={tag}a" if share and n != "a" else "")) for n in names})


def run_flows(pipe, ps, nflows, npkts):
    a, b, c = ps["a"], ps["b"], ps["c"]
    first = [frame(f, f) for f in range(nflows)]
    a.send_all(first, others=(b, c))
    assert wait_for(lambda: b.drain() >= nflows, 10)
    rng = random.Random(7)
    rest = [frame(rng.randrange(nflows), nflows + i) for i in range(npkts - nflows)]
    a.send_all(rest, others=(b, c))
    assert wait_for(lambda: b.drain() >= npkts, 10)
    time.sleep(0.2)
    b.drain(), c.drain(), a.drain()
    return first, rest


@pytest.mark.parametrize("share", [False, True], ids=["copy", "zero-copy"])
def test_n_packets_m_flows(uniq, pipeline_factory, share):
    nflows, npkts = 60, 3000
    pipe = pipeline_factory(cfg(uniq, ["in_port=1,actions=output:2", "in_port=2,actions=output:1,output:3",
                                       "in_port=3,actions=drop"], share=share))
    with peers(uniq, share=share) as ps:
        first, rest = run_flows(pipe, ps, nflows, npkts)
        b = ps["b"].got
        assert len(b) == npkts
        assert sorted(b[:nflows]) == sorted(first)      # slow-path executes may reorder firsts
        assert b[nflows:] == rest                       # hits keep their order
        assert ps["c"].got == [] and ps["a"].got == []
        st = pipe.stats()
        assert st["misses"] == nflows
        assert st["upcall"]["upcall_flows"] == nflows
        assert st["upcall"]["upcall_packets"] == nflows
        assert st["upcall"]["installed"] == nflows
        assert st["hits"] == npkts - nflows
        assert st["flows"] == nflows
        assert sum(st["drops"].values()) == 0
        pa, pb, pc = st["ports"]
        assert pa["rx_packets"] == npkts and pb["tx_packets"] == npkts
        assert pc["tx_packets"] == 0 and pc["rx_packets"] == 0
        assert not any(p["faulty"] for p in st["ports"])
        if share:
            assert st["tx_swapped"] == npkts - nflows and st["tx_copied"] == 0
        else:
            assert st["tx_copied"] == npkts - nflows and st["tx_swapped"] == 0


def test_multi_output_and_drop(uniq, pipeline_factory):
    pipe = pipeline_factory(cfg(uniq, ["in_port=1,actions=output:2", "in_port=2,actions=output:1,output:3",
                                       "in_port=3,actions=drop"]))
    with peers(uniq) as ps:
        a, b, c = ps["a"], ps["b"], ps["c"]
        frames = [frame(3, i) for i in range(200)]
        b.send_all(frames[:1], others=(a, c))
        assert wait_for(lambda: a.drain() >= 1 and c.drain() >= 1)
        b.send_all(frames[1:], others=(a, c))
        assert wait_for(lambda: a.drain() >= 200 and c.drain() >= 200)
        assert a.got == frames and c.got == frames
        c.send_all([frame(9, i) for i in range(50)], others=(a, b))
        st = wait_for(lambda: (lambda s: s if s["drops"]["action_drop"] == 50 else None)(pipe.stats()))
        assert st, pipe.stats()["drops"]
        time.sleep(0.1)
        assert a.drain() == 200 and b.drain() == 0


def test_packets_of_a_pending_flow_are_not_lost(uniq, pipeline_factory):
    pipe = pipeline_factory(cfg(uniq, ["in_port=1,actions=output:2"], ports=("a", "b")))
    with peers(uniq, "ab") as ps:
        burst = [frame(1, i) for i in range(40)]        # all sent before any answer can come back
        ps["a"].send_all(burst)
        assert wait_for(lambda: ps["b"].drain() >= 40)
        assert sorted(ps["b"].got) == sorted(burst)
        st = pipe.stats()
        assert st["upcall"]["upcall_flows"] == 1        # the flow went up once
        assert st["upcall"]["upcall_packets"] + st["hits"] == 40


def test_slow_path_killed_hits_keep_flowing(uniq, pipeline_factory):
    pipe = pipeline_factory(cfg(uniq, ["in_port=1,actions=output:2"], ports=("a", "b")))
    with peers(uniq, "ab") as ps:
        a, b = ps["a"], ps["b"]
        a.send_all([frame(1, 0)])
        assert wait_for(lambda: b.drain() >= 1)
        pid = pipe.stats()["upcall"]["slowpath_pid"]
        os.kill(pid, signal.SIGKILL)
        cached = [frame(1, i) for i in range(1, 501)]
        a.send_all(cached, others=(b,))
        assert wait_for(lambda: b.drain() >= 501)
        assert b.got[1:] == cached
        # the supervisor restarts it; a new flow is then set up again
        assert wait_for(lambda: (lambda s: s["upcall"]["channel_up"] and s["upcall"]["slowpath_pid"] != pid)(
            pipe.stats()), 15)
        a.send_all([frame(2, 999)])
        assert wait_for(lambda: b.drain() >= 502, 10)
        assert pipe.stats()["upcall"]["slowpath_restarts"] >= 1


def test_slow_path_answers_garbage_with_errors(uniq, pipeline_factory):
    pipe = pipeline_factory(cfg(uniq, ["in_port=1,actions=output:2"], ports=("a", "b")))
    path = os.path.join(pipe.dir, "run", "slowpath.sock")
    with peers(uniq, "ab") as ps:
        for bad in (b"\xc1garbage", msgpack.packb([1, 2, 3]), msgpack.packb({"v": 99, "t": "upcall"}),
                    msgpack.packb({"v": 1, "t": "upcall", "flows": [{"id": "x"}], "packets": []}),
                    msgpack.packb({"v": 1, "t": "upcall", "flows": [], "packets": [[1, 2]]})):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect(path)
            s.sendall(bad)
            reply = msgpack.unpackb(s.recv(65536), raw=False)
            s.close()
            assert reply["t"] == "error" and reply["error"], bad
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
        ps["a"].send_all([frame(5, 1)])               # the worker's channel was never disturbed
        assert wait_for(lambda: ps["b"].drain() >= 1)


def test_no_rule_drops_are_counted(uniq, pipeline_factory):
    pipe = pipeline_factory(cfg(uniq, [], ports=("a", "b")))
    with peers(uniq, "ab") as ps:
        ps["a"].send_all([frame(1, i) for i in range(30)])
        st = wait_for(lambda: (lambda s: s if s["drops"]["action_drop"] == 30 else None)(pipe.stats()))
        assert st, pipe.stats()
        assert ps["b"].drain() == 0


def test_openflow_tables_through_the_pipeline(uniq, pipeline_factory):
    """Multi-table OVS-syntax rules: goto_table/resubmit, and a flow that rewrites packets
    (set field with checksum updates, VLAN push) — both cached and run by the C stages."""
    from scapy.layers.l2 import Dot1Q
    pipe = pipeline_factory(cfg(uniq, [
        "table=0,priority=10,udp,tp_dst=53,actions=write_metadata:0x1,goto_table:1",
        "table=0,priority=5,ip,actions=resubmit(,2)",
        "table=1,metadata=0x1,actions=output:2",
        "table=2,in_port=1,ip,nw_dst=10.2.0.0/16,actions=mod_nw_dst:10.9.9.9,mod_vlan_vid:7,output:3",
    ]))
    with peers(uniq) as ps:
        a, b, c = ps["a"], ps["b"], ps["c"]
        dns = [frame(1, i) for i in range(20)]                   # UDP to port 53 -> table 1 -> port 2
        a.send_all(dns[:1], others=(b,))
        assert wait_for(lambda: b.drain() >= 1)
        a.send_all(dns[1:], others=(b,))
        assert wait_for(lambda: b.drain() >= 20)
        assert b.got == dns
        other = [bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="10.1.0.1", dst="10.2.3.4")
                       / UDP(sport=7, dport=9) / (b"z" * 30)) for _ in range(5)]
        for f in other:
            a.send_all([f], others=(c,))
            time.sleep(0.05)
        assert wait_for(lambda: c.drain() >= 5)
        for out in c.got:
            p = Ether(out)
            assert p[Dot1Q].vlan == 7 and p[IP].dst == "10.9.9.9"
            q = p.copy()
            del q[IP].chksum, q[UDP].chksum
            q = Ether(bytes(q))
            assert (q[IP].chksum, q[UDP].chksum) == (p[IP].chksum, p[UDP].chksum)
        st = pipe.stats()
        assert st["upcall"]["installed"] == 2                     # both flows cached
        assert st["upcall"]["slow_path_flows"] == 0
        assert st["hits"] == 19 + 4                               # first packets went up, the rest hit


def test_rule_changes_take_effect_on_cached_traffic(uniq, pipeline_factory):
    """mod-flows/del-flows/add-flow through the CLI while traffic is cached: the cached flows
    are revalidated (not flushed) and the next packets follow the new rules."""
    import subprocess
    import sys
    from tests.conftest import ROOT
    pipe = pipeline_factory(cfg(uniq, ["in_port=1,actions=output:2"]).replace(
        '[pipeline]\n', '[pipeline]\nrevalidate_interval = 0\n'))
    run_dir = os.path.join(pipe.dir, "run")

    def vp(*args):
        r = subprocess.run([sys.executable, "-m", "pipeline.cli", *args, "--name", uniq, "--run-dir", run_dir],
                           cwd=ROOT, capture_output=True, text=True, timeout=30)
        return r
    with peers(uniq) as ps:
        a, b, c = ps["a"], ps["b"], ps["c"]
        a.send_all([frame(1, 0)], others=(b,))
        assert wait_for(lambda: b.drain() >= 1)
        a.send_all([frame(1, i) for i in range(1, 50)], others=(b,))
        assert wait_for(lambda: b.drain() >= 50)
        assert pipe.stats()["hits"] == 49
        r = vp("mod-flows", "in_port=1,actions=output:3")
        assert r.returncode == 0 and "modified 1" in r.stdout, r.stderr
        assert wait_for(lambda: pipe.stats()["upcall"]["revalidated_changed"] == 1)
        a.send_all([frame(1, i) for i in range(50, 80)], others=(c,))
        assert wait_for(lambda: c.drain() >= 30)
        st = pipe.stats()
        assert b.drain() == 50 and st["hits"] + st["megaflow_hits"] == 79 and st["misses"] == 1   # still cached
        dump = vp("dump-flows").stdout
        assert "n_packets=80" in dump and "in_port=1 actions=output:3" in dump, dump
        removed = st["upcall"]["megaflows_removed"]
        r = vp("add-flow", "priority=40000,in_port=1,udp,actions=mod_nw_dst:10.0.0.99,output:2")
        assert r.returncode == 0, r.stderr
        # the new rule looks at more fields: the cached megaflow goes, the next packet sets
        # up one that rewrites, in C
        assert wait_for(lambda: pipe.stats()["upcall"]["megaflows_removed"] > removed)
        a.send_all([frame(1, 100)], others=(b,))
        assert wait_for(lambda: b.drain() >= 51)
        assert Ether(b.got[-1])[IP].dst == "10.0.0.99"
        r = vp("del-flows", "")
        assert r.returncode == 0 and "deleted 2" in r.stdout
        r = vp("add-flow", "in_port=1,tp_dst=80,actions=drop")
        assert r.returncode == 2 and "tp_dst requires tcp, udp or sctp" in r.stderr and "Traceback" not in r.stderr


def test_controller_packets_are_queued_and_not_cached(uniq, pipeline_factory):
    from pipeline import control
    pipe = pipeline_factory(cfg(uniq, ["in_port=1,actions=CONTROLLER,output:2"], ports=("a", "b")))
    with peers(uniq, "ab") as ps:
        for i in range(5):
            ps["a"].send_all([frame(1, i)])
            assert wait_for(lambda: ps["b"].drain() >= i + 1)
        st = pipe.stats()
        assert st["upcall"]["upcall_packets"] == 5 and st["hits"] == 0        # every packet went up
        sp = control.request(os.path.join(pipe.dir, "run", "slowpath.ctl"), "stats")
        assert sp["controller_queued"] == 5 and sp["controller"] == 5


def test_runt_frames_go_where_the_rules_say_first_one_included(uniq, pipeline_factory):
    """Frames shorter than an Ethernet header have a flow (everything but in_port zero, as
    in Open vSwitch): the first one, executed by the slow path's answer, is forwarded like
    those after it from the cache."""
    pipe = pipeline_factory(cfg(uniq, ["in_port=1,actions=output:2"], ports=("a", "b")))
    runts = [b"\x03", b"\x03", bytes(range(13)), b"\xff" * 7]
    with peers(uniq, "ab") as ps:
        for i, f in enumerate(runts):       # one at a time: the first waits for its upcall
            ps["a"].send_all([f], others=(ps["b"],))
            assert wait_for(lambda: ps["b"].drain() >= i + 1), (i, pipe.stats()["drops"])
        assert ps["b"].got == runts
    assert not any(pipe.stats()["drops"].values()), pipe.stats()["drops"]
