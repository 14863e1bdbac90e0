"""The worker: one fast path over the ports it owns.

The stage chain (receive -> extract -> lookup (misses -> upcall) -> execute -> transmit, or
the stages it was given) runs in C batch after batch; Python gets a turn when it has work:
misses to send up, answers from the slow path, a control request, a timer. Python never
touches a packet here.
"""
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from pipeline import control, hostos, registry, rundir
from pipeline.datapath import Datapath
from bindings.adapter import AdapterError
from bindings.pcap import PcapWriter
from pipeline.ports import PortError, add_binding_losses, close_ports, open_ports
from pipeline.stages import Chain, stage_class
from pipeline._native import lib
from pipeline.runtime_ports import PortOps
from pipeline.upcall import HEARTBEAT_S, Upcalls

MAX_BATCHES = 1 << 20         # batches the C chain runs before Python's turn comes anyway (a
                              # bound, not a timer: at low load a batch is a packet or two, and a
                              # turn every few thousand of them would stall one packet in 50)
PY_BATCHES = 32               # the same for a chain run from Python (a stage written in Python)
BUSY_TURN_S = 0.0002          # longest time between Python's turns while it has work in steps (a
                              # stream, a revalidation, a backlog); else its next timer ends the
                              # chain's run (the C side sees fds: answers, requests, signals). A
                              # turn every 10 ms put p99 latency at 30 us (perf/RESULTS.md)
# kinds an idle worker polls before it sleeps (idle_poll_us "auto"): shm: has no fd to wake
# it; an AF_XDP consumer that sleeps makes the kernel wake it every few frames (need_wakeup),
# which costs more than the polling (measured on veth: 3-6% more Mpps polling, as Open
# vSwitch's PMD threads poll theirs). packet: and tap: sockets wake a sleeper cheaply, and
# polling them only takes the CPU from what shares it (guests' vCPUs: perf/RESULTS.md).
POLLED_KINDS = ("shm", "afxdp")
SUPERVISE_S = 0.1             # how often the slow path's health is checked
CONNECT_S = 30.0              # a slow path not taking connections this long after its start is hung


