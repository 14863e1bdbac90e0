"""A pipeline as a service and as ovs-ofctl users drive it: the Prometheus endpoint
scraped and parsed, live rates as a JSON stream, ovs-ofctl habits (filters, sorting,
--strict, replace/diff-flows, counter resets), SIGHUP reloads, --detach, and a demo
stopped by SIGTERM leaving nothing behind."""
import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, wait_for
from tests.test_e2e import cfg, frame, peers
from tests.test_ops_cli import _published, cli


def _ready_line(proc):
    """The ready notice: `ready k=v ...`, or with --json a JSON object (jq reads every line)."""
    line = proc.stdout.readline()
    if line.startswith("{"):
        info = json.loads(line)
        assert info.pop("event") == "ready", line
        return {k: str(v) for k, v in info.items()}
    assert line.startswith("ready "), (line, proc.stderr.read() if proc.poll() is not None else "")
    return dict(kv.split("=", 1) for kv in line.split()[1:])


def _start(conf, *args):
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(conf), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _stop(p):
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def test_metrics_endpoint_scraped(uniq, tmp_path):
    conf = tmp_path / "p.toml"
    conf.write_text(cfg(uniq, ["in_port=1,actions=output:2", "in_port=2,actions=drop"], ports=("a", "b"))
                    .replace("@RUN@", str(tmp_path / "run")) + '[metrics]\nlisten = "127.0.0.1:0"\n')
    p = _start(conf, "--quiet")
    try:
        ready = _ready_line(p)
        with peers(uniq, "ab") as ps:
            ps["a"].send_all([frame(1, 0)])            # the flow set up first: nothing waits on the slow path
            assert wait_for(lambda: ps["b"].drain() >= 1)
            ps["a"].send_all([frame(1, i) for i in range(1, 200)], others=(ps["b"],))
            assert wait_for(lambda: ps["b"].drain() >= 200)
            ps["b"].send_all([frame(2, i) for i in range(30)])
        st = wait_for(lambda: (lambda s: s if s["drops"]["action_drop"] == 30 else None)(
            json.loads(cli("stats", "--name", uniq, "--json").stdout)))
        assert st
        text = urllib.request.urlopen(f"http://{ready['metrics']}/metrics", timeout=10).read().decode()
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
        def m(name, **labels):
            return samples[(name, tuple(sorted(labels.items())))]
        a, b = dict(port=f"shm:{uniq}a", ofport="1"), dict(port=f"shm:{uniq}b", ofport="2")
        assert m("valepipe_port_rx_packets_total", **a) == 200
        assert m("valepipe_port_tx_packets_total", **b) == 200
        assert m("valepipe_port_rx_bytes_total", **a) == st["ports"][0]["rx_bytes"]
        assert m("valepipe_drops_total", reason="action_drop") == 30
        assert m("valepipe_up", pipeline=uniq) == 1
        assert m("valepipe_ring_packets_total", direction="rx", ring="0", **a) == 200
        assert m("valepipe_stage_packets_total", stage="lookup") == 230
        assert m("valepipe_exact_match_hits_total") + m("valepipe_megaflow_hits_total") + m("valepipe_misses_total") == 230
        assert m("valepipe_megaflow_masks") >= 1 and m("valepipe_upcall_upcalls_total") >= 1
        assert m("valepipe_slowpath_translations_total") >= 2
        assert fams["valepipe_port_rx_packets"].type == "counter" and fams["valepipe_megaflows"].type == "gauge"
    finally:
        _stop(p)
    assert p.returncode == 0


def test_live_rates_stream(uniq, tmp_path):
    conf = tmp_path / "p.toml"
    conf.write_text(cfg(uniq, ["in_port=1,actions=output:2"], ports=("a", "b")).replace("@RUN@", str(tmp_path / "run")))
    p = _start(conf, "--json", "--interval", "0.2")
    gen = None
    try:
        assert _ready_line(p)["name"] == uniq and p.stdout is not None    # a JSON line too, with --json
        gen = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "gen", f"shm:{uniq}a", "--rx", f"shm:{uniq}b",
                                "--rate", "5000", "--duration", "5", "-q"], cwd=ROOT, stdout=subprocess.DEVNULL)
        busy = None
        deadline = time.monotonic() + 30
        while busy is None and time.monotonic() < deadline:
            r = json.loads(p.stdout.readline())
            assert {"total", "ports", "drops_ps", "stage_ns_per_packet", "interval_s"} <= set(r)
            if r["ports"][0]["rx_pps"] > 1000:
                busy = r
        assert busy, "no interval showed the traffic"
        assert busy["ports"][0]["rx_bps"] == busy["ports"][0]["rx_pps"] * 8 * 60 or busy["ports"][0]["rx_bps"] > 0
        assert busy["total"]["rx_pps"] >= busy["ports"][0]["rx_pps"]
        assert all(v is not None for v in busy["stage_ns_per_packet"].values())
        w = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "stats", "--name", uniq, "--watch", "--json",
                              "--interval", "0.2"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        try:
            lines = [json.loads(w.stdout.readline()) for _ in range(2)]
            assert all(x["name"] == uniq and len(x["ports"]) == 2 for x in lines)
        finally:
            w.terminate()
            w.wait(10)
    finally:
        if gen:
            gen.kill()
            gen.wait()
        _stop(p)


