"""The supervisor: `valepipe run` forks the worker and, if a crash kills it, starts it
again with its ports and the slow path's current rules; stop signals are passed on.

A worker that exits by itself (done: 0, or refusing its config: 2) is not restarted; one
that crashes — killed by a signal, or ending with another status (an exception) — is, and
one that crashes more than MAX_RESTARTS times in WINDOW_S seconds is given up on, and what
its crashes left (shm region descriptors, run-directory files) is removed then.
"""
import os
import signal
import sys
import time
import traceback

from pipeline import hostos

MAX_RESTARTS = 5
EXIT_REFUSED = 2              # the worker refused its config or ports at start: restarting would not help
WINDOW_S = 60.0


def supervise(start_worker, give_up=lambda: None, on_hup=None, after_crash=lambda pid: None):
    """start_worker(restarts) runs a worker in a child process and returns its exit code;
    after_crash(pid) clears what a worker killed by a signal left that its successor will
    not replace (regions of ports it added at run time); give_up() clears the rest, when
    no worker will follow; on_hup() runs here (not in the worker) on SIGHUP."""
    restarts, crashes, stopping = 0, [], []
    child = [0]

    def forward(sig, _frame):
        stopping.append(sig)
        if child[0]:
            try:
                os.kill(child[0], sig)
            except ProcessLookupError:
                pass
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    if on_hup:
        signal.signal(signal.SIGHUP, lambda *_: on_hup())
    while True:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)     # the supervisor reloads
                hostos.die_with_parent(signal.SIGTERM)          # never outlive the supervisor
                code = start_worker(restarts)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        child[0] = pid
        if stopping:                                   # a signal came while we forked
            os.kill(pid, stopping[0])
        _, status = os.waitpid(pid, 0)
        child[0] = 0
        after_crash(pid)                # a scan: finds nothing of a worker that cleaned up after itself
        if os.WIFEXITED(status):
            code = os.WEXITSTATUS(status)
            if code in (0, EXIT_REFUSED) or stopping:
                return code
            how = f"exited with status {code}"
        else:
            sig = os.WTERMSIG(status)
            if stopping or sig in (signal.SIGTERM, signal.SIGINT):
                return 128 + sig
            how = f"died of {signal.Signals(sig).name}"
        now = time.monotonic()
        crashes = [t for t in crashes if now - t < WINDOW_S] + [now]
        if len(crashes) > MAX_RESTARTS:
            print(f"valepipe: the worker crashed {len(crashes)} times in {WINDOW_S:g} s (last: {how}); "
                  "giving up", file=sys.stderr, flush=True)
            give_up()
            return 1
        restarts += 1
        print(f"valepipe: worker {pid} {how}; restarting it with its ports "
              f"(restart {restarts})", file=sys.stderr, flush=True)
        time.sleep(0.2)


def crash_leftovers(cfg):
    """A give_up for `cfg`'s pipeline: once the dead worker's slow path has gone (it follows
    its worker), remove the run-directory files and directories and the shm descriptors
    that name no running pipeline. Decided before the first worker starts (which of the
    run directory's parents this run creates)."""
    from pipeline import rundir
    from ring.region import parse_shm_uri, remove_stale
    run_dir = os.path.abspath(cfg.run_dir)
    created = rundir.missing(run_dir) or [run_dir]

    def clean():
        _wait_closed(os.path.join(run_dir, "slowpath.ctl"), timeout=5.0)
        for spec in cfg.ports:
            if spec["uri"].startswith("shm:"):
                for name in set(parse_shm_uri(spec["uri"])):
                    remove_stale(name)
        try:
            rundir.claim(run_dir)
        except (RuntimeError, OSError):
            return                          # a pipeline answers there now: not ours to clear
        rundir.remove_dirs(created)
    return clean


def _wait_closed(path, timeout):
    """Wait until nothing accepts connections on unix socket `path`."""
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
        except OSError:
            return
        finally:
            s.close()
        time.sleep(0.05)
