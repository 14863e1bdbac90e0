"""OpenFlow 1.3 flow entries as the slow path's rules, both ways: a flow_mod's match and
instructions become ovs-ofctl text, parsed by the same parser as `valepipe add-flow` (so
a controller's rules and the CLI's are one kind of rule, saved and shown alike), and a
rule becomes an OXM match and instructions for flow stats and flow_removed."""
import ipaddress

from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as osk

from pipeline.slowpath.fields import ETH_ARP, ETH_IP, ETH_IPV6, ETH_RARP, FIELDS
from pipeline.slowpath.flowtext import FlowError, parse_flow
from pipeline.slowpath.openflow.codec import OFError, match_bytes, serialized

OFPP_MAX = ofp.OFPP_MAX                 # 0xffffff00: ports above are reserved
LOCAL10 = 0xFFFE                        # OFPP_LOCAL as OpenFlow 1.0 numbers it (the flow's in_port)
MAX_TABLE = 254
RESERVED_OUT = {ofp.OFPP_IN_PORT: "in_port", ofp.OFPP_NORMAL: "normal", ofp.OFPP_FLOOD: "flood",
                ofp.OFPP_ALL: "all", ofp.OFPP_LOCAL: "LOCAL"}
FLAGS = ((ofp.OFPFF_SEND_FLOW_REM, "send_flow_rem"), (ofp.OFPFF_CHECK_OVERLAP, "check_overlap"),
         (ofp.OFPFF_RESET_COUNTS, "reset_counts"), (ofp.OFPFF_NO_PKT_COUNTS, "no_packet_counts"),
         (ofp.OFPFF_NO_BYT_COUNTS, "no_byte_counts"))


def port_to_flow(p):
    """An OpenFlow 1.3 port number as the slow path's 16-bit port (LOCAL is 0xfffe)."""
    return p - 0xFFFF0000 if p >= OFPP_MAX else p


def port_to_of(p):
    return p + 0xFFFF0000 if p >= 0xFF00 else p


def _ip(kind, v):
    return str(ipaddress.IPv4Address(v) if kind == 4 else ipaddress.IPv6Address(v))


def _vm(v, fmt=str):
    """os-ken's value or (value, mask) as ovs-ofctl's V or V/M."""
    if isinstance(v, tuple):
        return f"{fmt(v[0])}/{fmt(v[1])}"
    return fmt(v)


# OXM name -> the ovs-ofctl keyword that means the same (values written alike)
_SAME = {"metadata": "metadata", "eth_dst": "dl_dst", "eth_src": "dl_src", "ip_proto": "nw_proto",
         "ipv4_src": "nw_src", "ipv4_dst": "nw_dst", "tcp_src": "tcp_src", "tcp_dst": "tcp_dst", "udp_src": "udp_src",
         "udp_dst": "udp_dst", "sctp_src": "sctp_src", "sctp_dst": "sctp_dst", "icmpv4_type": "icmp_type",
         "icmpv4_code": "icmp_code", "arp_op": "arp_op", "arp_spa": "arp_spa", "arp_tpa": "arp_tpa",
         "arp_sha": "arp_sha", "arp_tha": "arp_tha", "ipv6_src": "ipv6_src", "ipv6_dst": "ipv6_dst",
         "ipv6_flabel": "ipv6_label", "icmpv6_type": "icmpv6_type", "icmpv6_code": "icmpv6_code",
         "ipv6_nd_target": "nd_target", "ipv6_nd_sll": "nd_sll", "ipv6_nd_tll": "nd_tll", "ip_dscp": "ip_dscp",
         "ip_ecn": "nw_ecn"}


