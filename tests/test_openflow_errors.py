"""Bad, malformed and hostile OpenFlow input: every refusal is the OpenFlow error Open
vSwitch gives (OFPET_* type and code, the offending message's start as data), the
connection stays up (an echo after each is answered), nothing crashes the slow path, and
every error is counted. Thousands of fuzzed messages (mutated real ones, random bytes,
wrong lengths, huge multiparts) go through one connection."""
import os
import random
import struct
import time

import pytest
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as P

from tests import openflow_lab as lab


@pytest.fixture
def switch(pipeline_factory, uniq):
    pipe = pipeline_factory(lab.config(uniq, [f"shm:{uniq}a", f"shm:{uniq}b"]))
    return pipe, lab.listen_port(pipe)


def _msg(m, xid=7):
    m.xid = xid
    m.serialize()
    return bytes(m.buf)


def _flow(match=None, insts=None, **kw):
    D = lab.dp()
    return P.OFPFlowMod(D, match=match or P.OFPMatch(), instructions=insts if insts is not None else [], **kw)


def _apply(*acts):
    return [P.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, list(acts))]


def _set_len(raw, n):
    return raw[:2] + struct.pack("!H", n) + raw[4:]


def cases():
    D = lab.dp()
    fm_ok = _msg(_flow(P.OFPMatch(in_port=1), _apply(P.OFPActionOutput(2))))
    # a flow_mod whose one instruction says length 0: os-ken's own parser would loop on it
    zero_inst = fm_ok[:56 + 8] + struct.pack("!HH", ofp.OFPIT_APPLY_ACTIONS, 0) + fm_ok[56 + 12:]
    return [
        ("unknown type", struct.pack("!BBHI", 4, 200, 8, 7), ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_BAD_TYPE),
        ("a switch's message", struct.pack("!BBHI", 4, ofp.OFPT_FEATURES_REPLY, 8, 7), ofp.OFPET_BAD_REQUEST,
         ofp.OFPBRC_BAD_TYPE),
        ("OpenFlow 1.0 after a 1.3 hello", struct.pack("!BBHI", 1, 5, 8, 7), ofp.OFPET_BAD_REQUEST,
         ofp.OFPBRC_BAD_VERSION),
        ("length below the header's", struct.pack("!BBHI", 4, 2, 4, 7), ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_BAD_LEN),
        ("barrier with a body", struct.pack("!BBHI", 4, ofp.OFPT_BARRIER_REQUEST, 12, 7) + b"\0" * 4,
         ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_BAD_LEN),
        ("experimenter", struct.pack("!BBHIII", 4, ofp.OFPT_EXPERIMENTER, 16, 7, 0x2320, 1), ofp.OFPET_BAD_REQUEST,
         ofp.OFPBRC_BAD_EXPERIMENTER),
        ("add to table 255", _msg(_flow(table_id=255)), ofp.OFPET_FLOW_MOD_FAILED, ofp.OFPFMFC_BAD_TABLE_ID),
        ("bad command", _msg(_flow(command=9)), ofp.OFPET_FLOW_MOD_FAILED, ofp.OFPFMFC_BAD_COMMAND),
        ("tcp_dst without ip_proto", _msg(_flow(P.OFPMatch(eth_type=0x800, tcp_dst=80))), ofp.OFPET_BAD_MATCH,
         ofp.OFPBMC_BAD_PREREQ),
        ("MPLS match", _msg(_flow(P.OFPMatch(eth_type=0x8847, mpls_label=5))), ofp.OFPET_BAD_MATCH,
         ofp.OFPBMC_BAD_FIELD),
        ("value outside its mask", _msg(_flow(P.OFPMatch(eth_dst=("ff:ff:ff:ff:ff:ff", "ff:00:00:00:00:00")))),
         ofp.OFPET_BAD_MATCH, ofp.OFPBMC_BAD_WILDCARDS),
        ("masked in_port", _msg(_flow(P.OFPMatch(in_port=1)))[:56] + b"", None, None),
        ("output to port 0", _msg(_flow(insts=_apply(P.OFPActionOutput(0)))), ofp.OFPET_BAD_ACTION,
         ofp.OFPBAC_BAD_OUT_PORT),
        ("group that does not exist", _msg(_flow(insts=_apply(P.OFPActionGroup(77)))), ofp.OFPET_BAD_ACTION,
         ofp.OFPBAC_BAD_OUT_GROUP),
        ("MPLS push", _msg(_flow(insts=_apply(P.OFPActionPushMpls(0x8847)))), ofp.OFPET_BAD_ACTION,
         ofp.OFPBAC_BAD_TYPE),
        ("goto backwards", _msg(_flow(table_id=3, insts=[P.OFPInstructionGotoTable(2)])), ofp.OFPET_BAD_INSTRUCTION,
         ofp.OFPBIC_BAD_TABLE_ID),
        ("zero-length instruction", zero_inst, ofp.OFPET_BAD_INSTRUCTION, ofp.OFPBIC_BAD_LEN),
        ("meter that does not exist", _msg(_flow(insts=[P.OFPInstructionMeter(9)])), ofp.OFPET_METER_MOD_FAILED,
         ofp.OFPMMFC_UNKNOWN_METER),
        ("buffered packet_out", _msg(P.OFPPacketOut(D, buffer_id=5, in_port=ofp.OFPP_CONTROLLER, actions=[])),
         ofp.OFPET_BAD_REQUEST,
         ofp.OFPBRC_BUFFER_UNKNOWN),
        ("packet_out from a bad port", _msg(P.OFPPacketOut(D, buffer_id=ofp.OFP_NO_BUFFER, in_port=0xFFFFFF00,
                                                           actions=[], data=b"\0" * 60)),
         ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_BAD_PORT),
        ("multipart of no type", struct.pack("!BBHIHH4x", 4, ofp.OFPT_MULTIPART_REQUEST, 16, 7, 99, 0),
         ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_BAD_MULTIPART),
        ("multipart in parts", struct.pack("!BBHIHH4x", 4, ofp.OFPT_MULTIPART_REQUEST, 16, 7, ofp.OFPMP_DESC, 1),
         ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_MULTIPART_BUFFER_OVERFLOW),
        ("table features change", struct.pack("!BBHIHH4x", 4, ofp.OFPT_MULTIPART_REQUEST, 16 + 64000, 7,
                                               ofp.OFPMP_TABLE_FEATURES, 0) + os.urandom(64000),
         ofp.OFPET_TABLE_FEATURES_FAILED, ofp.OFPTFFC_EPERM),
        ("port stats of no port", _msg(P.OFPPortStatsRequest(D, 0, 4242)), ofp.OFPET_BAD_REQUEST,
         ofp.OFPBRC_BAD_PORT),
        ("group exists", None, ofp.OFPET_GROUP_MOD_FAILED, ofp.OFPGMFC_GROUP_EXISTS),
        ("indirect group of two buckets", _msg(P.OFPGroupMod(D, ofp.OFPGC_ADD, ofp.OFPGT_INDIRECT, 2, [
            P.OFPBucket(actions=[P.OFPActionOutput(1)]), P.OFPBucket(actions=[P.OFPActionOutput(2)])])),
         ofp.OFPET_GROUP_MOD_FAILED, ofp.OFPGMFC_INVALID_GROUP),
        ("meter in kbps and pktps", _msg(P.OFPMeterMod(D, ofp.OFPMC_ADD, ofp.OFPMF_KBPS | ofp.OFPMF_PKTPS, 1,
                                                       [P.OFPMeterBandDrop(100, 10)])),
         ofp.OFPET_METER_MOD_FAILED, ofp.OFPMMFC_BAD_FLAGS),
        ("fragment reassembly", _msg(P.OFPSetConfig(D, ofp.OFPC_FRAG_REASM, 128)), ofp.OFPET_SWITCH_CONFIG_FAILED,
         ofp.OFPSCFC_BAD_FLAGS),
        ("port_mod of no port", _msg(P.OFPPortMod(D, 99, "00:00:00:00:00:01", 0, ofp.OFPPC_PORT_DOWN, 0)),
         ofp.OFPET_PORT_MOD_FAILED, ofp.OFPPMFC_BAD_PORT),
    ]


