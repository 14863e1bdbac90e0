"""`valepipe trace`: a flow (ovs-ofctl match syntax) or a packet in hex, run through the
tables and printed in the shape of `ovs-appctl ofproto/trace`."""
from pipeline import channel
from pipeline._native import ffi, lib
from pipeline.slowpath.fields import FIELDS, LOCAL, ORDER, format_value_mask
from pipeline.slowpath.flowtext import FlowError, format_actions, format_match, parse_flow
from pipeline.slowpath.xlate import Xlate


def flow_of_text(text):
    """`in_port=1,tcp,nw_dst=10.0.0.1,...` (exact values) -> slow-path flow."""
    m = parse_flow(text, mode="match")
    f = dict.fromkeys(ORDER, 0)
    for k, (v, mk) in m.match.items():
        if mk != FIELDS[k].full and k not in ("vlan_tci", "nw_tos", "nw_frag"):
            raise FlowError(f"{text!r}: a trace flow needs exact values, not masks ({k})")
        f[k] = v
    return f


HEX = set("0123456789abcdefABCDEF")


def trace_input(text):
    """What `valepipe trace` takes: a flow (`in_port=1,tcp,...`) or a flow's in_port and
    other fields followed by a packet in hex (spaces allowed, any length) -> a flow."""
    from pipeline.slowpath.fields import flow_from_attrs
    text = text.strip()
    if not text:
        raise FlowError("an empty flow: give its fields (in_port=N,...) or in_port=N and a packet in hex")
    if "actions=" in text:          # a rule's actions are not traced: refused, not ignored
        raise FlowError(f"{text[:60]!r}: a trace flow is a match (in_port=1,tcp,...), not a rule: leave out actions=")
    if text and set("".join(text.split())) <= HEX:
        raise FlowError(f"{text[:40]!r}: a packet needs its input port first: in_port=N <hex>")
    # the packet is the longest tail of hex digits and blanks after the first blank
    for i, ch in enumerate(text):
        if ch.isspace():
            tail = "".join(text[i:].split())
            if tail and set(tail) <= HEX:
                head = text[:i].rstrip(" ,")
                m = parse_flow(head, mode="match").match if head else {}
                if "in_port" not in m:
                    raise FlowError(f"{text[:40]!r}: a packet needs its input port first: in_port=N <hex>")
                return flow_from_attrs(attrs_of_packet(tail, m["in_port"][0]))
    return flow_of_text(text)


def attrs_of_packet(hexstr, in_port):
    """Run the fast path's own extract on a packet, as a miss would."""
    hexstr = "".join(hexstr.split())
    if len(hexstr) % 2:
        raise FlowError(f"the packet has an odd number of hex digits ({len(hexstr)})")
    try:
        raw = bytes.fromhex(hexstr)
    except ValueError:
        raise FlowError("the packet must be hex digits") from None
    if not 1 <= len(raw) <= 65535:
        raise FlowError(f"a packet is 1..65535 bytes, not {len(raw)}")
    key = ffi.new("struct vp_flow_key *")
    perr = ffi.new("uint64_t[]", lib.VP_PERR_N)
    lib.vp_extract_one(raw, len(raw), 0, key, perr)
    return channel.key_attrs(bytes(ffi.buffer(key)), lambda i: in_port)


def describe_flow(f):
    m = {k: (v, FIELDS[k].full) for k, v in f.items() if k in FIELDS and (v or k in ("in_port", "dl_type"))}
    return format_match(m)


def render(ofproto, flow, bridge="valepipe"):
    res = Xlate(ofproto.tables, ofproto.ports, ofproto.macs, ext=ofproto.ext).translate(flow)
    out = [f"Flow: {describe_flow(flow)}", "", f'bridge("{bridge}")', "-" * (len(bridge) + 10)]
    for depth, tid, rule, _ in res.trace:
        pad = "    " * depth
        if rule is None:
            out.append(f"{pad} {tid}. No match.")
            out.append(f"{pad}    drop")
            continue
        mtext = format_match(rule.match)
        out.append(f"{pad} {tid}. {mtext + ', ' if mtext else ''}priority {rule.priority}"
                   + (f", cookie {hex(rule.cookie)}" if rule.cookie else ""))
        out.append(f"{pad}    {format_actions(rule.actions)}")
    wc = {k: (flow[k] & m, m) for k, m in res.wc.items() if m and k in FIELDS}
    out += ["", f"Megaflow: {format_match(wc) or '(matches every packet of this in_port)'}",
            f"Datapath actions: {format_dp_actions(res.actions)}"]
    if res.error:
        out.append(f"Translation error: {res.error}")
    return "\n".join(out), res


def format_dp_actions(actions):
    parts = []
    for a in actions:
        if a[0] == "output":
            parts.append("LOCAL" if a[1] == LOCAL else str(a[1]))
        elif a[0] == "set" and a[1] == "icmp":
            parts.append(f"set(icmp(type={a[2] >> 8},code={a[2] & 0xFF}))")
        elif a[0] == "set":
            # the datapath's names for fields the flow keeps under other names, for their format
            f = FIELDS[{"arp_spa": "nw_src", "arp_tpa": "nw_dst", "arp_op": "tp_src", "nd_sll": "arp_sha",
                        "nd_tll": "arp_tha"}.get(a[1], a[1])]
            parts.append(f"set({a[1]}={format_value_mask(f, a[2], a[3])})")
        elif a[0] == "push_vlan":
            parts.append(f"push_vlan(tpid={hex(a[1])},vid={a[2] & 0xFFF},pcp={a[2] >> 13})")
        elif a[0] == "controller":
            # as Open vSwitch names the packet-in's cause (OFPR_*): action, no_match, invalid_ttl
            parts.append(f"controller(reason={a[1]})" if len(a) > 1 else "controller")
        else:
            parts.append(a[0])
    return ",".join(parts)