def test_ofctl_habits(uniq, pipeline_factory, tmp_path):
    pipeline_factory(cfg(uniq, ["priority=10,in_port=1,actions=output:2", "priority=20,in_port=1,udp,actions=output:2",
                                       "priority=30,in_port=2,actions=drop", "table=1,priority=5,actions=drop"],
                                ports=("a", "b")))

    def vp(*args, **kw):
        return cli(*args, "--name", uniq, **kw)
    with peers(uniq, "ab") as ps:
        ps["a"].send_all([frame(1, 0)])
        assert wait_for(lambda: ps["b"].drain() >= 1)
        ps["a"].send_all([frame(1, i) for i in range(1, 40)], others=(ps["b"],))
        assert wait_for(lambda: ps["b"].drain() >= 40)
    rules = json.loads(vp("dump-flows", "in_port=1", "--json").stdout)
    assert [r["priority"] for r in rules] == [20, 10]
    assert [r["priority"] for r in json.loads(vp("dump-flows", "--sort", "priority", "--json").stdout)] == [5, 10, 20, 30]
    top = vp("dump-flows", "--rsort", "n_packets").stdout.splitlines()
    assert "n_packets=40" in top[0] and "udp" in top[0]
    assert len(vp("dump-flows", "table=1").stdout.splitlines()) == 1
    # --strict: only the rule with exactly this match and priority
    r = vp("mod-flows", "--strict", "priority=10,in_port=1,actions=drop")
    assert "modified 1" in r.stdout, r.stderr
    r = vp("mod-flows", "--reset-counts", "in_port=1,udp,actions=output:2")
    assert "modified 1" in r.stdout
    udp = json.loads(vp("dump-flows", "udp", "--json").stdout)
    assert udp[0]["n_packets"] == 0
    r = vp("del-flows", "--strict", "in_port=1")                      # priority 32768: none
    assert "deleted 0" in r.stdout
    # replace-flows: the rules become the file's; an unchanged one keeps its counters
    want = tmp_path / "want.flows"
    want.write_text("priority=30,in_port=2,actions=drop\n# kept\npriority=7,in_port=1,actions=output:2\n")
    with peers(uniq, "ab") as ps:
        ps["b"].send_all([frame(2, i) for i in range(5)])
    assert wait_for(lambda: json.loads(vp("dump-flows", "in_port=2", "--json").stdout)[0]["n_packets"] == 5)
    r = vp("diff-flows", str(want))
    assert r.returncode == 2 and "+priority=7,in_port=1 actions=output:2".replace(" ", ",") in r.stdout.replace(" ", ",") \
        and r.stdout.count("-") >= 3, r.stdout
    r = vp("replace-flows", str(want))
    assert r.returncode == 0 and "added 1, removed 3, unchanged 1" in r.stdout, (r.stdout, r.stderr)
    assert vp("diff-flows", str(want)).returncode == 0
    after = json.loads(vp("dump-flows", "--json").stdout)
    assert [(x["priority"], x["n_packets"]) for x in after] == [(30, 5), (7, 0)]


