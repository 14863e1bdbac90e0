"""The slow path killed over and over under a stream of new flows: the worker lives through
every kill (a disconnect at any point of the channel), and the books close exactly per
port: what the dead slow paths held — queued upcalls, the socket's and their own backlog —
is counted as `upcall_disconnect`, nothing unexplained. A worker that ends with an error
status is restarted by its supervisor, counted like a crash."""
import os
import random
import signal
import time

from pipeline import control
from pipeline.supervisor import supervise
from tests.conftest import wait_for
from tests.ledger import Traffic, books_text, run_books
from tests.test_e2e import cfg

# every source address its own megaflow: each new address is an upcall
RULES = ["priority=20,udp,nw_src=198.18.255.255,actions=drop", "priority=10,in_port=1,actions=output:2"]


def test_worker_survives_slow_path_kills_and_counts_every_packet(uniq, pipeline_factory):
    pipe = pipeline_factory(cfg(uniq, RULES, ports=("a", "b")).replace("[pipeline]\n", "[pipeline]\nupcall_rate = 0\n"))
    first, kills = pipe.stats(), []

    def kill_slow_paths():
        rng, end = random.Random(), time.monotonic() + 9
        while time.monotonic() < end:
            time.sleep(rng.uniform(0.8, 1.6))
            st = pipe.stats()
            assert st["pid"] == first["pid"], "the worker died"
            try:
                os.kill(st["upcall"]["slowpath_pid"], signal.SIGKILL)
                kills.append(1)
            except ProcessLookupError:
                pass                             # between a death and its restart
    rows, st = run_books(pipe.ctl, [Traffic(0, f"{uniq}a", f"{uniq}b", flows=1_000_000, rate=70_000, seconds=10)],
                         during=kill_slow_paths)
    assert st["pid"] == first["pid"] and st["worker_restarts"] == 0      # one worker throughout
    assert len(kills) >= 5 and st["upcall"]["slowpath_restarts"] >= len(kills) - 1
    assert rows[0]["sent"] > 100_000 and rows[0]["delivered"] > 0
    # what the dead slow paths held (if a kill found anything in flight) is counted, by reason, on
    # the port it came in on; a quick machine may answer every upcall before the kill lands
    # upcall_queue: while a new slow path starts, misses past what it answers in time are not queued
    assert set(rows[0]["drops"]) <= {"upcall_disconnect", "upcall_lost", "upcall_queue", "tx_ring_full",
                                     "action_drop"}, rows[0]
    assert rows[0]["unexplained"] == 0, books_text(rows)
    # and the pipeline is whole: a new slow path takes new flows again
    assert wait_for(lambda: pipe.stats()["upcall"]["channel_up"], timeout=20)
    assert control.request(os.path.join(pipe.dir, "run", "slowpath.ctl"), "dump-flows")


def test_worker_ending_with_an_error_is_restarted(capfd):
    """A worker process that exits with status 1 (an exception escaped its loop) is a crash:
    the supervisor starts another and counts it; exit 0 (done) ends the run."""
    def worker(restarts):                        # runs in the supervisor's child process
        if restarts == 0:
            raise AttributeError("'NoneType' object has no attribute 'recv'")
        return 0
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        assert supervise(worker) == 0
    finally:
        signal.signal(signal.SIGTERM, handlers[0])
        signal.signal(signal.SIGINT, handlers[1])
    err = capfd.readouterr().err
    assert "AttributeError" in err and "exited with status 1; restarting it with its ports (restart 1)" in err
