"""Everyday operation through the real `valepipe` command (issue 13, issue 11 item 7):
every subcommand's bad values end in one line on stderr and a non-zero exit; a refused
start leaves nothing behind; idle tools sleep; megaflow totals, trace input and output;
tools follow a restarted pipeline; name lookup whatever the run_dir; ready signals."""
import json
import os
import resource
import signal
import subprocess
import sys
import time

import pytest

from pipeline import config
from pipeline.worker import Worker
from tests.conftest import ROOT, wait_for
from tests.test_e2e import cfg, frame, peers
from tests.test_worker_restart import _restarted


def _published(region):
    """The /dev/shm name a region of this user is published under."""
    from ring.region import desc_path
    return os.path.basename(desc_path(region))


def cli(*args, input=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, input=input)


def one_line_error(r):
    err = r.stderr.strip()
    assert r.returncode != 0, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and len(err.splitlines()) == 1, r.stderr
    return err


def _configs(d):
    def write(name, text):
        path = os.path.join(d, name)
        with open(path, "w") as f:
            f.write(text)
        return path
    tag = "ok" + os.urandom(4).hex()
    ok = write("ok.toml", f"[pipeline]\nname = '{tag}'\nrun_dir = '{d}/run'\n[[port]]\nuri = 'shm:{tag}'\n")
    return {
        "ok": ok,
        "bogus_opt": write("b1.toml", "[[port]]\nuri = 'shm:x1@bogus=1'\n"),
        "empty_shm": write("b2.toml", "[[port]]\nuri = 'shm:'\n"),
        "slash": write("b3.toml", "[[port]]\nuri = 'shm:x1/evil'\n"),
        "single_port": write("b4.toml", "[port]\nuri = 'shm:x1'\n"),
        "run_dir": write("b5.toml", "[pipeline]\nrun_dir = '/proc/valepipe-no/run'\n[[port]]\nuri = 'shm:rdx'\n"),
        "bad_rule": write("b6.toml", "[[port]]\nuri = 'shm:x1'\n[slowpath]\nflows = ['in_port=1,tp_dst=80,actions=drop']\n"),
        "rules": write("rules.txt", "in_port=1,actions=output:2\n# a comment\n\nin_port=2,actions=bogus\n"),
    }


def bad_invocations(d):
    c = _configs(d)
    nosuch = ["--name", "nosuch-" + os.urandom(3).hex()]
    return [
        ["run", c["ok"], "--stats-json", "/nonexistent/x.json"],
        ["run", c["bogus_opt"]], ["run", c["empty_shm"]], ["run", c["slash"]], ["run", c["single_port"]],
        ["run", c["run_dir"], "--quiet"], ["run", c["bad_rule"]],
        ["run", c["ok"], "--mirror", "1=/tmp/f.pcap", "--mirror", "1=/tmp/g.pcap", "--mirror", "x=/tmp/f.pcap"],
        ["run", c["ok"], "--interval", "0"], ["run", c["ok"], "--duration", "-1"], ["run", c["ok"], "--duration", "0"],
        ["run", c["ok"], "--pid-file", "/tmp/x.pid"], ["run", "/nonexistent.toml"], ["run"],
        ["gen", "shm:nosuch", "--rate", "-1"], ["gen", "shm:nosuch", "--count", "-5"], ["gen", "shm:x", "--batch", "0"],
        ["gen", "shm:x", "--duration", "0"], ["gen", "shm:x", "--duration", "-2"], ["gen", "shm:x", "--rate", "abc"],
        ["gen", "shm:x", "--idle-stop", "0"], ["gen", "shm:x", "--size", "5", "--count", "1"],
        ["gen", "shm:x1/evil", "--count", "1"], ["gen", "bogus:x", "--count", "1"],
        ["sink", "shm:x", "--count", "-1"], ["sink", "shm:x", "--duration", "0"], ["sink", "shm:x", "--idle-stop", "-1"],
        ["demo", "--batch", "0"], ["demo", "--batch", "5000"], ["demo", "--size", "5"], ["demo", "--seconds", "0"],
        ["demo", "--flows", "0"],
        ["add-flow", "in_port=1,actions=output:2", *nosuch], ["add-flows", "/nonexistent.txt", *nosuch],
        ["add-flows", c["rules"], *nosuch], ["replace-flows", c["rules"], *nosuch],
        ["diff-flows", "/nonexistent.txt", *nosuch], ["del-flows", "tcp", *nosuch], ["mod-flows", "tcp", *nosuch],
        ["mod-flows", "in_port=1,actions=drop", "--strict", *nosuch],
        ["trace", "in_port=1,tcp", *nosuch], ["trace", *nosuch], ["trace", "x", "--file", "y", *nosuch],
        ["dump-flows", *nosuch], ["dump-flows", "--sort", "bogus", *nosuch],
        ["dump-flows", "--sort", "priority", "--rsort", "priority", *nosuch],
        ["dump-megaflows", *nosuch], ["fdb-show", *nosuch], ["stats", *nosuch], ["stats", "--watch", "--interval", "0"],
        ["ports", *nosuch], ["ports", "--run-dir", "/nonexistent"], ["topo", "up", "/nonexistent.toml"],
        ["add-port", "shm:x1/evil", *nosuch], ["add-port", "shm:ok", "--ofport", "x", *nosuch],
        ["del-port", "9", *nosuch], ["port-mod", "1", *nosuch], ["port-mod", "1", "--down", *nosuch],
        ["check"], ["list", "--bogus"],
        ["topo", "down", "/nonexistent.toml"], ["bogus-command"], ["stats", "--bogus-option"],
    ]


