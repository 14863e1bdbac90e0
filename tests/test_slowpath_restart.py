"""The slow path killed under load: cached flows keep forwarding, misses are counted as
lost, the worker's supervisor restarts it, and it comes back with the rules it had
(including those added at run time, kept in a file) and rechecks the cached flows."""
import os
import signal
import subprocess
import sys

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.conftest import ROOT, wait_for
from tests.test_e2e import cfg, peers


def pkt(flow, dport):
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") /
                 IP(src=f"10.3.{flow // 250}.{flow % 250 + 1}", dst="10.4.0.1") / UDP(sport=2000, dport=dport) / (b"r" * 30))


def _cli(pipe, uniq, *args):
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", *args, "--name", uniq,
                        "--run-dir", os.path.join(pipe.dir, "run")], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_slow_path_killed_under_load(uniq, pipeline_factory):
    pipe = pipeline_factory(cfg(uniq, ["priority=10,udp,tp_dst=53,actions=output:2", "priority=5,udp,actions=output:3"])
                            .replace("[pipeline]\n", "[pipeline]\nrevalidate_interval = 0\n"))
    # a run-time rule: without it, tp_dst=99 would go to port 3
    _cli(pipe, uniq, "add-flow", "priority=20,udp,tp_dst=99,actions=output:2")
    with peers(uniq) as ps:
        a, b, c = ps["a"], ps["b"], ps["c"]
        cached = [pkt(i, 53) for i in range(20)] + [pkt(i, 99) for i in range(20)]
        a.send_all(cached, others=(b, c))
        assert wait_for(lambda: b.drain() >= 40)
        st = pipe.stats()["upcall"]
        os.kill(st["slowpath_pid"], signal.SIGKILL)
        assert wait_for(lambda: not pipe.stats()["upcall"]["channel_up"], timeout=5, step=0.002)
        # slow path gone: packets of new flows (each port its own megaflow) are lost and
        # counted; packets of cached flows go on, every one, in order
        new = [pkt(100 + i, 70 + i) for i in range(10)]
        a.send_all(new)
        a.send_all(cached * 5, others=(b, c))
        assert wait_for(lambda: b.drain() >= 240)
        assert b.got[40:] == cached * 5
        assert wait_for(lambda: pipe.stats()["drops"]["upcall_lost"] + c.drain() == 10, timeout=10)
        lost = pipe.stats()["drops"]["upcall_lost"]
        assert lost >= 1
        # the supervisor brings it back with the run-time rule, and cached flows are rechecked
        assert wait_for(lambda: pipe.stats()["upcall"]["slowpath_restarts"] == 1 and
                        pipe.stats()["upcall"]["channel_up"], timeout=15)
        assert pipe.stats()["upcall"]["slowpath_pid"] != st["slowpath_pid"]
        assert wait_for(lambda: pipe.stats()["upcall"]["revalidations_done"] > st["revalidations_done"], timeout=10)
        assert "tp_dst=99 actions=output:2" in _cli(pipe, uniq, "dump-flows")
        with open(os.path.join(pipe.dir, "run", "rules.flows")) as f:
            assert "priority=20,udp,tp_dst=99,actions=output:2" in f.read().splitlines()
        fresh = [pkt(200 + i, 99) for i in range(10)] + [pkt(300 + i, 80 + i) for i in range(10)]
        a.send_all(fresh, others=(b, c))
        assert wait_for(lambda: b.drain() >= 250 and c.drain() >= 20 - lost)
        assert b.got[240:] == fresh[:10] and sorted(c.got[-10:]) == sorted(fresh[10:])
