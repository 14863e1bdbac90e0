"""Rules in Open vSwitch's ovs-ofctl syntax: parse (with OVS's prerequisite checks and an
error that names the offending token) and print back in ovs-ofctl's canonical form."""
from dataclasses import dataclass, field

from pipeline.slowpath.fields import (ETH_ARP, ETH_IP, ETH_IPV6, ETH_RARP, FIELDS, LOCAL, ORDER, VLAN_CFI, FieldError,
                                      strict_int, format_value, format_value_mask, parse_value, parse_value_mask)

MAX_TABLE = 254
SHORTHANDS = {  # name: (dl_type, nw_proto)
    "ip": (ETH_IP, None), "ipv6": (ETH_IPV6, None), "arp": (ETH_ARP, None), "rarp": (ETH_RARP, None),
    "tcp": (ETH_IP, 6), "udp": (ETH_IP, 17), "sctp": (ETH_IP, 132), "icmp": (ETH_IP, 1),
    "tcp6": (ETH_IPV6, 6), "udp6": (ETH_IPV6, 17), "sctp6": (ETH_IPV6, 132), "icmp6": (ETH_IPV6, 58),
}
ALIASES = {  # syntax name -> field (plain renames)
    "eth_src": "dl_src", "eth_dst": "dl_dst", "eth_type": "dl_type", "ip_src": "nw_src", "ip_dst": "nw_dst",
    "ipv4_src": "nw_src", "ipv4_dst": "nw_dst", "ip_proto": "nw_proto", "ip_ttl": "nw_ttl",
    "arp_spa": "nw_src", "arp_tpa": "nw_dst", "arp_op": "nw_proto",
    "tcp_src": "tp_src", "tcp_dst": "tp_dst", "udp_src": "tp_src", "udp_dst": "tp_dst",
    "sctp_src": "tp_src", "sctp_dst": "tp_dst", "icmp_type": "tp_src", "icmp_code": "tp_dst",
    "icmpv6_type": "tp_src", "icmpv6_code": "tp_dst", "nd_sll": "arp_sha", "nd_tll": "arp_tha",
    "ipv6_label": "ipv6_label", "nd_target": "nd_target",
}
L4_NEEDS = {"tcp_src": (6,), "tcp_dst": (6,), "tcp_flags": (6,), "udp_src": (17,), "udp_dst": (17,),
            "sctp_src": (132,), "sctp_dst": (132,), "tp_src": (6, 17, 132), "tp_dst": (6, 17, 132)}
# names Open vSwitch refuses a mask on although the field behind them takes one elsewhere
UNMASKABLE_NAMES = frozenset({"icmp_type", "icmp_code", "icmpv6_type", "icmpv6_code"})
FRAG = {"no": (0, 1), "yes": (1, 1), "first": (1, 3), "later": (3, 3), "not_later": (0, 2)}
FRAG_NAMES = {v: k for k, v in FRAG.items()}
FRAG_NAMES.update({(0, 3): "no", (1, 3): "first"})     # how ovs-ofctl prints the exact forms
TCP_FLAGS = ["fin", "syn", "rst", "psh", "ack", "urg", "ece", "cwr", "ns"]
FLAG_NAMES = ("send_flow_rem", "check_overlap", "reset_counts", "no_packet_counts", "no_byte_counts")
# Header rewrites are ("set_field", field, value, mask, prerequisite): what the packet must
# be for the rewrite to happen (Open vSwitch skips it otherwise). mod_* actions and
# set_field differ only in that: mod_tp_dst rewrites any IP packet's port ("l4port"),
# set_field:...->tcp_dst only a TCP packet's.


class SetFieldText(tuple):
    """A header rewrite written as set_field (not as a mod_* action). Equal to the same
    rewrite written either way; only which rules are taken differs: Open vSwitch refuses a
    set_field whose prerequisites the match does not promise, where it takes the mod_*
    action over OpenFlow 1.0."""
    __slots__ = ()
