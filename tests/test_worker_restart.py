"""A worker killed by a crash is restarted by its supervisor (`valepipe run`) with its
ports and the rules the slow path had, including those added at run time; its peers
attach again and traffic flows. A stop signal is not a crash: nothing restarts then."""
import os
import random
import signal
import subprocess
import sys
import time

from tests.conftest import ROOT, wait_for
from tests.ledger import Traffic, books_text, run_books
from tests.test_e2e import cfg, frame, peers


def test_crashed_worker_is_restarted(uniq, pipeline_factory):
    pipe = pipeline_factory(cfg(uniq, ["in_port=1,actions=output:2"], ports=("a", "b", "c")))
    run = os.path.join(pipe.dir, "run")
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "add-flow", "priority=40000,in_port=1,actions=output:3",
                        "--name", uniq, "--run-dir", run], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    st = pipe.stats()
    assert st["worker_restarts"] == 0
    os.kill(st["pid"], signal.SIGKILL)
    assert wait_for(lambda: _restarted(pipe, st["pid"]), timeout=20, step=0.1)
    new = pipe.stats()
    assert new["worker_restarts"] == 1 and new["upcall"]["slowpath_pid"] != st["upcall"]["slowpath_pid"]
    # the run-time rule survived the crash: port 1 still goes to 3, not 2 as in the config
    with peers(uniq) as ps:
        ps["a"].send_all([frame(1, i) for i in range(30)], others=(ps["c"],))
        assert wait_for(lambda: ps["c"].drain() >= 30)
        assert ps["b"].drain() == 0
    pipe.proc.send_signal(signal.SIGTERM)
    assert pipe.proc.wait(15) == 0
    assert "restarting it with its ports" in pipe.proc.stderr.read()
    assert not os.path.exists(run)


def _restarted(pipe, old_pid):
    try:
        st = pipe.stats()
    except (OSError, RuntimeError):
        return False
    return st["pid"] != old_pid and st["upcall"]["channel_up"]


def test_worker_killed_under_traffic_loses_nothing(uniq, pipeline_factory):
    """kill -9 of the worker at random moments while two ports send (cached and new flows):
    the next worker takes over the rings (the peers keep theirs; a batch cut short is taken
    again, one that committed is never repeated) and the counters, so `stats` totals go on
    and the books close exactly per port."""
    rules = ["priority=20,in_port=3,udp,nw_src=198.18.255.255,actions=drop", "priority=10,in_port=1,actions=output:2",
             "priority=10,in_port=3,actions=output:4"]
    pipe = pipeline_factory(cfg(uniq, rules, ports=("a", "b", "c", "d")).replace(
        "[pipeline]\n", "[pipeline]\nupcall_rate = 0\n"))
    pids = []

    def kill_workers():
        rng = random.Random()
        for _ in range(3):
            time.sleep(rng.uniform(1.5, 2.5))
            st = pipe.stats()
            pids.append(st["pid"])
            os.kill(st["pid"], signal.SIGKILL)
            assert wait_for(lambda: _restarted(pipe, pids[-1]), timeout=30, step=0.1)
    lanes = [Traffic(0, f"{uniq}a", f"{uniq}b", flows=64, rate=30_000, seconds=9),
             Traffic(2, f"{uniq}c", f"{uniq}d", flows=1_000_000, rate=20_000, seconds=9)]
    rows, st = run_books(pipe.ctl, lanes, during=kill_workers)
    assert st["worker_restarts"] == 3 and st["takeovers"] == 3 and st["pid"] not in pids
    # totals go on across the three workers: every packet sent was taken, and counted once
    assert [st["ports"][t.port]["rx_packets"] for t in lanes] == [r["sent"] for r in rows]
    assert st["packets"] == sum(r["sent"] for r in rows)
    assert rows[0]["delivered"] > 0 and rows[1]["delivered"] > 0
    assert [r["unexplained"] for r in rows] == [0, 0], books_text(rows)


def test_worker_killed_with_interface_ports_keeps_the_books(lab, pipeline_factory):
    """kill -9 of the worker at random moments while a host in a namespace sends through
    packet: ports: what waited in the dead worker's socket, or came before the new one
    opened, is counted (rx_worker_restart) against the interface's own counter, and the
    binding's counters go on across workers: the far end's tx = the port's io rx + its
    counted losses, exactly."""
    import pytest
    if os.geteuid() != 0:
        pytest.skip("namespaces and veth need root")
    from tests.netlab import VETH_LAB, two_ports
    L = lab(VETH_LAB)
    pipe = pipeline_factory(two_ports("wk" + L.tag, L.uri("packet", "a1", "vS"), L.uri("packet", "b1", "vS")))
    mac = L.run("vB", "cat", f"/sys/class/net/{L.name('b0')}/address").stdout.strip()
    L.run("vA", "ip", "neigh", "replace", "10.61.0.2", "lladdr", mac, "dev", L.name("a0"), "nud", "permanent")
    code = ("import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nend = time.time() + 6\n"
            "while time.time() < end:\n    s.sendto(b'x' * 64, ('10.61.0.2', 9))\n    time.sleep(0.0001)\n")
    sender = subprocess.Popen(["ip", "netns", "exec", L.name("vA"), sys.executable, "-c", code])
    rng, pids, before = random.Random(), [], None
    try:
        for _ in range(2):
            time.sleep(rng.uniform(0.8, 2.0))
            st = pipe.stats()
            before = st["ports"][0]["io"]["rx_packets"]
            pids.append(st["pid"])
            os.kill(st["pid"], signal.SIGKILL)
            assert wait_for(lambda: _restarted(pipe, pids[-1]), timeout=30, step=0.1)
            assert pipe.stats()["ports"][0]["io"]["rx_packets"] >= before     # counters go on
    finally:
        sender.wait(60)

    def books():
        st = pipe.stats()
        io = st["ports"][0]["io"]
        sent = L.link_stats("vA", "a0")["tx_packets"]
        return st if sent == io["rx_packets"] + io["rx_kernel_drops"] + io["rx_worker_restart"] else None
    st = wait_for(books, timeout=20) or pipe.stats()
    io, sent = st["ports"][0]["io"], L.link_stats("vA", "a0")["tx_packets"]
    assert sent == io["rx_packets"] + io["rx_kernel_drops"] + io["rx_worker_restart"], (sent, io)
    assert io["rx_worker_restart"] > 0, io             # ~0.5 s without a worker at 10,000 frames/s
    assert st["ports"][0]["in_drops"]["rx_worker_restart"] == io["rx_worker_restart"]
    assert st["worker_restarts"] == 2