def match_text(match):
    """An os-ken OFPMatch (already checked by the codec) as ovs-ofctl match text."""
    f = dict(match._fields2)
    out = []
    if "in_port" in f:
        out.append(f"in_port={port_to_flow(f['in_port'])}")
    if "eth_type" in f:
        out.append(f"dl_type={f['eth_type']:#06x}")
    vid, pcp = f.get("vlan_vid"), f.get("vlan_pcp")
    if pcp is not None and (vid is None or vid == 0 or (isinstance(vid, tuple) and not vid[0] & 0x1000)):
        raise OFError(ofp.OFPET_BAD_MATCH, ofp.OFPBMC_BAD_PREREQ, "vlan_pcp needs a VLAN (vlan_vid present)")
    if vid is not None or pcp is not None:
        v, m = (vid if isinstance(vid, tuple) else (vid, 0x1FFF)) if vid is not None else (0x1000, 0x1000)
        m &= 0x1FFF
        if pcp is not None:
            v, m = v | pcp << 13 | 0x1000, m | 0xF000
        out.append(f"vlan_tci={v:#06x}/{m:#06x}")
    for k, val in f.items():
        name = _SAME.get(k)
        if name is None:
            continue
        if k in ("metadata", "ipv6_flabel") or (isinstance(val, tuple) and isinstance(val[0], int)):
            out.append(f"{name}={_vm(val, hex)}")
        else:
            out.append(f"{name}={_vm(val)}")
    return ",".join(out)


def _set_field(a):
    k, v = a.key, a.value
    if k in ("in_port", "eth_type", "ip_proto", "in_phy_port"):
        raise OFError(ofp.OFPET_BAD_ACTION, ofp.OFPBAC_BAD_SET_ARGUMENT, f"set_field {k}: not writable")
    if k == "vlan_vid":
        return f"set_field:{v | 0x1000}->vlan_vid"
    name = {"eth_src": "eth_src", "eth_dst": "eth_dst", "ipv4_src": "ip_src", "ipv4_dst": "ip_dst",
            "vlan_pcp": "vlan_pcp"}.get(k) or _SAME.get(k)
    if name is None:
        raise OFError(ofp.OFPET_BAD_ACTION, ofp.OFPBAC_BAD_SET_TYPE, f"set_field {k}")
    return f"set_field:{hex(v) if k in ('metadata', 'ipv6_flabel') else v}->{name}"


def actions_text(actions, groups=None, packet_out=False):
    """os-ken actions as ovs-ofctl action tokens; `groups`: ids that exist (a group action
    needs its group, OFPBAC_BAD_OUT_GROUP otherwise)."""
    out = []
    for a in actions:
        t = a.type
        if t == ofp.OFPAT_OUTPUT:
            p = a.port
            if p == ofp.OFPP_CONTROLLER:
                out.append(f"controller:{a.max_len}")
            elif p == ofp.OFPP_TABLE and packet_out:
                out.append("resubmit(,0)")          # OVS's meaning: the tables, from table 0
            elif p in RESERVED_OUT:
                out.append(RESERVED_OUT[p])
            elif 1 <= p < 0xFF00:
                out.append(f"output:{p}")
            else:
                raise OFError(ofp.OFPET_BAD_ACTION, ofp.OFPBAC_BAD_OUT_PORT, f"output to port {p:#x}")
        elif t == ofp.OFPAT_GROUP:
            if groups is not None and a.group_id not in groups:
                raise OFError(ofp.OFPET_BAD_ACTION, ofp.OFPBAC_BAD_OUT_GROUP, f"group {a.group_id} does not exist")
            out.append(f"group:{a.group_id}")
        elif t == ofp.OFPAT_PUSH_VLAN:
            if a.ethertype not in (0x8100, 0x88A8):
                raise OFError(ofp.OFPET_BAD_ACTION, ofp.OFPBAC_BAD_ARGUMENT, f"push_vlan {a.ethertype:#x}")
            out.append(f"push_vlan:{a.ethertype:#x}")
        elif t == ofp.OFPAT_POP_VLAN:
            out.append("pop_vlan")
        elif t == ofp.OFPAT_DEC_NW_TTL:
            out.append("dec_ttl")
        elif t == ofp.OFPAT_SET_NW_TTL:
            out.append(f"mod_nw_ttl:{a.nw_ttl}")
        elif t == ofp.OFPAT_SET_FIELD:
            out.append(_set_field(a))
        else:
            # MPLS, PBB, queues, TTL copies: no such header or queue in the datapath
            raise OFError(ofp.OFPET_BAD_ACTION, ofp.OFPBAC_BAD_TYPE, f"action type {t} is not supported")
    return out


