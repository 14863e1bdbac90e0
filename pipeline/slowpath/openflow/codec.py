"""OpenFlow 1.3 on the wire, the switch's side: framing, decoding what a controller sends and
encoding what a switch answers, with os-ken's ofproto_v1_3 layouts and its match,
instruction, action, bucket and meter-band codecs (the ones Faucet's messages are made with).

os-ken is a controller library: it parses what switches send and serializes what
controllers send. The message headers of the other direction are packed here with its
PACK_STR layouts; every part inside (matches, instructions, actions, buckets, bands, table
features, ports) goes through its classes. Nothing from the peer reaches os-ken unchecked:
every TLV list is walked first (a zero length would make its parsers loop for ever, an
unknown type raise), and a malformed message raises OFError with the OFPET_*/code to answer.
"""
import struct

from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as osk

VERSION = ofp.OFP_VERSION             # 0x04
HEADER = struct.Struct(ofp.OFP_HEADER_PACK_STR)
NO_BUFFER = ofp.OFP_NO_BUFFER
MAX_LEN = 0xFFFF                      # the header's 16-bit length


class OFError(Exception):
    """A request refused with an OpenFlow error (type, code); `why` for logs and counters."""

    def __init__(self, type_, code, why=""):
        super().__init__(why or f"error type {type_} code {code}")
        self.type, self.code, self.why = type_, code, why


def bad_request(code, why=""):
    return OFError(ofp.OFPET_BAD_REQUEST, code, why)


class _Datapath:
    """What os-ken's message classes ask of a datapath: its protocol modules."""
    ofproto = ofp
    ofproto_parser = osk


DP = _Datapath()

# -- OXM: the OpenFlow basic fields valepipe reads (os-ken's names), their sizes and masks --
# id: (name, bytes, maskable)
OXM = {0: ("in_port", 4, False), 1: ("in_phy_port", 4, False), 2: ("metadata", 8, True),
       3: ("eth_dst", 6, True), 4: ("eth_src", 6, True), 5: ("eth_type", 2, False), 6: ("vlan_vid", 2, True),
       7: ("vlan_pcp", 1, False), 8: ("ip_dscp", 1, False), 9: ("ip_ecn", 1, False), 10: ("ip_proto", 1, False),
       11: ("ipv4_src", 4, True), 12: ("ipv4_dst", 4, True), 13: ("tcp_src", 2, True), 14: ("tcp_dst", 2, True),
       15: ("udp_src", 2, True), 16: ("udp_dst", 2, True), 17: ("sctp_src", 2, True), 18: ("sctp_dst", 2, True),
       19: ("icmpv4_type", 1, False), 20: ("icmpv4_code", 1, False), 21: ("arp_op", 2, False),
       22: ("arp_spa", 4, True), 23: ("arp_tpa", 4, True), 24: ("arp_sha", 6, True), 25: ("arp_tha", 6, True),
       26: ("ipv6_src", 16, True), 27: ("ipv6_dst", 16, True), 28: ("ipv6_flabel", 4, True),
       29: ("icmpv6_type", 1, False), 30: ("icmpv6_code", 1, False), 31: ("ipv6_nd_target", 16, False),
       32: ("ipv6_nd_sll", 6, False), 33: ("ipv6_nd_tll", 6, False), 34: ("mpls_label", 4, False),
       35: ("mpls_tc", 1, False), 36: ("mpls_bos", 1, False), 37: ("pbb_isid", 3, True),
       38: ("tunnel_id", 8, True), 39: ("ipv6_exthdr", 2, True)}
# fields of the basic class the switch cannot match on (no such header in its flow key)
OXM_UNSUPPORTED = {"in_phy_port", "mpls_label", "mpls_tc", "mpls_bos", "pbb_isid", "tunnel_id", "ipv6_exthdr"}

INSTRUCTIONS = {ofp.OFPIT_GOTO_TABLE: 8, ofp.OFPIT_WRITE_METADATA: 24, ofp.OFPIT_WRITE_ACTIONS: None,
                ofp.OFPIT_APPLY_ACTIONS: None, ofp.OFPIT_CLEAR_ACTIONS: 8, ofp.OFPIT_METER: 8}
