"""What an outside tester found in everyday operation, each through the real `valepipe`
command and processes: tracebacks where one line belongs, topologies that leaked or said
nothing of the object, a metrics endpoint never restarted, `list` hiding a stopped
pipeline, a ports view hiding what JSON has, gen's rate below 1 pps and its catch-up burst,
stats --watch silent in a terminal, run --json not JSON, ambiguous options accepted,
ovs-ofctl's cookie/-1, pids and process titles, megaflow expirations, paths."""
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import ROOT, wait_for
from tests.test_shm_peers import _claimed
from tests.test_e2e import cfg, frame, peers


def vp(*args, timeout=60, input=None):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, input=input)


def one_line_error(r):
    err = r.stderr.strip()
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(err.splitlines()) == 1, (r.returncode, r.stderr)
    return err


def _config(tmp_path, uniq, ports, extra=""):
    conf = tmp_path / f"{uniq}.toml"
    conf.write_text(f'[pipeline]\nname = "{uniq}"\nrun_dir = "{tmp_path / "run"}"\n'
                    + "".join(f'[[port]]\nuri = "{p}"\n' for p in ports) + extra)
    return str(conf)


def test_one_line_errors_not_tracebacks(uniq, tmp_path):
    ok = _config(tmp_path, uniq, [f"shm:{uniq}a"])
    many = _config(tmp_path, uniq + "m", [f"shm:{uniq}p{i}" for i in range(70)])
    big_queue = _config(tmp_path, uniq + "q", ["afxdp:lo:99999999999"])
    cases = {
        ("gen", f"shm:{uniq}a", "--cpu", "-1"): "--cpu",
        ("sink", f"shm:{uniq}a", "--cpu", "-1"): "--cpu",
        ("run", ok, "--cpu", "-1"): "--cpu",
        ("run", ok, "--cpu", "100000"): "--cpu",
        ("check", big_queue): "queue 99999999999",
        ("run", big_queue): "queue 99999999999",
        ("check", many): "at most 64",
        ("run", many): "at most 64",
        ("trace", "", "--name", uniq): "empty flow",
        ("port-mod", "1", "--up", "--down", "--name", uniq): "--up or --down",
        ("add-port", f"shm:{uniq}z", "--ofport", "0", "--name", uniq): "--ofport must be 1..65279",
    }
    for args, says in cases.items():
        err = one_line_error(vp(*args))
        assert says in err, (args, err)
    # a shared directory as run directory: refused with advice that does not break the host
    err = one_line_error(vp("run", ok, "--run-dir", "/tmp"))
    assert "open to other users" in err and "chmod" not in err, err
    # check says ok only when run would start: 70 ports was "ok", then a DatapathError
    assert vp("check", ok).returncode == 0


def test_run_time_and_trace_consistency(uniq, pipeline_factory):
    pipe = pipeline_factory(cfg(uniq, ["in_port=1,actions=output:2"], ports=("a", "b")))
    run = os.path.join(pipe.dir, "run")
    err = one_line_error(vp("add-port", "afxdp:lo:99999999999", "--name", uniq, "--run-dir", run))
    assert "queue 99999999999" in err and "internal error" not in err, err
    err = one_line_error(vp("trace", "in_port=1,actions=drop", "--name", uniq))
    assert "not a rule" in err, err
    r = vp("trace", "in_port=1,udp", "--name", uniq)
    assert r.returncode == 0 and "Datapath actions: 2" in r.stdout, r.stderr
    # more flows in one file than the slow path takes in one request: sent in several
    r = vp("trace", "--file", "-", "--json", "--name", uniq, input="in_port=1,udp,tp_dst=53\n" * 10050)
    assert r.returncode == 0 and len(json.loads(r.stdout)) == 10050, r.stderr[-300:]
    # ovs-ofctl's exact cookie mask
    assert vp("add-flow", "cookie=0x5,priority=5,in_port=2,actions=drop", "--name", uniq).returncode == 0
    r = vp("dump-flows", "cookie=0x5/-1", "--name", uniq)
    assert r.returncode == 0 and "cookie=0x5" in r.stdout and "in_port=1" not in r.stdout, (r.stdout, r.stderr)
    r = vp("del-flows", "cookie=0x5/-1", "--name", uniq)
    assert r.returncode == 0 and "deleted 1 rule" in r.stdout, r.stderr
    # a group or meter needs an OpenFlow switch that has it: without [openflow] none exists
    for rule in ("in_port=2,actions=group:1", "in_port=2,actions=meter:1,output:1"):
        err = one_line_error(vp("add-flow", rule, "--name", uniq))
        assert "does not exist" in err and "[openflow]" in err, err
        err = one_line_error(vp("mod-flows", "in_port=1," + rule.split(",", 1)[1], "--name", uniq))
        assert "does not exist" in err, err
    assert "group" not in pipe.cli("dump-flows") and "meter" not in pipe.cli("dump-flows")
    # nor from the config: `check` (and `run`) refuse it, with its place
    bad = os.path.join(pipe.dir, "g.toml")
    with open(bad, "w") as f:
        f.write(cfg(uniq + "g", ["in_port=1,actions=output:2", "in_port=2,actions=meter:1,output:1"], ports=("a", "b"))
                .replace("@RUN@", os.path.join(pipe.dir, "rung")))
    err = one_line_error(vp("check", bad))
    assert "[slowpath].flows[1]: meter 1 does not exist" in err, err