def instructions_text(instructions, table_id, groups=None, meters=None):
    """A flow's instructions as ovs-ofctl actions (meter first, goto_table last)."""
    meter, acts, meta, goto = [], [], [], []
    for i in instructions:
        if isinstance(i, osk.OFPInstructionMeter):
            if meters is not None and i.meter_id not in meters:
                raise OFError(ofp.OFPET_METER_MOD_FAILED, ofp.OFPMMFC_UNKNOWN_METER, f"meter {i.meter_id}")
            meter.append(f"meter:{i.meter_id}")
        elif isinstance(i, osk.OFPInstructionActions):
            if i.type == ofp.OFPIT_APPLY_ACTIONS:
                acts += actions_text(i.actions, groups)
            elif i.actions:                       # write_actions: no action set in this switch
                raise OFError(ofp.OFPET_BAD_INSTRUCTION, ofp.OFPBIC_UNSUP_INST, "write_actions is not supported")
            # clear_actions: the action set is always empty
        elif isinstance(i, osk.OFPInstructionWriteMetadata):
            meta.append(f"write_metadata:{i.metadata:#x}/{i.metadata_mask:#x}")
        elif isinstance(i, osk.OFPInstructionGotoTable):
            if not table_id < i.table_id <= MAX_TABLE:
                raise OFError(ofp.OFPET_BAD_INSTRUCTION, ofp.OFPBIC_BAD_TABLE_ID,
                              f"goto_table:{i.table_id} from table {table_id}")
            goto.append(f"goto_table:{i.table_id}")
    text = ",".join(meter + acts + meta + goto)
    return text or "drop"


def flow_text(fm, groups=None, meters=None, add=True):
    """A flow_mod as one ovs-ofctl rule (add) or match (the rest)."""
    head = [f"table={fm.table_id}"] if fm.table_id != ofp.OFPTT_ALL else []
    head.append(f"priority={fm.priority}")
    if add:
        if fm.cookie:
            head.append(f"cookie={fm.cookie:#x}")
        if fm.idle_timeout:
            head.append(f"idle_timeout={fm.idle_timeout}")
        if fm.hard_timeout:
            head.append(f"hard_timeout={fm.hard_timeout}")
        head += [name for bit, name in FLAGS if fm.flags & bit]
    m = match_text(fm.match)
    text = ",".join(head + ([m] if m else []))
    if add or fm.command in (ofp.OFPFC_MODIFY, ofp.OFPFC_MODIFY_STRICT):
        text += " actions=" + instructions_text(fm.instructions, fm.table_id if fm.table_id != ofp.OFPTT_ALL else 0,
                                                groups, meters)
    return text


def parse(text, mode="add"):
    """The rule text through the CLI's parser; its refusals as OpenFlow errors."""
    try:
        return parse_flow(text, mode=mode)
    except FlowError as e:
        why = str(e)
        if "requires" in why or "prerequisite" in why.lower():
            raise OFError(ofp.OFPET_BAD_MATCH, ofp.OFPBMC_BAD_PREREQ, why) from None
        if "unknown keyword" in why:
            raise OFError(ofp.OFPET_BAD_MATCH, ofp.OFPBMC_BAD_FIELD, why) from None
        if "action" in why or "instruction" in why:
            raise OFError(ofp.OFPET_BAD_ACTION, ofp.OFPBAC_BAD_ARGUMENT, why) from None
        raise OFError(ofp.OFPET_BAD_MATCH, ofp.OFPBMC_BAD_VALUE, why) from None


# -- rules back to OpenFlow ----------------------------------------------------------------------
def _mac(v):
    return ":".join(f"{(v >> (40 - 8 * i)) & 0xFF:02x}" for i in range(6))


def _field(name, v, m, full, conv=lambda x: x):
    return (name, conv(v)) if m == full else (name, (conv(v), conv(m)))


