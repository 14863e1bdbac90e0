"""Peers on shm: ports that misbehave as whole processes: one that tries to shrink the
region under the pipeline, one that publishes a bad slot, one killed in the middle of
sending. The pipeline goes on serving its other ports and says which port is faulty."""
import os
import signal
import subprocess
import sys
import time

import pytest

from ring.region import ROLE_USER, Region
from tests.conftest import ROOT, wait_for
from tests.test_e2e import cfg, frame, peers

SENDER = r'''
import sys, time
sys.path.insert(0, sys.argv[1])
from ring.region import ROLE_USER, Region
from tests.test_e2e import frame
r = Region.attach(sys.argv[2]); p = r.port(sys.argv[2], ROLE_USER)
print("attached", flush=True)
i = 0
while True:                       # until killed, at whatever point of a batch that is
    i += p.send([frame(9, i + k) for k in range(32)])
'''


def test_misbehaving_peers(uniq, pipeline_factory, processes):
    pipe = pipeline_factory(cfg(uniq, ["in_port=1,actions=output:3", "in_port=2,actions=output:3",
                                       "in_port=3,actions=drop", "in_port=4,actions=drop"], ports=("a", "b", "c", "d")))
    with peers(uniq, "bc") as ps:
        b, c = ps["b"], ps["c"]
        # 1. shrinking the region: the seals refuse it (no SIGBUS for the pipeline)
        r = Region.attach(f"{uniq}d")
        with pytest.raises(PermissionError):
            os.ftruncate(r._fd, 4096)
        with pytest.raises(PermissionError):
            os.ftruncate(r._fd, r.size * 2)
        # 2. a slot naming buffer 0 (reserved), published: counted, the port marked faulty
        peer = r.port(f"{uniq}d", ROLE_USER)
        ring = peer.c.tx[0].ring
        ring.slot[ring.head].buf_idx = 0
        ring.slot[ring.head].len = 60
        ring.head = ring.cur = (ring.head + 1) % peer.c.tx[0].nslots
        assert wait_for(lambda: pipe.stats()["ports"][3]["faulty"])
        out = subprocess.run([sys.executable, "-m", "pipeline.cli", "ports", "--name", uniq, "--run-dir",
                              os.path.join(pipe.dir, "run")], cwd=ROOT, capture_output=True, text=True, timeout=30)
        line = next(ln for ln in out.stdout.splitlines() if f"shm:{uniq}d" in ln)
        assert "FAULTY" in line and "rx_bad_buf" in line, out.stdout
        r.close()
        # the other ports never noticed
        b.send_all([frame(1, i) for i in range(50)], others=(c,))
        assert wait_for(lambda: c.drain() >= 50)
        # 3. a sender killed mid-stream, while b keeps sending
        proc = processes([sys.executable, "-c", SENDER, ROOT, f"{uniq}a"], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "attached"
        b.send_all([frame(2, i) for i in range(50)], others=(c,))
        time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        b.send_all([frame(3, i) for i in range(50)], others=(c,))
        mine = {frame(2, i) for i in range(50)} | {frame(3, i) for i in range(50)}
        assert wait_for(lambda: c.drain() and sum(1 for f in c.got if f in mine) == 100, timeout=10)
        # the dead sender's port takes a new peer, which is served
        r2 = Region.attach(f"{uniq}a")
        try:
            p2 = r2.port(f"{uniq}a", ROLE_USER)
            fresh = [frame(4, i) for i in range(20)]
            assert p2.send(fresh) == 20
            assert wait_for(lambda: c.drain() and all(f in c.got for f in fresh), timeout=10)
        finally:
            r2.close()
        assert pipe.proc.poll() is None
