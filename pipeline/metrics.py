"""The Prometheus/OpenMetrics endpoint (`[metrics] listen = "HOST:PORT"`): its own small
process, started by `valepipe run`, that asks the worker and the slow path for their
counters at each scrape (never touching the forwarding loop) and serves them with
prometheus-client under Grafana-ready names (valepipe_port_rx_packets_total{port=...})."""
import argparse
import os
import signal
import sys
import threading

from pipeline import control

# (stats key, metric name, help); counters unless listed in GAUGES
DATAPATH = [("packets", "packets", "packets received by the datapath"),
            ("hits", "exact_match_hits", "packets answered by the exact-match cache"),
            ("megaflow_hits", "megaflow_hits", "packets answered by a megaflow"),
            ("misses", "misses", "packets that missed both caches"),
            ("batches", "batches", "batches processed"),
            ("emc_evictions", "exact_match_evictions", "exact-match entries evicted"),
            ("tx_swapped", "tx_swapped", "packets transmitted by swapping buffers (zero copy)"),
            ("tx_copied", "tx_copied", "packets transmitted by copying")]
GAUGES = [("flows", "exact_match_flows", "exact-match entries"), ("flow_limit", "flow_limit", "flow table size"),
          ("megaflows", "megaflows", "installed megaflows"), ("masks", "megaflow_masks", "distinct megaflow masks"),
          ("uptime_s", "uptime_seconds", "seconds since the worker started"),
          ("worker_restarts", "worker_restarts", "worker restarts by the supervisor")]
UPCALL_GAUGES = ("pending", "slowpath_restarts")


class Collector:
    """prometheus-client collector: one control request to the worker (and one to the
    slow path) per scrape; a pipeline that does not answer gives valepipe_up 0."""

    def __init__(self, run_dir, name):
        self.worker = os.path.join(run_dir, "worker.ctl")
        self.slow = os.path.join(run_dir, "slowpath.ctl")
        self.name = name

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        up = GaugeMetricFamily("valepipe_up", "1 while the pipeline's worker answers", labels=["pipeline"])
        try:
            st = control.request(self.worker, "stats", timeout=2.0)
        except (OSError, RuntimeError):
            up.add_metric([self.name], 0)
            yield up
            return
        up.add_metric([self.name], 1)
        yield up
        for key, name, doc in DATAPATH:
            yield CounterMetricFamily(f"valepipe_{name}", doc, value=st[key])
        for key, name, doc in GAUGES:
            yield GaugeMetricFamily(f"valepipe_{name}", doc, value=st[key])
        yield _labelled(CounterMetricFamily, "valepipe_drops", "packets dropped, by reason", "reason",
                        st["drops"])
        yield _labelled(CounterMetricFamily, "valepipe_parse_errors", "packets with a parse error, by reason",
                        "reason", st["parse_errors"])
        stage_pk = CounterMetricFamily("valepipe_stage_packets", "packets through each stage", labels=["stage"])
        stage_s = CounterMetricFamily("valepipe_stage_seconds", "time spent in each stage", labels=["stage"])
        for k in st["stage_packets"]:
            stage_pk.add_metric([k], st["stage_packets"][k])
            stage_s.add_metric([k], st["stage_ns_total"][k] / 1e9)
        yield stage_pk
        yield stage_s
        for k, v in st["upcall"].items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or k.endswith("_pid"):
                continue
            cls = GaugeMetricFamily if k in UPCALL_GAUGES else CounterMetricFamily
            yield cls(f"valepipe_upcall_{k}", f"upcall handler: {k.replace('_', ' ')}", value=v)
        yield from _ports(st["ports"])
        try:
            sp = control.request(self.slow, "stats", timeout=2.0)
        except (OSError, RuntimeError):
            return
        for k, v in sp.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                yield CounterMetricFamily(f"valepipe_slowpath_{k}", f"slow path: {k.replace('_', ' ')}", value=v)


def _labelled(cls, name, doc, label, values):
    m = cls(name, doc, labels=[label])
    for k, v in values.items():
        m.add_metric([k], v)
    return m


def _ports(ports):
    """Per-port counters, per-port drops by reason, per-ring counters where the port has
    them, and the binding's own (io) counters."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    labels = ["port", "ofport"]
    fams = {k: CounterMetricFamily(f"valepipe_port_{k}", f"port {k.replace('_', ' ')}", labels=labels)
            for k in ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes")}
    drops = CounterMetricFamily("valepipe_port_drops", "port drops by reason", labels=labels + ["reason"])
    faulty = GaugeMetricFamily("valepipe_port_faulty", "1 when the port's peer broke ring rules", labels=labels)
    rings = CounterMetricFamily("valepipe_ring_packets", "packets through each ring",
                                labels=labels + ["direction", "ring"])
    io = CounterMetricFamily("valepipe_port_io", "the binding's interface counters", labels=labels + ["counter"])
    for p in ports:
        lv = [p["uri"], str(p["ofport"])]
        for k, f in fams.items():
            f.add_metric(lv, p[k])
        for k, v in p["drops"].items():
            drops.add_metric(lv + [k], v)
        faulty.add_metric(lv, int(bool(p["faulty"])))
        for d in ("rx", "tx"):
            for i, n in enumerate(p.get("rings", {}).get(d, [])):
                rings.add_metric(lv + [d, str(i)], n)
        for k, v in (p.get("io") or {}).items():
            if isinstance(v, int) and not isinstance(v, bool) and k not in ("ifindex", "queues", "first_queue",
                                                                              "xdp_prog_id", "mem_id"):
                io.add_metric(lv + [k], v)
    yield from fams.values()
    yield drops
    yield faulty
    yield rings
    yield io


def main(argv=None):
    ap = argparse.ArgumentParser(prog="valepipe-metrics", description="Prometheus endpoint of a pipeline")
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--name", default="valepipe")
    ap.add_argument("--listen", required=True, help="HOST:PORT (port 0: any free port)")
    a = ap.parse_args(argv)
    from prometheus_client import start_http_server
    from prometheus_client.core import CollectorRegistry

    from pipeline.config import split_listen
    host, port = split_listen(a.listen)
    reg = CollectorRegistry(auto_describe=False)
    reg.register(Collector(a.run_dir, a.name))
    try:
        server, _ = start_http_server(port, addr=host, registry=reg)
    except OSError as e:
        print(f"error cannot listen on {a.listen}: {e.strerror or e}", flush=True)
        sys.exit(2)
    bound = server.server_address
    print(f"listening {host if ':' not in host else '[' + host + ']'}:{bound[1]}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    server.shutdown()


if __name__ == "__main__":
    main()