def oxm_fields(rule):
    """A rule's match as os-ken (name, value) pairs; fields OpenFlow 1.3 has no OXM for
    (nw_ttl, nw_frag, tcp_flags) are left out, as OVS leaves them out of an OF1.3 reply."""
    m = rule.match
    dl = m.get("dl_type", (None, 0))[0]
    proto = m.get("nw_proto", (None, 0))[0]
    out = []
    g = m.get
    if "in_port" in m:
        out.append(("in_port", port_to_of(m["in_port"][0])))
    if "metadata" in m:
        out.append(_field("metadata", *m["metadata"], FIELDS["metadata"].full))
    for f, n in (("dl_dst", "eth_dst"), ("dl_src", "eth_src")):
        if f in m:
            out.append(_field(n, *m[f], FIELDS[f].full, _mac))
    if dl is not None:
        out.append(("eth_type", dl))
    if "vlan_tci" in m:
        v, mk = m["vlan_tci"]
        if mk & 0x1000 and not v & 0x1000:
            out.append(("vlan_vid", 0))                         # no VLAN
        else:
            if mk & 0x1FFF:
                out.append(_field("vlan_vid", v & 0x1FFF, mk & 0x1FFF, 0x1FFF))
            if mk & 0xE000 == 0xE000:
                out.append(("vlan_pcp", v >> 13))
    if "nw_tos" in m:
        v, mk = m["nw_tos"]
        if mk & 0xFC:
            out.append(("ip_dscp", v >> 2))
        if mk & 3:
            out.append(("ip_ecn", v & 3))
    if "nw_proto" in m:
        out.append(("arp_op" if dl in (ETH_ARP, ETH_RARP) else "ip_proto", proto))
    arp = dl in (ETH_ARP, ETH_RARP)
    for f, n4, na in (("nw_src", "ipv4_src", "arp_spa"), ("nw_dst", "ipv4_dst", "arp_tpa")):
        if f in m:
            out.append(_field(na if arp else n4, *m[f], 0xFFFFFFFF, lambda x: _ip(4, x)))
    for f in ("ipv6_src", "ipv6_dst"):
        if f in m:
            out.append(_field(f, *m[f], FIELDS[f].full, lambda x: _ip(6, x)))
    if "ipv6_label" in m:
        out.append(_field("ipv6_flabel", *m["ipv6_label"], FIELDS["ipv6_label"].full))
    if "tp_src" in m or "tp_dst" in m:
        names = {6: ("tcp_src", "tcp_dst"), 17: ("udp_src", "udp_dst"), 132: ("sctp_src", "sctp_dst"),
                 1: ("icmpv4_type", "icmpv4_code"), 58: ("icmpv6_type", "icmpv6_code")}.get(proto)
        for f, n in zip(("tp_src", "tp_dst"), names or ()):
            if f in m:
                out.append(_field(n, *m[f], 0xFFFF) if proto in (6, 17, 132) else (n, m[f][0]))
    for f, na, nd in (("arp_sha", "arp_sha", "ipv6_nd_sll"), ("arp_tha", "arp_tha", "ipv6_nd_tll")):
        if f in m:
            out.append(_field(na, *m[f], FIELDS[f].full, _mac) if arp else (nd, _mac(m[f][0])))
    if "nd_target" in m:
        out.append(("ipv6_nd_target", _ip(6, m["nd_target"][0])))
    return out


def rule_match(rule):
    return match_bytes(oxm_fields(rule))


def _of_action(a):
    """One of the slow path's rule actions as os-ken actions (several for mod_vlan_vid on
    OpenFlow 1.0's terms); unknown kinds: none."""
    k = a[0]
    P = osk
    if k == "output":
        return [P.OFPActionOutput(port_to_of(a[1]))]
    if k in ("in_port", "normal", "flood", "all"):
        return [P.OFPActionOutput({"in_port": ofp.OFPP_IN_PORT, "normal": ofp.OFPP_NORMAL, "flood": ofp.OFPP_FLOOD,
                                   "all": ofp.OFPP_ALL}[k])]
    if k == "controller":
        return [P.OFPActionOutput(ofp.OFPP_CONTROLLER, a[1] if len(a) > 1 else 0xFFFF)]
    if k == "group":
        return [P.OFPActionGroup(a[1])]
    if k == "push_vlan":
        return [P.OFPActionPushVlan(a[1])]
    if k == "pop_vlan":
        return [P.OFPActionPopVlan()]
    if k == "dec_ttl":
        return [P.OFPActionDecNwTtl()]
    if k in ("mod_vlan_vid", "set_vlan_vid"):
        return [P.OFPActionSetField(vlan_vid=a[1] | 0x1000)]
    if k in ("mod_vlan_pcp", "set_vlan_pcp"):
        return [P.OFPActionSetField(vlan_pcp=a[1])]
    if k == "set_field":
        return _of_set_field(a[1], a[2], a[3])
    return []


