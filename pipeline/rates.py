"""Rates over the last interval from two snapshots of a pipeline's counters (what `run`
and `stats --watch` show, and their --json stream): per port and total packets/s,
bits/s and drops/s by reason, ns/packet per stage while traffic flows."""

PORT_DROPS = ("tx_ring_full", "rx_bad_index", "rx_bad_buf", "rx_bad_len", "rx_bad_flags", "tx_bad_index",
              "tx_bad_buf")


def rates(prev, cur):
    """Rates between two `stats` snapshots of one pipeline (cur later than prev)."""
    dt = cur["uptime_s"] - prev["uptime_s"]
    if dt <= 0 or cur.get("pid") != prev.get("pid"):
        prev, dt = _zero_like(cur), max(cur["uptime_s"], 1e-9)     # a restarted worker: since its start

    def per_s(a, b):
        return round(max(a - b, 0) / dt, 1)
    before = {p["ofport"]: p for p in prev["ports"]}
    ports = []
    for p in cur["ports"]:
        q = before.get(p["ofport"]) or _zero_like(p)
        ports.append({"ofport": p["ofport"], "uri": p["uri"],
                      "rx_pps": per_s(p["rx_packets"], q["rx_packets"]),
                      "rx_bps": per_s(8 * p["rx_bytes"], 8 * q["rx_bytes"]),
                      "tx_pps": per_s(p["tx_packets"], q["tx_packets"]),
                      "tx_bps": per_s(8 * p["tx_bytes"], 8 * q["tx_bytes"]),
                      "drops_ps": {k: per_s(v, q["drops"].get(k, 0)) for k, v in p["drops"].items()
                                   if v > q["drops"].get(k, 0)}})
    drops = {k: per_s(v, prev["drops"].get(k, 0)) for k, v in cur["drops"].items() if v > prev["drops"].get(k, 0)}
    n = {k: cur["stage_packets"][k] - prev["stage_packets"].get(k, 0) for k in cur["stage_packets"]}
    stage = {k: round((cur["stage_ns_total"][k] - prev["stage_ns_total"].get(k, 0)) / n[k], 1) if n[k] > 0 else None
             for k in n}
    total = {k: round(sum(p[k] for p in ports), 1) for k in ("rx_pps", "rx_bps", "tx_pps", "tx_bps")}
    # a port's reasons that the pipeline's drops count too (tx_ring_full, the bindings' losses)
    # are in the total once
    total["drops_ps"] = round(sum(drops.values()) + sum(sum(v for k, v in p["drops_ps"].items() if k not in cur["drops"])
                                                       for p in ports), 1)
    return {"name": cur.get("name"), "uptime_s": cur["uptime_s"], "interval_s": round(dt, 3), "total": total,
            "ports": ports, "drops_ps": drops, "hits_ps": per_s(cur["hits"], prev["hits"]),
            "misses_ps": per_s(cur["misses"], prev["misses"]),
            "upcalls_ps": per_s(cur["upcall"]["upcalls"], prev["upcall"]["upcalls"]),
            "stage_ns_per_packet": stage, "flows": cur["flows"], "megaflows": cur["megaflows"]}


def since_start(st):
    """Average rates over a pipeline's whole run (the summary at exit)."""
    return rates(_zero_like(st), st)


def _zero_like(d):
    if isinstance(d, dict):
        return {k: _zero_like(v) for k, v in d.items()}
    if isinstance(d, list):
        return []
    return 0 if isinstance(d, (int, float)) and not isinstance(d, bool) else d


def human(v, unit=""):
    """1234567 -> '1.23M': rates at a glance."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.2f}{suffix}{unit}"
    return f"{v:.0f}{unit}"


def render(st, r):
    """The live display: a header line, one row per port, a total row, then drops by
    reason and ns/packet per stage (only while packets flowed in the interval)."""
    up = st["upcall"]
    lines = [f"{st.get('name') or 'valepipe'}  up {st['uptime_s']:.1f}s  flows {st['flows']}/{st['flow_limit']}  "
             f"megaflows {st['megaflows']}  masks {st['masks']}  channel {'up' if up['channel_up'] else 'DOWN'}  "
             f"(last {r['interval_s']:g}s: hits/s {human(r['hits_ps'])}, misses/s {human(r['misses_ps'])}, "
             f"upcalls/s {human(r['upcalls_ps'])})",
             f"{'port':>5} {'uri':<26} {'rx pps':>9} {'rx bit/s':>10} {'tx pps':>9} {'tx bit/s':>10} "
             f"{'drops/s':>9}  {'rx total':>12} {'tx total':>12}"]
    for p, pr in zip(st["ports"], r["ports"]):
        flag = "  FAULTY" if p["faulty"] else ""
        link = p.get("io", {}).get("link") if p.get("io") else None    # the port's link state, where known
        lines.append(f"{p['ofport']:>5} {p['uri'][:26]:<26} {human(pr['rx_pps']):>9} {human(pr['rx_bps']):>10} "
                     f"{human(pr['tx_pps']):>9} {human(pr['tx_bps']):>10} {human(sum(pr['drops_ps'].values())):>9}  "
                     f"{p['rx_packets']:>12} {p['tx_packets']:>12}{flag}{'  link ' + str(link) if link else ''}")
    t = r["total"]
    lines.append(f"{'total':>5} {'':<26} {human(t['rx_pps']):>9} {human(t['rx_bps']):>10} {human(t['tx_pps']):>9} "
                 f"{human(t['tx_bps']):>10} {human(t['drops_ps']):>9}  {st['packets']:>12}")
    # by port where a port is the place (a binding's losses: rx_truncated, tx_link_down, ...),
    # else by reason alone (tx_ring_full counts by input port in the datapath's drops)
    by_port = {k for p in st["ports"] for k in p["drops"]} - {"tx_ring_full"}
    drops = {k: v for k, v in r["drops_ps"].items() if k not in by_port}
    for p in r["ports"]:
        for k, v in p["drops_ps"].items():
            if k in by_port:
                drops[f"port {p['ofport']} {k}"] = v
    if drops:
        lines.append("drops/s: " + ", ".join(f"{k} {human(v)}" for k, v in sorted(drops.items())))
    totals = {k: v for k, v in st["drops"].items() if v and k not in by_port}
    totals.update({f"port {p['ofport']} {k}": v for p in st["ports"] for k, v in p["drops"].items() if v and k in by_port})
    if totals:
        lines.append("drops since start: " + ", ".join(f"{k} {v}" for k, v in totals.items()))
    perr = {k: v for k, v in st["parse_errors"].items() if v}
    if perr:
        lines.append("parse errors since start: " + ", ".join(f"{k} {v}" for k, v in perr.items()))
    if any(v is not None for v in r["stage_ns_per_packet"].values()):
        lines.append("ns/packet: " + "  ".join(f"{k} {v if v is not None else '-'}"
                                               for k, v in r["stage_ns_per_packet"].items()))
    return "\n".join(lines)