def test_topo_errors_name_their_object_and_leak_nothing(tmp_path):
    from pyroute2 import netns as nsmod
    if os.geteuid() != 0:
        pytest.skip("needs root for namespaces")
    tag = os.urandom(3).hex()
    bad = {
        # a veth in a namespace nobody declared: it was created by naming it, then left behind
        "undeclared": (f'[[veth]]\nname = "u0{tag}"\npeer = "u1{tag}"\nnetns = "nsu{tag}"\n', f"nsu{tag}"),
        "same": (f'[[netns]]\nname = "nss{tag}"\n[[veth]]\nname = "s0{tag}"\npeer = "s0{tag}"\nnetns = "nss{tag}"\n',
                 "both"),
        "mtu": (f'[[veth]]\nname = "m0{tag}"\npeer = "m1{tag}"\nmtu = -1\n', "mtu"),
        "mtu2": (f'[[veth]]\nname = "m0{tag}"\npeer = "m1{tag}"\nmtu = 1000000\n', "mtu"),
        "long": (f'[[netns]]\nname = "{"n" * 300}"\n', "namespace name"),
    }
    for what, (text, says) in bad.items():
        path = tmp_path / f"{what}.toml"
        path.write_text(text)
        err = one_line_error(vp("topo", "up", str(path)))
        assert says in err, (what, err)
        assert not [n for n in nsmod.listnetns() if tag in n], (what, nsmod.listnetns())
    # a veth in a netns, peer_netns not given: the peer is in the same namespace (IndexError)
    good = tmp_path / "good.toml"
    good.write_text(f'[[netns]]\nname = "nsg{tag}"\n[[veth]]\nname = "g0{tag}"\npeer = "g1{tag}"\nnetns = "nsg{tag}"\n'
                    f'[[tap]]\nname = "gt{tag}"\n')
    r = vp("topo", "up", str(good))
    try:
        assert r.returncode == 0, r.stderr
        links = subprocess.run(["ip", "-n", f"nsg{tag}", "-o", "link"], capture_output=True, text=True).stdout
        assert f"g0{tag}" in links and f"g1{tag}" in links
        subprocess.run(["ip", "link", "del", f"gt{tag}"], check=True)     # removed by hand
    finally:
        r = vp("topo", "down", str(good))
    assert r.returncode == 0 and "already gone: link gt" in r.stdout and "removed 2 of 3" in r.stdout, r.stdout
    assert f"nsg{tag}" not in nsmod.listnetns()