def test_every_subcommand_refuses_bad_values_in_one_line(tmp_path):
    from concurrent.futures import ThreadPoolExecutor
    cases = bad_invocations(str(tmp_path))
    seen = {args[0] for args in cases}
    with ThreadPoolExecutor(4) as pool:                 # ~70 processes: Python start-up is most of it
        for args, r in zip(cases, pool.map(lambda a: cli(*a), cases)):
            assert r.returncode != 0, (args, r.stdout)
            one_line_error(r)
    # every subcommand of the CLI is in the list above (a new one must join it)
    r = cli("--help")
    listed = {ln.split()[0] for ln in r.stdout.split("Commands:")[1].splitlines() if ln.strip()}
    assert listed <= seen, listed - seen


def test_errors_name_their_cause(tmp_path):
    c = _configs(str(tmp_path))
    assert "unknown option 'bogus=1'" in one_line_error(cli("run", c["bogus_opt"]))
    assert "[[port]] (two brackets)" in one_line_error(cli("run", c["single_port"]))
    assert "[pipeline].run_dir" in one_line_error(cli("run", c["run_dir"], "--quiet"))
    assert "flows[0]" in one_line_error(cli("run", c["bad_rule"]))
    assert "--stats-json" in one_line_error(cli("run", c["ok"], "--stats-json", "/nonexistent/x.json"))
    err = one_line_error(cli("run", c["ok"], "--mirror", "1=/tmp/same.pcap", "--mirror", "1=/tmp/same.pcap"))
    assert "same.pcap" in err or "twice" in err
    two = tmp_path / "two.toml"
    two.write_text("[[port]]\nuri = 'shm:m1'\n[[port]]\nuri = 'shm:m2'\n")
    assert "both write" in one_line_error(cli("run", str(two), "--mirror", "1=/tmp/f.pcap", "--mirror", "2=/tmp/f.pcap"))
    r = cli("fdb-show", "--name", "nosuch-x")
    assert r.stdout == "" and "--name" in one_line_error(r) and "nosuch-x" in r.stderr
    err = one_line_error(cli("add-flows", c["rules"], "--name", "nosuch-x"))
    assert f"{c['rules']}:4:" in err and "in_port=2,actions=bogus" in err


def test_check_reports_every_error_with_its_place(tmp_path, uniq):
    bad = tmp_path / "bad.toml"
    bad.write_text(f"[pipeline]\nbatch = 0\n[[port]]\nuri = 'shm:{uniq}@x=1'\n[[port]]\nuri = 'tap:@netns=x'\n"
                   "[slowpath]\nflows = ['in_port=1,actions=output:2', 'tp_dst=80,actions=drop', 'nope']\n"
                   "[metrics]\nlisten = 'nowhere'\n")
    r = cli("check", str(bad))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and "Traceback" not in r.stderr
    for place in ("[pipeline].batch", "[[port]] #1", "[[port]] #2", "flows[1]", "flows[2]", "[metrics].listen"):
        assert sum(place in ln for ln in lines) == 1, (place, lines)
    assert len(lines) == 6 and all(str(bad) in ln for ln in lines)
    assert not any(f.startswith(_published(uniq)) for f in os.listdir("/dev/shm"))      # nothing was started
    j = json.loads(cli("check", str(bad), "--json").stdout)
    assert j["ok"] is False and len(j["errors"]) == 6
    good = tmp_path / "good.toml"
    good.write_text("[[port]]\nuri = 'shm:a'\n[slowpath]\nflows = ['actions=NORMAL']\n")
    r = cli("check", str(good))
    assert r.returncode == 0 and "1 port(s), 1 rule(s)" in r.stdout