MOD = {  # name: (field, mask or None for the field's width, prerequisite)
    "mod_dl_src": ("dl_src", None, None), "mod_dl_dst": ("dl_dst", None, None),
    "mod_nw_src": ("nw_src", None, "ipv4"), "mod_nw_dst": ("nw_dst", None, "ipv4"),
    "mod_nw_tos": ("nw_tos", 0xFC, "ip"), "mod_nw_ecn": ("nw_tos", 0x03, "ip"), "mod_nw_ttl": ("nw_ttl", None, "ip"),
    "mod_tp_src": ("tp_src", None, "l4port"), "mod_tp_dst": ("tp_dst", None, "l4port"),
}
MOD_NAMES = {(f, m or FIELDS[f].full, pre): name for name, (f, m, pre) in MOD.items()}
SET_FIELD = {  # set_field target: (field, prerequisite); printed with the first name of its kind
    "eth_src": ("dl_src", None), "eth_dst": ("dl_dst", None), "dl_src": ("dl_src", None), "dl_dst": ("dl_dst", None),
    "ip_src": ("nw_src", "ipv4"), "ip_dst": ("nw_dst", "ipv4"), "nw_src": ("nw_src", "ipv4"),
    "nw_dst": ("nw_dst", "ipv4"), "ipv4_src": ("nw_src", "ipv4"), "ipv4_dst": ("nw_dst", "ipv4"),
    "ipv6_src": ("ipv6_src", "ipv6"), "ipv6_dst": ("ipv6_dst", "ipv6"),
    "nw_tos": ("nw_tos", "ip"), "ip_dscp": ("nw_tos", "ip"), "nw_ecn": ("nw_tos", "ip"), "ip_ecn": ("nw_tos", "ip"),
    "nw_ttl": ("nw_ttl", "ip"),
    "tcp_src": ("tp_src", "tcp"), "tcp_dst": ("tp_dst", "tcp"), "tp_src": ("tp_src", "tcp"), "tp_dst": ("tp_dst", "tcp"),
    "udp_src": ("tp_src", "udp"), "udp_dst": ("tp_dst", "udp"), "sctp_src": ("tp_src", "sctp"),
    "sctp_dst": ("tp_dst", "sctp"), "icmp_type": ("tp_src", "icmp"), "icmp_code": ("tp_dst", "icmp"),
    "icmpv6_type": ("tp_src", "icmp6"), "icmpv6_code": ("tp_dst", "icmp6"), "metadata": ("metadata", None),
    "ipv6_label": ("ipv6_label", "ipv6"), "arp_op": ("nw_proto", "arp"), "arp_spa": ("nw_src", "arp"),
    "arp_tpa": ("nw_dst", "arp"), "arp_sha": ("arp_sha", "arp"), "arp_tha": ("arp_tha", "arp"),
    "nd_target": ("nd_target", "nd"), "nd_sll": ("arp_sha", "nd_ns"), "nd_tll": ("arp_tha", "nd_na"),
}
SET_FIELD_PRINT = {}
for _n, _k in SET_FIELD.items():
    SET_FIELD_PRINT.setdefault(_k, _n)
PORT_NAMES = {"LOCAL": LOCAL}                      # OpenFlow's reserved port numbers usable as ports


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

    def put(name, fname, value, mask, merge=False):
        """As Open vSwitch's mf_set(): a field given again replaces what was there, except
        the parts of one field (dl_vlan and dl_vlan_pcp in vlan_tci, DSCP and ECN in
        nw_tos), which replace only their own bits."""
        ov, om = m.get(fname, (0, 0))
        m[fname] = ((ov & ~mask) | value, om | mask) if merge else (value, mask)
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
                    put(name, "vlan_tci", (vid & 0xFFF) | VLAN_CFI, 0x1FFF, merge=True)
            elif name in ("dl_vlan_pcp", "vlan_pcp"):
                put(name, "vlan_tci", (_int(val, 0, 7, name) << 13) | VLAN_CFI, 0xF000, merge=True)
            elif name == "ip_dscp":
                put(name, "nw_tos", _int(val, 0, 63, "ip_dscp") << 2, 0xFC, merge=True)
            elif name == "nw_tos":
                put(name, "nw_tos", _int(val, 0, 255, "nw_tos") & 0xFC, 0xFC, merge=True)
            elif name == "in_port" and val.strip().upper() in PORT_NAMES:
                put(name, "in_port", PORT_NAMES[val.strip().upper()], FIELDS["in_port"].full)
            elif name in ("nw_ecn", "ip_ecn"):
                put(name, "nw_tos", _int(val, 0, 3, name), 0x03, merge=True)
            elif name in ("nw_frag", "ip_frag"):
                if val not in FRAG:
                    raise FlowError(f"{name}={val}: unknown fragment type, must be one of {', '.join(FRAG)}")
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
                if "/" in val and name in UNMASKABLE_NAMES:
                    raise FlowError(f"{val}: invalid mask for field {name}")
                v, mk = parse_value_mask(f, val)
                put(name, fname, v, mk)
        except (FieldError, FlowError) as e:
            raise FlowError(f"{text!r}: {e} (at {tok!r})") from None
    _check_prereqs(text, m, used)
    if sep:
        rule.actions = parse_actions(acts.strip(), rule.table, text)
        _check_actions(text, m, rule.actions)
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


