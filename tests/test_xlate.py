"""Classifier and translation properties: the tuple-space classifier finds what a linear
scan finds, and every packet the megaflow matches gets exactly the datapath actions the
slow path computes for it (the invariant that makes caching the megaflow correct)."""
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.slowpath.classifier import Table
from pipeline.slowpath.fields import FIELDS, ORDER
from pipeline.slowpath.flowtext import FlowError, parse_flow
from pipeline.slowpath.xlate import Xlate

PORTS = [1, 2, 3, 4]
# small value spaces so random flows hit the rules often
VALS = {"in_port": PORTS, "dl_type": [0x0800, 0x86DD, 0x0806], "nw_proto": [6, 17, 1],
        "nw_src": [0x0A000001, 0x0A000102, 0x0A010001, 0xC0A80001],
        "nw_dst": [0x0A000001, 0x0A0000FF, 0x14000001, 0x0A000009],
        "vlan_tci": [0, 0x1005, 0x2006 | 0x1000], "tp_dst": [22, 80, 443], "tp_src": [1000, 0x1234],
        "nw_ttl": [0, 1, 2, 64], "metadata": [0, 5],
        # includes the values set actions write, so some packets already carry them
        "dl_dst": [1, 0x010000000001, 0x020000000002, 0x020000000009]}

MATCHES = ["in_port=%d", "ip", "tcp", "udp", "arp", "ip,nw_src=10.0.0.0/8", "ip,nw_src=10.0.1.0/24",
           "ip,nw_dst=10.0.0.0/255.0.0.0", "tcp,tp_dst=80", "tcp,tp_dst=22", "udp,tp_src=0x1200/0xff00",
           "dl_vlan=5", "dl_vlan_pcp=1", "dl_dst=01:00:00:00:00:00/01:00:00:00:00:00", "metadata=5",
           "ip,nw_ttl=1", "ip,nw_dst=20.0.0.1", ""]
ACTIONS = ["output:%d", "drop", "mod_nw_dst:10.0.0.9,output:%d", "ALL", "IN_PORT", "mod_vlan_vid:7,output:%d", "strip_vlan,output:%d",
           "push_vlan:0x8100,output:%d", "mod_dl_dst:02:00:00:00:00:09,output:%d", "dec_ttl,output:%d",
           "resubmit(,%t)", "resubmit(%p,%t)", "write_metadata:5,goto_table:%t", "output:%d,output:%d",
           "CONTROLLER", "mod_vlan_pcp:3,output:%d", "set_field:0x10000000000/0x10000000000->dl_dst,output:%d"]
IPONLY = ("mod_nw", "dec_ttl")


def rule_text(rng, table, prio):
    m = rng.choice(MATCHES)
    if "%d" in m:
        m = m % rng.choice(PORTS)
    a = rng.choice(ACTIONS)
    if "%t" in a and table >= 3:   # no later table to go to
        a = "output:%d"
    if "%t" in a and "goto" not in a and rng.random() < 0.3:
        a = a.replace("%t", str(table))            # resubmit into its own table (bounded by depth)
    if "%t" in a:
        a = a.replace("%t", str(rng.randrange(table + 1, 4)))
    a = a.replace("%p", str(rng.choice(PORTS)))
    while "%d" in a:
        a = a.replace("%d", str(rng.choice(PORTS)), 1)
    if a.startswith(("dec_ttl", "mod_nw")) and not m.startswith(("ip", "tcp", "udp")):
        m = "ip" + ("," + m if m else "")
    parts = [f"table={table}", f"priority={prio}"] + ([m] if m else []) + [f"actions={a}"]
    return ",".join(parts)


def build(seed, nrules):
    rng = random.Random(seed)
    tables, rules = {}, []
    prios = rng.sample(range(1, 1000), nrules)      # distinct: no ties to make the winner ambiguous
    for p in prios:
        t = rng.randrange(4)
        try:
            r = parse_flow(rule_text(rng, t, p))
        except FlowError:
            continue
        tables.setdefault(t, Table(t)).insert(r)
        rules.append(r)
    return tables, rules


def rand_flow(rng):
    f = {k: 0 for k in ORDER}
    for k, vs in VALS.items():
        f[k] = rng.choice(vs)
    return f


def linear(rules, table, flow):
    best = None
    for r in rules:
        if r.table == table and all(flow[f] & m == v for f, (v, m) in r.match.items()):
            if best is None or r.priority > best.priority:
                best = r
    return best


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2 ** 32), nrules=st.integers(1, 40))
def test_classifier_equals_linear_scan(seed, nrules):
    tables, rules = build(seed, nrules)
    rng = random.Random(seed + 1)
    for _ in range(100):
        flow = rand_flow(rng)
        for t, table in tables.items():
            assert table.lookup(flow, {}) is linear(rules, t, flow)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2 ** 32), nrules=st.integers(1, 40))