# action type: its fixed length (None: variable, set_field)
ACTIONS = {ofp.OFPAT_OUTPUT: 16, ofp.OFPAT_COPY_TTL_OUT: 8, ofp.OFPAT_COPY_TTL_IN: 8, ofp.OFPAT_SET_MPLS_TTL: 8,
           ofp.OFPAT_DEC_MPLS_TTL: 8, ofp.OFPAT_PUSH_VLAN: 8, ofp.OFPAT_POP_VLAN: 8, ofp.OFPAT_PUSH_MPLS: 8,
           ofp.OFPAT_POP_MPLS: 8, ofp.OFPAT_SET_QUEUE: 8, ofp.OFPAT_GROUP: 8, ofp.OFPAT_SET_NW_TTL: 8,
           ofp.OFPAT_DEC_NW_TTL: 8, ofp.OFPAT_SET_FIELD: None, ofp.OFPAT_PUSH_PBB: 8, ofp.OFPAT_POP_PBB: 8}


def _u16(buf, off):
    return struct.unpack_from("!H", buf, off)[0]


def check_match(buf, off, end):
    """Walk an ofp_match at buf[off:end]; returns its padded length. Raises OFError."""
    if off + 4 > end:
        raise OFError(ofp.OFPET_BAD_MATCH, ofp.OFPBMC_BAD_LEN, "match header cut short")
    mtype, mlen = struct.unpack_from("!HH", buf, off)
    if mtype != ofp.OFPMT_OXM:
        raise OFError(ofp.OFPET_BAD_MATCH, ofp.OFPBMC_BAD_TYPE, f"match type {mtype} (only OXM)")
    if mlen < 4 or off + mlen > end:
        raise OFError(ofp.OFPET_BAD_MATCH, ofp.OFPBMC_BAD_LEN, f"match length {mlen}")
    p, seen = off + 4, set()
    while p < off + mlen:
        if p + 4 > off + mlen:
            raise OFError(ofp.OFPET_BAD_MATCH, ofp.OFPBMC_BAD_LEN, "OXM header cut short")
        cls, fh, ln = struct.unpack_from("!HBB", buf, p)
        field, hasmask = fh >> 1, fh & 1
        if p + 4 + ln > off + mlen:
            raise OFError(ofp.OFPET_BAD_MATCH, ofp.OFPBMC_BAD_LEN, "OXM field past the match")
        if cls != ofp.OFPXMC_OPENFLOW_BASIC or field not in OXM:
            raise OFError(ofp.OFPET_BAD_MATCH, ofp.OFPBMC_BAD_FIELD, f"OXM class {cls:#x} field {field}")
        name, size, maskable = OXM[field]
        if ln != size * (2 if hasmask else 1):
            raise OFError(ofp.OFPET_BAD_MATCH, ofp.OFPBMC_BAD_LEN, f"{name}: {ln} bytes")
        if name in OXM_UNSUPPORTED:
            raise OFError(ofp.OFPET_BAD_MATCH, ofp.OFPBMC_BAD_FIELD, f"{name} is not supported")
        if hasmask and not maskable:
            raise OFError(ofp.OFPET_BAD_MATCH, ofp.OFPBMC_BAD_MASK, f"{name} cannot be masked")
        if hasmask:
            v = int.from_bytes(buf[p + 4:p + 4 + size], "big")
            m = int.from_bytes(buf[p + 4 + size:p + 4 + 2 * size], "big")
            if v & ~m:
                raise OFError(ofp.OFPET_BAD_MATCH, ofp.OFPBMC_BAD_WILDCARDS, f"{name}: value bits outside its mask")
        if field in seen:
            raise OFError(ofp.OFPET_BAD_MATCH, ofp.OFPBMC_DUP_FIELD, f"{name} twice")
        seen.add(field)
        p += 4 + ln
    return (mlen + 7) // 8 * 8


def _walk(buf, off, end, known, err, bad_len, unknown, experimenter, check_item):
    """Walk a list of type-length items (actions or instructions): each of a known type
    (`known`: type -> fixed length or None), a length that is a multiple of 8 and inside
    the list; check_item(type, offset, length) looks inside. Raises OFError."""
    while off < end:
        if off + 4 > end:
            raise OFError(err, bad_len, "header cut short")
        t, ln = struct.unpack_from("!HH", buf, off)
        if t not in known:
            raise OFError(err, experimenter[1] if t == experimenter[0] else unknown, f"type {t}")
        if ln < 8 or ln % 8 or off + ln > end or (known[t] is not None and ln != known[t]):
            raise OFError(err, bad_len, f"type {t} length {ln}")
        check_item(t, off, ln)
        off += ln


