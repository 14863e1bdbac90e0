"""The chain: the stages a batch goes through, in the order Python composed them, run by C
(chain.c: batch after batch, back to Python only when it has work) when every stage has a
C kernel, and batch by batch from Python when one is written in Python."""
import select
import time

from pipeline._native import ffi, lib


class Chain:
    AUTO_POLL_S = 200e-6

    def __init__(self, dp, stages, idle_poll_s=None, idle_sleep_s=1e-3, wake_check_s=50e-6):
        """idle_poll_s: with nothing to receive, keep polling the rings this long (a frame
        that comes meanwhile waits for no wake-up); then sleep in naps of up to idle_sleep_s,
        woken at once by any fd given to run() (ports with one: a frame arrived).
        None ("auto"): AUTO_POLL_S unless every port wakes the worker with an fd and
        run() is told polling does not pay (pipeline/worker.py POLLED_KINDS): then 0,
        since polling only takes the CPU from what shares it (guests' vCPUs; measured:
        guest ping 1.29 ms polling 0, 1.54 ms polling 200 us, 3x the worker's CPU)."""
        if not 1 <= len(stages) <= lib.VP_CHAIN_MAX:
            raise ValueError(f"a chain has 1..{lib.VP_CHAIN_MAX} stages, not {len(stages)}")
        self.dp, self.stages, self.batch = dp, list(stages), dp.batch
        self.native = all(s.kernel for s in self.stages)
        self.c = ffi.new("struct vp_chain *")
        self.c.n = len(self.stages)
        for i, s in enumerate(self.stages):
            if s.kernel:
                self.c.stage[i] = s.c[0]
        self.idle_poll_auto = idle_poll_s is None
        self.c.idle_poll_ns = round((self.AUTO_POLL_S if idle_poll_s is None else idle_poll_s) * 1e9)
        self.c.idle_sleep_ns = round(idle_sleep_s * 1e9)
        self.c.wake_check_ns = int(wake_check_s * 1e9)
        self._last_rx = 0
        self._nap = 0.0
        self.woke = False

    def names(self):
        return [type(s).__name__.lower() for s in self.stages]

    def run(self, deadline_ns, max_batches, wake_fds=(), port_fds=(), ports_wake=False, poll_first=True):
        """Run batches until Python has work: one of wake_fds readable (then self.woke is
        true), the deadline (time.monotonic_ns()) or max_batches committed. Returns the
        number of batches.
        ports_wake: every port has its fds in port_fds (no shm: port, which has none), so
        an idle worker sleeps until a frame or the deadline, with no naps between.
        poll_first: with idle_poll "auto", poll before sleeping even so (a port whose
        kind is cheaper to poll than to be woken by)."""
        self.woke = False
        if not self.native:
            return self._run_python(deadline_ns, max_batches, list(wake_fds), list(port_fds))
        c = self.c
        fds = list(wake_fds)[:lib.VP_WAKE_MAX]
        c.nwake = len(fds)
        fds += list(port_fds)[:lib.VP_WAKE_MAX - len(fds)]
        c.nfds = len(fds)
        for i, fd in enumerate(fds):
            c.fds[i] = fd
        c.deadline_ns = deadline_ns
        c.ports_wake = bool(ports_wake) and c.nfds == len(wake_fds) + len(port_fds)      # none cut off
        if self.idle_poll_auto:
            c.idle_poll_ns = round(self.AUTO_POLL_S * 1e9) if poll_first or not c.ports_wake else 0
        done = 0
        while True:
            # the bound is over the whole turn, handoffs included (chain.c counts one call)
            c.max_batches = max(1, max_batches - done)
            why = lib.vp_chain_run(self.dp.c, self.batch, c)
            done += c.batches
            if why != lib.VP_RUN_HANDOFF:
                self.woke = why == lib.VP_RUN_WAKE
                return done
            self.stages[c.at].handoff(self.batch)

    def _run_python(self, deadline_ns, max_batches, wake_fds, port_fds):
        """As chain.c does, with each stage's process_batch in turn."""
        b, first, rest = self.batch, self.stages[0], self.stages[1:]
        done, next_check = 0, time.monotonic_ns() + PY_WAKE_CHECK_NS
        while True:
            now = time.monotonic_ns()
            if first.process_batch(b):
                for s in rest:
                    s.process_batch(b)
                lib.vp_commit(self.dp.c)
                done += 1
                self._last_rx, self._nap = now, 0.0
                if done >= max_batches:
                    return done
                # a slow stage makes max_batches long: Python's input is looked at meanwhile
                if now >= next_check:
                    next_check = now + PY_WAKE_CHECK_NS
                    if _readable(wake_fds, 0):
                        self.woke = True
                        return done
            elif now - self._last_rx >= self.c.idle_poll_ns:
                self._nap = min(max(self._nap * 2, 10e-6), self.c.idle_sleep_ns / 1e9,
                                max(0.0, (deadline_ns - now) / 1e9))
                if _readable(wake_fds + port_fds, self._nap) and _readable(wake_fds, 0):
                    self.woke = True
                    return done
            if now >= deadline_ns:
                return done


PY_WAKE_CHECK_NS = 1_000_000       # a chain run from Python looks at its fds this often while busy


def _readable(fds, timeout_s):
    """whether one of fds is readable within timeout_s (poll(2): fd numbers past 1023 too)"""
    p = select.poll()
    for fd in fds:
        p.register(fd, select.POLLIN)
    return bool(p.poll(max(0, int(timeout_s * 1000 + 0.999))))
