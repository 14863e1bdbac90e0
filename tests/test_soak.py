"""The soak (tests/soak.py), short: SOAK_SECONDS (default 20) of traffic on three ports
under random kills and stops of the slow path and the worker, a hostile peer on a fourth
port and misbehaving control clients; the books close exactly on every honest port.
`make soak` runs it for minutes (SOAK_SECONDS=180); SOAK_SEED repeats a run."""
import os
import random

from tests import soak


def test_soak(uniq, pipeline_factory):
    seconds = float(os.environ.get("SOAK_SECONDS", "20"))
    seed = int(os.environ.get("SOAK_SEED", random.randrange(1 << 30)))
    rows, report, st = soak.run(pipeline_factory, uniq, seconds, seed)
    text = soak.summary(rows, report)
    print(text)
    assert report["supervisor_alive"], text
    assert [r["unexplained"] for r in rows] == [0] * len(rows), text
    assert all(r["sent"] > 0 and r["delivered"] > 0 for r in rows), text
    assert st["worker_restarts"] == report["worker_kill"] == st["takeovers"], text
    assert report["slowpath_kill"] + report["slowpath_stop"] > 0 and report["hostile_writes"] > 100, text