def _check_actions(text, m, actions):
    """Open vSwitch's ofpacts_check(): a set_field must have its prerequisites in the
    rule's match (set_field:80->tcp_dst needs tcp), a VLAN field needs a tag there (from the
    match or an earlier push/mod_vlan_vid), and at most two tags can be pushed. An action
    whose match does not promise what it edits (strip_vlan without a tag, mod_nw_dst
    without ip, ...) is OpenFlow 1.0 only, so it cannot share a rule with push_vlan, or with
    write_metadata before goto_table (both OpenFlow 1.1+ only): no OpenFlow version carries
    that rule, and Open vSwitch refuses it."""
    dl = m.get("dl_type", (0, 0))[0]
    proto = m.get("nw_proto", (0, 0))[0]
    later = m.get("nw_frag", (0, 0))[0] & 2
    vt, vm = m.get("vlan_tci", (0, 0))
    tags = [bool(vt & vm & VLAN_CFI), False]          # which of the two VLAN headers exist
    ip = dl in (ETH_IP, ETH_IPV6)
    ok = {None: True, "l4port": ip and proto in (6, 17, 132) and not later, "ipv4": dl == ETH_IP,
          "ipv6": dl == ETH_IPV6, "ip": ip, "tcp": ip and proto == 6 and not later,
          "udp": ip and proto == 17 and not later, "sctp": ip and proto == 132 and not later,
          "icmp": dl == ETH_IP and proto == 1, "icmp6": dl == ETH_IPV6 and proto == 58,
          "arp": dl in (ETH_ARP, ETH_RARP)}
    nd = dl == ETH_IPV6 and proto == 58 and m.get("tp_dst", (0, 0))[0] == 0
    icmp_type = m.get("tp_src", (0, 0))[0]
    ok.update(nd=nd and icmp_type in (135, 136), nd_ns=nd and icmp_type == 135, nd_na=nd and icmp_type == 136)
    of10_only = of11 = None
    for a in actions:
        k = a[0]
        bad = None
        if k == "set_field":
            if a[1] != "metadata" and not ok[a[4]]:
                mod = None if isinstance(a, SetFieldText) else MOD_NAMES.get((a[1], a[3], a[4]))
                if mod and mod not in ("mod_nw_ecn", "mod_nw_ttl"):
                    of10_only = of10_only or mod      # OpenFlow 1.0 has an action for it
                else:
                    # no OpenFlow 1.0 action: OVS sends it as a set_field, checked as one
                    bad = mod or SET_FIELD_PRINT[(a[1], a[4])]
        elif k == "dec_ttl" and not ip:
            of10_only = of10_only or "dec_ttl"
        elif k in ("set_vlan_vid", "set_vlan_pcp") and not tags[0]:
            bad = "vlan_vid" if k == "set_vlan_vid" else "vlan_pcp"
        elif k == "push_vlan":
            if tags[1]:
                raise FlowError(f"{text!r}: push_vlan: at most two VLAN headers (OFPBAC_BAD_TAG)")
            tags = [True, tags[0]]
            of11 = of11 or "push_vlan"
        elif k == "pop_vlan":
            if not tags[0]:
                of10_only = of10_only or "strip_vlan"
            tags = [tags[1], False]
        elif k == "goto_table" and any(x[0] == "write_metadata" for x in actions):
            of11 = of11 or "write_metadata with goto_table"
        if k in ("mod_vlan_vid", "mod_vlan_pcp", "set_vlan_vid", "set_vlan_pcp"):
            tags[0] = True
        if bad:
            raise FlowError(f"{text!r}: {bad if bad.startswith('mod_') else 'set_field ' + bad} lacks correct "
                            "prerequisites in the match (OFPBAC_MATCH_INCONSISTENT)")
    if of10_only and of11:
        raise FlowError(f"{text!r}: no OpenFlow version carries this rule: {of10_only} without the match "
                        f"promising what it edits is OpenFlow 1.0 only, {of11} is OpenFlow 1.1+ "
                        "(Open vSwitch: no usable protocol)")


