"""Peers of shm: ports through the real `valepipe` command: one process per ring (a second
sender or receiver on a port is refused, naming the first; a dead one's place is free at
once) with an exact count; ports of a shared region reached by their own names, and a
mistyped @share= refused by check and run; a directory another user made at a port's name;
the regions of ports added at run time removed when their worker is killed."""
import json
import os
import signal
import subprocess
import sys

import pytest

from ring.region import desc_path
from tests.conftest import ROOT, wait_for
from tests.test_e2e import cfg
from tests.test_worker_restart import _restarted


def vp(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def one_line_error(r):
    err = r.stderr.strip()
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(err.splitlines()) == 1, (r.returncode, r.stderr)
    return err


def _attached(proc):
    """A gen or sink started without -q prints a line a second once attached."""
    line = proc.stdout.readline()
    assert line.startswith(("rx ", "tx ")), (line, proc.stderr.read() if proc.poll() is not None else "")


def test_one_peer_per_ring(uniq, pipeline_factory, processes):
    pipe = pipeline_factory(cfg(uniq, ["in_port=1,actions=output:2"], ports=("a", "b")))

    def start(*args):
        return processes([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    sink1 = start("sink", f"shm:{uniq}b", "--duration", "60")
    _attached(sink1)
    err = one_line_error(vp("sink", f"shm:{uniq}b", "--count", "10", "--duration", "20"))
    assert f"pid {sink1.pid} already receives on it" in err, err
    gen1 = start("gen", f"shm:{uniq}a", "--rate", "200", "--duration", "60")
    _attached(gen1)
    err = one_line_error(vp("gen", f"shm:{uniq}a", "--count", "10"))
    assert f"pid {gen1.pid} already sends on it" in err, err
    # the other ring of a port is another peer's to take: a sender on b, beside b's receiver
    r = vp("gen", f"shm:{uniq}b", "--count", "5", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["sent"] == 5, r.stderr
    gen1.send_signal(signal.SIGINT)
    assert gen1.wait(30) == 0
    sink1.kill()                           # a dead peer's claim stays in the region: it is not in the way
    sink1.wait()
    sink = start("sink", f"shm:{uniq}b", "--count", "500", "--duration", "60", "--json")
    assert wait_for(lambda: _claimed(f"{uniq}b", rx=True) == sink.pid, 20)
    before = pipe.stats()["ports"][1]["tx_packets"]
    r = vp("gen", f"shm:{uniq}a", "--count", "500", "--rate", "20000", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["sent"] == 500, r.stderr
    out, err = sink.communicate(timeout=60)
    res = json.loads(out)
    st = pipe.stats()
    # exactly what was sent while it ran: nothing shared with another receiver, nothing
    # left from sink1's time counted (discarded_at_start says how much waited)
    assert res["received"] == 500 and st["ports"][1]["tx_packets"] - before == 500, (res, st["drops"])
    assert sum(st["drops"].values()) == st["drops"]["action_drop"] == 5          # gen on b's 5: no rule


def _claimed(region, rx):
    """The pid recorded as the peer of a port's ring (the test maps the region as a peer
    would, without claiming anything)."""
    from ring.region import Region
    try:
        with Region.attach(region) as reg:
            p = reg.hdr.port[0]
            return p.rx_peer_pid if rx else p.peer_pid
    except Exception:
        return None


def test_shared_region_ports_by_their_own_names(uniq, pipeline_factory, tmp_path):
    pipe = pipeline_factory(f'[pipeline]\nname = "{uniq}"\nrun_dir = "@RUN@"\n'
                            f'[[port]]\nuri = "shm:{uniq}s1"\n[[port]]\nuri = "shm:{uniq}s2@share={uniq}s1"\n'
                            '[slowpath]\nflows = ["in_port=2,actions=output:1"]\n')
    assert os.path.exists(desc_path(f"{uniq}s2"))
    # by its own name, as by the region's: both reach port 2 of the one region
    r = vp("gen", f"shm:{uniq}s2", "--count", "40", "--json", timeout=30)
    assert r.returncode == 0 and json.loads(r.stdout)["sent"] == 40, r.stderr
    r = vp("gen", f"shm:{uniq}s2@share={uniq}s1", "--count", "10", "--json", timeout=30)
    assert r.returncode == 0, r.stderr
    assert wait_for(lambda: pipe.stats()["ports"][1]["rx_packets"] == 50)
    pipe.stop()
    assert not [f for f in os.listdir("/dev/shm") if uniq in f]


def test_share_naming_no_port_is_refused(uniq, tmp_path):
    conf = tmp_path / "typo.toml"
    conf.write_text(f'[pipeline]\nname = "{uniq}"\nrun_dir = "{tmp_path / "run"}"\n'
                    f'[[port]]\nuri = "shm:{uniq}s1"\n[[port]]\nuri = "shm:{uniq}b@share={uniq}zz"\n')
    for cmd in ("check", "run"):
        r = vp(cmd, str(conf))
        err = one_line_error(r)
        assert f"@share={uniq}zz names no port" in err, err
    assert not (tmp_path / "run").exists() and not [f for f in os.listdir("/dev/shm") if uniq in f]


def test_directory_at_a_port_name(uniq, other_users, pipeline_factory, tmp_path):
    """Another user's empty directory at root's port name is removed as its files and
    FIFOs are; one with something in it is refused, saying whose and what (it said 'Is a
    directory' and could not be removed)."""
    alice = other_users(1)[0]
    empty, full = f"/dev/shm/valepipe.{uniq}a", f"/dev/shm/valepipe.{uniq}b"
    try:
        alice.py(f"import os\nos.mkdir({empty!r})\nos.mkdir({full!r})\nopen({full!r} + '/x', 'w').close()\n"
                 "print('ready', flush=True)\n")
        pipe = pipeline_factory(cfg(uniq, ["in_port=1,actions=drop"], ports=("a",)))
        st = os.lstat(empty)
        assert st.st_uid == 0 and not os.path.isdir(empty)
        pipe.stop()
        conf = tmp_path / "b.toml"
        conf.write_text(cfg(uniq + "x", ["in_port=1,actions=drop"], ports=("b",)).replace(
            f"shm:{uniq}xb", f"shm:{uniq}b").replace("@RUN@", str(tmp_path / "run")))
        err = one_line_error(vp("run", str(conf), "--quiet", "--duration", "5"))
        assert full in err and f"a directory of uid {alice.uid}" in err and "files in it" in err, err
        assert os.path.isdir(full)                 # left alone
    finally:
        for d in (empty, full):
            subprocess.run(["rm", "-rf", d])


def test_ports_added_at_run_time_leave_no_region_after_a_worker_kill(uniq, pipeline_factory):
    pipe = pipeline_factory(cfg(uniq, ["in_port=1,actions=output:2"], ports=("a", "b")))
    run = os.path.join(pipe.dir, "run")
    r = vp("add-port", f"shm:{uniq}p5", "--name", uniq, "--run-dir", run)
    assert r.returncode == 0, r.stderr
    added = desc_path(f"{uniq}p5")
    assert os.path.exists(added)
    old = pipe.stats()["pid"]
    os.kill(old, signal.SIGKILL)
    assert wait_for(lambda: _restarted(pipe, old), 30, 0.1)
    assert not os.path.exists(added) and not os.path.exists(added + ":sock")
    r = vp("add-port", f"shm:{uniq}p5", "--name", uniq, "--run-dir", run)      # the name is free again
    assert r.returncode == 0, r.stderr
    pipe.stop()
    assert not [f for f in os.listdir("/dev/shm") if uniq in f]


def test_the_peer_api_refuses_a_frame_no_slot_holds(uniq, pipeline_factory):
    """PortPeer.send says which frame cannot go (empty, or beyond the port's buffers)
    rather than quietly sending fewer."""
    from pipeline.peer import PortPeer
    pipeline_factory(cfg(uniq, ["in_port=1,actions=output:2"], ports=("a", "b")))
    with PortPeer(f"shm:{uniq}a") as p:
        for bad in (b"", b"x" * 2049, b"x" * 70000):
            with pytest.raises(ValueError, match=f"{len(bad)} bytes"):
                p.send([b"x" * 60, bad])
        assert p.send([b"x" * 2048]) == 1