def test_refused_rule_at_start_leaves_nothing_behind(uniq, tmp_path):
    """The slow path refuses a rule after the worker opened its ports: the regions, the
    sockets and the run directory go again (defect 3)."""
    run_dir = tmp_path / "run"
    text = (f"[pipeline]\nname = '{uniq}'\nrun_dir = '{run_dir}'\n[[port]]\nuri = 'shm:{uniq}a'\n"
            "[slowpath]\nflows = ['in_port=1,tp_dst=80,actions=drop']\n")
    (tmp_path / "p.toml").write_text(text)
    with pytest.raises(RuntimeError):
        Worker(config.parse(text, str(tmp_path / "p.toml")))         # rules not checked up front here
    assert not [f for f in os.listdir("/dev/shm") if f.startswith(_published(uniq))]
    assert not run_dir.exists()
    err = one_line_error(cli("run", str(tmp_path / "p.toml")))          # checked before anything starts
    assert "tp_dst requires" in err
    assert not [f for f in os.listdir("/dev/shm") if f.startswith(_published(uniq))] and not run_dir.exists()


def _cpu_of(args, timeout=60):
    """(completed process, CPU seconds it used, wall seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    r = cli(*args, timeout=timeout)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), time.monotonic() - t0


def test_idle_tools_stop_and_sleep(uniq, pipeline_factory):
    pipeline_factory(cfg(uniq, ["in_port=1,actions=output:2"], ports=("a", "b")))
    # nothing arrives: --idle-stop counts from the start and ends the sink (it never did)
    r, cpu, wall = _cpu_of(["sink", f"shm:{uniq}b", "--idle-stop", "3", "--json"])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["received"] == 0
    # a spinning loop would use about as much CPU as the 3 s it waited; Python's start-up
    # is most of what is allowed here
    assert cpu < 0.5 * wall + 0.3, (cpu, wall)
    r, cpu, wall = _cpu_of(["gen", f"shm:{uniq}a", "--rate", "10", "--duration", "3", "--json"])
    assert r.returncode == 0, r.stderr
    assert 20 <= json.loads(r.stdout)["sent"] <= 40
    assert cpu < 0.5 * wall + 0.3, (cpu, wall)


def test_megaflow_totals_and_kinds(uniq, pipeline_factory):
    from scapy.layers.l2 import ARP, Ether
    pipe = pipeline_factory(cfg(uniq, ["actions=NORMAL"], ports=("a", "b")))
    run_dir = os.path.join(pipe.dir, "run")
    arp = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ARP(psrc="10.0.0.1", pdst="10.0.0.2"))
    with peers(uniq, "ab") as ps:
        ps["a"].send_all([frame(1, 0), arp])
        assert wait_for(lambda: ps["b"].drain() >= 2)
        ps["a"].send_all([frame(1, i) for i in range(1, 300)] + [arp] * 100, others=(ps["b"],))
        assert wait_for(lambda: ps["b"].drain() >= 401)
    r = cli("dump-megaflows", "--name", uniq, "--run-dir", run_dir)
    lines = r.stdout.strip().splitlines()
    assert r.returncode == 0 and len(lines) == 2 and lines[0] != lines[1], lines
    mf = json.loads(cli("dump-megaflows", "--name", uniq, "--json").stdout)
    st = pipe.stats()
    # every packet the fast path forwarded is in some megaflow's total (the rest went up)
    assert sum(f["packets"] for f in mf) + st["upcall"]["upcall_packets"] == 401, (mf, st["upcall"])
    assert all(f["used_s"] is not None for f in mf)


def test_trace_inputs_and_output(uniq, pipeline_factory):
    pipe = pipeline_factory(cfg(uniq, ["in_port=1,actions=CONTROLLER,output:2", "in_port=2,actions=output:1"],
                                ports=("a", "b")))
    hexed = frame(1, 0).hex()
    spaced = " ".join(hexed[i:i + 4] for i in range(0, len(hexed), 4))
    r = cli("trace", "--name", uniq, f"in_port=1 {spaced}")
    assert r.returncode == 0, r.stderr
    assert f'bridge("{uniq}")' in r.stdout and "controller(reason=action),2" in r.stdout
    r = cli("trace", "--name", uniq, "in_port=2 0200 0000 00")          # 5 bytes: a short frame, traced
    assert r.returncode == 0 and "Datapath actions: 1" in r.stdout, r.stderr
    assert "in_port" in one_line_error(cli("trace", "--name", uniq, "0200 0000 0002"))
    many = "\n".join(["in_port=1,udp,nw_dst=10.0.0.1,tp_dst=53", f"in_port=2 {hexed}", "# comment",
                      "in_port=2,ip"] * 50)
    r = cli("trace", "--name", uniq, "--file", "-", "--json", input=many)
    res = json.loads(r.stdout)
    assert r.returncode == 0 and len(res) == 150
    assert res[0]["datapath_actions"] == [["controller", "action"], ["output", 2]]
    assert res[1]["datapath_actions"] == [["output", 1]] and res[2]["rules"][0]["priority"] == 32768
    text = cli("trace", "--name", uniq, "--file", "-", input=many).stdout
    assert text.count("Datapath actions:") == 150
    assert pipe.stats()["ports"][0]["rx_packets"] == 0           # tracing sends nothing


def test_tools_follow_a_restarted_pipeline_and_stop_when_it_is_gone(uniq, pipeline_factory):
    pipe = pipeline_factory(cfg(uniq, ["in_port=1,actions=output:2"], ports=("a", "b")))
    gen = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "gen", f"shm:{uniq}a", "--rate", "2000",
                            "--duration", "8", "--json"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    try:
        assert wait_for(lambda: pipe.stats()["ports"][0]["rx_packets"] > 100, 20)
        old = pipe.stats()["pid"]
        os.kill(old, signal.SIGKILL)
        assert wait_for(lambda: _restarted(pipe, old), 20, 0.1)
        # the new worker receives what gen sends: the supervisor kept the region, so gen
        # goes on in the same rings (nothing to re-attach to) and the counts go on too
        rx = pipe.stats()["ports"][0]["rx_packets"]
        assert wait_for(lambda: pipe.stats()["ports"][0]["rx_packets"] > rx + 100, 20)
        out, err = gen.communicate(timeout=60)
        assert gen.returncode == 0, err
        assert json.loads(out)["reattached"] == 0
        sink = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "sink", f"shm:{uniq}b", "--duration", "60"],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(2)
        pipe.stop()                                  # for good: the sink must say so, not wait forever
        out, err = sink.communicate(timeout=60)
        assert sink.returncode == 1 and "did not come back" in err and "Traceback" not in err, err
    finally:
        for p in (gen,) + ((sink,) if "sink" in dir() else ()):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_name_finds_a_pipeline_whatever_its_run_dir(uniq, pipeline_factory):
    pipe = pipeline_factory(cfg(uniq, ["in_port=1,actions=output:2"], ports=("a", "b")))
    # the fixture's run_dir is a temporary directory; --name alone finds it
    r = cli("stats", "--name", uniq, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["run_dir"] == os.path.join(pipe.dir, "run")
    listed = {p["name"]: p for p in json.loads(cli("list", "--json").stdout)}
    assert listed[uniq]["ports"] == [f"shm:{uniq}a", f"shm:{uniq}b"]
    assert listed[uniq]["worker_pid"] == pipe.stats()["pid"]
    assert listed[uniq]["pid"] == pipe.proc.pid and listed[uniq]["answering"]        # the supervisor: `run` itself
    assert uniq in cli("list").stdout
    for cmd in (["ports"], ["fdb-show"], ["dump-flows"], ["dump-megaflows"]):
        r = cli(*cmd, "--name", uniq, "--json")
        assert r.returncode == 0 and isinstance(json.loads(r.stdout), list), (cmd, r.stderr)
    pipe.stop()
    assert uniq not in cli("list").stdout


def test_ready_line_and_ready_file(uniq, tmp_path):
    conf = tmp_path / "p.toml"
    conf.write_text(cfg(uniq, ["in_port=1,actions=output:2"], ports=("a",)).replace("@RUN@", str(tmp_path / "run")))
    ready = tmp_path / "ready.json"
    p = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(conf), "--quiet", "--ready-file",
                          str(ready)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        line = p.stdout.readline()
        assert line.startswith(f"ready name={uniq} ") and f"run_dir={tmp_path / 'run'}" in line
        info = json.loads(ready.read_text())
        # ready means forwarding: the worker answers at once
        assert cli("stats", "--name", uniq, "--json").returncode == 0 and info["name"] == uniq
    finally:
        p.terminate()
        p.wait(20)
    assert not ready.exists()


def test_version_and_completion():
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("valepipe ")
    env = dict(os.environ, _VALEPIPE_COMPLETE="complete_bash", COMP_WORDS="valepipe dump-f", COMP_CWORD="1")
    r = subprocess.run([sys.executable, "-m", "pipeline.cli"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.stdout.split() == ["dump-flows"] or set(r.stdout.split()) == {"dump-flows", "dump-megaflows"}, r
