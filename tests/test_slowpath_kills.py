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
from tests.ledger import Lane, SinkThread, books_text, close_books, gen, gen_sent, settle
from tests.test_e2e import cfg

# every source address its own megaflow: each new address is an upcall
RULES = ["priority=20,udp,nw_src=198.18.255.255,actions=drop", "priority=10,in_port=1,actions=output:2"]


def test_worker_survives_slow_path_kills_and_counts_every_packet(uniq, pipeline_factory):
    pipe = pipeline_factory(cfg(uniq, RULES, ports=("a", "b")).replace("[pipeline]\n", "[pipeline]\nupcall_rate = 0\n"))
    first = pipe.stats()
    sink = SinkThread(f"shm:{uniq}b")
    try:
        g = gen(f"shm:{uniq}a", flows=1_000_000, rate=70_000, duration=10)
        rng, kills, end = random.Random(), 0, time.monotonic() + 9
        while time.monotonic() < end:
            time.sleep(rng.uniform(0.8, 1.6))
            st = pipe.stats()
            assert st["pid"] == first["pid"], "the worker died"
            try:
                os.kill(st["upcall"]["slowpath_pid"], signal.SIGKILL)
                kills += 1
            except ProcessLookupError:
                pass                             # between a death and its restart
        lane = Lane(0, sink, gen_sent(g))
        st = settle(pipe.ctl, [lane])
    finally:
        sink.close()
    rows = close_books(st, [lane])
    print(books_text(rows))
    assert st["pid"] == first["pid"] and st["worker_restarts"] == 0      # one worker throughout
    assert kills >= 5 and st["upcall"]["slowpath_restarts"] >= kills - 1
    assert lane.sent > 100_000 and lane.sink.received > 0
    # the slow paths died holding upcalls: counted, by reason, on the port they came in on
    assert rows[0]["drops"].get("upcall_disconnect", 0) > 0
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