def test_metrics_endpoint_comes_back_after_a_kill(uniq, tmp_path, processes):
    conf = _config(tmp_path, uniq, [f"shm:{uniq}a"], '[metrics]\nlisten = "127.0.0.1:0"\n')
    p = processes([sys.executable, "-m", "pipeline.cli", "run", conf, "--quiet"], cwd=ROOT,
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    addr = re.search(r"metrics=(\S+)", line).group(1)

    def scrape():
        try:
            return urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read().decode()
        except OSError:
            return None
    assert "valepipe_up" in scrape()
    old = _child(p.pid, "pipeline.metrics")
    os.kill(old, signal.SIGKILL)
    assert wait_for(lambda: _child(p.pid, "pipeline.metrics") not in (None, old), 20, 0.1)
    assert wait_for(lambda: (scrape() or "").count('valepipe_up{pipeline="%s"} 1.0' % uniq), 20, 0.1)
    assert not os.path.exists(f"/proc/{old}")                  # reaped: no zombie
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=30)
    assert "metrics endpoint" in err and "SIGKILL" in err, err


def _child(ppid, word):
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1]) == ppid \
                    and word in open(f"/proc/{pid}/cmdline").read():
                return int(pid)
        except (OSError, IndexError):
            pass
    return None


def test_list_ports_stats_pids_and_titles(uniq, pipeline_factory, tmp_path):
    pipe = pipeline_factory(cfg(uniq, ["in_port=1,actions=output:2"], ports=("a", "b")).replace(
        "[slowpath]", f'[[port]]\nuri = "pcap:{tmp_path}/out.pcap@write"\n[slowpath]'))
    st = pipe.stats()
    worker, supervisor = st["pid"], pipe.proc.pid
    # ps tells the two apart, and names the pipeline
    titles = {pid: open(f"/proc/{pid}/cmdline").read().replace("\0", " ").strip() for pid in (worker, supervisor)}
    assert titles[supervisor] == f"valepipe run {uniq} (supervisor)"
    assert titles[worker] == f"valepipe run {uniq} (worker)"
    assert st["supervisor_pid"] == supervisor and os.path.isabs(st["config"])
    listed = {r["name"]: r for r in json.loads(vp("list", "--json").stdout)}[uniq]
    assert listed["pid"] == supervisor and listed["worker_pid"] == worker and listed["config"] == st["config"]
    # ports: a port taken down says so; the io line carries what JSON has; link and speed
    assert vp("port-mod", "2", "--down", "--name", uniq).returncode == 0
    text = vp("ports", "--name", uniq).stdout
    js = json.loads(vp("ports", "--name", uniq, "--json").stdout)
    rows = {ln.split()[0]: ln for ln in text.splitlines() if not ln.startswith(" " * 4)}
    assert rows["2"].split()[2] == "down" and rows["1"].split()[2] == "ok", text
    io = js[2]["io"]
    for k, v in io.items():
        if isinstance(v, int) and not isinstance(v, bool):
            assert f"{k}={v}" in text, (k, text)
    assert "io: {}" not in text
    # a worker that does not answer is listed as such, not hidden
    os.kill(worker, signal.SIGSTOP)
    try:
        r = vp("list")
        assert uniq in r.stdout and "NOT ANSWERING" in r.stdout, r.stdout
        row = {x["name"]: x for x in json.loads(vp("list", "--json").stdout)}[uniq]
        assert row["answering"] is False and row["worker_pid"] == worker
    finally:
        os.kill(worker, signal.SIGCONT)


def test_megaflow_expirations_counted(uniq, pipeline_factory):
    pipe = pipeline_factory(cfg(uniq, ["in_port=1,actions=output:2"], ports=("a", "b")).replace(
        'run_dir = "@RUN@"', 'run_dir = "@RUN@"\nidle_timeout = 1'))
    with peers(uniq, "ab") as ps:
        ps["a"].send_all([frame(1, 0)])
        assert wait_for(lambda: ps["b"].drain() >= 1)
    assert wait_for(lambda: pipe.stats()["megaflows"] >= 1)
    assert wait_for(lambda: pipe.stats()["megaflows"] == 0, 20)
    assert pipe.stats()["upcall"]["megaflows_removed"] >= 1