class Worker:
    def __init__(self, cfg, start_slowpath=True, keep_rules=False, takeover=None, slow_cpus=None):
        """takeover: a pipeline.takeover.Takeover (the supervisor's): its shm: ports and its
        journal are used, so this worker continues where a crashed one stopped. The stages
        a batch goes through are the config's (`[pipeline] stages`), in its order.
        slow_cpus: the CPUs its slow path runs on (default: those this process may use)."""
        self.cfg = cfg
        self.slow_cpus = slow_cpus or hostos.allowed_cpus()
        self.turns = 0
        self.takeover = takeover
        self.supervisor = os.getppid() if takeover else 0
        self.run_dir = cfg.run_dir
        self.slow_sock = os.path.join(self.run_dir, "slowpath.sock")
        self.ctl_path = os.path.join(self.run_dir, "worker.ctl")
        self.slow = None
        self.stopping = False
        # the run directory first: it tells whether this pipeline already runs, and what a
        # crashed run of it left there is cleared (its shm regions are replaced when opened)
        self.created_dirs = rundir.make_for_config(self.run_dir)
        try:
            rundir.claim(self.run_dir, keep=rundir.KEPT_FILES if keep_rules else ())
        except RuntimeError:
            rundir.remove_dirs(self.created_dirs)
            raise
        # this run's to remove at exit, also when an earlier run created it
        self.created_dirs = self.created_dirs or [os.path.abspath(self.run_dir)]
        try:
            self.ports = takeover.open_ports(cfg.ports) if takeover else open_ports(cfg.ports)
        except Exception:
            rundir.remove_dirs(self.created_dirs)
            raise
        try:
            for spec, port in zip(cfg.ports, self.ports):
                if spec.get("mirror"):
                    port.mirror = PcapWriter(spec["mirror"])
                    lib.vp_pcap_mirror_attach(port.ring_port.c, port.mirror.c)
        except AdapterError as e:
            self._close_ports()
            rundir.remove_dirs(self.created_dirs)
            raise PortError(str(e)) from None
        try:
            self.dp = Datapath(self.ports, flow_limit=cfg.flow_limit, batch=cfg.batch, emc_limit=cfg.emc_limit or None)
            self.dp.idle_ns = int(cfg.idle_timeout * 1e9)
            self.dp.ofport_of = lambda i: self.ports[i].ofport
            if takeover:
                # counters and ring cursors continue from the last commit of the worker before
                self.dp.c.journal = takeover.journal
                lib.vp_journal_takeover(self.dp.c, sum(1 << i for i, p in enumerate(self.ports) if takeover.owns(p)))
            self.upcalls = Upcalls(self.dp, self.slow_sock, rate=cfg.upcall_rate)
            self.portops = PortOps(self)
            self.upcalls.on_port_mod = lambda ofport, up: self.portops.mod({"port": ofport, "up": up})
            self.stages = [stage_class(name)(self.dp, self.upcalls) for name in cfg.stages]
            self.chain = Chain(self.dp, self.stages, idle_poll_s=None if cfg.idle_poll_us is None else cfg.idle_poll_us * 1e-6,
                               idle_sleep_s=cfg.idle_sleep_us * 1e-6)
            self.control = control.ControlServer(self.ctl_path, {
                "stats": lambda r: self.stats(), "ports": lambda r: [p.stats() for p in self.portops.live()],
                "stop": lambda r: self.stop(), "revalidate": lambda r: self.revalidate_now(),
                "megaflows": lambda r: self.megaflows(),
                "add-port": self._port_op("add"), "del-port": self._port_op("delete"),
                "port-mod": self._port_op("mod")})
        except Exception:
            self._close_ports()
            rundir.remove_dirs(self.created_dirs)
            raise
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.next_revalidation = self.started + cfg.revalidate_interval
        self.slow_hangs = 0
        if start_slowpath:
            try:
                # a worker's start waits for its slow path, so the first packets (after a
                # crash: those waiting in the rings, every flow new to the empty caches) find it
                self.start_slowpath(wait=True, refuse=not keep_rules)
            except BaseException:
                self.close()            # nothing of this run is left behind: regions, sockets, run dir
                raise
        self.reregister()

    def reregister(self):
        """This pipeline's entry in the index of running pipelines (valepipe list, --name)."""
        registry.register(self.cfg.name, self.run_dir, config=os.path.abspath(self.cfg.path) if self.cfg.path else None,
                          ports=[p.uri for p in self.portops.live()], started=self.started_wall)

    def _port_op(self, op):
        """A control handler for add-port/del-port/port-mod (pipeline/runtime_ports.py)."""
        def run(req):
            try:
                return getattr(self.portops, op)(req)
            except (PortError, AdapterError) as e:
                raise ValueError(str(e)) from None
        return run

    def _close_ports(self):
        """Close what this worker opened; the takeover's ports stay with the supervisor."""
        close_ports([p for p in self.ports if not (self.takeover and self.takeover.owns(p))])

    def start_slowpath(self, wait=False, refuse=False):
        """Start the slow path. wait: until it takes connections (at the worker's start; later
        the loop connects when it is ready, forwarding never waits for it); refuse: raise if
        it exits meanwhile (a first start with a bad rule set)."""
        cmd = hostos.module_command("pipeline.slowpath") + ["--socket", self.slow_sock, "--name", self.cfg.name]
        if self.cfg.path and os.path.exists(self.cfg.path):
            cmd += ["--config", self.cfg.path]
        cpus = self.slow_cpus

        def child_setup():
            try:
                hostos.set_cpus(cpus)
            except OSError:
                pass                    # where the OS lets it: better than no slow path
            # and not outliving the worker, however the worker ends
            hostos.die_with_parent(signal.SIGTERM)
        self.slow = subprocess.Popen(cmd, preexec_fn=child_setup, env=hostos.module_env())
        self.slow_started = time.monotonic()
        self.slow_restarts = getattr(self, "slow_restarts", -1) + 1
        if not wait:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not self.upcalls.connect():
            if self.slow.poll() is not None:
                if refuse:
                    raise RuntimeError(f"slow path exited with status {self.slow.returncode}")
                return                          # the loop starts another
            self.upcalls.next_try = 0
            time.sleep(0.02)

    def megaflows(self):
        """Installed megaflows, as `valepipe dump-megaflows` prints them: streamed a chunk
        per step, so a large table never holds up forwarding."""
        from pipeline import channel
        ofport = self.dp.ofport_of
        for chunk in self.dp.megaflow_chunks():
            names = {aid: key for key, aid in self.dp._action_ids.items()}
            out, now = [], self.dp.c.now_ns
            for _, kb, mb, aid, st in chunk:
                key, mask = channel.key_attrs(kb, ofport), channel.key_attrs(mb, lambda i: 0xFFFF, like=kb)
                out.append({"key": {k: (v.hex() if isinstance(v, bytes) else v) for k, v in key.items()},
                            "mask": {k: (v.hex() if isinstance(v, bytes) else v) for k, v in mask.items()
                                     if v and v != b"\0" * len(v if isinstance(v, bytes) else b"")},
                            "actions": _describe_actions(names.get(aid), self.ports),
                            "packets": st["packets"], "bytes": st["bytes"],
                            "used_s": round((now - st["used_ns"]) / 1e9, 3) if st["packets"] else None})
            yield out
        return []                           # the result when there was nothing to stream

    def revalidate_now(self):
        """Start a revalidation round (pushes flow stats to the slow path); returns the number
        of the round that covers this request (`revalidations_done` reaches it when done)."""
        return self.upcalls.start_revalidation()

    def stop(self):
        self.stopping = True
        return True

    def run(self, duration=None, on_tick=None, tick_s=1.0):
        """Forward until stopped (signal, control 'stop', or duration seconds)."""
        up = self.upcalls
        native = self.chain.native
        now = time.monotonic()
        end = now + duration if duration else None
        next_tick, next_check = now + tick_s, now + SUPERVISE_S
        hostos.fine_timers()            # naps of microseconds, not the default 50 us slack
        with _SignalWake() as sig:
            while not self.stopping:
                busy = up.outq or up.reval_cursor is not None or self.control.busy() or self.control.writers()
                due = min(now + BUSY_TURN_S if busy else next_tick, next_tick, next_check, end or next_tick,
                          up.next_try if not up.up else next_tick)
                # never 0: to the chain a deadline of 0 is none (a reconnection due at once
                # has next_try 0, and the chain would then nap until a frame came)
                port_fds = [p.fds() for p in self.ports if p.up]
                self.chain.run(int(max(due, now) * 1e9), MAX_BATCHES if native else PY_BATCHES,
                               wake_fds=sig.fds() + up.fds() + [s.fileno() for s in self.control.fds()],
                               port_fds=[fd for fds in port_fds for fd in fds],
                               ports_wake=all(port_fds),
                               poll_first=any(p.kind in POLLED_KINDS for p in self.ports if p.up))
                self.turns += 1
                # a turn for a timer leaves the fds alone (each look costs 10-50 us of Python
                # here, and forwarding waits for it): the chain said none was readable
                woke = self.chain.woke or not native      # a chain run from Python returns every few batches
                if woke:
                    sig.drain()
                if woke or busy or up.outq or not up.up:
                    up.poll()
                if up.outq:
                    os.sched_yield()        # the slow path is behind: give it the CPU we share
                up.revalidate_step()
                if woke or busy or self.control.clients:        # (a client's time limit)
                    self.control.poll()
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + SUPERVISE_S
                    self._supervise()
                    self._report_port_errors()
                if now >= next_tick:
                    next_tick = now + tick_s
                    up.expire()
                    if self.cfg.revalidate_interval and now >= self.next_revalidation:
                        self.next_revalidation = now + self.cfg.revalidate_interval
                        up.start_revalidation()
                    if on_tick:
                        on_tick(self)
                if end and now >= end:
                    break

    def _report_port_errors(self):
        """One line per port whose interface reported a new error (down, gone, refused),
        and one whenever its link goes down or comes back (or its interface is re-opened)."""
        for line in self.portops.follow_links():
            print(f"valepipe: {line}", file=sys.stderr, flush=True)
        for p in self.ports:
            msg = p.adapter.new_error() if p.adapter else None
            if msg:
                print(f"valepipe: port {p.ofport} {msg}", file=sys.stderr, flush=True)
            change = p.adapter.link_change() if p.adapter and hasattr(p.adapter, "link_change") else None
            if change:
                print(f"valepipe: port {p.ofport} {p.uri}: {change}", file=sys.stderr, flush=True)
                self.portops.announce()              # the slow path (OpenFlow's port_status) learns it

    def _supervise(self):
        """Restart a slow path that exited, or that is alive but hung: connected and silent
        (it says something every second) or never taking connections after its start."""
        if self.slow is None or self.stopping:
            return
        if self.slow.poll() is None:
            up = self.upcalls
            silent = up.silent_for()
            if silent > HEARTBEAT_S:
                why = f"silent for {silent:.1f} s"
            elif not up.up and time.monotonic() - self.slow_started > CONNECT_S:
                why = f"not taking connections {CONNECT_S:g} s after its start"
            else:
                return
            print(f"valepipe: slow path {self.slow.pid} {why}; killing and restarting it", file=sys.stderr, flush=True)
            self.slow_hangs += 1
            self.slow.kill()
            self.slow.wait()
            up.disconnect()
        else:
            rc = self.slow.returncode
            how = f"was killed by {_signal_name(-rc)}" if rc < 0 else f"exited with status {rc}"
            print(f"valepipe: slow path {self.slow.pid} {how}; restarting it", file=sys.stderr, flush=True)
        self.start_slowpath()

    def stats(self):
        st = self.dp.stats()
        st["uptime_s"] = round(time.monotonic() - self.started, 3)
        st["name"], st["run_dir"] = self.cfg.name, os.path.abspath(self.run_dir)
        st["config"] = os.path.abspath(self.cfg.path) if self.cfg.path else None      # as `list` shows it
        st["pid"] = os.getpid()                      # the worker's; its supervisor's (valepipe run) beside it
        st["supervisor_pid"] = getattr(self, "supervisor_pid", os.getpid())
        st["worker_restarts"] = getattr(self, "restarts", 0)
        st["upcall"] = dict(self.upcalls.st, channel_up=self.upcalls.up, last_error=getattr(self.upcalls, "last_error", None),
                            pending=len(self.upcalls.keys), slowpath_restarts=getattr(self, "slow_restarts", 0),
                            slowpath_pid=self.slow.pid if self.slow else None, slowpath_hangs=self.slow_hangs,
                            upcalls_unanswered=len(self.upcalls.owed))
        st["takeovers"] = self.takeover.journal.takeovers if self.takeover else 0
        st["chain"] = {"stages": [type(s).__name__ for s in self.stages], "runs_in": "C" if self.chain.native else "Python",
                       "idle_naps": self.chain.c.naps,   # sleeps of the idle worker
                       "python_turns": self.turns,       # returns to Python (input, timers)
                       "idle_poll_us": self.chain.c.idle_poll_ns // 1000,   # what "auto" chose
                       "ports_wake": bool(self.chain.c.ports_wake)}
        # by input port: what came in was delivered, dropped for a reason here, or is still
        # with the slow path (upcall_inflight)
        st["ports"] = [dict(p.stats(), upcall_rate_limited=self.upcalls.c.rate_limited[i],
                            in_drops=dict(self.dp.port_drops(i), **p.rx_losses()),
                            upcall_inflight=self.dp.c.upcall_inflight[i])
                       for i, p in enumerate(self.ports) if p.kind != "removed"]
        add_binding_losses(st)
        return st

    def close(self, crashed=False):
        """Stop and clean up. crashed (under a supervisor): leave the run directory (rules,
        sockets) and the takeover's ports as they are, for the worker it starts next."""
        owner = self.control.owns_path()
        registry.unregister(self.cfg.name)           # only if the entry is still this process's
        self.upcalls.close()
        lib.vp_commit(self.dp.c)
        if self.slow is not None and self.slow.poll() is None:
            self.slow.send_signal(signal.SIGTERM)
            try:
                self.slow.wait(5)
            except subprocess.TimeoutExpired:
                self.slow.kill()
                self.slow.wait()
        self.control.close()
        self._close_ports()
        self.portops.close()
        if crashed and self.takeover:
            return
        if self.takeover and os.getppid() != self.supervisor:
            # the supervisor was killed (its death signal stopped us): nobody else will
            # remove the regions it owned; close our inherited copies (their fd servers
            # included, or they would look alive) and remove what the dead one published
            from ring.region import remove_stale_of
            close_ports(self.takeover.ports.values())
            remove_stale_of(self.supervisor)
        if owner:        # else a successor runs here now (we were stopped, then resumed): its files
            rundir.remove_files(self.run_dir)        # the slow path's rules, sockets
            rundir.remove_dirs(self.created_dirs)


