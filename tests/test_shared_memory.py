"""Shared memory written by someone else, while the worker uses it: a peer process rewriting
its port's slots and cursors at random (buffer indexes flipped between valid and
0xfffffff0 while the pipeline fills and mirrors them) costs the worker nothing but counted
faults, with an exact ledger for the traffic sent to that port. And a worker that keeps
crashing is given up on without leaving regions or run-directory files behind."""
import glob
import json
import os
import signal
import struct
import subprocess
import sys

from pipeline._native import ffi, lib
from ring.region import _pid_alive
from tests.conftest import ROOT, wait_for
from tests.test_e2e import frame, peers
from tests.test_worker_restart import _restarted
from tools.traffic import DEFAULT_DST, DEFAULT_SRC

SCRIBBLE_S = 8          # the unfixed worker (a re-read buf_idx) died within 0.3-2 s of this


def _cfg(tag, mirror=None):
    return (f'[pipeline]\nname = "{tag}"\nrun_dir = "@RUN@"\n'
            f'[[port]]\nuri = "shm:{tag}a"\nslots = 256\n'
            f'[[port]]\nuri = "shm:{tag}x"\nslots = 256\n' + (f'mirror = "{mirror}"\n' if mirror else '') +
            f'[[port]]\nuri = "shm:{tag}c"\nslots = 256\n'
            f'[[port]]\nuri = "shm:{tag}b"\nslots = 256\n'
            '[slowpath]\nflows = ["in_port=1,actions=output:2", "in_port=2,actions=drop", '
            '"in_port=3,actions=output:4"]\n')


def _cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def _pcap_records(path):
    with open(path, "rb") as f:
        data = f.read()
    out, off = [], 24
    while off + 16 <= len(data):
        caplen = struct.unpack_from("<I", data, off + 8)[0]
        out.append(data[off + 16:off + 16 + caplen])
        off += 16 + caplen
    assert off == len(data), "a cut-off pcap record"
    return out


def _quiet(pipe):
    """Stats once the counters stop moving (the slow path has answered everything)."""
    last = [None]

    def settled():
        st = pipe.stats()
        key = (st["packets"], st["drops"], [(p["rx_packets"], p["tx_packets"]) for p in st["ports"]])
        done = key == last[0]
        last[0] = key
        return st if done else None
    return wait_for(settled, timeout=20, step=0.5)


def test_scribbling_peer_on_a_mirrored_port(uniq, pipeline_factory, tmp_path):
    mirror = tmp_path / "x.pcap"
    pipe = pipeline_factory(_cfg(uniq, mirror))
    pid = pipe.stats()["pid"]
    # the one flow the generator sends is set up first, so every later packet is a hit
    r = _cli("gen", f"shm:{uniq}a", "--count", "1")
    assert r.returncode == 0, r.stderr
    assert wait_for(lambda: pipe.stats()["ports"][1]["tx_packets"] == 1)
    seed = int.from_bytes(os.urandom(4), "little")
    scribbler = subprocess.Popen([sys.executable, "-m", "tests.scribbler", f"{uniq}x", f"{uniq}x", str(SCRIBBLE_S),
                                  str(seed)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert scribbler.stdout.readline().strip() == "attached", scribbler.stderr.read()
        gen = _cli("gen", f"shm:{uniq}a", "--rate", "100000", "--duration", str(SCRIBBLE_S), "--json",
                   timeout=SCRIBBLE_S + 60)
        out, err = scribbler.communicate(timeout=60)
    finally:
        if scribbler.poll() is None:
            scribbler.kill()
            scribbler.wait()
    assert scribbler.returncode == 0 and out.startswith("rewrites"), err
    assert gen.returncode == 0, gen.stderr
    st = _quiet(pipe)
    assert st, "counters never settled"
    # the worker lived through it (seed for a rerun: in the message)
    assert st["pid"] == pid and st["worker_restarts"] == 0, f"the worker died (scribbler seed {seed})"
    a, x = st["ports"][0], st["ports"][1]
    d = x["drops"]
    assert x["faulty"]
    for reason in ("rx_bad_index", "rx_bad_buf", "rx_bad_len", "rx_bad_flags", "tx_bad_index", "tx_bad_buf"):
        assert d[reason] > 0, (reason, d, seed)
    # exact ledger of what went to the attacked port: sent, or dropped with a reason
    assert a["rx_packets"] == 1 + json.loads(gen.stdout)["sent"]
    assert a["rx_packets"] == x["tx_packets"] + d["tx_bad_buf"] + d["tx_ring_full"], (a, x, seed)
    # the mirror holds exactly what was sent, and nothing but the generator's frame
    expected = ffi.new("uint8_t[]", 64)
    assert lib.vp_gen_build(expected, 64, 1, 60, DEFAULT_DST, DEFAULT_SRC) == 0
    expected = bytes(ffi.buffer(expected, 60))
    pipe.stop()
    records = _pcap_records(mirror)
    assert len(records) == x["tx_packets"] == x["mirror"]["packets"]
    assert all(rec == expected for rec in records), seed


def test_scribbled_worker_still_forwards_other_ports(uniq, pipeline_factory, tmp_path):
    pipe = pipeline_factory(_cfg(uniq, tmp_path / "x.pcap"))
    scribbler = subprocess.Popen([sys.executable, "-m", "tests.scribbler", f"{uniq}x", f"{uniq}x", "3", "7"],
                                 cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert scribbler.stdout.readline().strip() == "attached"
        with peers(uniq, "cb") as ps:
            frames = [frame(1, i) for i in range(300)]
            ps["c"].send_all(frames[:1])                # the flow first: then all are hits
            assert wait_for(lambda: ps["b"].drain() >= 1)
            ps["c"].send_all(frames[1:], others=(ps["b"],))
            assert wait_for(lambda: ps["b"].drain() >= 300)
            assert ps["b"].got == frames
            assert scribbler.poll() is None             # all this while under attack
        scribbler.communicate(timeout=60)
    finally:
        if scribbler.poll() is None:
            scribbler.kill()
            scribbler.wait()
    assert pipe.stats()["worker_restarts"] == 0


def test_given_up_worker_leaves_nothing(uniq, pipeline_factory):
    from pipeline.supervisor import MAX_RESTARTS
    pipe = pipeline_factory(_cfg(uniq))
    run = os.path.join(pipe.dir, "run")
    slowpaths = []
    for crash in range(MAX_RESTARTS + 1):
        st = pipe.stats()
        slowpaths.append(st["upcall"]["slowpath_pid"])
        os.kill(st["pid"], signal.SIGSEGV)               # as a crash would
        if crash < MAX_RESTARTS:
            assert wait_for(lambda: _restarted(pipe, st["pid"]), timeout=30, step=0.1), crash
    assert pipe.proc.wait(30) == 1
    err = pipe.proc.stderr.read()
    assert "giving up" in err and "SIGSEGV" in err and "Traceback" not in err
    assert glob.glob(f"/dev/shm/valepipe.{uniq}*") == []
    assert not os.path.exists(run)
    assert wait_for(lambda: not any(_pid_alive(p) for p in slowpaths), timeout=10)