def echo_ok(c, xid):
    c.send(struct.pack("!BBHI", 4, ofp.OFPT_ECHO_REQUEST, 12, xid) + b"ping")
    m, _ = c.until(ofp.OFPT_ECHO_REPLY, xid)
    return m[3][8:] == b"ping"


def test_errors_are_openflows_and_the_connection_stays(switch):
    pipe, port = switch
    D = lab.dp()
    c = lab.Client(port)
    # a group to collide with
    c.send(_msg(P.OFPGroupMod(D, ofp.OFPGC_ADD, ofp.OFPGT_ALL, 1, [P.OFPBucket(actions=[P.OFPActionOutput(1)])])))
    assert echo_ok(c, 1)
    sent = 0
    for n, (what, raw, etype, ecode) in enumerate(cases()):
        if what == "masked in_port":
            # in_port cannot be masked: the OXM header with its mask bit set
            raw = _msg(_flow(P.OFPMatch(in_port=1)))
            i = raw.index(struct.pack("!HBB", 0x8000, 0, 4))
            raw = raw[:i] + struct.pack("!HBB", 0x8000, 1, 8) + raw[i + 4:i + 8] + b"\xff" * 4 + raw[i + 8:]
            raw = _set_len(raw, len(raw))
            raw = raw[:48] + struct.pack("!HH", 1, 16) + raw[52:]
            etype, ecode = ofp.OFPET_BAD_MATCH, ofp.OFPBMC_BAD_MASK
        if what == "value outside its mask":     # os-ken would mask it: the bytes set by hand
            i = raw.index(b"\x80\x00\x07\x0c") + 4
            raw = raw[:i] + b"\xff" * 6 + raw[i + 6:]
        if what == "group exists":
            raw = _msg(P.OFPGroupMod(D, ofp.OFPGC_ADD, ofp.OFPGT_ALL, 1, []))
        xid = struct.unpack_from("!I", raw, 4)[0]
        c.send(raw)
        sent += 1
        m, _ = c.until(ofp.OFPT_ERROR, timeout=10)
        t, code = struct.unpack_from("!HH", m[3], 8)
        assert (t, code) == (etype, ecode), (what, t, code)
        assert m[2] == xid, what
        assert m[3][12:12 + min(64, len(raw))] == raw[:64], what          # the request's start
        assert echo_ok(c, 1000 + n), what
    st = lab.openflow_stats(pipe)
    assert st["errors_sent"] >= sent and st["bad_length"] >= 1
    assert sum(st["errors_by_type"].values()) == st["errors_sent"]
    assert st["disconnections"] == 0