def parse_actions(text, table, whole=None):
    whole = whole or text
    _ascii(text, whole)
    toks = _split(text)
    if not toks:
        return [("drop",)]                          # "actions=" with nothing: drop, as in OVS
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


def port_number(text, what, low=1):
    """An OpenFlow port: a number (up to 65279, or LOCAL's 65534) or LOCAL; None for IN_PORT
    (the packet's own, where OVS takes it)."""
    t = text.strip().upper()
    if t in PORT_NAMES:
        return PORT_NAMES[t]
    if t == "IN_PORT" or t == "65528":
        return None
    v = _int(text, low, 65535, what)
    if v > 65279 and v != LOCAL:
        raise FlowError(f"{what} {text}: a reserved port valepipe does not take there")
    return v


# output:PORT for OpenFlow's reserved ports, by name or by number (OpenFlow 1.0's 0xfff8..)
OUTPUT_NAMES = {"normal": ("normal",), "flood": ("flood",), "all": ("all",), "in_port": ("in_port",),
                "controller": ("controller", 65535), "local": ("output", LOCAL)}
OUTPUT_NUMBERS = {0xFFF8: "in_port", 0xFFFA: "normal", 0xFFFB: "flood", 0xFFFC: "all", 0xFFFD: "controller",
                  0xFFFE: "local"}


def _parse_action(tok, table):
    low = tok.lower()
    if low in ("drop", "normal", "flood", "all", "in_port", "dec_ttl", "strip_vlan", "pop_vlan", "local"):
        return {"strip_vlan": ("pop_vlan",), "local": ("output", LOCAL)}.get(low, (low,))
    if low.startswith("controller"):
        rest = tok[len("controller"):].lstrip(":")
        return ("controller", _int(rest, 0, 65535, "controller max_len") if rest else 65535)
    if tok.isdigit() or low.startswith("output:"):
        port = tok.split(":", 1)[-1]
        if port.lower() in OUTPUT_NAMES:
            return OUTPUT_NAMES[port.lower()]
        v = _int(port, 0, 65535, "output port")
        if v in OUTPUT_NUMBERS:
            return OUTPUT_NAMES[OUTPUT_NUMBERS[v]]
        if v > 65279:
            raise FlowError(f"output:{port}: a reserved port valepipe does not have")
        return ("output", v)
    name, colon, val = tok.partition(":")
    if name == "output":
        raise FlowError(f"{val}: output to unknown port")
    if name in MOD:
        fname, mask, prereq = MOD[name]
        f = FIELDS[fname]
        if name == "mod_nw_ecn":
            v = _int(val, 0, 3, "mod_nw_ecn")
        elif name == "mod_nw_ttl":
            v = _int(val, 0, 255, "mod_nw_ttl")
        else:
            v = parse_value(f, val)
        if name == "mod_nw_tos" and v & 3:
            raise FlowError("mod_nw_tos: ECN bits must be zero")
        return ("set_field", fname, v, mask or f.full, prereq)
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
            p = port_number(port, "resubmit port") if port.strip() else None
            t = _int(tbl, 0, MAX_TABLE, "resubmit table") if tbl.strip() else None
            if tbl.strip() and t is None:
                raise FlowError(f"{tbl}: resubmit to unknown table")
            return ("resubmit", p, t)
        port = port_number(val, "resubmit port")
        if port is None:
            raise FlowError(f"resubmit:{val}: name a port or a table")
        return ("resubmit", port, None)
    if name == "set_field":
        if "->" not in val:
            raise FlowError("set_field needs VALUE->FIELD")
        v, fname = val.rsplit("->", 1)
        fname = fname.strip()
        if fname in ("vlan_vid", "vlan_pcp"):
            if "/" in v:
                raise FlowError(f"set_field: a masked {fname} is not supported by valepipe")
            if fname == "vlan_pcp":
                return ("set_vlan_pcp", _int(v, 0, 7, "vlan_pcp"))
            vid = _int(v, 0, 0x1FFF, "vlan_vid")
            if not vid & VLAN_CFI:      # OXM vlan_vid carries OFPVID_PRESENT (0x1000)
                raise FlowError(f"Invalid value for set field vlan_vid: {v} (needs 0x1000, e.g. {vid | VLAN_CFI})")
            return ("set_vlan_vid", vid & 0xFFF)
        if fname not in SET_FIELD:
            if fname in FIELDS or fname in ALIASES:
                raise FlowError(f"set_field: {fname} is not writable")
            raise FlowError(f"set_field: unknown field {fname!r}")
        target, prereq = SET_FIELD[fname]
        f = FIELDS[target]
        if fname == "ip_dscp":
            return SetFieldText(("set_field", "nw_tos", _int(v, 0, 63, "ip_dscp") << 2, 0xFC, prereq))
        if fname in ("nw_ecn", "ip_ecn"):
            return SetFieldText(("set_field", "nw_tos", _int(v, 0, 3, fname), 0x03, prereq))
        if fname == "arp_op":                         # as OVS: an opcode the flow can hold (8 bits)
            return SetFieldText(("set_field", "nw_proto", _int(v, 0, 0xFF, "arp_op"), 0xFF, prereq))
        val_, mk = parse_value_mask(f, v)
        if fname == "nw_tos":
            if val_ & 3 or "/" in v:
                raise FlowError(f"set_field: {v} is not a valid nw_tos (DSCP bits only, e.g. 64)")
            mk = 0xFC
        if prereq in ("icmp", "icmp6") and val_ > 255:
            raise FlowError(f"set_field: {fname} is 8 bits, not {v}")
        return SetFieldText(("set_field", target, val_, mk, prereq))
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
        elif fname == "nw_tos" and (mk & 0xFC) in (0, 0xFC) and (mk & 3) in (0, 3):
            if mk & 0xFC:
                out.append(f"nw_tos={v & 0xFC}")
            if mk & 3:
                out.append(f"nw_ecn={v & 3}")
        elif fname == "in_port" and v == LOCAL:
            out.append("in_port=LOCAL")
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
    """dl_vlan/dl_vlan_pcp where they say exactly the match, else vlan_tci=V/M."""
    if (v, mk) == (0, 0xFFFF):
        return "dl_vlan=0xffff"
    if v & VLAN_CFI and mk in (0x1FFF, 0xF000, 0xFFFF):
        parts = []
        if mk & 0x0FFF:
            parts.append(f"dl_vlan={v & 0xFFF}")
        if mk & 0xE000:
            parts.append(f"dl_vlan_pcp={v >> 13}")
        return ",".join(parts)
    return f"vlan_tci={hex(v)}/{hex(mk)}"


