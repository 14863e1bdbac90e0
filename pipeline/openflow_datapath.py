"""The worker's part in OpenFlow (requests from the slow path's agent): packet-outs run
through the datapath, port and meter counters for statistics, the meters' token buckets
set, ports taken down or up by a port_mod. Everything in a request is checked first."""
from pipeline import channel
from pipeline._native import ffi, lib
from pipeline.datapath import DatapathError

MAX_PACKET_OUTS = 1024            # packets in one execute message


def apply(up, t, msg):
    """up: the worker's Upcalls; t: the message type."""
    if t == "execute":
        _execute(up, msg.get("packets"))
    elif t == "stats_request":
        _stats(up, msg.get("id"))
    elif t == "meters":
        _meters(up, msg.get("meters"))
    elif t == "port_mod" and up.on_port_mod is not None:
        ofport, on = msg.get("ofport"), msg.get("up")
        if isinstance(ofport, int) and isinstance(on, bool):
            try:
                up.on_port_mod(ofport, on)
            except ValueError:
                up.st["bad_messages"] += 1


def _execute(up, items):
    """Packet-outs: [actions, frame, None, in_port] each. A packet-out came in on no port of
    the datapath: what it loses is counted by reason in the datapath's drops (and as
    packet_out_drops), never in an input port's ledger."""
    c, st = up.dp.c, up.st
    if not isinstance(items, list):
        st["bad_messages"] += 1
        return
    for it in items[:MAX_PACKET_OUTS]:
        if not (isinstance(it, list) and len(it) == 4 and isinstance(it[1], bytes) and 14 <= len(it[1]) <= 65535
                and channel.actions_ok(it[0]) and channel.fast_path_runs(it[0])):
            st["bad_messages"] += 1
            continue
        try:
            aid = up.dp.action_id(it[0])
        except DatapathError:
            st["bad_messages"] += 1
            continue
        i = up.dp.ofport_to_index.get(it[3], 0)
        row = [c.port_drops[i][j] for j in range(lib.VP_DROP_N)]
        drops0 = sum(c.st.drops)
        st["packet_outs"] = st.get("packet_outs", 0) + 1
        st["packet_out_sent"] = st.get("packet_out_sent", 0) + lib.vp_execute_packet(
            c, aid, it[1], len(it[1]), ffi.NULL, i)
        st["packet_out_drops"] = st.get("packet_out_drops", 0) + sum(c.st.drops) - drops0
        for j in range(lib.VP_DROP_N):
            c.port_drops[i][j] = row[j]


def _stats(up, rid):
    if not isinstance(rid, int) or isinstance(rid, bool):
        up.st["bad_messages"] += 1
        return
    ports = []
    for i, p in enumerate(up.dp.ports):
        if p.kind == "removed":
            continue
        s = p.stats()
        d = s["drops"]
        # the binding's own losses (interface ports) count too: dropped before the pipeline
        # saw them, or given to send and never sent
        ports.append({"ofport": p.ofport, "rx_packets": s["rx_packets"], "rx_bytes": s["rx_bytes"],
                      "tx_packets": s["tx_packets"], "tx_bytes": s["tx_bytes"],
                      "rx_dropped": sum(up.dp.port_drops(i).values()) + d.get("rx_truncated", 0)
                      + d.get("rx_kernel_drops", 0) + d.get("rx_worker_restart", 0),
                      "tx_dropped": d["tx_ring_full"] + d.get("tx_discarded", 0) + d.get("tx_link_down", 0),
                      "rx_errors": d["rx_bad_index"] + d["rx_bad_buf"] + d["rx_bad_len"] + d["rx_bad_flags"]
                      + d.get("rx_errors", 0)})
    m = up.dp.meters
    meters = [[k, m[k].packets, m[k].bytes, m[k].drop_packets, m[k].drop_bytes] for k in range(lib.VP_MAX_METERS)
              if m[k].rate]
    up.outq += channel.encode({"v": channel.VERSION, "t": "stats_reply", "id": rid, "ports": ports, "meters": meters})
    up.flush()


def _meters(up, items):
    """The meters' full set: [slot, pktps, rate, burst] each; slots not named are cleared."""
    if not isinstance(items, list):
        up.st["bad_messages"] += 1
        return
    want = {}
    for e in items[:lib.VP_MAX_METERS]:
        if isinstance(e, list) and len(e) == 4 and all(isinstance(x, int) and not isinstance(x, bool) for x in e) \
                and 0 <= e[0] < lib.VP_MAX_METERS and 0 < e[2] < 1 << 32 and 0 < e[3] < 1 << 32:
            want[e[0]] = e
        else:
            up.st["bad_messages"] += 1
    m = up.dp.meters
    for k in range(lib.VP_MAX_METERS):
        e = want.get(k)
        if e is None:
            if m[k].rate:
                m[k].rate = 0
            continue
        if (m[k].rate, m[k].burst, m[k].pktps) != (e[2], e[3], e[1] and 1):
            m[k].rate, m[k].burst, m[k].pktps = e[2], e[3], 1 if e[1] else 0
            m[k].last_ns = 0                       # a changed band starts full