def test_fuzzed_input_never_costs_the_connection(switch):
    """Real messages with bytes flipped, cut or grown, random bodies under every type: each
    is answered (or ignored, as an echo reply is) and an echo still comes back."""
    pipe, port = switch
    D = lab.dp()
    rng = random.Random(int(os.environ.get("OF_FUZZ_SEED", "17")))
    seeds = [_msg(_flow(P.OFPMatch(in_port=1, eth_type=0x800, ipv4_dst=("10.0.0.0", "255.0.0.0")),
                        _apply(P.OFPActionSetField(eth_dst="00:00:00:00:00:09"), P.OFPActionOutput(2)) +
                        [P.OFPInstructionGotoTable(4)], priority=9)),
             _msg(P.OFPPacketOut(D, buffer_id=ofp.OFP_NO_BUFFER, in_port=ofp.OFPP_CONTROLLER,
                                 actions=[P.OFPActionOutput(1)], data=bytes(60))),
             _msg(P.OFPGroupMod(D, ofp.OFPGC_ADD, ofp.OFPGT_SELECT, 3, [P.OFPBucket(weight=1, actions=[
                 P.OFPActionOutput(1)])])),
             _msg(P.OFPMeterMod(D, ofp.OFPMC_ADD, ofp.OFPMF_PKTPS, 4, [P.OFPMeterBandDrop(10, 0)])),
             _msg(P.OFPFlowStatsRequest(D)), _msg(P.OFPRoleRequest(D, ofp.OFPCR_ROLE_EQUAL, 0)),
             _msg(P.OFPSetAsync(D, [7, 0], [7, 7], [15, 0]))]
    c = lab.Client(port)
    pid = pipe.stats()["upcall"]["slowpath_pid"]
    deadline = time.monotonic() + 60
    n = 0
    while n < 1500 and time.monotonic() < deadline:
        raw = bytearray(rng.choice(seeds))
        how = rng.randrange(5)
        if how == 0:                                 # flip bytes past the header
            for _ in range(rng.randint(1, 6)):
                raw[rng.randrange(8, len(raw))] = rng.randrange(256)
        elif how == 1:                               # cut short, the header saying so
            raw = raw[:rng.randrange(8, len(raw))]
            raw[2:4] = struct.pack("!H", len(raw))
        elif how == 2:                               # random body under a random type
            raw = bytearray(struct.pack("!BBHI", 4, rng.randrange(35), 0, 0)) + os.urandom(rng.randrange(0, 300))
            raw[2:4] = struct.pack("!H", len(raw))
        elif how == 3:                               # grown with garbage
            raw += os.urandom(rng.randrange(1, 200))
            raw[2:4] = struct.pack("!H", len(raw))
        else:                                        # lengths inside the body lie
            for _ in range(3):
                i = rng.randrange(8, len(raw) - 1)
                raw[i:i + 2] = struct.pack("!H", rng.choice([0, 1, 4, 7, 0xFFFF, rng.randrange(65536)]))
        raw[1] = raw[1] if raw[1] != ofp.OFPT_ECHO_REQUEST else ofp.OFPT_HELLO
        raw[4:8] = struct.pack("!I", 50_000 + n)
        c.send(bytes(raw))
        n += 1
        if n % 50 == 0:
            assert echo_ok(c, n), n
    assert echo_ok(c, 1)
    st = lab.openflow_stats(pipe)
    assert st["errors_sent"] > n // 4 and st["disconnections"] == 0 and st["internal_errors"] == 0
    assert pipe.stats()["upcall"]["slowpath_pid"] == pid                     # never restarted
    # and the switch still does its job
    assert "OFPST_FLOW reply" in lab.ofctl(f"tcp:127.0.0.1:{port}", "dump-flows")


