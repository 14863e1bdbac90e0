"""The exact-match flow table against a dict model: inserts, deletes (backward shift),
expiry sweeps and the flow limit, with keys chosen to collide in the index."""
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from pipeline._native import ffi, lib

LIMIT = 48


def key(n):
    k = ffi.new("struct vp_flow_key *")
    k.in_port = n
    k.nw_src = n * 2654435761 & 0xFFFFFFFF
    return k


class FlowTable(RuleBasedStateMachine):
    @initialize()
    def setup(self):
        self.dp = ffi.new("struct vp_dp *")
        assert lib.vp_flows_init(self.dp, LIMIT) == 0
        self.model = {}             # key number -> (action, last used time)
        self.now = 1_000_000

    @rule(n=st.integers(0, 200), action=st.integers(0, 5))
    def install(self, n, action):
        self.dp.now_ns = self.now
        rc = lib.vp_flow_install(self.dp, key(n), action, -1)
        if n in self.model:
            assert rc == 0
        elif len(self.model) >= LIMIT:
            assert rc == -1
            return
        else:
            assert rc == 1
        self.model[n] = (action, self.now)

    @rule(n=st.integers(0, 200))
    def remove(self, n):
        rc = lib.vp_flow_remove(self.dp, key(n))
        assert rc == (0 if n in self.model else -1)
        self.model.pop(n, None)

    @rule(dt=st.integers(0, 50))
    def tick(self, dt):
        self.now += dt

    @rule(idle=st.integers(1, 60))
    def sweep(self, idle):
        self.dp.now_ns = self.now
        removed = lib.vp_flow_sweep(self.dp, idle, 10 ** 12, ffi.NULL)
        gone = [n for n, (_, t) in self.model.items() if self.now - t > idle]
        assert removed == len(gone)
        for n in gone:
            del self.model[n]

    @invariant()
    def agrees(self):
        assert self.dp.flows.count == len(self.model)
        for n in range(0, 201, 7):
            e = lib.vp_flow_find(self.dp, key(n))
            if n in self.model:
                assert e >= 0 and self.dp.flows.entries[e].action == self.model[n][0]
            else:
                assert e == -1


FlowTable.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
TestFlowTable = FlowTable.TestCase


@settings(max_examples=50, deadline=None)
@given(ns=st.lists(st.integers(0, 10 ** 6), min_size=1, max_size=LIMIT, unique=True))
def test_all_found_after_many_deletes(ns):
    dp = ffi.new("struct vp_dp *")
    lib.vp_flows_init(dp, LIMIT)
    for n in ns:
        assert lib.vp_flow_install(dp, key(n), n % 7, -1) == 1
    for n in ns[::2]:
        assert lib.vp_flow_remove(dp, key(n)) == 0
    for i, n in enumerate(ns):
        assert (lib.vp_flow_find(dp, key(n)) >= 0) == (i % 2 == 1)


def test_capped_exact_cache_evicts_installed_entries_only():
    dp = ffi.new("struct vp_dp *")
    assert lib.vp_flows_init(dp, 64) == 0 and lib.vp_megaflows_init(dp, 64) == 0
    dp.flows.cap = 8
    mask = ffi.new("struct vp_flow_key *")
    mask.in_port = 0xFFFFFFFF
    assert lib.vp_megaflow_install(dp, key(1000), mask, 0) >= 0         # eviction needs megaflows behind it
    for n in range(20):
        assert lib.vp_flow_install(dp, key(n), 1, -1) == 1
        assert dp.flows.count <= 8
    assert dp.flows.evictions == 12
    assert sum(lib.vp_flow_find(dp, key(n)) >= 0 for n in range(20)) == 8   # the most recent ones stay
    # pending entries (flows waiting for the slow path) are never evicted, and may pass the cap
    for n in range(100, 120):
        assert lib.vp_flow_insert_pending(dp, key(n), lib.vp_key_hash(key(n)), n) == 0
    assert all(lib.vp_flow_find(dp, key(n)) >= 0 for n in range(100, 120))
    assert dp.flows.count == 20
