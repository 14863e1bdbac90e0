"""Rules in Open vSwitch's ovs-ofctl syntax: parse (with OVS's prerequisite checks and an
error that names the offending token) and print back in ovs-ofctl's canonical form."""
from dataclasses import dataclass, field

from pipeline.slowpath.fields import (ETH_ARP, ETH_IP, ETH_IPV6, ETH_RARP, FIELDS, ORDER, VLAN_CFI, FieldError, strict_int,
                                      format_value, format_value_mask, parse_value, parse_value_mask)

MAX_TABLE = 254
SHORTHANDS = {  # name: (dl_type, nw_proto)
    "ip": (ETH_IP, None), "ipv6": (ETH_IPV6, None), "arp": (ETH_ARP, None), "rarp": (ETH_RARP, None),
    "tcp": (ETH_IP, 6), "udp": (ETH_IP, 17), "sctp": (ETH_IP, 132), "icmp": (ETH_IP, 1),
    "tcp6": (ETH_IPV6, 6), "udp6": (ETH_IPV6, 17), "sctp6": (ETH_IPV6, 132), "icmp6": (ETH_IPV6, 58),
}
ALIASES = {  # syntax name -> field (plain renames)
    "eth_src": "dl_src", "eth_dst": "dl_dst", "eth_type": "dl_type", "ip_src": "nw_src", "ip_dst": "nw_dst",
    "ipv4_src": "nw_src", "ipv4_dst": "nw_dst", "ip_proto": "nw_proto", "ip_ttl": "nw_ttl", "ip_frag": "nw_frag",
    "arp_spa": "nw_src", "arp_tpa": "nw_dst", "arp_op": "nw_proto",
    "tcp_src": "tp_src", "tcp_dst": "tp_dst", "udp_src": "tp_src", "udp_dst": "tp_dst",
    "sctp_src": "tp_src", "sctp_dst": "tp_dst", "icmp_type": "tp_src", "icmp_code": "tp_dst",
    "icmpv6_type": "tp_src", "icmpv6_code": "tp_dst", "nd_sll": "arp_sha", "nd_tll": "arp_tha",
    "ipv6_label": "ipv6_label", "nd_target": "nd_target",
}
L4_NEEDS = {"tcp_src": (6,), "tcp_dst": (6,), "tcp_flags": (6,), "udp_src": (17,), "udp_dst": (17,),
            "sctp_src": (132,), "sctp_dst": (132,), "tp_src": (6, 17, 132), "tp_dst": (6, 17, 132)}
FRAG = {"no": (0, 1), "yes": (1, 1), "first": (1, 3), "later": (3, 3), "not_later": (0, 2)}
FRAG_NAMES = {v: k for k, v in FRAG.items()}
TCP_FLAGS = ["fin", "syn", "rst", "psh", "ack", "urg", "ece", "cwr", "ns"]
MOD = {"mod_dl_src": "dl_src", "mod_dl_dst": "dl_dst", "mod_nw_src": "nw_src", "mod_nw_dst": "nw_dst",
       "mod_nw_tos": "nw_tos", "mod_tp_src": "tp_src", "mod_tp_dst": "tp_dst"}
MOD_NAMES = {v: k for k, v in MOD.items()}
FLAG_NAMES = ("send_flow_rem", "check_overlap", "reset_counts", "no_packet_counts", "no_byte_counts")
SET_FIELD_NAMES = {**ALIASES, **{f: f for f in FIELDS}, "vlan_vid": "vlan_vid", "vlan_pcp": "vlan_pcp",
                   "ip_dscp": "ip_dscp"}


class FlowError(ValueError):
    """A rule Open vSwitch would reject (or silently change); the text says what and where."""