def test_megaflow_invariant(seed, nrules):
    tables, _ = build(seed, nrules)
    x = Xlate(tables, PORTS)
    rng = random.Random(seed ^ 0x5A5A)
    for _ in range(60):
        flow = rand_flow(rng)
        res = x.translate(flow)
        for _ in range(5):
            # any packet that agrees with `flow` on the megaflow's bits, random elsewhere
            other = {}
            for k in ORDER:
                m = res.wc.get(k, 0)
                noise = rng.choice(VALS[k]) if k in VALS and rng.random() < 0.7 else rng.getrandbits(FIELDS[k].width)
                other[k] = (flow[k] & m) | (noise & ~m & FIELDS[k].full)
            assert x.translate(other).actions == res.actions, (flow, other, res.wc)


def test_megaflow_is_narrow_where_rules_are():
    t0 = Table(0)
    for text in ("priority=10,ip,nw_dst=10.0.0.0/8,actions=output:2", "priority=5,actions=output:3"):
        t0.insert(parse_flow(text))
    x = Xlate({0: t0}, PORTS)
    f = {k: 0 for k in ORDER}
    f.update(in_port=1, dl_type=0x0800, nw_dst=0x0A010203, tp_dst=80)
    res = x.translate(f)
    assert res.actions == [["output", 2]]
    # /8, not /32; no L4; an IP flow always carries its fragment bits (as in Open vSwitch)
    assert res.wc == {"in_port": 0xFFFF, "dl_type": 0xFFFF, "nw_frag": 3, "nw_dst": 0xFF000000}
    f["dl_type"] = 0x86DD
    res = x.translate(f)
    assert res.actions == [["output", 3]] and res.wc == {"in_port": 0xFFFF, "dl_type": 0xFFFF, "nw_frag": 3}


def test_set_actions_are_committed_before_output():
    t0 = Table(0)
    t0.insert(parse_flow("ip,actions=mod_nw_dst:10.0.0.9,dec_ttl,output:2,mod_vlan_vid:5,output:3"))
    f = {k: 0 for k in ORDER}
    f.update(in_port=1, dl_type=0x0800, nw_proto=17, nw_dst=0x0A000001, nw_ttl=64)
    res = Xlate({0: t0}, PORTS).translate(f)
    assert res.actions == [["set", "nw_dst", 0x0A000009, 0xFFFFFFFF], ["set", "nw_ttl", 63, 0xFF],
                           ["output", 2], ["push_vlan", 0x8100, 5], ["output", 3]]
    # Open vSwitch takes nw_proto 0 as "no L3 header": no L3 set actions at all
    assert Xlate({0: t0}, PORTS).translate(dict(f, nw_proto=0)).actions == [
        ["output", 2], ["push_vlan", 0x8100, 5], ["output", 3]]
    f["nw_ttl"] = 1
    assert Xlate({0: t0}, PORTS).translate(f).actions == [                # invalid_ttl: to the controller,
        ["set", "nw_dst", 0x0A000009, 0xFFFFFFFF], ["controller", "invalid_ttl"]]   # as modified so far


def test_resubmit_depth_is_bounded():
    t0 = Table(0)
    t0.insert(parse_flow("actions=output:2,resubmit(,0)"))
    res = Xlate({0: t0}, PORTS).translate({k: 0 for k in ORDER})
    # as Open vSwitch: 64 nested resubmits to the same table, then an error that drops the
    # packet, outputs made before it included
    assert res.actions == [["drop"]] and res.error == "over max translation depth 64"
    assert len(res.trace) == 65


def test_resubmits_per_translation_are_bounded():
    """40 tables each resubmitting twice to the next: 2^40 lookups unbounded. Open vSwitch
    stops at 4,096 resubmits per translation, and so does valepipe."""
    tables = {}
    for k in range(40):
        tables.setdefault(k, Table(k)).insert(parse_flow(f"table={k},actions=resubmit(,{k + 1}),resubmit(,{k + 1})"))
    res = Xlate(tables, PORTS).translate({k: 0 for k in ORDER})
    assert res.actions == [["drop"]] and res.error == "over 4096 resubmit actions"
    assert len(res.trace) == 1 + 4096


def test_rule_timeouts():
    import time as _t
    from pipeline.slowpath.ofproto import OFProto
    of = OFProto(["priority=5,idle_timeout=10,actions=output:2", "priority=4,hard_timeout=20,actions=output:3",
                  "priority=1,actions=drop"], ports=PORTS)
    t0 = _t.monotonic()
    attrs = {"in_port": 1}
    assert of.expire(t0 + 5) == 0
    of.translate(attrs)                                   # a packet: the idle rule is used (now ~ t0)
    of.translate(attrs, touch=False)                      # revalidation does not count as use
    assert of.expire(t0 + 9) == 0
    assert of.expire(t0 + 10.5) == 1                      # idle for 10 s: gone
    assert of.translate(attrs).actions == [["output", 3]]
    assert of.expire(t0 + 21) == 1                        # hard timeout, used or not
    assert [r.priority for r in of.rules()] == [1]
    assert of.translate(attrs).actions == [["drop"]]
