"""Long action lists run whole, through a running pipeline with 16 ports: FLOOD and a
NORMAL broadcast reach all 15 other ports, a 13-port output list loses none, a program of
78 set/push/output/pop actions delivers each port exactly its own rewrites — first packets
(executed for the slow path) and cached ones alike. A translation too long for the
datapath is dropped with an error and counted, never cut."""
import os
import time

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Dot1Q, Ether

from pipeline import control
from tests.conftest import wait_for
from tests.test_e2e import frame, peers

NPORTS = 16
NAMES = [f"p{i}" for i in range(1, NPORTS + 1)]          # ofport i is shm:{tag}p{i}
OUTS = range(4, NPORTS + 1)                              # targets of the list and the program


def _program():
    """Per target port: its own TTL and DSCP, out with a VLAN tag of its number, out untagged."""
    return ",".join(f"set_field:{p}->nw_ttl,set_field:{p}->ip_dscp,mod_vlan_vid:{p},output:{p},strip_vlan,output:{p}"
                    for p in OUTS)


def _cfg(tag, flows, names=NAMES):
    return (f'[pipeline]\nname = "{tag}"\nrun_dir = "@RUN@"\n'
            + "".join(f'[[port]]\nuri = "shm:{tag}{n}"\nslots = 64\n' for n in names)
            + "[slowpath]\nflows = [" + ", ".join(f'"{f}"' for f in flows) + "]\n")


def _rewritten(f, p):
    """What port p gets of frame f: the tagged and the untagged copy."""
    e = Ether(f)
    ip = e[IP]
    ip.ttl, ip.tos = p, p << 2
    del ip.chksum
    return [bytes(Ether(src=e.src, dst=e.dst) / Dot1Q(vlan=p) / ip), bytes(Ether(src=e.src, dst=e.dst) / ip)]


def _items(actions_text):
    """The actions of a `Datapath actions:` line (commas inside parentheses do not split)."""
    out, depth, cur = [], 0, ""
    for ch in actions_text:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return out + [cur]


def _trace(pipe, flow):
    return control.request(os.path.join(pipe.dir, "run", "slowpath.ctl"), "trace", flow=flow, timeout=60)


def test_long_output_lists_and_programs_run_whole(uniq, pipeline_factory):
    pipe = pipeline_factory(_cfg(uniq, [
        "in_port=1,actions=FLOOD",
        "in_port=2,actions=" + ",".join(f"output:{p}" for p in OUTS),
        "in_port=3,ip,actions=" + _program(),
        "in_port=4,actions=NORMAL"]))
    with peers(uniq, NAMES) as ps:
        def deliveries(expect, sender, frames, ordered=True):
            """Send `frames` from `sender`: the first sets the flow up (the slow path executes
            it), the rest are hits; each port gets exactly expect(port, frames) (in order, or
            in any order where a program sends several copies to a port)."""
            ps[sender].send_all(frames[:1])
            assert wait_for(lambda: all(ps[n].drain() >= len(expect(n, frames[:1])) for n in NAMES), timeout=15)
            ps[sender].send_all(frames[1:])
            assert wait_for(lambda: all(ps[n].drain() >= len(expect(n, frames)) for n in NAMES), timeout=15)
            time.sleep(0.3)                                     # anything extra would be here by now
            for n in NAMES:
                ps[n].drain()
                got, want = ps[n].got, expect(n, frames)
                assert (got == want) if ordered else (sorted(got) == sorted(want)), n
                ps[n].got = []

        def port_of(n):
            return int(n[1:])

        # FLOOD from port 1: all 15 others, every frame
        deliveries(lambda n, fs: [] if n == "p1" else fs, "p1", [frame(1, i) for i in range(20)])
        # a 13-port output list from port 2: 4..16 all get every frame (8 did)
        deliveries(lambda n, fs: fs if port_of(n) in OUTS else [], "p2", [frame(2, i) for i in range(20)])
        # NORMAL broadcast from port 4 on a 16-port switch: the 15 others
        bcast = [bytes(Ether(src="02:00:00:00:04:04", dst="ff:ff:ff:ff:ff:ff") / IP(dst="10.9.9.9") /
                       UDP(sport=4, dport=i + 1)) for i in range(20)]
        deliveries(lambda n, fs: [] if n == "p4" else fs, "p4", bcast)
        # the program from port 3: 78 datapath actions, each port its own two rewrites of each frame
        text = _trace(pipe, "in_port=3,udp,nw_src=10.1.0.4,nw_dst=10.2.0.1")
        dp = next(ln for ln in text.splitlines() if ln.startswith("Datapath actions:")).split(": ", 1)[1]
        assert dp.count("push_vlan") == dp.count("pop_vlan") == len(OUTS) and "error" not in text.lower(), text
        assert len(_items(dp)) == 6 * len(OUTS) == 78
        frames = [frame(3, i) for i in range(20)]
        deliveries(lambda n, fs: [c for f in fs for c in _rewritten(f, port_of(n))] if port_of(n) in OUTS else [],
                   "p3", frames, ordered=False)
    st = pipe.stats()
    assert sum(st["drops"].values()) == 0, st["drops"]
    assert st["upcall"]["stale_replies"] == 0 and st["upcall"]["bad_messages"] == 0


def test_too_many_actions_drop_with_an_error(uniq, pipeline_factory):
    # 2**11 paths through 11 tables, 33 outputs at the end of each: 67,584 datapath actions
    flows = [f"table={t},actions=resubmit(,{t + 1}),resubmit(,{t + 1})" for t in range(11)]
    flows.append("table=11,actions=" + ",".join(["output:2"] * 33))
    pipe = pipeline_factory(_cfg(uniq, flows, NAMES[:2]))
    ctl = os.path.join(pipe.dir, "run", "slowpath.ctl")
    text = _trace(pipe, "in_port=1,udp")
    assert "Translation error: 67584 datapath actions, more than the datapath's 65535" in text, text[-500:]
    assert "Datapath actions: drop" in text
    before = control.request(ctl, "stats")["errors"]
    with peers(uniq, NAMES[:2]) as ps:
        ps["p1"].send_all([frame(1, 0)])
        assert wait_for(lambda: pipe.stats()["drops"]["action_drop"] == 1, timeout=60)
        assert ps["p2"].drain() == 0
    assert control.request(ctl, "stats")["errors"] == before + 1