@dataclass
class Rule:
    match: dict = field(default_factory=dict)     # field -> (value, mask), only constrained fields
    actions: list = field(default_factory=list)   # tuples, see parse_actions
    table: int = 0
    priority: int = 32768
    cookie: int = 0
    cookie_mask: int = 0
    idle_timeout: int = 0
    hard_timeout: int = 0
    n_packets: int = 0
    n_bytes: int = 0
    table_given: bool = False
    used: float = 0.0                               # last time a packet hit it (idle_timeout)
    flags: tuple = ()                               # OpenFlow flow_mod flags by name (FLAG_NAMES)

    def covers(self, other):
        """Non-strict match (del-flows/mod-flows): `other` is at least as specific as this
        match, in the given table (any table if none was given), with a matching cookie."""
        if self.table_given and other.table != self.table:
            return False
        if (other.cookie ^ self.cookie) & self.cookie_mask:
            return False
        for f, (v, m) in self.match.items():
            ov, om = other.match.get(f, (0, 0))
            if om & m != m or ov & m != v:
                return False
        return True

    def key(self):
        return (self.table, self.priority, tuple(sorted(self.match.items())))


def _split(text, sep=","):
    """Split on `sep` outside parentheses."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == sep and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [t.strip() for t in out if t.strip()]


def _int(text, lo, hi, what):
    try:
        v = strict_int(text)
    except ValueError:
        raise FlowError(f"invalid {what} {text!r}") from None
    if not lo <= v <= hi:
        raise FlowError(f"invalid {what} \"{text}\" (must be {lo}..{hi})")
    return v


def _ascii(text, whole):
    """OVS's flow syntax is ASCII: a letter, digit or space from another script ('١',
    '２', U+3000) is refused where Python would read it as '1', '2' or a blank."""
    if not text.isascii():
        i, c = next((i, c) for i, c in enumerate(text) if not c.isascii())
        raise FlowError(f"{whole!r}: {c!r} (U+{ord(c):04X}) at character {i + 1}: a rule is ASCII text")


def parse_flow(text, mode="add"):
    """mode "add": a full rule with actions; "match": a match for del-flows/mod-flows
    (actions optional, cookie masks allowed)."""
    _ascii(text, text)
    body, sep, acts = text.partition("actions=")
    rule = Rule()
    if not sep and mode == "add":
        raise FlowError(f"{text!r}: must specify an action")
    m = rule.match
    used = []          # (syntax name, field) for prerequisite messages

    def put(name, fname, value, mask):
        old = m.get(fname)
        if fname == "vlan_tci" and old:              # dl_vlan and dl_vlan_pcp combine
            ov, om = old
            if (ov ^ value) & (om & mask):
                raise FlowError(f"{name}: conflicts with an earlier VLAN match")
            m[fname] = (ov | value, om | mask)
        elif old and old != (value, mask):
            raise FlowError(f"{name}: {fname} set multiple times to different values")
        else:
            m[fname] = (value, mask)
        used.append((name, fname))

    for tok in _split(body.rstrip(" ,")):
        name, eq, val = tok.partition("=")
        if not eq and ":" in tok and name.split(":")[0] in ("cookie", "idle", "hard", "priority"):
            name, _, val = tok.partition(":")       # ovs-ofctl's printed "cookie:0x5" form
            eq = "="
        name = name.strip()
        try:
            if not eq and name in FLAG_NAMES:
                if name not in rule.flags:
                    rule.flags += (name,)
            elif not eq:
                if name not in SHORTHANDS:
                    raise FlowError(f"unknown keyword {name}")
                dl, proto = SHORTHANDS[name]
                put(name, "dl_type", dl, 0xFFFF)
                if proto is not None:
                    put(name, "nw_proto", proto, 0xFF)
            elif name == "table":
                rule.table = _int(val, 0, MAX_TABLE, "table")
                rule.table_given = True
            elif name == "priority":
                rule.priority = _int(val, 0, 65535, "priority")
            elif name == "cookie":
                v, _, mk = val.partition("/")
                rule.cookie = _int(v, 0, 2 ** 64 - 1, "cookie")
                if mk:
                    if mode == "add":
                        raise FlowError("flow additions cannot use a cookie mask")
                    # /-1: every bit, as ovs-ofctl documents for an exact cookie match
                    rule.cookie_mask = 2 ** 64 - 1 if mk.strip() == "-1" else _int(mk, 0, 2 ** 64 - 1, "cookie mask")
                elif mode != "add":
                    rule.cookie_mask = 2 ** 64 - 1
            elif name in ("idle_timeout", "hard_timeout", "idle", "hard"):
                setattr(rule, "idle_timeout" if name.startswith("idle") else "hard_timeout",
                        _int(val, 0, 65535, name))
            elif name == "dl_vlan":
                vid = _int(val, 0, 0xFFFF, "dl_vlan")
                if vid == 0xFFFF:
                    put(name, "vlan_tci", 0, 0xFFFF)     # OVS: no 802.1Q header
                else:
                    put(name, "vlan_tci", (vid & 0xFFF) | VLAN_CFI, 0x1FFF)
            elif name == "dl_vlan_pcp":
                put(name, "vlan_tci", (_int(val, 0, 7, "dl_vlan_pcp") << 13) | VLAN_CFI, 0xF000)
            elif name == "ip_dscp":
                put(name, "nw_tos", _int(val, 0, 63, "ip_dscp") << 2, 0xFC)
            elif name == "nw_tos":
                put(name, "nw_tos", _int(val, 0, 255, "nw_tos") & 0xFC, 0xFC)
            elif name == "nw_frag":
                if val not in FRAG:
                    raise FlowError(f"nw_frag={val}: must be one of {', '.join(FRAG)}")
                put(name, "nw_frag", *FRAG[val])
            elif name == "tcp_flags" and val[:1] in "+-":
                v = mk = 0
                for part in val.replace("-", " -").replace("+", " +").split():
                    fl = part[1:]
                    if fl not in TCP_FLAGS:
                        raise FlowError(f"tcp_flags: unknown flag {fl!r}")
                    bit = 1 << TCP_FLAGS.index(fl)
                    mk |= bit
                    v |= bit if part[0] == "+" else 0
                put(name, "tcp_flags", v, mk)
            else:
                fname = ALIASES.get(name, name)
                if fname not in FIELDS:
                    raise FlowError(f"unknown keyword {name}")
                f = FIELDS[fname]
                v, mk = parse_value_mask(f, val)
                put(name, fname, v, mk)
        except (FieldError, FlowError) as e:
            raise FlowError(f"{text!r}: {e} (at {tok!r})") from None
    _check_prereqs(text, m, used)
    if sep:
        rule.actions = parse_actions(acts.strip(), rule.table, text)
    return rule


def _check_prereqs(text, m, used):
    dl = m.get("dl_type", (None,))[0]
    proto = m.get("nw_proto", (None,))[0]
    ipany = dl in (ETH_IP, ETH_IPV6)
    for name, fname in used:
        need = None
        if fname in ("nw_src", "nw_dst"):
            if dl not in (ETH_IP, ETH_ARP, ETH_RARP) or (name.startswith("arp") and dl == ETH_IP) \
                    or (name.startswith(("ip_", "ipv4")) and dl != ETH_IP):
                need = "arp" if name.startswith("arp") else "ip (or arp)"
        elif fname in ("ipv6_src", "ipv6_dst", "ipv6_label") and dl != ETH_IPV6:
            need = "ipv6"
        elif fname == "nw_proto" and not (ipany or dl in (ETH_ARP, ETH_RARP)) and name not in SHORTHANDS:
            need = "ip, ipv6 or arp"
        elif fname in ("nw_tos", "nw_ttl", "nw_frag") and not ipany:
            need = "ip or ipv6"
        elif fname in ("arp_sha", "arp_tha"):
            if name.startswith("nd_"):
                if not (dl == ETH_IPV6 and proto == 58):
                    need = "icmp6 (neighbour discovery)"
            elif dl not in (ETH_ARP, ETH_RARP):
                need = "arp"
        elif fname in ("tp_src", "tp_dst", "tcp_flags"):
            if name.startswith("icmp"):
                v6 = name.startswith("icmpv6") or dl == ETH_IPV6
                ok = (dl, proto) == ((ETH_IPV6, 58) if v6 else (ETH_IP, 1))
                need = None if ok else ("icmp6" if v6 else "icmp")
            else:
                protos = L4_NEEDS.get(name, (6, 17, 132))
                ok = ipany and proto in protos
                need = None if ok else ("tcp, udp or sctp" if len(protos) > 1
                                        else {6: "tcp", 17: "udp", 132: "sctp"}[protos[0]])
        elif fname == "nd_target" and not (dl == ETH_IPV6 and proto == 58):
            need = "icmp6 with icmp_type=135 or 136"
        if fname in ("tp_src", "tp_dst", "tcp_flags") and not name.startswith("icmp") \
                and m.get("nw_frag", (0, 0))[0] & 2:
            raise FlowError(f"{text!r}: {name} cannot be matched on later fragments (nw_frag=later has no "
                            "L4 header; OFPBMC_BAD_PREREQ)")
        if need:
            raise FlowError(f"{text!r}: {name} requires {need} in the match (e.g. {need.split()[0].rstrip(',')},"
                            f"{name}=...); "
                            "Open vSwitch would silently drop it from the match")


def parse_actions(text, table, whole=None):
    whole = whole or text
    _ascii(text, whole)
    toks = _split(text)
    if not toks:
        raise FlowError(f"{whole!r}: must specify an action")
    out, seen_goto, seen_meta = [], False, False
    for tok in toks:
        try:
            a = _parse_action(tok, table)
        except (FieldError, FlowError) as e:
            raise FlowError(f"{whole!r}: {e} (at action {tok!r})") from None
        if seen_goto:
            raise FlowError(f"{whole!r}: invalid instruction ordering: goto_table must be the last instruction")
        if a[0] == "meter" and out:
            raise FlowError(f"{whole!r}: invalid instruction ordering: meter must appear before apply_actions")
        if a[0] == "goto_table":
            seen_goto = True
        elif a[0] == "write_metadata":
            if seen_meta:
                raise FlowError(f"{whole!r}: write_metadata given twice")
            seen_meta = True
        elif seen_meta:
            raise FlowError(f"{whole!r}: invalid instruction ordering: apply_actions must appear before write_metadata")
        out.append(a)
    if ("drop",) in out and len(out) > 1:
        raise FlowError(f"{whole!r}: \"drop\" must not be accompanied by any other action or instruction")
    return out


def _parse_action(tok, table):
    low = tok.lower()
    if low in ("drop", "normal", "flood", "all", "in_port", "dec_ttl", "strip_vlan", "pop_vlan"):
        return ("pop_vlan",) if low == "strip_vlan" else (low,)
    if low.startswith("controller"):
        rest = tok[len("controller"):].lstrip(":")
        return ("controller", _int(rest, 0, 65535, "controller max_len") if rest else 65535)
    if tok.isdigit() or low.startswith("output:"):
        return ("output", _int(tok.split(":")[-1], 1, 65279, "output port"))
    name, colon, val = tok.partition(":")
    if name == "output":
        raise FlowError(f"{val}: output to unknown port")
    if name in MOD:
        f = FIELDS[MOD[name]]
        v = parse_value(f, val)
        if name == "mod_nw_tos" and v & 3:
            raise FlowError("mod_nw_tos: ECN bits must be zero")
        return ("set_field", f.name, v, f.full if name != "mod_nw_tos" else 0xFC)
    if name == "mod_vlan_vid":
        return ("mod_vlan_vid", _int(val, 0, 4095, "VLAN VID"))
    if name == "mod_vlan_pcp":
        return ("mod_vlan_pcp", _int(val, 0, 7, "VLAN PCP"))
    if name == "push_vlan":
        tpid = _int(val, 0, 0xFFFF, "push_vlan ethertype")
        if tpid not in (0x8100, 0x88A8):
            raise FlowError(f"push_vlan: ethertype {val} is not 0x8100 or 0x88a8")
        return ("push_vlan", tpid)
    if name in ("group", "meter"):                  # OpenFlow 1.1+ group and meter ids
        return (name, _int(val, 0, 0xFFFFFEFF if name == "group" else 0xFFFF0000, f"{name} id"))
    if name == "goto_table":
        t = _int(val, 0, MAX_TABLE, "goto_table")
        if t <= table:
            raise FlowError("actions are invalid with specified match (OFPBIC_BAD_TABLE_ID)")
        return ("goto_table", t)
    if name == "write_metadata":
        v, _, mk = val.partition("/")
        return ("write_metadata", _int(v, 0, 2 ** 64 - 1, "metadata"), _int(mk, 0, 2 ** 64 - 1, "mask") if mk
                else 2 ** 64 - 1)
    if low.startswith("resubmit"):
        if low.startswith("resubmit("):
            if not tok.endswith(")"):
                raise FlowError("resubmit(PORT,TABLE) is missing ')'")
            port, _, tbl = tok[len("resubmit("):-1].partition(",")
            p = _int(port, 1, 65279, "resubmit port") if port.strip() else None
            t = _int(tbl, 0, MAX_TABLE, "resubmit table") if tbl.strip() else None
            if tbl.strip() and t is None:
                raise FlowError(f"{tbl}: resubmit to unknown table")
            return ("resubmit", p, t)
        return ("resubmit", _int(val, 1, 65279, "resubmit port"), None)
    if name == "set_field":
        if "->" not in val:
            raise FlowError("set_field needs VALUE->FIELD")
        v, fname = val.rsplit("->", 1)
        target = SET_FIELD_NAMES.get(fname.strip())
        if target is None:
            raise FlowError(f"set_field: unknown field {fname!r}")
        if target == "vlan_vid":
            vid = _int(v.split("/")[0], 0, 0x1FFF, "vlan_vid")
            if not vid & VLAN_CFI:      # OXM vlan_vid carries OFPVID_PRESENT (0x1000)
                raise FlowError(f"Invalid value for set field vlan_vid: {v} (needs 0x1000, e.g. {vid | VLAN_CFI})")
            return ("mod_vlan_vid", vid & 0xFFF)
        if target == "vlan_pcp":
            return ("mod_vlan_pcp", _int(v, 0, 7, "vlan_pcp"))
        if target == "ip_dscp":
            return ("set_field", "nw_tos", _int(v, 0, 63, "ip_dscp") << 2, 0xFC)
        f = FIELDS[target]
        if target in ("in_port", "dl_type", "nw_proto", "nw_frag", "tcp_flags"):
            raise FlowError(f"set_field: {fname} is not writable")
        val_, mk = parse_value_mask(f, v)
        return ("set_field", f.name, val_, mk)
    raise FlowError(f"unknown action {tok!r}")


def format_match(m):
    """ovs-ofctl's canonical order: protocol shorthand first, then fields."""
    out, m = [], dict(m)
    dl = m.get("dl_type", (None,))[0]
    proto = m.get("nw_proto", (None,))[0]
    short = next((k for k, (d, p) in SHORTHANDS.items() if d == dl and p == proto and p is not None), None)
    if short:
        out.append(short)
        m.pop("dl_type"), m.pop("nw_proto")
    elif dl is not None and (short := next((k for k, (d, p) in SHORTHANDS.items() if d == dl and p is None), None)):
        out.append(short)
        m.pop("dl_type")
    is_arp = dl in (ETH_ARP, ETH_RARP)
    for fname in ORDER:
        if fname not in m:
            continue
        f, (v, mk) = FIELDS[fname], m[fname]
        if fname == "vlan_tci":
            out.append(_format_vlan(v, mk))
        elif fname == "nw_frag":
            out.append(f"nw_frag={FRAG_NAMES.get((v, mk), 'yes')}")
        elif fname == "nw_tos" and mk == 0xFC:
            out.append(f"nw_tos={v}")
        elif is_arp and fname in ("nw_src", "nw_dst", "nw_proto", "arp_sha", "arp_tha"):
            name = {"nw_src": "arp_spa", "nw_dst": "arp_tpa", "nw_proto": "arp_op"}.get(fname, fname)
            out.append(f"{name}={format_value_mask(f, v, mk)}")
        elif fname in ("tp_src", "tp_dst") and proto in (1, 58):
            out.append(f"{'icmp_type' if fname == 'tp_src' else 'icmp_code'}={v}")
        elif fname == "tcp_flags" and mk != f.full:
            out.append("tcp_flags=" + "".join(("+" if v >> i & 1 else "-") + n for i, n in enumerate(TCP_FLAGS)
                                              if mk >> i & 1))
        else:
            out.append(f"{fname}={format_value_mask(f, v, mk)}")
    return ",".join(out)