def check_actions(buf, off, end):
    """Walk a list of actions; raises OFError for a bad length or an unknown type."""
    _walk(buf, off, end, ACTIONS, ofp.OFPET_BAD_ACTION, ofp.OFPBAC_BAD_LEN, ofp.OFPBAC_BAD_TYPE,
          (ofp.OFPAT_EXPERIMENTER, ofp.OFPBAC_BAD_EXPERIMENTER),
          lambda t, o, ln: _check_set_field(buf, o, ln) if t == ofp.OFPAT_SET_FIELD else None)


def _check_set_field(buf, off, ln):
    if ln < 16:
        raise OFError(ofp.OFPET_BAD_ACTION, ofp.OFPBAC_BAD_SET_LEN, "set_field too short")
    cls, fh, fl = struct.unpack_from("!HBB", buf, off + 4)
    field = fh >> 1
    if cls != ofp.OFPXMC_OPENFLOW_BASIC or field not in OXM:
        raise OFError(ofp.OFPET_BAD_ACTION, ofp.OFPBAC_BAD_SET_TYPE, f"set_field class {cls:#x} field {field}")
    if fh & 1 or fl != OXM[field][1] or 8 + fl > ln:
        raise OFError(ofp.OFPET_BAD_ACTION, ofp.OFPBAC_BAD_SET_LEN, f"set_field {OXM[field][0]}")


def check_instructions(buf, off, end):
    _walk(buf, off, end, INSTRUCTIONS, ofp.OFPET_BAD_INSTRUCTION, ofp.OFPBIC_BAD_LEN, ofp.OFPBIC_UNKNOWN_INST,
          (ofp.OFPIT_EXPERIMENTER, ofp.OFPBIC_BAD_EXPERIMENTER),
          lambda t, o, ln: check_actions(buf, o + 8, o + ln)
          if t in (ofp.OFPIT_APPLY_ACTIONS, ofp.OFPIT_WRITE_ACTIONS) else None)


def _parse_list(parse, buf, off, end):
    out = []
    while off < end:
        item = parse(buf, off)
        out.append(item)
        off += item.len
    return out


def _guard(fn, *args):
    """os-ken's parse of a part already checked; anything it still trips on is a bad length."""
    try:
        return fn(*args)
    except OFError:
        raise
    except Exception as e:
        raise bad_request(ofp.OFPBRC_BAD_LEN, f"cannot decode: {type(e).__name__}: {e}") from None


# -- decoding: one message (header included) -> (type, xid, fields) ----------------------------
class Msg:
    """A decoded request: `type`, `xid`, `raw` (the whole message) and its fields."""

    def __init__(self, type_, xid, raw, **fields):
        self.type, self.xid, self.raw = type_, xid, raw
        self.__dict__.update(fields)


