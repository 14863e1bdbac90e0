"""valepipe gen / sink through the CLI against a running pipeline: counts add up, the
generator's frames are what it says, rate pacing holds."""
import json
import subprocess
import sys

from tests.conftest import ROOT
from tests.test_e2e import cfg
from tools.traffic import Generator, Sink


def cli(*args):
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_gen_rx_counts_everything(uniq, pipeline_factory):
    # the out ring holds all 20,000 frames: a sink held up by a loaded machine loses none
    pipe = pipeline_factory(cfg(uniq, ["in_port=1,actions=output:2"], ports=("a", "b"))
                            .replace(f'shm:{uniq}b"\nslots = 256', f'shm:{uniq}b"\nslots = 32768'))
    # a burst of new flows: whatever does not arrive is counted as a drop, nothing vanishes
    r = cli("gen", f"shm:{uniq}a", "--rx", f"shm:{uniq}b", "--count", "20000", "--flows", "16",
            "--rate", "400000", "--json")
    st = pipe.stats()
    assert r["sent"] == 20000
    assert r["rx"]["received"] + sum(st["drops"].values()) == 20000, st["drops"]
    assert st["upcall"]["upcall_flows"] == 16
    assert st["hits"] + st["upcall"]["upcall_packets"] + st["drops"]["upcall_queue"] == 20000
    # flows installed: the next 20000 all arrive, as hits
    r = cli("gen", f"shm:{uniq}a", "--rx", f"shm:{uniq}b", "--count", "20000", "--flows", "16",
            "--rate", "200000", "--json")
    st2 = pipe.stats()
    assert r["rx"]["received"] == 20000 and st2["hits"] - st["hits"] == 20000
    assert r["seconds"] >= 0.05                 # 20000 packets at 200 kpps: 0.1 s, paced (a loaded machine only slows it)


def test_sink_alone_and_frames(uniq, pipeline_factory):
    pipeline_factory(cfg(uniq, ["in_port=1,actions=output:2"], ports=("a", "b")))
    g = Generator(f"shm:{uniq}a", size=128, flows=3, count=3)
    s = Sink(f"shm:{uniq}b", count=3)
    try:
        frames = [g.frame(i) for i in range(3)]
        assert all(len(f) == 128 for f in frames) and len(set(frames)) == 3
        g.run(sink=s)
        assert s.s.packets == 3 and s.s.bytes == 3 * 128
    finally:
        g.close()
        s.close()
