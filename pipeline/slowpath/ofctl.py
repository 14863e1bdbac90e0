"""The slow path's ovs-ofctl-style control requests beyond add/del/mod: dump-flows with a
match filter (as data for sorting and JSON), strict matches, replace-flows, counter
resets, and trace of one or many flows or packets in one request."""
import time

from pipeline.slowpath.fields import FIELDS
from pipeline.slowpath.flowtext import FlowError, format_actions, format_match, format_rule, parse_actions, parse_flow

MAX_TRACE = 10_000            # flows or packets one trace request may carry
STEP_RULES = 500              # rules parsed, compared, changed or written per step of a large change


def selected(ofproto, match_text, strict=False):
    """Rules a match covers (ovs-ofctl's non-strict rule), or with strict=True the rules
    of exactly that table (0 if not given), priority and match."""
    if not match_text.strip() and not strict:
        return list(ofproto.rules())
    m = parse_flow(match_text, mode="match")
    if strict:
        return [r for r in ofproto.rules() if r.key() == m.key()]
    return [r for r in ofproto.rules() if m.covers(r)]


def rule_data(ofproto, r, now):
    """One rule as dump-flows shows it, plus its parts as data (for --json and --sort)."""
    return {"text": format_rule(r, {"duration": now - ofproto.created.get(id(r), now)}),
            "table": r.table, "priority": r.priority, "cookie": r.cookie,
            "n_packets": r.n_packets, "n_bytes": r.n_bytes,
            "duration": round(now - ofproto.created.get(id(r), now), 3),
            "idle_timeout": r.idle_timeout, "hard_timeout": r.hard_timeout,
            "match": format_match(r.match), "fields": {f: v for f, (v, _) in r.match.items()},
            "actions": format_actions(r.actions), "spec": format_rule(r)}


def dump(ofproto, req):
    """dump-flows: every rule (or those `match` selects) as data."""
    now = time.monotonic()
    return [rule_data(ofproto, r, now) for r in selected(ofproto, _text(req, "match"), _flag(req, "strict"))]


def in_steps(items, fn):
    """fn(item) for each item, a generator that gives the loop back every STEP_RULES items
    (large changes proceed in steps while upcalls and heartbeats are answered)."""
    for k, item in enumerate(items, 1):
        fn(item)
        if k % STEP_RULES == 0:
            yield None


def modify(ofproto, req):
    """mod-flows, in steps: new actions for the rules selected; reset_counts clears their
    counters. Returns how many."""
    text = _text(req, "flow")
    if "actions=" not in text:
        raise FlowError(f"{text!r}: mod-flows needs actions=")
    m = parse_flow(text, mode="match")
    actions = parse_actions(text.split("actions=", 1)[1], m.table, text)
    ofproto.check_references(actions)
    hit = selected(ofproto, text.split("actions=", 1)[0].rstrip(" ,"), _flag(req, "strict"))
    yield from in_steps(hit, lambda r: ofproto.modify(r, actions, reset_counts=_flag(req, "reset_counts")))
    return len(hit)


def delete(ofproto, req):
    """del-flows, in steps: the rules selected go. Returns how many."""
    gone = selected(ofproto, _text(req, "match"), _flag(req, "strict"))
    yield from in_steps(gone, ofproto.remove)
    return len(gone)


def replace(ofproto, req):
    """replace-flows, in steps: the tables become exactly `flows` (all parsed before
    anything changes); rules already there with the same match, priority, actions and
    cookie keep their counters, as ovs-ofctl replace-flows leaves them alone. Returns counts."""
    texts = req.get("flows")
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ValueError("replace-flows takes a list of flow strings")
    new = {}

    def parse(t):
        r = parse_flow(t)
        ofproto.check_references(r.actions)
        new[r.key()] = r
    yield from in_steps(texts, parse)
    old = {r.key(): r for r in ofproto.rules()}
    same = set()

    def compare(item):
        k, r = item
        if k in old and _spec(old[k]) == _spec(r):
            same.add(k)
    yield from in_steps(list(new.items()), compare)
    gone = [r for k, r in old.items() if k not in new]
    yield from in_steps(gone, ofproto.remove)
    added = [r for k, r in new.items() if k not in same]
    yield from in_steps(added, ofproto.add_flow)
    return {"added": len(added), "removed": len(gone), "kept": len(same)}


def _spec(r):
    return format_rule(r), r.idle_timeout, r.hard_timeout


def trace(slow, req):
    """One or many flows/packets (`flows`), each as trace renders it: text, or data."""
    from pipeline.slowpath.trace import render, trace_input
    items = req.get("flows")
    if items is None:
        items = [_text(req, "flow")]
    if not isinstance(items, list) or not all(isinstance(t, str) for t in items) or len(items) > MAX_TRACE:
        raise ValueError(f"trace takes a list of at most {MAX_TRACE} flow strings")
    out = []
    for text in items:
        try:
            text_out, res = render(slow.ofproto, trace_input(text), bridge=slow.name)
        except FlowError as e:
            out.append({"input": text, "error": str(e)})
            continue
        out.append({"input": text, "text": text_out, "datapath_actions": res.actions,
                    "megaflow": {k: m for k, m in res.wc.items() if m and k in FIELDS},
                    "rules": [{"table": tid, "priority": r.priority if r else None,
                               "match": format_match(r.match) if r else None,
                               "actions": format_actions(r.actions) if r else "drop", "depth": d}
                              for d, tid, r, _ in res.trace],
                    "error": res.error or None})
    return out


def _text(req, key):
    v = req.get(key, "")
    if not isinstance(v, str) or len(v) > 65536:
        raise ValueError(f"{key} must be a flow string")
    return v


def _flag(req, key):
    return req.get(key) is True