def _format_vlan(v, mk):
    if (v, mk) == (0, 0xFFFF):
        return "dl_vlan=0xffff"
    parts = []
    if mk & 0x1FFF == 0x1FFF and v & VLAN_CFI:
        parts.append(f"dl_vlan={v & 0xFFF}")
        mk &= ~0x1FFF
    if mk & 0xE000 == 0xE000 and v & VLAN_CFI:
        parts.append(f"dl_vlan_pcp={v >> 13}")
        mk &= ~0xE000
    if mk & ~VLAN_CFI & 0xFFFF or (mk and not parts):
        return f"vlan_tci={hex(v)}/{hex(mk | (VLAN_CFI if parts else 0))}" if not parts else ",".join(parts)
    return ",".join(parts)


def format_actions(actions):
    out = []
    for a in actions:
        k = a[0]
        if k == "output":
            out.append(f"output:{a[1]}")
        elif k in ("normal", "flood", "all", "in_port"):
            out.append(k.upper())
        elif k == "controller":
            out.append(f"CONTROLLER:{a[1]}")
        elif k == "pop_vlan":
            out.append("strip_vlan")
        elif k in ("drop", "dec_ttl"):
            out.append(k)
        elif k in ("mod_vlan_vid", "mod_vlan_pcp"):
            out.append(f"{k}:{a[1]}")
        elif k == "push_vlan":
            out.append(f"push_vlan:{hex(a[1])}")
        elif k in ("goto_table", "group", "meter"):
            out.append(f"{k}:{a[1]}")
        elif k == "write_metadata":
            out.append(f"write_metadata:{hex(a[1])}" + (f"/{hex(a[2])}" if a[2] != 2 ** 64 - 1 else ""))
        elif k == "resubmit":
            out.append(f"resubmit({a[1] or ''},{'' if a[2] is None else a[2]})" if a[2] is not None
                       else f"resubmit:{a[1]}")
        elif k == "set_field":
            f = FIELDS[a[1]]
            if a[1] in MOD_NAMES and (a[3] == f.full or (a[1] == "nw_tos" and a[3] == 0xFC)):
                out.append(f"{MOD_NAMES[a[1]]}:{format_value(f, a[2])}")
            else:
                out.append(f"set_field:{format_value_mask(f, a[2], a[3])}->{a[1]}")
    return ",".join(out)


def format_rule(r, stats=None):
    head = []
    if r.cookie:
        head.append(f"cookie={hex(r.cookie)}")
    if stats is not None:
        head += [f"duration={stats['duration']:.3f}s", f"table={r.table}", f"n_packets={r.n_packets}",
                 f"n_bytes={r.n_bytes}"]
    elif r.table:
        head.append(f"table={r.table}")
    if r.idle_timeout:
        head.append(f"idle_timeout={r.idle_timeout}")
    if r.hard_timeout:
        head.append(f"hard_timeout={r.hard_timeout}")
    mtext = ",".join(x for x in (f"priority={r.priority}" if r.priority != 32768 else "", format_match(r.match)) if x)
    if r.flags and stats is not None:              # dump-flows shows them as "send_flow_rem priority=..."
        mtext = " ".join(list(r.flags) + ([mtext] if mtext else []))
    elif r.flags:
        head += list(r.flags)
    if stats is not None:     # dump-flows shape: "cookie=..., duration=..., ..., priority=P,match actions=..."
        return ", ".join(head + ([mtext] if mtext else [])) + f" actions={format_actions(r.actions)}"
    return ",".join(head + ([mtext] if mtext else []) + [f"actions={format_actions(r.actions)}"])
