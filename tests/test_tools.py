"""valepipe gen / sink through the CLI against a running pipeline: counts add up, the
generator's frames are what it says, rate pacing holds; a stamped frame goes on time or not
at all."""
import json
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, GenRunning, wait_for
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


@pytest.mark.parametrize("latency,across_end", [(False, False), (True, False), (True, True)],
                         ids=["plain", "stamped", "held across its end"])
def test_a_sender_held_up_catches_up_unless_stamped(uniq, pipeline_factory, latency, across_end):
    """A generator stopped for 100 ms (as a preempted one is) sends what it missed at once
    afterwards, so --rate holds; with --latency it skips it and counts it (pace_skipped):
    sent in a burst, those frames would queue in the pipeline and the generator's stall
    would be measured as the pipeline's latency. Held past the end of its --duration, what
    it did not send counts as skipped: sent + skipped is always the schedule."""
    pipe = pipeline_factory(cfg(uniq, ["in_port=1,actions=output:2"], ports=("a", "b"))
                            .replace(f'shm:{uniq}b"\nslots = 256', f'shm:{uniq}b"\nslots = 32768'))
    rate, seconds, held = 50000, 3.0, (4.0 if across_end else 0.1)
    with GenRunning(uniq, "--rate", str(rate), "--duration", str(seconds), *(["--latency"] if latency else [])) as g:
        assert wait_for(lambda: pipe.stats()["ports"][0]["rx_packets"] > 0, 30)
        g.proc.send_signal(signal.SIGSTOP)
        time.sleep(held)
        g.proc.send_signal(signal.SIGCONT)
        r = g.result()
    st = pipe.stats()
    assert r["rx"]["received"] + sum(st["drops"].values()) == r["sent"], (r, st["drops"])
    schedule = r["sent"] + r["pace_skipped"]
    assert abs(schedule - rate * seconds) <= 2, r            # every slot sent or skipped
    if latency:
        assert r["pace_skipped"] >= 0.8 * rate * min(held, 1.0), r
    else:
        assert r["pace_skipped"] == 0, r


@pytest.mark.parametrize("batch", [1, 2])
def test_stamped_frames_at_batch_one(uniq, pipeline_factory, batch):
    """A frame is due when its time comes: a stamped one is skipped only when more than a
    batch (or 100 us) of them are due, not as soon as one is (--batch 1 sent nothing)."""
    pipe = pipeline_factory(cfg(uniq, ["in_port=1,actions=output:2"], ports=("a", "b")))
    rate, seconds = 2000, 1.5
    r = cli("gen", f"shm:{uniq}a", "--rx", f"shm:{uniq}b", "--rate", str(rate), "--duration", str(seconds),
            "--batch", str(batch), "--latency", "--json", "-q")
    schedule = r["sent"] + r["pace_skipped"]
    assert abs(schedule - rate * seconds) <= 2, r            # every slot sent or skipped
    assert r["pace_skipped"] < 0.1 * schedule, r
    assert r["rx"]["received"] + sum(pipe.stats()["drops"].values()) == r["sent"], r