def _signal_name(n):
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


class _SignalWake:
    """A signal wakes the C chain at once (Python's wakeup fd, one of its fds), so a SIGTERM
    or SIGHUP is handled now, not at the next timer. Only in the main thread (where signals
    are handled); elsewhere signals wait for the next turn."""

    def __enter__(self):
        self.r = self.w = None
        if threading.current_thread() is threading.main_thread():
            self.r, self.w = socket.socketpair()
            self.r.setblocking(False)
            self.w.setblocking(False)
            self.old = signal.set_wakeup_fd(self.w.fileno(), warn_on_full_buffer=False)
        return self

    def fds(self):
        return [self.r.fileno()] if self.r else []

    def drain(self):
        try:
            while self.r and self.r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def __exit__(self, *exc):
        if self.r:
            signal.set_wakeup_fd(self.old)
            self.r.close()
            self.w.close()


def _describe_actions(key, ports):
    if key is None:
        return "?"
    if key[:1] == ("ops",):
        return ",".join(str(a[1]) if a[0] == "output" else
                        (f"set({a[1]}={a[2]:#x}/{a[3]:#x})" if a[0] == "set" else
                         (f"push_vlan({a[1]:#x},{a[2]:#x})" if a[0] == "push_vlan" else a[0])) for a in key[1:])
    return ",".join(str(ports[i].ofport) if i < len(ports) else "?" for i in key) or "drop"