def test_gen_rate_below_one_and_no_catch_up_burst(uniq, pipeline_factory, processes):
    pipe = pipeline_factory(cfg(uniq, ["in_port=1,actions=output:2"], ports=("a", "b")))
    t0 = time.monotonic()
    r = vp("gen", f"shm:{uniq}a", "--rate", "2.5", "--count", "4", "--json")
    res = json.loads(r.stdout)
    assert r.returncode == 0 and res["sent"] == 4 and time.monotonic() - t0 >= 1.5, (res, r.stderr)
    # 1000 pps for 6 s with the worker stopped for 3 s of them: the ring (1024 slots) fills,
    # then gen waits; resumed, it goes on at 1000 pps, not 3,000 packets at once
    gen = processes([sys.executable, "-m", "pipeline.cli", "gen", f"shm:{uniq}a", "--rate", "1000", "--duration", "6",
                     "--json"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    worker = pipe.stats()["pid"]
    time.sleep(1)
    os.kill(worker, signal.SIGSTOP)
    time.sleep(3)
    os.kill(worker, signal.SIGCONT)
    out, err = gen.communicate(timeout=60)
    sent = json.loads(out)["sent"]
    assert sent <= 6000 - 1500, sent              # caught up, it sent ~6,000


def test_run_json_is_json_and_run_dir_option(uniq, tmp_path):
    conf = _config(tmp_path, uniq, [f"shm:{uniq}a"], '[slowpath]\nflows = ["actions=drop"]\n')
    other = tmp_path / "elsewhere"
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", conf, "--json", "--duration", "2.5", "--interval",
                        "0.5", "--run-dir", str(other)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    objs = [json.loads(ln) for ln in r.stdout.splitlines()]         # every line is JSON (| jq)
    assert objs[0]["event"] == "ready" and objs[0]["run_dir"] == str(other) and len(objs) >= 2
    assert not other.exists() and not (tmp_path / "run").exists()
    r = vp("check", conf)
    assert "run_dir" in r.stdout


def test_stats_watch_says_why_it_stopped_in_a_terminal(uniq, pipeline_factory):
    pipe = pipeline_factory(cfg(uniq, ["in_port=1,actions=output:2"], ports=("a", "b")))
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(ROOT)
        os.execv(sys.executable, [sys.executable, "-m", "pipeline.cli", "stats", "--name", uniq, "--watch",
                                  "--interval", "0.2"])
    out = b""
    try:
        deadline = time.monotonic() + 30
        while b"packets/s" not in out.lower() and b"pps" not in out and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.5)[0]:
                out += os.read(fd, 65536)
        pipe.stop()
        while time.monotonic() < deadline + 30:
            if select.select([fd], [], [], 0.5)[0]:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
        _, status = os.waitpid(pid, 0)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.close(fd)
    tail = out.decode(errors="replace").rsplit("\x1b", 1)[-1]     # after the display's last escape sequence
    assert os.WEXITSTATUS(status) == 1 and "stopped watching" in tail, out[-600:]


def test_sink_counts_only_its_own_time_and_gen_summary_ends_with_its_pipeline(uniq, pipeline_factory, processes):
    pipe = pipeline_factory(cfg(uniq, ["in_port=1,actions=output:2"], ports=("a", "b")))
    # 30 frames wait in b's ring with nobody there; a sink started later counts only what
    # comes after it (it counted them), and says how many it found waiting
    assert json.loads(vp("gen", f"shm:{uniq}a", "--count", "30", "--json").stdout)["sent"] == 30
    assert wait_for(lambda: pipe.stats()["ports"][1]["tx_packets"] == 30)
    sink = processes([sys.executable, "-m", "pipeline.cli", "sink", f"shm:{uniq}b", "--idle-stop", "10", "--json"],
                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: _claimed(f"{uniq}b", rx=True) == sink.pid, timeout=60)
    assert json.loads(vp("gen", f"shm:{uniq}a", "--count", "20", "--json").stdout)["sent"] == 20
    res = json.loads(sink.communicate(timeout=60)[0])
    assert res["received"] == 20 and res["discarded_at_start"] == 30, res
    # a generator whose pipeline goes away for good: its summary covers the sending, not
    # the 10 s it then waited for the pipeline to come back
    gen = processes([sys.executable, "-m", "pipeline.cli", "gen", f"shm:{uniq}a", "--rate", "1000", "--duration", "60",
                     "--json"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: pipe.stats()["ports"][0]["rx_packets"] > 1000, 20)
    pipe.stop()
    out, err = gen.communicate(timeout=60)
    res = json.loads(out)
    assert gen.returncode == 1 and "did not come back" in err
    assert res["seconds"] < 8 and res["sent"] / res["seconds"] > 500, res