def test_sighup_reloads_rules(uniq, pipeline_factory):
    pipe = pipeline_factory(cfg(uniq, ["in_port=1,actions=output:2"], ports=("a", "b")))
    text = open(pipe.cfg).read().replace('"in_port=1,actions=output:2"', '"in_port=1,actions=drop", "in_port=2,actions=output:1"')
    with open(pipe.cfg, "w") as f:
        f.write(text)
    pipe.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "in_port=2" in cli("dump-flows", "--name", uniq).stdout, 20)
    with peers(uniq, "ab") as ps:
        ps["a"].send_all([frame(1, i) for i in range(10)])
        assert wait_for(lambda: pipe.stats()["drops"]["action_drop"] == 10)
    with open(pipe.cfg, "w") as f:
        f.write(text.replace("actions=drop", "actions=bogus"))
    pipe.proc.send_signal(signal.SIGHUP)                  # a bad config changes nothing
    time.sleep(1)
    assert "in_port=1 actions=drop" in cli("dump-flows", "--name", uniq).stdout
    assert pipe.proc.poll() is None
    pipe.stop()
    err = pipe.proc.stderr.read()
    assert "rules reloaded" in err and "rules not reloaded" in err and "bogus" in err


def test_detach_pid_and_log(uniq, tmp_path):
    conf = tmp_path / "p.toml"
    conf.write_text(cfg(uniq, ["in_port=1,actions=output:2"], ports=("a",)).replace("@RUN@", str(tmp_path / "run")))
    pidf, log = tmp_path / "p.pid", tmp_path / "p.log"
    r = cli("run", str(conf), "--detach", "--pid-file", str(pidf), "--log-file", str(log), timeout=60)
    assert r.returncode == 0 and r.stdout.startswith(f"ready name={uniq}"), r.stderr
    pid = int(pidf.read_text())
    try:
        assert os.getsid(pid) == pid                           # its own session: the terminal can go
        assert cli("stats", "--name", uniq).returncode == 0
    finally:
        os.kill(pid, signal.SIGTERM)
    assert wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 20)
    assert not pidf.exists() and not (tmp_path / "run").exists()
    # the log says when it started, was ready and stopped, each line with its time
    lines = log.read_text().splitlines()
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ valepipe: "
    for want in (f"starting pipeline '{uniq}'", f"ready name={uniq} pid={pid}", f"pipeline '{uniq}' stopped"):
        assert [ln for ln in lines if re.match(stamp + re.escape(want), ln)], (want, lines)
    bad = tmp_path / "bad.toml"
    bad.write_text(f"[pipeline]\nname = '{uniq}x'\nrun_dir = '{tmp_path}/r2'\n[[port]]\nuri = 'tap:{'x' * 15}@netns=nosuch{uniq}'\n")
    blog = tmp_path / "bad.log"
    r = cli("run", str(bad), "--detach", "--log-file", str(blog), timeout=60)
    assert r.returncode != 0 and "did not start" in r.stderr and "nosuch" in r.stderr and "Traceback" not in r.stderr
    # and it is not left running: the refusal is not taken for a crash and the worker restarted
    text = blog.read_text()
    assert "Traceback" not in text and "restart" not in text and f"pipeline '{uniq}x' stopped" in text, text
    assert f"{uniq}x" not in cli("list").stdout
    # a refusal found after the start (the metrics address taken) is the one line too, and
    # its pid file goes
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        conf2 = tmp_path / "m.toml"
        conf2.write_text(conf.read_text().replace(f'name = "{uniq}"', f'name = "{uniq}m"')
                         .replace(str(tmp_path / "run"), str(tmp_path / "run-m"))
                         + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
        mlog, mpid = tmp_path / "m.log", tmp_path / "m.pid"
        r = cli("run", str(conf2), "--detach", "--log-file", str(mlog), "--pid-file", str(mpid), timeout=60)
    finally:
        taken.close()
    assert r.returncode != 0 and "did not start" in r.stderr and f"127.0.0.1:{port}" in r.stderr, r.stderr
    assert not mpid.exists() and f"pipeline '{uniq}m' stopped" in mlog.read_text(), mlog.read_text()


def test_demo_stopped_by_sigterm_leaves_nothing(tmp_path):
    before = set(glob.glob("/tmp/valepipe-bench-*"))
    p = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "demo", "--seconds", "60"], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        mine = wait_for(lambda: [d for d in set(glob.glob("/tmp/valepipe-bench-*")) - before
                                 if os.path.exists(os.path.join(d, "run", "worker.ctl"))], 60, 0.1)
        assert mine, p.stderr.read() if p.poll() is not None else "no demo pipeline came up"
        time.sleep(1)
        p.send_signal(signal.SIGTERM)
        assert p.wait(60) != 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert not any(os.path.exists(d) for d in mine)
    assert wait_for(lambda: not [f for f in os.listdir("/dev/shm") if f.startswith(_published("b" + str(p.pid)))], 20)
