"""A flood of new flows on one port does not cost another port its established flows: a
flow at 20 kpps keeps its megaflow past idle_timeout (its exact-match hits count as the
megaflow's), and when the flood churns the exact-match cache the flow still hits its
megaflow, never going back to the slow path: not one of its packets is dropped."""
import time

from tests.ledger import Lane, SinkThread, books_text, close_books, gen, gen_sent, settle
from tests.test_e2e import cfg

RULES = ["priority=20,in_port=1,udp,nw_src=198.18.255.255,actions=drop", "priority=10,in_port=1,actions=output:2",
         "priority=10,in_port=3,actions=output:4"]
# drops a busy sink may cause on its own ring; anything else would be the pipeline's doing
SINK_SIDE = {"tx_ring_full"}


def test_flood_on_one_port_spares_established_flows_of_another(uniq, pipeline_factory):
    pipe = pipeline_factory(cfg(uniq, RULES, ports=("a", "b", "c", "d")).replace(
        "[pipeline]\n", "[pipeline]\nidle_timeout = 1.0\nemc_limit = 64\n"))
    sinks = [SinkThread(f"shm:{uniq}b"), SinkThread(f"shm:{uniq}d")]
    try:
        steady = gen(f"shm:{uniq}c", flows=4, rate=20_000, duration=8)
        time.sleep(2.5)                          # past idle_timeout: only hits keep its megaflow
        flood = gen(f"shm:{uniq}a", flows=1_000_000, rate=100_000, duration=4)
        lanes = [Lane(2, sinks[1], gen_sent(steady)), Lane(0, sinks[0], gen_sent(flood))]
        st = settle(pipe.ctl, lanes)
    finally:
        for s in sinks:
            s.close()
    rows = close_books(st, lanes)
    print(books_text(rows))
    assert [r["unexplained"] for r in rows] == [0, 0], books_text(rows)
    # the flood was a flood: new flows refused or dropped on its port ...
    assert sum(rows[1]["drops"].values()) > 0 and st["emc_evictions"] > 0
    # ... and port 3's flow lost nothing to it
    assert rows[0]["sent"] > 100_000
    assert set(rows[0]["drops"]) <= SINK_SIDE, books_text(rows)