def format_actions(actions):
    out = []
    for a in actions:
        k = a[0]
        if k == "output":
            out.append("LOCAL" if a[1] == LOCAL else f"output:{a[1]}")
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
        elif k == "set_vlan_vid":
            out.append(f"set_field:{a[1] | VLAN_CFI}->vlan_vid")
        elif k == "set_vlan_pcp":
            out.append(f"set_field:{a[1]}->vlan_pcp")
        elif k == "push_vlan":
            out.append(f"push_vlan:{hex(a[1])}")
        elif k in ("goto_table", "group", "meter"):
            out.append(f"{k}:{a[1]}")
        elif k == "write_metadata":
            out.append(f"write_metadata:{hex(a[1])}" + (f"/{hex(a[2])}" if a[2] != 2 ** 64 - 1 else ""))
        elif k == "resubmit":
            port = "LOCAL" if a[1] == LOCAL else (a[1] or "")
            out.append(f"resubmit({port},{'' if a[2] is None else a[2]})" if a[2] is not None
                       else f"resubmit:{port}")
        elif k == "set_field":
            out.append(_format_set_field(a))
    return ",".join(out)


def _format_set_field(a):
    _, fname, v, m, prereq = a
    f = FIELDS[fname]
    mod = MOD_NAMES.get((fname, m, prereq))
    if mod:
        return f"{mod}:{v if fname in ('nw_tos', 'nw_ttl') else format_value(f, v)}"
    name = SET_FIELD_PRINT[(fname, prereq)]
    if fname == "nw_tos":
        return f"set_field:{v}->nw_tos" if m == 0xFC else f"set_field:{v}->nw_ecn"
    if m == f.full:
        return f"set_field:{v if prereq in ('icmp', 'icmp6') else format_value(f, v)}->{name}"
    return f"set_field:{format_value_mask(f, v, m)}->{name}"


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
