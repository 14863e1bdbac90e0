"""A port flooding new flows is held to its upcall rate, so another port's new flows
still reach the slow path; memory stays bounded under the flood. Counters say who was
refused."""
import threading
import time

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.conftest import wait_for
from tests.test_e2e import cfg, peers
from tools.traffic import Generator

# every source address is its own megaflow (a rule looks at all 32 bits of nw_src), so
# each new source is an upcall
RULES = ["priority=20,udp,nw_src=198.18.255.255,actions=drop", "priority=10,in_port=2,udp,actions=output:3",
         "priority=5,udp,actions=drop"]


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:"))


def _flood(uniq, rate, nflows, seconds):
    g = Generator(f"shm:{uniq}a", flows=nflows, rate=rate)
    try:
        g.run(duration=seconds)
    finally:
        g.close()


def run_case(uniq, pipeline_factory, upcall_rate):
    pipe = pipeline_factory(cfg(uniq, RULES).replace(
        "[pipeline]\n", f"[pipeline]\nupcall_rate = {upcall_rate}\nflow_limit = 20000\nrevalidate_interval = 0\n"))
    with peers(uniq, "bc") as ps:
        b, c = ps["b"], ps["c"]
        st0 = pipe.stats()
        rss0 = rss_kb(pipe.proc.pid), rss_kb(st0["upcall"]["slowpath_pid"])
        flood = threading.Thread(target=_flood, args=(uniq, 400_000, 1_000_000, 3.0))
        flood.start()
        time.sleep(0.5)
        mine = [bytes(Ether(src="02:00:00:00:00:0b", dst="02:00:00:00:00:0c") / IP(src=f"10.50.0.{i + 1}", dst="10.9.0.1")
                      / UDP(sport=5000, dport=5000) / (b"b" * 30)) for i in range(40)]
        for k in range(4):
            b.send_all(mine[k * 10:(k + 1) * 10])
            time.sleep(0.1)
        flood.join()
        wait_for(lambda: sum(1 for f in c.got if f in mine) == 40 or (c.drain() and False), timeout=5)
        c.drain()
        st = pipe.stats()
        rss1 = rss_kb(pipe.proc.pid), rss_kb(st["upcall"]["slowpath_pid"])
        return st, sum(1 for f in c.got if f in mine), rss0, rss1


def test_flooding_port_is_held_to_its_rate(uniq, pipeline_factory):
    st, delivered, rss0, rss1 = run_case(uniq, pipeline_factory, upcall_rate=500)
    a, b = st["ports"][0], st["ports"][1]
    assert delivered == 40, (delivered, st["drops"], b)                 # b's new flows all set up
    assert b["upcall_rate_limited"] == 0 and a["upcall_rate_limited"] > 10_000, (a, b)
    assert st["drops"]["upcall_rate"] == a["upcall_rate_limited"]
    assert st["flows"] <= 20_000 and st["packets"] > 500_000, st["packets"]
    # a flood of ~1,000,000 packets of as many new flows: the table at its limit, memory flat
    assert rss1[0] - rss0[0] < 16 * 1024 and rss1[1] - rss0[1] < 8 * 1024, (rss0, rss1)
    print(f"rss worker {rss0[0]} -> {rss1[0]} kB, slow path {rss0[1]} -> {rss1[1]} kB; "
          f"a refused {a['upcall_rate_limited']}, upcalls {st['upcall']['upcall_flows']}")