def test_hello_without_13_is_refused(switch):
    """OpenFlow's rule for a failed negotiation: HELLO_FAILED/INCOMPATIBLE, then close."""
    _, port = switch
    c = lab.Client(port, hello=False)
    assert c.recv()[1] == ofp.OFPT_HELLO
    c.send(struct.pack("!BBHI", 1, ofp.OFPT_HELLO, 8, 3))               # an OpenFlow 1.0 switch's hello
    m, _ = c.until(ofp.OFPT_ERROR)
    assert struct.unpack_from("!HH", m[3], 8) == (ofp.OFPET_HELLO_FAILED, ofp.OFPHFC_INCOMPATIBLE)
    with pytest.raises((ConnectionError, OSError, TimeoutError)):
        c.recv(timeout=5)


def test_roles(switch):
    """master/slave/equal with generation ids: a slave may read but not change the switch,
    a stale generation is refused, a new master makes the old one a slave."""
    pipe, port = switch
    D = lab.dp()
    a, b = lab.Client(port), lab.Client(port)
    a.send(_msg(P.OFPRoleRequest(D, ofp.OFPCR_ROLE_MASTER, 5), 1))
    m, _ = a.until(ofp.OFPT_ROLE_REPLY, 1)
    assert struct.unpack_from("!I4xQ", m[3], 8) == (ofp.OFPCR_ROLE_MASTER, 5)
    b.send(_msg(P.OFPRoleRequest(D, ofp.OFPCR_ROLE_MASTER, 4), 2))         # older generation
    m, _ = b.until(ofp.OFPT_ERROR, 2)
    assert struct.unpack_from("!HH", m[3], 8) == (ofp.OFPET_ROLE_REQUEST_FAILED, ofp.OFPRRFC_STALE)
    b.send(_msg(P.OFPRoleRequest(D, ofp.OFPCR_ROLE_MASTER, 6), 3))
    b.until(ofp.OFPT_ROLE_REPLY, 3)
    a.send(_msg(_flow(P.OFPMatch(in_port=1), _apply(P.OFPActionOutput(2))), 4))
    m, _ = a.until(ofp.OFPT_ERROR, 4)
    assert struct.unpack_from("!HH", m[3], 8) == (ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_IS_SLAVE)
    a.send(_msg(P.OFPRoleRequest(D, ofp.OFPCR_ROLE_NOCHANGE, 0), 5))
    m, _ = a.until(ofp.OFPT_ROLE_REPLY, 5)
    assert struct.unpack_from("!I", m[3], 8)[0] == ofp.OFPCR_ROLE_SLAVE
    a.send(_msg(P.OFPFlowStatsRequest(D), 6))                              # reading is allowed
    a.until(ofp.OFPT_MULTIPART_REPLY, 6)
    b.send(_msg(_flow(P.OFPMatch(in_port=1), _apply(P.OFPActionOutput(2))), 7))
    b.send(_msg(P.OFPBarrierRequest(D), 8))
    _, before = b.until(ofp.OFPT_BARRIER_REPLY, 8)
    assert not [x for x in before if x[1] == ofp.OFPT_ERROR]
    assert "in_port=1" in pipe.cli("dump-flows")
