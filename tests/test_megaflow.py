"""The fast path's megaflow cache: after one flow is set up, packets of new flows that
differ only in bits no rule consulted are answered in the fast path (no upcall); a rule
change that alters the mask or the actions removes the megaflow (revalidation)."""
import re
import os
import subprocess
import sys
import time

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from pipeline import control
from tests.conftest import ROOT, wait_for
from tests.test_e2e import cfg, peers


def pkt(src_ip, dport=53):
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=src_ip, dst="10.0.0.9")
                 / UDP(sport=1000, dport=dport) / (b"m" * 20))


def test_new_flows_hit_the_megaflow(uniq, pipeline_factory):
    pipe = pipeline_factory(cfg(uniq, ["priority=10,udp,tp_dst=53,actions=output:2",
                                       "priority=5,udp,actions=output:3"]).replace(
        "[pipeline]\n", "[pipeline]\nrevalidate_interval = 0\n"))
    with peers(uniq) as ps:
        a, b, c = ps["a"], ps["b"], ps["c"]
        a.send_all([pkt("192.168.1.1")], others=(b,))
        assert wait_for(lambda: b.drain() >= 1)
        assert wait_for(lambda: pipe.stats()["megaflows"] == 1)
        # 200 new sources: no rule looks at nw_src, so no upcall
        a.send_all([pkt(f"192.168.2.{i}") for i in range(200)], others=(b,))
        assert wait_for(lambda: b.drain() >= 201)
        st = pipe.stats()
        assert st["upcall"]["upcall_flows"] == 1 and st["megaflow_hits"] == 200, st
        # again: now exact-match hits on entries cached from the megaflow, whose packets
        # are the megaflow's (that is what rule stats and idle timeouts see)
        a.send_all([pkt(f"192.168.2.{i}") for i in range(200)], others=(b,))
        assert wait_for(lambda: b.drain() >= 401)
        assert pipe.stats()["hits"] >= 200
        mf = control.request(pipe.ctl, "megaflows")
        assert [m["packets"] for m in mf] == [400], mf          # the first went through the slow path
        # another port number: the rules do consult tp_dst, so a second megaflow
        a.send_all([pkt("192.168.3.1", dport=99)], others=(c,))
        assert wait_for(lambda: c.drain() >= 1)
        assert wait_for(lambda: pipe.stats()["megaflows"] == 2)
        run_dir = os.path.join(pipe.dir, "run")
        out = subprocess.run([sys.executable, "-m", "pipeline.cli", "dump-megaflows", "--name", uniq,
                              "--run-dir", run_dir], cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.strip().splitlines()
        assert len(lines) == 2 and any("tp_dst=53" in ln and "actions:2" in ln for ln in lines), out.stdout
        assert all("ipv4_src" not in ln for ln in lines)                      # wildcarded
        # a rule on nw_src changes what lookups consult: the megaflows are revalidated away
        r = subprocess.run([sys.executable, "-m", "pipeline.cli", "add-flow", "priority=20,udp,nw_src=192.168.4.0/24,"
                            "actions=output:3", "--name", uniq, "--run-dir", run_dir], cwd=ROOT, capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert wait_for(lambda: pipe.stats()["upcall"]["megaflows_removed"] >= 1)
        a.send_all([pkt("192.168.4.7")], others=(c,))                        # now to port 3
        assert wait_for(lambda: c.drain() >= 2)
        time.sleep(0.1)
        assert b.drain() == 401
        # new actions for the megaflow's rule: the cached exact entries must not keep the old
        r = subprocess.run([sys.executable, "-m", "pipeline.cli", "mod-flows", "udp,tp_dst=53,actions=output:3",
                            "--name", uniq, "--run-dir", run_dir], cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert wait_for(lambda: pipe.stats()["upcall"]["megaflows_removed"] >= 2)
        a.send_all([pkt(f"192.168.2.{i}") for i in range(200)], others=(c,))
        assert wait_for(lambda: c.drain() >= 202)
        time.sleep(0.1)
        assert b.drain() == 401


def test_megaflows_print_tags_and_masked_fields_readably(uniq, pipeline_factory):
    """A megaflow of a tagged frame prints its tag as vlan(...) (not Python lists), and a
    field matched under a mask prints value/mask in hex."""
    from scapy.layers.inet6 import IPv6, UDP as UDP6
    from scapy.layers.l2 import Dot1Q
    pipe = pipeline_factory(cfg(uniq, ["priority=20,dl_vlan=300,actions=output:2",
                                       "priority=10,ipv6,ipv6_label=0x5/0xf,actions=output:3"]))
    tagged = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / Dot1Q(vlan=300, prio=1) /
                   IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2))
    v6 = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IPv6(src="2001:db8::1", dst="2001:db8::2", fl=0x12345)
               / UDP6(sport=1, dport=2))
    with peers(uniq) as ps:
        ps["a"].send_all([tagged], others=(ps["b"],))
        ps["a"].send_all([v6], others=(ps["c"],))
        assert wait_for(lambda: ps["b"].drain() >= 1 and ps["c"].drain() >= 1)
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "dump-megaflows", "--name", uniq, "--run-dir",
                          pipe.run_dir], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "[" not in out.stdout, out.stdout
    assert re.search(r"vlan\(tpid=0x8100(/0xffff)?,(vid=300,pcp=1|tci=0x112c/0x1fff)\)", out.stdout), out.stdout
    assert "ipv6_label=0x5/0xf" in out.stdout, out.stdout