def decode(raw):
    """A complete message whose header says version 1.3 -> Msg. Raises OFError."""
    version, t, ln, xid = HEADER.unpack_from(raw)
    m = Msg(t, xid, raw)
    body = len(raw) - 8

    def need(n, exact=False):
        if body < n or (exact and body != n):
            raise bad_request(ofp.OFPBRC_BAD_LEN, f"message type {t}: {len(raw)} bytes")

    if t in (ofp.OFPT_HELLO, ofp.OFPT_ECHO_REQUEST, ofp.OFPT_ECHO_REPLY):
        m.data = raw[8:]
        if t == ofp.OFPT_HELLO:
            m.versions = _hello_versions(raw)
    elif t in (ofp.OFPT_FEATURES_REQUEST, ofp.OFPT_GET_CONFIG_REQUEST, ofp.OFPT_BARRIER_REQUEST,
               ofp.OFPT_GET_ASYNC_REQUEST):
        need(0, exact=True)
    elif t == ofp.OFPT_SET_CONFIG:
        need(4, exact=True)
        m.flags, m.miss_send_len = struct.unpack_from(ofp.OFP_SWITCH_CONFIG_PACK_STR, raw, 8)
    elif t == ofp.OFPT_FLOW_MOD:
        need(ofp.OFP_FLOW_MOD_SIZE - 8)
        off = 48
        off += check_match(raw, off, len(raw))
        if off > len(raw):
            raise bad_request(ofp.OFPBRC_BAD_LEN, "flow_mod: match padding past the message")
        check_instructions(raw, off, len(raw))
        fm = _guard(osk.OFPFlowMod.parser, DP, version, t, ln, xid, raw)
        m.__dict__.update({k: getattr(fm, k) for k in ("cookie", "cookie_mask", "table_id", "command", "idle_timeout",
                                                       "hard_timeout", "priority", "buffer_id", "out_port",
                                                       "out_group", "flags", "match", "instructions")})
        m.instructions_raw = raw[off:]
    elif t == ofp.OFPT_PACKET_OUT:
        need(ofp.OFP_PACKET_OUT_SIZE - 8)
        m.buffer_id, m.in_port, alen = struct.unpack_from(ofp.OFP_PACKET_OUT_PACK_STR, raw, 8)
        start = ofp.OFP_PACKET_OUT_SIZE
        if start + alen > len(raw):
            raise bad_request(ofp.OFPBRC_BAD_LEN, f"packet_out: actions_len {alen} past the message")
        check_actions(raw, start, start + alen)
        m.actions = _guard(_parse_list, osk.OFPAction.parser, raw, start, start + alen)
        m.actions_raw = raw[start:start + alen]
        m.data = raw[start + alen:]
    elif t == ofp.OFPT_GROUP_MOD:
        need(8)
        m.command, m.group_type, m.group_id = struct.unpack_from(ofp.OFP_GROUP_MOD_PACK_STR, raw, 8)
        m.buckets = _buckets(raw, 16)
    elif t == ofp.OFPT_METER_MOD:
        need(8)
        m.command, m.flags, m.meter_id = struct.unpack_from(ofp.OFP_METER_MOD_PACK_STR, raw, 8)
        m.bands = _bands(raw, 16)
    elif t == ofp.OFPT_PORT_MOD:
        need(ofp.OFP_PORT_MOD_SIZE - 8, exact=True)
        m.port_no, m.hw_addr, m.config, m.mask, m.advertise = struct.unpack_from(ofp.OFP_PORT_MOD_PACK_STR, raw, 8)
    elif t == ofp.OFPT_TABLE_MOD:
        need(8, exact=True)
        m.table_id, m.config = struct.unpack_from(ofp.OFP_TABLE_MOD_PACK_STR, raw, 8)
    elif t == ofp.OFPT_ROLE_REQUEST:
        need(16, exact=True)
        m.role, m.generation_id = struct.unpack_from(ofp.OFP_ROLE_REQUEST_PACK_STR, raw, 8)
    elif t == ofp.OFPT_SET_ASYNC:
        need(24, exact=True)
        v = struct.unpack_from(ofp.OFP_ASYNC_CONFIG_PACK_STR, raw, 8)
        m.packet_in_mask, m.port_status_mask, m.flow_removed_mask = list(v[0:2]), list(v[2:4]), list(v[4:6])
    elif t == ofp.OFPT_MULTIPART_REQUEST:
        need(8)
        m.mp_type, m.mp_flags = struct.unpack_from(ofp.OFP_MULTIPART_REQUEST_PACK_STR, raw, 8)
        _multipart_body(m, raw, 16)
    elif t == ofp.OFPT_ERROR:
        need(4)
        m.err_type, m.err_code = struct.unpack_from("!HH", raw, 8)
    elif t == ofp.OFPT_QUEUE_GET_CONFIG_REQUEST:
        need(8, exact=True)
        m.port = struct.unpack_from("!I", raw, 8)[0]
    elif t == ofp.OFPT_EXPERIMENTER:
        raise bad_request(ofp.OFPBRC_BAD_EXPERIMENTER, "no experimenter messages")
    else:
        # a message only a switch sends (features reply, packet_in, ...) or no type at all
        raise bad_request(ofp.OFPBRC_BAD_TYPE, f"message type {t}")
    return m


