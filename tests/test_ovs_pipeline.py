"""Differential test through the running processes: generated rule sets (tests/ovs_corpus.py)
go into a running `valepipe run` (four shm: ports and an internal: LOCAL port, rules through
the slow path's control socket, caching on) and into Open vSwitch 3.1 (dummy datapath,
ports capturing what they send, flow-limit=0 so OVS translates every packet anew); the
same generated frames go in, one at a time, on the same ports, through valepipe's worker,
channel, slow path and fast-path execute. Every frame every port sends must be the same,
byte for byte and in order, for every input frame.

The seed changes every run and is printed (VP_DIFF_SEED=N replays one); VP_DIFF_FRAMES and
VP_DIFF_SETS size the run (`make test`: 3,000 frames over 6 rule sets)."""
import os
import random
import socket
import time

import pytest

from pipeline import control
from pipeline.slowpath.flowtext import FlowError, parse_flow
from tests import ovs_oracle
from tests.conftest import wait_for
from tests.ovs_oracle import PcapTail
from tests.ovs_corpus import LOCAL, Corpus
from tests.test_e2e import Peer

pytestmark = pytest.mark.skipif(not ovs_oracle.available(), reason="Open vSwitch not installed (`make test` installs it)")
PORTS = (1, 2, 3, 4)
FRAMES = int(os.environ.get("VP_DIFF_FRAMES", "3000"))
SETS = int(os.environ.get("VP_DIFF_SETS", "6"))
ETH_P_ALL = 3


class HostSide:
    """The host-stack side of the internal port: frames go in through an AF_PACKET socket on
    the interface. What the pipeline sends the host is read from the port's mirror (the host
    stack itself would drop some of the generated frames before a socket could see them,
    such as a VLAN TPID with no tag after it)."""

    def __init__(self, ns, ifname, mirror):
        from bindings.adapter import in_netns
        with in_netns(ns):
            self.sk = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            self.sk.bind((ifname, 0))
        self.mirror = PcapTail(mirror)

    def send(self, frame):
        assert self.sk.send(frame) == len(frame)

    def drain(self):
        return self.mirror.read()

    def close(self):
        self.sk.close()


def _config(tag, local, mirror):
    out = [f'[pipeline]\nname = "{tag}"\nrun_dir = "@RUN@"\nupcall_rate = 0\n']
    for i in PORTS:
        out.append(f'[[port]]\nuri = "shm:{tag}{i}"\nslots = 256\nofport = {i}\n')
    if local:
        out.append(f'[[port]]\nuri = "internal:{local[1]}@netns={local[0]}"\nmirror = "{mirror}"\n')
    return "\n".join(out)


class Valepipe:
    """The running pipeline and its port peers."""

    def __init__(self, pipe, tag, local, mirror):
        self.pipe = pipe
        self.ctl = pipe.ctl
        self.sp = os.path.join(pipe.dir, "run", "slowpath.ctl")
        self.peers = {i: Peer(f"shm:{tag}{i}") for i in PORTS}
        self.host = HostSide(*local, mirror) if local else None
        self.received = pipe.stats()["packets"]

    def send(self, port, frame):
        if port == LOCAL:
            self.host.send(frame)
        else:
            assert self.peers[port].port.send([frame]) == 1
        self.received += 1

    def settle(self, timeout=30.0):
        """Until the worker took every frame sent and nothing is left in flight: no upcall
        waiting for its answer, no revalidation round running."""
        deadline = time.monotonic() + timeout
        while True:
            st = control.request(self.ctl, "stats")
            u = st["upcall"]
            if st["packets"] >= self.received and u["pending"] == 0 and u["channel_up"] \
                    and u["revalidations_done"] == u["revalidations"]:
                return st
            if time.monotonic() > deadline:
                raise TimeoutError(f"pipeline did not settle: {st['packets']}/{self.received} packets, {u}")
            time.sleep(0.0005)

    def revalidated(self):
        n = control.request(self.ctl, "revalidate")
        assert wait_for(lambda: control.request(self.ctl, "stats")["upcall"]["revalidations_done"] >= n, 30)

    def sent(self, port):
        if port == LOCAL:
            return self.host.drain()
        return self.peers[port].port.recv(1024)

    def close(self):
        for p in self.peers.values():
            p.close()
        if self.host:
            self.host.close()


def _ovs_port(p):
    return "br0" if p == LOCAL else f"p{p}"


def _load(ovs, vp, rules):
    """Load the rules both switches take into both; returns (taken, refused by valepipe
    only, refused by OVS only) — the last two are parity failures of rule syntax."""
    ovs.ofctl("del-flows", "br0")
    taken, vp_only, ovs_only = [], [], []
    for t in rules:
        try:
            parse_flow(t)
            vp_ok = True
        except FlowError as e:
            vp_ok, why = False, str(e)
        try:
            ovs.add_flow(t)
            ovs_ok = True
        except RuntimeError as e:
            ovs_ok, why = False, str(e)
        if vp_ok and ovs_ok:
            taken.append(t)
        elif vp_ok or ovs_ok:
            (ovs_only if vp_ok else vp_only).append(f"{t}  ({why})")
            if ovs_ok:
                ovs.ofctl("--strict", "del-flows", "br0", t.partition(",actions=")[0])
    control.request(vp.sp, "del-flows", match="")
    if taken:
        control.request(vp.sp, "add-flows", flows=taken)
    ovs.appctl("fdb/flush", "br0")
    control.request(vp.sp, "fdb-flush")
    vp.revalidated()
    return taken, vp_only, ovs_only


