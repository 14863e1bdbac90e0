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


def attrs_of_packet(hexstr, in_port):
    """Run the fast path's own extract on a packet, as a miss would."""
    try:
        raw = bytes.fromhex(hexstr.replace(" ", ""))
    except ValueError:
        raise FlowError("the packet must be hex digits") from None
    key = ffi.new("struct vp_flow_key *")
    perr = ffi.new("uint64_t[]", lib.VP_PERR_N)
    lib.vp_extract_one(raw, len(raw), 0, key, perr)
    return channel.key_attrs(bytes(ffi.buffer(key)), lambda i: in_port)


def describe_flow(f):
    m = {k: (v, FIELDS[k].full) for k, v in f.items() if k in FIELDS and (v or k in ("in_port", "dl_type"))}
    return format_match(m)


def render(ofproto, flow, bridge="valepipe"):
    res = Xlate(ofproto.tables, ofproto.ports, ofproto.macs).translate(flow)
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
            f = FIELDS.get({"arp_spa": "nw_src", "arp_tpa": "nw_dst", "arp_op": "tp_src"}.get(a[1], a[1]))
            parts.append(f"set({a[1]}={format_value_mask(f, a[2], a[3])})")
        elif a[0] == "push_vlan":
            parts.append(f"push_vlan(tpid={hex(a[1])},vid={a[2] & 0xFFF},pcp={a[2] >> 13})")
        else:
            parts.append(a[0])
    return ",".join(parts)