def _hello_versions(raw):
    """The versions a hello's bitmap offers (None when it has no bitmap element)."""
    off = 8
    while off + 4 <= len(raw):
        et, ln = struct.unpack_from("!HH", raw, off)
        if ln < 4 or off + ln > len(raw):
            return None
        if et == ofp.OFPHET_VERSIONBITMAP:
            bits = set()
            for i in range((ln - 4) // 4):
                word = struct.unpack_from("!I", raw, off + 4 + 4 * i)[0]
                bits |= {32 * i + b for b in range(32) if word >> b & 1}
            return bits
        off += (ln + 7) // 8 * 8
    return None


def _buckets(raw, off):
    out, end = [], len(raw)
    while off < end:
        if off + 16 > end:
            raise OFError(ofp.OFPET_GROUP_MOD_FAILED, ofp.OFPGMFC_BAD_BUCKET, "bucket cut short")
        ln = _u16(raw, off)
        if ln < 16 or ln % 8 or off + ln > end:
            raise OFError(ofp.OFPET_GROUP_MOD_FAILED, ofp.OFPGMFC_BAD_BUCKET, f"bucket length {ln}")
        check_actions(raw, off + 16, off + ln)
        out.append(_guard(osk.OFPBucket.parser, raw, off))
        off += ln
    return out


def _bands(raw, off):
    out, end = [], len(raw)
    while off < end:
        if off + 12 > end:
            raise OFError(ofp.OFPET_METER_MOD_FAILED, ofp.OFPMMFC_BAD_BAND, "band cut short")
        t, ln = struct.unpack_from("!HH", raw, off)
        if t != ofp.OFPMBT_DROP:
            raise OFError(ofp.OFPET_METER_MOD_FAILED, ofp.OFPMMFC_BAD_BAND, f"band type {t} (drop bands only)")
        if ln != ofp.OFP_METER_BAND_DROP_SIZE or off + ln > end:
            raise OFError(ofp.OFPET_METER_MOD_FAILED, ofp.OFPMMFC_BAD_BAND, f"band length {ln}")
        out.append(_guard(osk.OFPMeterBandHeader.parser, raw, off))
        off += ln
    return out


def _multipart_body(m, raw, off):
    t, body = m.mp_type, len(raw) - off

    def need(n):
        if body != n:
            raise bad_request(ofp.OFPBRC_BAD_LEN, f"multipart type {t}: body of {body} bytes")
    if t in (ofp.OFPMP_DESC, ofp.OFPMP_TABLE, ofp.OFPMP_PORT_DESC, ofp.OFPMP_GROUP_DESC, ofp.OFPMP_GROUP_FEATURES,
             ofp.OFPMP_METER_FEATURES):
        need(0)
    elif t in (ofp.OFPMP_FLOW, ofp.OFPMP_AGGREGATE):
        if body < 32:
            raise bad_request(ofp.OFPBRC_BAD_LEN, f"multipart type {t}: body of {body} bytes")
        (m.table_id, m.out_port, m.out_group, m.cookie,
         m.cookie_mask) = struct.unpack_from(ofp.OFP_FLOW_STATS_REQUEST_0_PACK_STR, raw, off)
        mlen = check_match(raw, off + 32, len(raw))
        if off + 32 + mlen != len(raw):
            raise bad_request(ofp.OFPBRC_BAD_LEN, f"multipart type {t}: {len(raw) - off - 32 - mlen} bytes after the match")
        m.match = _guard(osk.OFPMatch.parser, raw, off + 32)
    elif t in (ofp.OFPMP_PORT_STATS, ofp.OFPMP_GROUP, ofp.OFPMP_METER, ofp.OFPMP_METER_CONFIG):
        need(8)
        m.id = struct.unpack_from("!I", raw, off)[0]
    elif t == ofp.OFPMP_QUEUE:
        need(8)
        m.port_no, m.queue_id = struct.unpack_from("!II", raw, off)
    elif t == ofp.OFPMP_TABLE_FEATURES:
        m.body = raw[off:]             # empty: a query; else a change (refused)
    elif t == ofp.OFPMP_EXPERIMENTER:
        raise bad_request(ofp.OFPBRC_BAD_EXPERIMENTER, "no experimenter multiparts")
    else:
        raise bad_request(ofp.OFPBRC_BAD_MULTIPART, f"multipart type {t}")


# -- encoding: what the switch sends ------------------------------------------------------------
def message(t, xid, body=b""):
    if 8 + len(body) > MAX_LEN:
        raise ValueError(f"message type {t} of {8 + len(body)} bytes")
    return HEADER.pack(VERSION, t, 8 + len(body), xid) + body


def hello(xid=0):
    # a version bitmap that offers 1.3 only
    elem = struct.pack("!HHI", ofp.OFPHET_VERSIONBITMAP, 8, 1 << VERSION)
    return message(ofp.OFPT_HELLO, xid, elem)


def error(xid, type_, code, data=b""):
    e = osk.OFPErrorMsg(DP, type_=type_, code=code, data=bytes(data[:64]))
    e.xid = xid
    e.serialize()
    return bytes(e.buf)


def echo_reply(xid, data):
    e = osk.OFPEchoReply(DP, data=bytes(data))
    e.xid = xid
    e.serialize()
    return bytes(e.buf)


def echo_request(xid, data=b""):
    e = osk.OFPEchoRequest(DP, data=bytes(data))
    e.xid = xid
    e.serialize()
    return bytes(e.buf)


def features_reply(xid, dpid, n_tables, capabilities):
    return message(ofp.OFPT_FEATURES_REPLY, xid,
                   struct.pack(ofp.OFP_SWITCH_FEATURES_PACK_STR, dpid, 0, n_tables, 0, capabilities, 0))


def config_reply(xid, flags, miss_send_len):
    return message(ofp.OFPT_GET_CONFIG_REPLY, xid, struct.pack(ofp.OFP_SWITCH_CONFIG_PACK_STR, flags, miss_send_len))


def role_reply(xid, role, generation_id):
    return message(ofp.OFPT_ROLE_REPLY, xid, struct.pack(ofp.OFP_ROLE_REQUEST_PACK_STR, role, generation_id))


def async_reply(xid, pin, ps, fr):
    return message(ofp.OFPT_GET_ASYNC_REPLY, xid, struct.pack(ofp.OFP_ASYNC_CONFIG_PACK_STR, *pin, *ps, *fr))


def match_bytes(fields):
    """[(os-ken field name, value or (value, mask)), ...] -> a padded ofp_match."""
    mt = osk.OFPMatch(_ordered_fields=list(fields))
    buf = bytearray()
    n = mt.serialize(buf, 0)
    return bytes(buf[:(n + 7) // 8 * 8]).ljust((n + 7) // 8 * 8, b"\0")


def packet_in(xid, buffer_id, total_len, reason, table_id, cookie, match, data):
    body = struct.pack("!IHBBQ", buffer_id, total_len, reason, table_id, cookie) + match + b"\0\0" + data
    return message(ofp.OFPT_PACKET_IN, xid, body)


def flow_removed(xid, cookie, priority, reason, table_id, duration_s, duration_ns, idle, hard, packets, nbytes, match):
    body = struct.pack(ofp.OFP_FLOW_REMOVED_PACK_STR0, cookie, priority, reason, table_id, duration_s, duration_ns,
                       idle, hard, packets, nbytes) + match
    return message(ofp.OFPT_FLOW_REMOVED, xid, body)


def port_bytes(p):
    """ofp_port from a dict: port_no, hw_addr (bytes), name, config, state, curr, curr_speed, max_speed."""
    return struct.pack(ofp.OFP_PORT_PACK_STR, p["port_no"], p["hw_addr"], p["name"].encode()[:15],
                       p.get("config", 0), p.get("state", 0), p.get("curr", 0), 0, 0, 0,
                       p.get("curr_speed", 0), p.get("max_speed", 0))


def port_status(xid, reason, port):
    return message(ofp.OFPT_PORT_STATUS, xid, struct.pack("!B7x", reason) + port_bytes(port))


def multipart_replies(xid, mp_type, items):
    """Bodies (bytes each) in as many replies as the 64 KB limit needs, REPLY_MORE on all
    but the last."""
    out, cur = [], bytearray()
    room = MAX_LEN - 16
    for it in items:
        if cur and len(cur) + len(it) > room:
            out.append(cur)
            cur = bytearray()
        cur += it
    out.append(cur)
    return [message(ofp.OFPT_MULTIPART_REPLY, xid,
                    struct.pack(ofp.OFP_MULTIPART_REPLY_PACK_STR, mp_type,
                                ofp.OFPMPF_REPLY_MORE if i < len(out) - 1 else 0) + bytes(b))
            for i, b in enumerate(out)]


def serialized(obj):
    """An os-ken part (instruction, action, bucket, band, table features) as bytes."""
    if isinstance(obj, osk.OFPTableFeaturesStats):
        return bytes(obj.serialize())             # this one makes its own buffer
    buf = bytearray()
    obj.serialize(buf, 0)
    return bytes(buf)


def flow_stats(table_id, duration_s, duration_ns, priority, idle, hard, flags, cookie, packets, nbytes, match,
               instructions):
    body = match + instructions
    return struct.pack(ofp.OFP_FLOW_STATS_0_PACK_STR, 48 + len(body), table_id, duration_s, duration_ns, priority,
                       idle, hard, flags, cookie, packets, nbytes) + body