def _fdb(ovs):
    """NORMAL's MAC table in Open vSwitch: {(port, vlan, mac)}."""
    rows = set()
    for line in ovs.appctl("fdb/show", "br0").splitlines()[1:]:
        p = line.split()
        if len(p) >= 3:
            rows.add((LOCAL if p[0] == "LOCAL" else int(p[0]), int(p[1]), p[2]))
    return rows


def _vp_fdb(vp):
    return {(p, v, ":".join(f"{(m >> (40 - 8 * k)) & 0xFF:02x}" for k in range(6)))
            for p, v, m, _ in control.request(vp.sp, "fdb-show")}


def _explain(ovs, vp, rules, port, frame, got, want):
    name = "LOCAL" if port == LOCAL else str(port)
    ours = control.request(vp.sp, "trace", flow=f"in_port={name} {frame.hex()}")
    theirs = ovs.appctl("ofproto/trace", "br0", f"in_port={name}", frame.hex())
    return ("\nrules:\n  " + "\n  ".join(rules) + f"\nframe in on {name}: {frame.hex()}\n"
            + "".join(f"port {p}: valepipe sent {[f if isinstance(f, tuple) else f.hex() for f in got.get(p, [])]}\n"
                      f"        OVS sent      {[f if isinstance(f, tuple) else f.hex() for f in want.get(p, [])]}\n"
                      for p in sorted(set(got) | set(want), key=str) if got.get(p) != want.get(p))
            + f"--- valepipe trace ---\n{ours}\n--- OVS trace ---\n{theirs}\n"
            + f"--- valepipe counters ---\n{_counters(vp)}")


def _counters(vp):
    st = control.request(vp.ctl, "stats")
    return {"drops": {k: v for k, v in st["drops"].items() if v},
            "upcall": {k: v for k, v in st["upcall"].items() if v and k in (
                "bad_messages", "stale_replies", "xlate_errors", "execute_dropped", "slow_path_flows")},
            "last_error": st["upcall"].get("last_error")}


@pytest.fixture
def local_port(lab):
    """(namespace, interface) for the internal: port, in a namespace without IPv6 so the
    host stack sends nothing of its own; None when not root (no namespaces)."""
    if os.geteuid() != 0:
        return None
    lb = lab('[[netns]]\nname = "vL@"\n')
    lb.run("vL", "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1", "net.ipv6.conf.all.disable_ipv6=1")
    return lb.name("vL"), lb.name("vpl")


def test_every_frame_identical_to_ovs(uniq, pipeline_factory, local_port, tmp_path):
    seed = int(os.environ.get("VP_DIFF_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"\nseed {seed} (VP_DIFF_SEED={seed} replays this run)")
    rng = random.Random(seed)
    corpus = Corpus(rng, PORTS, local=local_port is not None)
    ports = list(corpus.all_ports)
    ovs = ovs_oracle.OVS(len(PORTS), capture=True, flow_limit=0)
    mirror = os.path.join(tmp_path, "local.pcap")
    pipe = pipeline_factory(_config(uniq, local_port, mirror))
    vp = Valepipe(pipe, uniq, local_port, mirror)
    mismatches, frames_out, refused = [], 0, ([], [])
    try:
        for kind, rules in corpus.rule_sets(SETS):
            taken, vp_only, ovs_only = _load(ovs, vp, rules)
            refused[0].extend(vp_only)
            refused[1].extend(ovs_only)
            for port, frame in corpus.frames(max(1, FRAMES // SETS), move_macs=kind == "normal"):
                ovs.receive(_ovs_port(port), frame)
                vp.send(port, frame)
                vp.settle()
                want = {p: ovs.sent(_ovs_port(p)) for p in ports}
                got = {p: vp.sent(p) for p in ports}
                want, got = {p: v for p, v in want.items() if v}, {p: v for p, v in got.items() if v}
                frames_out += sum(len(v) for v in want.values())
                if kind == "normal" and got == want and _fdb(ovs) != _vp_fdb(vp):
                    got["fdb"], want["fdb"] = sorted(_vp_fdb(vp)), sorted(_fdb(ovs))
                if got != want:
                    mismatches.append(_explain(ovs, vp, taken, port, frame, got, want))
                    if len(mismatches) >= 5:
                        break
            if len(mismatches) >= 5:
                break
        st = pipe.stats()
    finally:
        vp.close()
        ovs.close()
    print(f"{FRAMES} frames in over {SETS} rule sets, {frames_out} out; caching: {st['hits']} exact-match and "
          f"{st['megaflow_hits']} megaflow hits, {st['upcall']['upcall_packets']} upcalls; rules refused by "
          f"valepipe only: {len(refused[0])}, by OVS only: {len(refused[1])}; {len(mismatches)} frames differ")
    assert not mismatches, f"seed {seed}: " + "\n\n".join(mismatches[:3])
    assert not refused[0] and not refused[1], (f"seed {seed}: rules only one switch takes:\n  valepipe refuses: "
                                               + "\n    ".join(refused[0]) + "\n  OVS refuses: "
                                               + "\n    ".join(refused[1]))