def _of_set_field(f, v, m):
    P = osk
    if f == "nw_tos":
        out = []
        if m & 0xFC:
            out.append(P.OFPActionSetField(ip_dscp=v >> 2))
        if m & 3:
            out.append(P.OFPActionSetField(ip_ecn=v & 3))
        return out
    conv = {"dl_src": ("eth_src", _mac), "dl_dst": ("eth_dst", _mac), "nw_src": ("ipv4_src", lambda x: _ip(4, x)),
            "nw_dst": ("ipv4_dst", lambda x: _ip(4, x)), "ipv6_src": ("ipv6_src", lambda x: _ip(6, x)),
            "ipv6_dst": ("ipv6_dst", lambda x: _ip(6, x)), "tp_src": ("tcp_src", int), "tp_dst": ("tcp_dst", int),
            "metadata": ("metadata", int), "ipv6_label": ("ipv6_flabel", int)}.get(f)
    if conv is None:
        return []
    return [P.OFPActionSetField(**{conv[0]: conv[1](v)})]


def rule_instructions(rule):
    """A rule's actions as OpenFlow 1.3 instructions (bytes). A rule a controller added is
    shown with the instructions it sent."""
    sent = rule.__dict__.get("of_instructions")
    if sent is not None and sent[0] is rule.actions:
        return sent[1]
    P = osk
    meter, apply, meta, goto = [], [], [], []
    for a in rule.actions:
        if a[0] == "meter":
            meter.append(P.OFPInstructionMeter(a[1]))
        elif a[0] == "write_metadata":
            meta.append(P.OFPInstructionWriteMetadata(a[1], a[2]))
        elif a[0] == "goto_table":
            goto.append(P.OFPInstructionGotoTable(a[1]))
        elif a[0] == "resubmit" and a[1] is None and a[2] is not None and a[2] > rule.table:
            goto.append(P.OFPInstructionGotoTable(a[2]))
        else:
            apply += _of_action(a)
    ins = meter + ([P.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, apply)] if apply else []) + meta + goto
    return b"".join(serialized(i) for i in ins)


def remember_instructions(rule, raw):
    """Keep what the controller sent, while the rule's actions are the ones it set."""
    rule.__dict__["of_instructions"] = (rule.actions, bytes(raw))


def rule_flags(rule):
    return sum(bit for bit, name in FLAGS if name in getattr(rule, "flags", ()))


def outputs_to(rule, port, group):
    """OpenFlow's out_port/out_group filters: the rule has an output to `port` (OpenFlow
    1.3 number; OFPP_ANY: any) and to `group` (OFPG_ANY: any)."""
    if port != ofp.OFPP_ANY:
        hit = False
        for a in rule.actions:
            k = a[0]
            if (k == "output" and port_to_of(a[1]) == port) or (k == "controller" and port == ofp.OFPP_CONTROLLER) \
                    or (k in ("in_port", "normal", "flood", "all") and port == {
                        "in_port": ofp.OFPP_IN_PORT, "normal": ofp.OFPP_NORMAL, "flood": ofp.OFPP_FLOOD,
                        "all": ofp.OFPP_ALL}[k]):
                hit = True
                break
        if not hit:
            return False
    if group != ofp.OFPG_ANY:
        return any(a[0] == "group" and a[1] == group for a in rule.actions)
    return True


def overlaps(a, b):
    """Two rules of one priority that some packet could match both (OFPFF_CHECK_OVERLAP)."""
    for f in a.match.keys() & b.match.keys():
        (va, ma), (vb, mb) = a.match[f], b.match[f]
        if (va ^ vb) & ma & mb:
            return False
    return True
