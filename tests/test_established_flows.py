"""A flood of new flows on one port does not cost another port its established flows: a
flow at 20 kpps keeps its megaflow past idle_timeout (its exact-match hits count as the
megaflow's), and when the flood churns the exact-match cache the flow still hits its
megaflow, never going back to the slow path: not one of its packets is dropped."""
from tests.ledger import Traffic, books_text, run_books
from tests.test_e2e import cfg

RULES = ["priority=20,in_port=1,udp,nw_src=198.18.255.255,actions=drop", "priority=10,in_port=1,actions=output:2",
         "priority=10,in_port=3,actions=output:4"]
# drops a busy sink may cause on its own ring; anything else would be the pipeline's doing
SINK_SIDE = {"tx_ring_full"}


def test_flood_on_one_port_spares_established_flows_of_another(uniq, pipeline_factory):
    pipe = pipeline_factory(cfg(uniq, RULES, ports=("a", "b", "c", "d")).replace(
        "[pipeline]\n", "[pipeline]\nidle_timeout = 1.0\nemc_limit = 64\n"))
    # port 3's flow first; the flood starts past idle_timeout, when only hits keep its megaflow
    rows, st = run_books(pipe.ctl, [Traffic(2, f"{uniq}c", f"{uniq}d", flows=4, rate=20_000, seconds=8),
                                    Traffic(0, f"{uniq}a", f"{uniq}b", flows=1_000_000, rate=100_000, seconds=4,
                                            after=2.5)])
    steady, flood = rows[1], rows[0]
    assert [r["unexplained"] for r in rows] == [0, 0], books_text(rows)
    # the flood was a flood: new flows refused or dropped on its port ...
    assert sum(flood["drops"].values()) > 0 and st["emc_evictions"] > 0
    # ... and port 3's flow (a quarter of its nominal 160,000 at least, on however loaded a
    # machine: enough to have run through the flood) lost nothing to it
    assert steady["sent"] > 40_000
    assert set(steady["drops"]) <= SINK_SIDE, books_text(rows)
