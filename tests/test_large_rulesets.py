"""50,000 rules in one `add-flows` (3 MB, far past one 64 KB request): loaded in steps, each
rule placed without a scan of the table, while the miss path keeps answering new flows;
then dumped and deleted in one go each."""
import os
import subprocess
import sys
import threading
import time

from pipeline import control
from tests.conftest import ROOT, wait_for
from tests.ledger import gen
from tests.test_e2e import cfg

N = 50_000


def _cli(pipe, uniq, *args):
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args, "--name", uniq,
                             "--run-dir", os.path.join(pipe.dir, "run")], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_fifty_thousand_rules_load_while_misses_are_answered(uniq, pipeline_factory, tmp_path):
    rules = ["priority=20,in_port=1,udp,nw_src=198.18.255.255,actions=drop", "priority=10,in_port=1,actions=output:2"]
    pipe = pipeline_factory(cfg(uniq, rules, ports=("a", "b")).replace("[pipeline]\n", "[pipeline]\nupcall_rate = 0\n"))
    path = tmp_path / "many.flows"
    path.write_text("".join(f"table=0,priority=5,tcp,nw_dst=10.{i >> 16}.{(i >> 8) & 255}.{i & 255},"
                            f"tp_dst={1 + i % 60000},actions=drop\n" for i in range(N)))
    assert path.stat().st_size > 40 * control.MAX_REQUEST
    # new flows all along (each its own megaflow): the slow path answers them meanwhile
    traffic = gen(f"shm:{uniq}a", flows=1_000_000, rate=1_000, duration=120)
    try:
        assert wait_for(lambda: pipe.stats()["upcall"]["replies"] > 0, timeout=20)
        replies, stop = [], threading.Event()

        def watch():
            while not stop.is_set():
                replies.append(pipe.stats()["upcall"]["replies"])
                time.sleep(0.05)
        w = threading.Thread(target=watch)
        w.start()
        add = _cli(pipe, uniq, "add-flows", str(path))
        out, err = add.communicate(timeout=120)
        stop.set()
        w.join()
    finally:
        traffic.kill()
        traffic.wait()
    assert add.returncode == 0 and f"added {N} rule(s)" in out, err
    # answers went on while the rules loaded: the count moved again and again
    assert len(set(replies)) >= 3, replies
    dump = _cli(pipe, uniq, "dump-flows")
    out, err = dump.communicate(timeout=120)
    assert dump.returncode == 0 and len(out.splitlines()) == N + 2, err
    with open(os.path.join(pipe.dir, "run", "rules.flows")) as f:
        assert sum(1 for ln in f if ln.startswith("priority=5,tcp,")) == N
    rm = _cli(pipe, uniq, "del-flows", "tcp")
    out, err = rm.communicate(timeout=120)
    assert rm.returncode == 0 and f"deleted {N} rule(s)" in out, err
