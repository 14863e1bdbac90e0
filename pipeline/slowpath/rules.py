"""Port-to-port rules for the slow path: `priority=P,in_port=N,actions=output:M[,output:K]|drop`.

The slow path asks a rule set one thing — `translate(key_attrs) -> actions` — so the
OpenFlow tables that replace this list plug into the same place.
"""
from dataclasses import dataclass


class RuleError(Exception):
    pass


@dataclass
class Rule:
    priority: int
    in_port: int | None
    actions: list
    text: str
    n_packets: int = 0


def parse_rule(text):
    if "actions=" not in text:
        raise RuleError(f"{text!r}: no actions= (e.g. in_port=1,actions=output:2)")
    match, _, acts = text.partition("actions=")
    prio, in_port = 32768, None
    for i, field in enumerate(f.strip() for f in match.split(",")):
        if not field:
            continue
        name, eq, value = field.partition("=")
        if name == "priority" and eq:
            prio = _int(value, 0, 65535, text, "priority")
        elif name == "in_port" and eq:
            in_port = _int(value, 1, 65279, text, "in_port")
        else:
            raise RuleError(f"{text!r}: match field {name!r} at position {i + 1} is not supported by "
                            "the port rule list (in_port, priority)")
    actions = []
    for a in (x.strip() for x in acts.split(",")):
        if a == "drop":
            actions.append(["drop"])
        elif a.startswith("output:"):
            actions.append(["output", _int(a[7:], 1, 65279, text, "output")])
        else:
            raise RuleError(f"{text!r}: action {a!r} is not supported (output:N, drop)")
    if ["drop"] in actions and len(actions) > 1:
        raise RuleError(f"{text!r}: drop cannot be combined with other actions")
    return Rule(prio, in_port, [a for a in actions if a[0] != "drop"] or [["drop"]], text)


def _int(v, lo, hi, text, what):
    try:
        n = int(v, 0)
    except ValueError:
        raise RuleError(f"{text!r}: {what} {v!r} is not a number") from None
    if not lo <= n <= hi:
        raise RuleError(f"{text!r}: {what} {n} out of range {lo}..{hi}")
    return n


class RuleSet:
    def __init__(self, texts=()):
        self.rules = sorted((parse_rule(t) for t in texts), key=lambda r: -r.priority)
        self.no_rule = 0

    def translate(self, key):
        """Datapath actions for a flow key (attribute map); the first matching rule wins."""
        in_port = key.get("in_port")
        for r in self.rules:
            if r.in_port is None or r.in_port == in_port:
                r.n_packets += 1
                return r.actions
        self.no_rule += 1
        return [["drop"]]
