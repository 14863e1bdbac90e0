"""`valepipe`: run and inspect pipelines, generate and count traffic (typer)."""
import json
import math
import os
import signal
import sys
import time
from typing import List, Optional

import typer


def _linux_ports():
    """Whether this build has Linux's packet interfaces (its port kinds: pipeline/ports.py)."""
    try:
        from pipeline._native import ffi, lib
    except ImportError:
        return True                 # not built yet: the commands say so when run
    return ffi.string(lib.vp_build_os()) == b"linux"


LINUX_PORTS = _linux_ports()
# no rich markup: help texts show TOML sections ([pipeline]) and uri options literally
app = typer.Typer(add_completion=True, no_args_is_help=True, rich_markup_mode=None,
                  help="valepipe: a packet pipeline and virtual switch on netmap rings.\n\n"
                       "Ports are URIs: shm:NAME (netmap rings in shared memory; a generator, sink "
                       "or test attaches as the other end), "
                       + ("afxdp:IFNAME, packet:IFNAME, tap:NAME, internal:NAME, " if LINUX_PORTS else "")
                       + "pcap:FILE, and on a netmap host netmap:IF and valeX:PORT.")


def _fail(msg, code=2):
    typer.echo(f"valepipe: {msg}", err=True)
    raise typer.Exit(code)


def _numbers(above_zero=(), at_least_zero=()):
    """(option, value) pairs: finite, and above 0 (or at least 0); None is "not given".
    nan, inf and negative counts were tracebacks (or a run that never ended)."""
    for group, ok, what in ((above_zero, lambda v: v > 0, "above 0"), (at_least_zero, lambda v: v >= 0, "0 or more")):
        for opt, v in group:
            if v is not None and not (math.isfinite(v) and ok(v) and v <= 1e12):
                _fail(f"{opt} must be a finite number {what} (at most 1e12), not {v}")


def _check_cpu(cpu):
    """--cpu N: one of the CPUs this process may use (a negative one was a ValueError
    traceback; one outside `taskset`'s mask escaped it)."""
    from pipeline import hostos
    allowed = hostos.allowed_cpus()
    if cpu is not None and cpu not in allowed:
        _fail(f"--cpu must be one of the CPUs this process may use, {_cpu_list(allowed)} here, not {cpu}")


def _cpu_list(cpus):
    cpus, out = sorted(cpus), []
    for c in cpus:
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in out)


def _pin(cpu):
    if cpu is not None:
        from pipeline import hostos
        try:
            hostos.set_cpus({cpu})
        except (OSError, ValueError) as e:
            _fail(f"cannot pin to CPU {cpu}: {getattr(e, 'strerror', None) or e}")


def _live(interval, as_json):
    """The per-interval display (or JSON line) of a pipeline's rates: a function of each
    new stats snapshot; the first call sets the baseline."""
    from pipeline.rates import rates, render
    prev = [None]

    def show(st):
        r = rates(prev[0] or st, st) if prev[0] else None
        prev[0] = st
        if r is None:
            return None
        return json.dumps(r) if as_json else render(st, r)
    return show


PORT_URIS = ("shm:NAME, " + ("afxdp:IFNAME[:QUEUE], packet:IFNAME, tap:NAME, internal:NAME, " if LINUX_PORTS else "")
             + "pcap:FILE[@write], each with @options (" + ("queues=N, netns=NS, " if LINUX_PORTS else "") + "...)")


@app.command(help=f"""Start the slow path and one worker, forward until SIGINT/SIGTERM, show live rates.

    Port uris: {PORT_URIS}; netmap:IF[^] and valeX:PORT as libnetmap names them (the
    README's Ports section lists them all). Once forwarding it prints
    `ready name=... pid=... run_dir=...` (scripts wait for it, or for --ready-file).
    SIGHUP reloads the rules from the config's [slowpath] flows.""")
def run(config: str = typer.Argument(..., help="pipeline config (TOML): [pipeline], [[port]], [slowpath], [metrics]"),
        duration: Optional[float] = typer.Option(None, help="stop after this many seconds"),
        interval: float = typer.Option(1.0, help="seconds between live rate updates (at least 0.1)"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="no live display; print only the ready line"),
        as_json: bool = typer.Option(False, "--json", help="live rates as one JSON object per line"),
        stats_json: Optional[str] = typer.Option(None, help="write the final counters to this file as JSON"),
        ready_file: Optional[str] = typer.Option(None, help="write this file (JSON: name, pid, run_dir, metrics) "
                                                 "once the pipeline forwards; removed at exit"),
        detach: bool = typer.Option(False, "--detach", help="run in the background once ready (a daemon); "
                                    "with --pid-file and --log-file"),
        pid_file: Optional[str] = typer.Option(None, help="with --detach: write the pipeline's pid here"),
        log_file: Optional[str] = typer.Option(None, help="with --detach: its messages go here "
                                               "(default: RUN_DIR/../NAME.log)"),
        cpu: Optional[int] = typer.Option(None, help="pin the worker to this CPU (its slow path then runs on "
                                                     "the others)"),
        run_dir: Optional[str] = typer.Option(None, "--run-dir", help="the run directory (default: [pipeline] "
                                              "run_dir, else the user's default, e.g. /run/valepipe/NAME)"),
        mirror: List[str] = typer.Option([], help="PORT=FILE: write what PORT (ofport or uri) sends to a pcap "
                                         "file (tcpdump -r FILE); repeatable, one file per port"),
        supervised: bool = typer.Option(True, "--supervise/--no-supervise",
                                        help="restart the worker (with its ports and rules) if it crashes")):
    from pipeline import config as cfgmod
    from pipeline.supervisor import crash_leftovers, supervise
    if duration is not None and duration <= 0:
        _fail(f"--duration must be > 0 seconds, not {duration:g}")
    if interval < 0.1:
        _fail(f"--interval must be at least 0.1 s, not {interval:g}")
    try:
        cfg = cfgmod.load(config, rules=True, run_dir=run_dir)
        cfgmod.add_mirrors(cfg, mirror)
    except cfgmod.ConfigError as e:
        _fail(str(e))
    _numbers(above_zero=(("--duration", duration), ("--interval", interval)))
    _check_cpu(cpu)
    if (pid_file or log_file) and not detach:
        _fail("--pid-file and --log-file go with --detach")
    for what, path in (("--stats-json", stats_json), ("--ready-file", ready_file), ("--pid-file", pid_file),
                       ("--log-file", log_file)):
        if path:
            _writable(what, path)
    deadline = time.monotonic() + duration if duration else None
    quiet = quiet or detach
    ready_fd = _daemonize(cfg, pid_file, log_file) if detach else None
    _set_title(f"valepipe run {cfg.name} (supervisor)" if supervised else f"valepipe run {cfg.name} (worker)")
    ready = dict(file=ready_file, fd=ready_fd, metrics=None, json=as_json, supervisor=os.getpid(), detached=detach)
    run_one = lambda restarts, held=None: _run_worker(cfg, deadline, interval, quiet, as_json,  # noqa: E731
                                                      stats_json, cpu, restarts, ready, held)
    held = metrics = None
    try:
        # inside: a refused endpoint still removes the pid file and logs the stop
        metrics = _start_metrics(cfg) if cfg.metrics_listen else None
        ready["metrics"] = metrics and metrics.address
        if not supervised:
            signal.signal(signal.SIGHUP, lambda *_: _reload_rules(cfg))
            code = run_one(0)
        else:
            from ring.region import remove_stale_of
            give_up = crash_leftovers(cfg)          # decided before anything of this run exists
            held = _takeover(cfg)                   # the shm: rings and the counters' journal outlive each worker
            code = supervise(lambda restarts: run_one(restarts, held), give_up=give_up,
                             on_hup=lambda: _reload_rules(cfg), after_crash=remove_stale_of)
    finally:
        if held:
            held.close()
        if metrics:
            metrics.stop()
        for path in (ready_file, pid_file):
            if path:
                _unlink(path)
        if detach and os.getpid() == ready["supervisor"]:
            print(f"valepipe: pipeline {cfg.name!r} stopped", file=sys.stderr, flush=True)
    raise typer.Exit(code)


def _takeover(cfg):
    from pipeline.ports import PortError
    from pipeline.takeover import Takeover
    try:
        return Takeover(cfg)
    except (PortError, RuntimeError, OSError) as e:
        _fail(str(e))


def _writable(what, path):
    """Refuse at once a file the run could not write at its end (its counters would be
    lost), or should not: a link, FIFO or another user's file (pipeline/userfiles.py)."""
    from pipeline import userfiles
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        _fail(f"{what} {path}: no directory {d}")
    try:
        userfiles.check_place(path, what)
    except userfiles.UserFileError as e:
        _fail(str(e))
    if not os.access(d, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        _fail(f"{what} {path}: cannot write there")


def _unlink(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def _why_in_log(log, start, prefix="valepipe: "):
    """The last message a detached start that failed wrote to its log (after `start`),
    without its time and prefix: the reason, for the one line `run --detach` prints
    (prefix: only lines with this one, as the slow path's)."""
    import re
    try:
        with open(log, "rb") as f:
            f.seek(start)
            lines = f.read(1 << 20).decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    msgs = [re.sub(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ", "", ln) for ln in lines]
    msgs = [m.removeprefix(prefix).strip() for m in msgs if prefix == "valepipe: " or m.startswith(prefix)]
    msgs = [m for m in msgs if m and not re.match(r"(starting pipeline|pipeline '.*' stopped)", m)]
    return msgs[-1] if msgs else None


def _remove_stale_pid_file(path, child):
    """A failed detached start's pid file, once `child` (the pipeline's process, which
    names itself there) has exited."""
    for _ in range(100):                    # it may be on its way out
        try:
            done, _ = os.waitpid(child, os.WNOHANG)
        except ChildProcessError:
            done = child
        if done:
            try:
                if int(open(path).read().strip() or 0) in (0, child):
                    _unlink(path)
            except (OSError, ValueError):
                pass
            return
        time.sleep(0.02)


def _daemonize(cfg, pid_file, log_file):
    """--detach: the foreground process waits for the pipeline's ready line (or its
    failure) and exits with it; the pipeline goes on in a new session, its messages in the
    log file. Returns the fd the worker writes its ready line to."""
    from pipeline import userfiles
    log = log_file or os.path.join(os.path.dirname(os.path.abspath(cfg.run_dir)), cfg.name + ".log")
    pidfd = None
    made = [p for p in (log, pid_file) if p and not os.path.lexists(p)]
    try:                    # both opened here, so a refusal is one line and nothing has started
        logfd = userfiles.open_write(log, "--log-file", append=True, mode=0o600)
        if pid_file:
            pidfd = userfiles.open_write(pid_file, "--pid-file")
    except userfiles.UserFileError as e:
        for p in made:
            _unlink(p)
        _fail(str(e))
    r, w = os.pipe()
    sys.stdout.flush()
    log_from = os.fstat(logfd).st_size
    pid = os.fork()
    if pid:
        os.close(w)
        os.close(logfd)
        if pidfd is not None:
            os.close(pidfd)
        with os.fdopen(r) as f:
            line = f.readline().strip()
        if not line.startswith(("ready ", '{"event": "ready"')):
            if pid_file:
                _remove_stale_pid_file(pid_file, pid)
            why = line or _why_in_log(log, log_from) or f"see {log}"
            if "slow path exited" in why:               # its own reason is in the log
                why += "".join(f" ({m})" for m in [_why_in_log(log, log_from, "valepipe-slowpath: ")] if m)
            _fail(f"pipeline {cfg.name!r} did not start: {why}", 1)
        print(line, flush=True)
        os._exit(0)
    os.close(r)
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(logfd, 1)
    os.dup2(logfd, 2)
    os.close(null)
    os.close(logfd)
    if pidfd is not None:
        os.write(pidfd, f"{os.getpid()}\n".encode())
        os.close(pidfd)
    # a log read later needs the time of each line (the slow path writes to fd 2 directly:
    # its lines stay as they are)
    sys.stdout, sys.stderr = _Stamped(sys.stdout), _Stamped(sys.stderr)
    print(f"valepipe: starting pipeline {cfg.name!r} from {cfg.path or 'its arguments'} (pid {os.getpid()})",
          file=sys.stderr, flush=True)
    return w


class _Stamped:
    """A text stream whose every line starts with the UTC time (a --detach log)."""

    def __init__(self, stream):
        self._s, self._bol = stream, True

    def write(self, text):
        if isinstance(text, (bytes, bytearray)):     # click writes bytes at times
            text = bytes(text).decode("utf-8", "replace")
        out = []
        for part in text.splitlines(keepends=True):
            if self._bol:
                out.append(time.strftime("%Y-%m-%dT%H:%M:%SZ ", time.gmtime()))
            out.append(part)
            self._bol = part.endswith("\n")
        return self._s.write("".join(out))

    def __getattr__(self, name):          # flush, fileno, isatty, ...
        return getattr(self._s, name)


class _Metrics:
    """The metrics endpoint's process (pipeline/metrics.py), started again (on the address
    it announced) whenever it dies, by a thread of `run` that waits for it."""

    def __init__(self, cfg):
        self.cfg, self.stopping = cfg, False
        self.address = self._start(cfg.metrics_listen)
        import threading
        threading.Thread(target=self._watch, name="metrics-watch", daemon=True).start()

    def _start(self, listen):
        import subprocess
        from pipeline import hostos
        self.proc = subprocess.Popen(hostos.module_command("pipeline.metrics") + [
                                      "--run-dir", self.cfg.run_dir, "--name", self.cfg.name, "--listen", listen],
                                     stdout=subprocess.PIPE, text=True, preexec_fn=_die_with_parent,
                                     env=hostos.module_env())
        line = self.proc.stdout.readline().strip()
        if not line.startswith("listening "):
            self._end()
            raise RuntimeError(f"[metrics].listen: {line.removeprefix('error ') or 'the endpoint did not start'}")
        return line.split(" ", 1)[1]

    def _watch(self):
        while not self.stopping:
            code = self.proc.wait()                     # reaps it: no zombie
            if self.stopping:
                return
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"
            print(f"valepipe: the metrics endpoint (pid {self.proc.pid}) ended with {how}; starting it again on "
                  f"{self.address}", file=sys.stderr, flush=True)
            for delay in (0.2, 1, 2, 5, 5, 10):
                time.sleep(delay)
                if self.stopping:
                    return
                try:
                    self._start(self.address)
                    break
                except (RuntimeError, OSError) as e:
                    print(f"valepipe: the metrics endpoint did not start again: {e}", file=sys.stderr, flush=True)
            else:
                print("valepipe: the metrics endpoint is given up on", file=sys.stderr, flush=True)
                return

    def stop(self):
        self.stopping = True
        self._end()

    def _end(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()


def _die_with_parent():
    from pipeline import hostos
    hostos.die_with_parent(signal.SIGTERM)


def _start_metrics(cfg):
    try:
        return _Metrics(cfg)
    except RuntimeError as e:
        _fail(str(e))


def _reload_rules(cfg):
    """SIGHUP: the slow path's rules become the config's [slowpath] flows (replace-flows:
    unchanged rules keep their counters); a config that does not parse changes nothing."""
    from pipeline import config as cfgmod
    from pipeline import control
    try:
        new = cfgmod.load(cfg.path, rules=True)
        n = control.request(os.path.join(cfg.run_dir, "slowpath.ctl"), "replace-flows", flows=new.flows,
                            timeout=CHANGE_SILENCE_S, progress=True)
        print(f"valepipe: SIGHUP: rules reloaded from {cfg.path}: {n['added']} added, {n['removed']} removed, "
              f"{n['kept']} unchanged", file=sys.stderr, flush=True)
    except (cfgmod.ConfigError, OSError, RuntimeError) as e:
        print(f"valepipe: SIGHUP: rules not reloaded: {e}", file=sys.stderr, flush=True)


def _announce_ready(w, ready, restarts):
    """The ready line (stdout, or the --detach parent) and --ready-file, once forwarding."""
    from pipeline import userfiles
    # pid: the pipeline's (what --pid-file holds, where signals go); worker_pid: the process
    # that forwards (a new one after a crash)
    info = {"name": w.cfg.name, "pid": ready.get("supervisor", os.getpid()), "worker_pid": os.getpid(),
            "run_dir": os.path.abspath(w.run_dir), "metrics": ready.get("metrics")}
    info = {k: v for k, v in info.items() if v is not None}
    line = (json.dumps({"event": "ready", **info}) if ready.get("json") else
            "ready " + " ".join(f"{k}={v}" for k, v in info.items() if v is not None))
    if ready.get("file"):
        try:
            userfiles.write_text(ready["file"], "--ready-file", json.dumps(info))
        except userfiles.UserFileError as e:
            print(f"valepipe: {e}", file=sys.stderr, flush=True)
    if ready.get("fd") is not None:
        try:
            os.write(ready["fd"], (line + "\n").encode())
            os.close(ready["fd"])
        except OSError:
            pass
        ready["fd"] = None
    elif restarts == 0:
        print(line, flush=True)
    if ready.get("detached"):
        print(f"valepipe: {line}" + (f" (worker restart {restarts})" if restarts else ""), file=sys.stderr, flush=True)


def _run_worker(cfg, deadline, interval, quiet, as_json, stats_json, cpu, restarts, ready, takeover=None):
    """One worker's life (in the supervisor's child); returns the exit code."""
    from pipeline import hostos
    from pipeline.ports import PortError
    from pipeline.worker import Worker
    try:
        allowed = hostos.allowed_cpus()
        _pin(cpu)
        try:
            # a restarted worker keeps the slow path's rules of this run, and takes over
            # the rings and counters of the one before it; a pinned worker's slow path runs
            # on the other CPUs it was allowed: its wake-ups (20 a second) would stop
            # forwarding for 50-300 us each on the worker's (p99 latency, perf/RESULTS.md)
            w = Worker(cfg, keep_rules=restarts > 0, takeover=takeover,
                       slow_cpus=(allowed - {cpu}) or allowed if cpu is not None else allowed)
        except (PortError, RuntimeError, OSError) as e:
            if ready.get("fd") is not None:
                os.write(ready["fd"], f"{e}\n".encode())
            _fail(str(e))
    except typer.Exit as e:          # the child's exit code, for the supervisor
        return e.exit_code
    w.restarts = restarts
    w.supervisor_pid = ready.get("supervisor", os.getpid())
    _set_title(f"valepipe run {cfg.name} (worker)")
    signal.signal(signal.SIGTERM, lambda *_: w.stop())
    signal.signal(signal.SIGINT, lambda *_: w.stop())
    _announce_ready(w, ready, restarts)
    live, tick, show = None, None, _live(interval, as_json)
    show(w.stats())
    if as_json:
        tick = lambda w: (lambda out: out and print(out, flush=True))(show(w.stats()))  # noqa: E731
    elif not quiet:
        if sys.stdout.isatty():
            from rich.live import Live
            live = Live(auto_refresh=False)
            live.start()
            tick = lambda w: (lambda out: out and live.update(out, refresh=True))(show(w.stats()))  # noqa: E731
        else:
            tick = lambda w: (lambda out: out and print(out + "\n", flush=True))(show(w.stats()))  # noqa: E731
    try:
        w.run(duration=max(0.001, deadline - time.monotonic()) if deadline else None, on_tick=tick, tick_s=interval)
    except BaseException:
        if live:
            live.stop()
        w.close(crashed=True)        # as a crash: what the next worker takes over stays
        raise
    if live:
        live.stop()
    final = w.stats()
    w.close()
    if stats_json:
        from pipeline import userfiles
        try:
            with os.fdopen(userfiles.open_write(stats_json, "--stats-json"), "w") as f:
                json.dump(final, f, indent=1)
        except OSError as e:
            print(f"valepipe: {e if isinstance(e, userfiles.UserFileError) else e.strerror}", file=sys.stderr)
            return 1
    if not quiet and not as_json:
        from pipeline.rates import render, since_start
        print(render(final, since_start(final)))
    return 0


def _set_title(title):
    """What ps shows for this process: supervisor and worker are told apart."""
    from pipeline import hostos
    hostos.set_title(title)


def _traffic_lines(what, counter, quiet):
    """pkt-gen's once-a-second line: a function of the tool, called every slice."""
    state = {"t": time.monotonic(), "n": 0, "b": 0}

    def line(tool):
        now = time.monotonic()
        if quiet or now - state["t"] < 1.0:
            return
        n, b = counter(tool)
        dt = now - state["t"]
        print(f"{what} {(n - state['n']) / dt:>12,.0f} pps {(b - state['b']) * 8 / dt / 1e6:>10,.2f} Mbps  "
              f"(total {n:,})", flush=True)
        state.update(t=now, n=n, b=b)
    return line


def _stop_on_signals():
    """SIGINT/SIGTERM end the run at the next slice, so the summary is still printed."""
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(1))
    return lambda: bool(stop)


def _check_run_time(duration, count, default=None):
    if duration is not None and not 0 < duration <= 1e9:
        _fail(f"--duration must be > 0 seconds (and at most 1e9), not {duration:g}")
    if count < 0 or count >= 1 << 63:
        _fail(f"--count must be 0..2^63-1 (0 = no limit), not {count}")
    return default if count == 0 and duration is None else duration


OWNER = typer.Option(None, "--owner", help="shm: attach to a pipeline of this user (name or uid); by "
                     "default only to one of your own")


def _owner_uid(owner):
    """--owner USER as a uid (None: this process's user)."""
    import pwd
    if owner is None:
        return None
    if owner.isascii() and owner.isdigit():
        return int(owner)
    try:
        return pwd.getpwnam(owner).pw_uid
    except KeyError:
        _fail(f"--owner {owner!r}: no such user")


@app.command()
def gen(port: str = typer.Argument(..., help="port to send on: shm:NAME (its pipeline must be running), "
                                       "or netmap:IF / valeX:PORT on a netmap host"),
        size: int = typer.Option(60, help="frame length without FCS (60 = 64-byte frames)"),
        flows: int = typer.Option(1, help="distinct UDP flows, sent round-robin"),
        rate: float = typer.Option(0, help="packets per second (0 = as fast as the ring takes them)"),
        count: int = typer.Option(0, help="stop after this many packets (0 = no limit)"),
        duration: Optional[float] = typer.Option(None, help="stop after this many seconds (default: 10 s "
                                                 "when no --count is given)"),
        batch: int = typer.Option(256, help="slots filled per ring publish"),
        rx: Optional[str] = typer.Option(None, help="also count what arrives on this port, in the same "
                                          "loop (pkt-gen txrx: one core, no scheduler in between)"),
        idle_stop: float = typer.Option(1.0, help="with --rx: stop once nothing arrived for this long"),
        latency: bool = typer.Option(False, "--latency", help="stamp each frame with its send time; with --rx, "
                                     "print each frame's latency (p50, p99, p99.9). With --rate, frames go on "
                                     "time or not at all: a sender held up for over a batch skips what it "
                                     "missed (pace_skipped) rather than bursting it into the pipeline"),
        cpu: Optional[int] = typer.Option(None, help="pin to this CPU"),
        owner: Optional[str] = OWNER,
        quiet: bool = typer.Option(False, "--quiet", "-q", help="no line per second, only the summary"),
        as_json: bool = typer.Option(False, "--json", help="print the summary as JSON (no lines per second)")):
    """pkt-gen-style generator: prebuilt UDP/IPv4 frames, C batch loop (one sync ioctl per
    batch on netmap ports). Prints a line per second and a summary (also on Ctrl-C); follows
    its pipeline through a restart, and stops with an error if it goes away."""
    from bindings.netmap.port import NetmapError
    from ring.region import RegionError
    from tools.traffic import Generator, PeerGone, Sink
    _numbers(above_zero=(("--duration", duration), ("--idle-stop", idle_stop), ("--batch", batch)),
             at_least_zero=(("--rate", rate), ("--count", count)))
    duration = _check_run_time(duration, count, default=10.0)
    if rate > 1e10:
        _fail(f"--rate must be 0..1e10 packets/s (0 = as fast as possible), not {rate:g}")
    if batch > 65536:
        _fail(f"--batch must be 1..65536 slots, not {batch}")
    _check_cpu(cpu)
    _pin(cpu)
    uid = _owner_uid(owner)
    try:
        g = Generator(port, size=size, flows=flows, rate=rate, count=count, batch=batch, owner=uid, stamp=latency)
        s = Sink(rx, count=count, owner=uid, latency=latency) if rx else None
    except (RegionError, NetmapError, ValueError) as e:
        _fail(str(e))
    line = _traffic_lines("tx", lambda t: (t.g.sent, t.g.sent * t.g.frame_len), quiet or as_json)
    code = 0
    try:
        try:
            res = g.run(duration=duration, sink=s, idle_stop_s=idle_stop, on_slice=line, stop=_stop_on_signals())
        except PeerGone as e:
            typer.echo(f"valepipe: {e}; stopped", err=True)
            res, code = g.result(), 1
        if s:
            res["rx"] = s.result()
    finally:
        g.close()
        if s:
            s.close()
    if as_json:
        print(json.dumps(res))
    else:
        print(f"sent {res['sent']} packets in {res['seconds']:.3f} s: {res['mpps']:.3f} Mpps"
              + (f" ({res['pace_skipped']} sends skipped: the sender fell behind --rate)" if res["pace_skipped"] else ""))
        if s:
            print(f"received {res['rx']['received']} packets in {res['rx']['seconds']:.3f} s: "
                  f"{res['rx']['mpps']:.3f} Mpps{_discarded(res['rx'])}")
            if latency:
                print(_latency_line(res["rx"]["latency"]))
    raise typer.Exit(code)


def _latency_line(lat):
    if not lat["frames"]:
        return f"latency: no stamped frames arrived ({lat['unstamped']} without a stamp)"
    return (f"latency (us): p50 {lat['p50_us']:.2f}, p99 {lat['p99_us']:.2f}, p99.9 {lat['p99_9_us']:.2f}, "
            f"min {lat['min_us']:.2f}, max {lat['max_us']:.2f} ({lat['frames']} frames)")


@app.command()
def sink(port: str = typer.Argument(..., help="port to receive on: shm:NAME, or netmap:IF / valeX:PORT"),
         count: int = typer.Option(0, help="stop after this many packets (0 = no limit)"),
         duration: Optional[float] = typer.Option(None, help="stop after this many seconds"),
         idle_stop: Optional[float] = typer.Option(None, help="stop once nothing arrived for this many seconds "
                                                   "(counted from the start until the first packet)"),
         latency: bool = typer.Option(False, "--latency", help="each frame's time since `gen --latency` stamped "
                                      "it: print p50, p99, p99.9"),
         cpu: Optional[int] = typer.Option(None, help="pin to this CPU"),
         owner: Optional[str] = OWNER,
         quiet: bool = typer.Option(False, "--quiet", "-q", help="no line per second, only the summary"),
         as_json: bool = typer.Option(False, "--json", help="print the summary as JSON (no lines per second)")):
    """Count packets arriving on a port (C batch loop): a line per second, a summary at the
    end (also on Ctrl-C). Runs until --count, --duration, --idle-stop or Ctrl-C."""
    from bindings.netmap.port import NetmapError
    from ring.region import RegionError
    from tools.traffic import PeerGone, Sink
    _numbers(above_zero=(("--duration", duration), ("--idle-stop", idle_stop)), at_least_zero=(("--count", count),))
    duration = _check_run_time(duration, count)
    _check_cpu(cpu)
    _pin(cpu)
    uid = _owner_uid(owner)
    try:
        s = Sink(port, count=count, owner=uid, latency=latency)
    except (RegionError, NetmapError, ValueError) as e:
        _fail(str(e))
    line = _traffic_lines("rx", lambda t: (t.s.packets, t.s.bytes), quiet or as_json)
    code = 0
    try:
        try:
            res = s.run(duration=duration, idle_stop_s=idle_stop, on_slice=line, stop=_stop_on_signals())
        except PeerGone as e:
            typer.echo(f"valepipe: {e}; stopped", err=True)
            res, code = s.result(), 1
    finally:
        s.close()
    print(json.dumps(res) if as_json else
          f"received {res['received']} packets in {res['seconds']:.3f} s: {res['mpps']:.3f} Mpps{_discarded(res)}"
          + (f"\n{_latency_line(res['latency'])}" if latency else ""))
    raise typer.Exit(code)


def _discarded(res):
    n = res.get("discarded_at_start")
    return f" ({n} frames already waiting in the ring at start were discarded, not counted)" if n else ""


NAME = typer.Option("valepipe", "--name", help="pipeline name ([pipeline].name); found whatever its run_dir")
RUN_DIR = typer.Option(None, "--run-dir", help="the pipeline's run directory (default: where --name runs)")
JSON = typer.Option(False, "--json", help="print the result as JSON")


def _ctl(run_dir, name, which="worker.ctl"):
    """The control socket `which` of pipeline `name` (found whatever its run_dir), in a run
    directory no other user could have prepared (else we might be talking to their sockets)."""
    from pipeline import config, registry, rundir
    try:
        path = run_dir or registry.run_dir_of(config.check_name(name, "--name"))
        rundir.check(path)
    except (config.ConfigError, rundir.RunDirError) as e:
        _fail(str(e))
    return os.path.join(path, which)


def _unreachable(name, run_dir, path, e):
    """Why a pipeline cannot be reached, and what is running instead."""
    from pipeline import registry
    running = [x["name"] for x in registry.entries()]
    hint = (f"running: {', '.join(running)}; pick one with --name NAME" if running
            else "no pipeline is running; valepipe list shows them, --name picks one")
    if isinstance(e, (FileNotFoundError, ConnectionRefusedError)):
        where = f" in {run_dir}" if run_dir else ""
        return (f"no pipeline {name!r} is running{where} ({hint})" if isinstance(e, FileNotFoundError)
                else f"pipeline {name!r} does not answer at {path} (stopped or crashed?; {hint})")
    return f"cannot reach pipeline {name!r} at {path}: {e} ({hint})"


class _Unanswered(Exception):
    """A request a pipeline did not answer (or refused); the message says why, in one line."""


def _request(name, run_dir, cmd, which="worker.ctl", **args):
    """One control request to a running pipeline's worker (or slow path); errors end the
    command with one line that says what is running."""
    try:
        return _ask(name, run_dir, cmd, which, **args)
    except _Unanswered as e:
        _fail(str(e))


def _ask(name, run_dir, cmd, which="worker.ctl", **args):
    """_request's work, raising _Unanswered instead of ending the command."""
    from pipeline import control
    path = _ctl(run_dir, name, which)
    try:
        return control.request(path, cmd, **args)
    except RuntimeError as e:
        raise _Unanswered(str(e)) from None
    except TimeoutError:
        # it is running (it took the request) but said nothing for that long
        wait = args.get("timeout", 5.0)
        raise _Unanswered(f"pipeline {name!r} did not answer within {wait:g} s" +
                          ("; the change may still be in progress" if cmd in CHANGES else "")) from None
    except OSError as e:
        if which == "slowpath.ctl" and isinstance(e, (FileNotFoundError, ConnectionRefusedError)) \
                and os.path.exists(_ctl(run_dir, name)):
            raise _Unanswered(f"the slow path of pipeline {name!r} does not answer (restarting?); try again") from None
        raise _Unanswered(_unreachable(name, run_dir, path, e)) from None


# rule changes: the slow path makes a large one in steps and says every second that it is
# still at it; the command waits as long as it does, giving up after this long of silence
CHANGES = {"add-flows", "del-flows", "mod-flows", "replace-flows"}
CHANGE_SILENCE_S = 30.0
try:                    # VALEPIPE_CHANGE_WAIT: another bound, in seconds (tests use a short one)
    CHANGE_SILENCE_S = max(0.1, float(os.environ.get("VALEPIPE_CHANGE_WAIT", CHANGE_SILENCE_S)))
except ValueError:
    pass


def _slowpath(name, run_dir, cmd, **args):
    if cmd in CHANGES:
        args = dict({"timeout": CHANGE_SILENCE_S, "progress": True}, **args)
    return _request(name, run_dir, cmd, which="slowpath.ctl", **args)


def _rules(file, mode="add"):
    from pipeline import rulefile
    try:
        return rulefile.parse(file, mode)
    except rulefile.RuleFileError as e:
        _fail(str(e))


def _print_json(v):
    print(json.dumps(v, indent=1))


@app.command("add-flow")
def add_flow(flow: str = typer.Argument(..., help="a rule in ovs-ofctl syntax, e.g. "
                                                  "'table=0,priority=10,tcp,tp_dst=80,actions=output:2'"),
             name: str = NAME, run_dir: Optional[str] = RUN_DIR):
    """Add (or replace) a rule; cached flows are revalidated against it."""
    _slowpath(name, run_dir, "add-flows", flows=[flow])


@app.command("add-flows")
def add_flows(file: str = typer.Argument(..., help="file with one rule per line ('#' comments; - for stdin)"),
              name: str = NAME, run_dir: Optional[str] = RUN_DIR):
    """Add every rule of a file; nothing is added if any rule is invalid (each refused line
    is named FILE:LINE with its text)."""
    rules = _rules(file)
    # loaded in steps while the slow path answers upcalls: a large set takes a while
    n = _slowpath(name, run_dir, "add-flows", flows=[t for _, t, _ in rules])
    print(f"added {n} rule(s)")


@app.command("replace-flows")
def replace_flows(file: str = typer.Argument(..., help="file with one rule per line ('#' comments; - for stdin)"),
                  name: str = NAME, run_dir: Optional[str] = RUN_DIR):
    """Make the rules exactly those of FILE (as ovs-ofctl replace-flows): rules not in it are
    deleted, new or changed ones added, unchanged ones keep their counters."""
    rules = _rules(file)
    n = _slowpath(name, run_dir, "replace-flows", flows=[t for _, t, _ in rules])
    print(f"added {n['added']}, removed {n['removed']}, unchanged {n['kept']} rule(s)")


@app.command("diff-flows")
def diff_flows(file: str = typer.Argument(..., help="file with one rule per line ('#' comments; - for stdin)"),
               name: str = NAME, run_dir: Optional[str] = RUN_DIR):
    """Compare FILE with the running rules (as ovs-ofctl diff-flows): '-' lines only in the
    pipeline, '+' lines only in the file. Exit 0 if they are the same, 2 if they differ."""
    from pipeline import rulefile
    try:
        want = rulefile.canonical(file)
    except rulefile.RuleFileError as e:
        _fail(str(e))
    have = [r["spec"] for r in _slowpath(name, run_dir, "dump-rules")]
    only_have = [r for r in have if r not in set(want)]
    only_want = [r for r in want if r not in set(have)]
    for r in only_have:
        print(f"-{r}")
    for r in only_want:
        print(f"+{r}")
    raise typer.Exit(2 if only_have or only_want else 0)


@app.command("del-flows")
def del_flows(match: str = typer.Argument("", help="delete the rules this match covers (all when empty)"),
              strict: bool = typer.Option(False, "--strict", help="only the rule with exactly this match and "
                                          "priority (and table, 0 if not given)"),
              name: str = NAME, run_dir: Optional[str] = RUN_DIR):
    """Delete rules (non-strict unless --strict, as ovs-ofctl del-flows)."""
    print(f"deleted {_slowpath(name, run_dir, 'del-flows', match=match, strict=strict)} rule(s)")


@app.command("mod-flows")
def mod_flows(flow: str = typer.Argument(..., help="match plus new actions, e.g. 'in_port=1,actions=output:3'"),
              strict: bool = typer.Option(False, "--strict", help="only the rule with exactly this match and "
                                          "priority"),
              reset_counts: bool = typer.Option(False, "--reset-counts", help="also clear their packet and byte "
                                                "counters"),
              name: str = NAME, run_dir: Optional[str] = RUN_DIR):
    """Change the actions of the rules the match covers (non-strict unless --strict)."""
    n = _slowpath(name, run_dir, "mod-flows", flow=flow, strict=strict, reset_counts=reset_counts)
    print(f"modified {n} rule(s)")


@app.command()
def trace(flow: Optional[str] = typer.Argument(None, help="'in_port=1,tcp,nw_dst=10.0.0.1,tp_dst=80' or "
                                                          "'in_port=1 <packet in hex, spaces allowed>'"),
          file: Optional[str] = typer.Option(None, "--file", "-f", help="trace every line of this file "
                                             "(- for stdin): one result each, in order"),
          name: str = NAME, run_dir: Optional[str] = RUN_DIR, as_json: bool = JSON):
    """Show how the tables handle a flow or packet: each table visited, the rule hit, the
    Megaflow: and Datapath actions: lines, in the shape of ovs-appctl ofproto/trace. With
    --file, many flows or packets in one request (one result per line, blank line between)."""
    from pipeline import rulefile
    if (flow is None) == (file is None):
        _fail("trace takes a FLOW or --file FILE (one of them)")
    if flow is not None and not flow.strip():
        _fail("trace: an empty flow (give in_port=N and its fields, or in_port=N and a packet in hex)")
    try:
        items = [flow] if file is None else [t for _, t in rulefile.read(file)]
    except rulefile.RuleFileError as e:
        _fail(str(e))
    from pipeline.slowpath.ofctl import MAX_TRACE
    results = []            # a file of any length: in requests of what the slow path takes at once
    for i in range(0, len(items), MAX_TRACE):
        results += _slowpath(name, run_dir, "trace-many", flows=items[i:i + MAX_TRACE])
    if as_json:
        _print_json(results if file is not None else results[0])
        raise typer.Exit(1 if any(r.get("error") and "text" not in r for r in results) else 0)
    if file is None and "text" not in results[0]:
        _fail(results[0]["error"])
    for i, r in enumerate(results):
        if i:
            print()
        print(r["text"] if "text" in r else f"Error: {r['error']}")
    raise typer.Exit(1 if any("text" not in r for r in results) else 0)


LAYERS = ((1, "l2"), (2, "vlan"), (4, "l3"), (8, "l4"))


def _megaflow_line(f):
    parts = []
    for k, m in f["mask"].items():
        if k in ("layers", "in_port"):
            continue
        v = f["key"].get(k, 0)
        if k == "vlan" and isinstance(v, list) and isinstance(m, list):
            parts += [_show_tag(t, tm) for t, tm in zip(v, m)]
            continue
        full = m == (("f" * len(m)) if isinstance(m, str) else {"eth_type": 0xFFFF}.get(k, _ones(m)))
        parts.append(f"{k}={_show(k, v)}" if full else f"{k}={_show(k, v, True)}/{_show(k, m, True)}")
    # the headers the frame had are always part of a megaflow: two that differ only in them
    # (an ARP frame and a UDP one, say) are different entries and print differently
    layers = "+".join(n for bit, n in LAYERS if f["key"].get("layers", 0) & bit) or "none"
    used = "never" if f["used_s"] is None else f"{f['used_s']}s"
    return (f"in_port={f['key']['in_port']},layers({layers}){''.join(',' + p for p in parts)}, "
            f"packets:{f['packets']}, bytes:{f['bytes']}, used:{used}, actions:{f['actions']}")


@app.command("dump-megaflows")
def dump_megaflows(name: str = NAME, run_dir: Optional[str] = RUN_DIR, as_json: bool = JSON):
    """The fast path's megaflows: masked key, counters (with those of the exact-match entries
    that serve them), actions (as ovs-appctl dpctl/dump-flows)."""
    flows = _request(name, run_dir, "megaflows")
    if as_json:
        _print_json(flows)
        return
    for f in flows:
        print(_megaflow_line(f))


def _ones(v):
    """v if it is all ones in its width (an exact match), else -1."""
    return v if isinstance(v, int) and v and (v + 1) & v == 0 and v.bit_length() % 8 == 0 else -1


def _show_tag(tag, mask):
    """One VLAN tag of a megaflow: [TPID, TCI] and their masks, as vlan(tpid=,vid=,pcp=)
    when the whole tag is matched, else tpid and tci with their masks."""
    if not (isinstance(tag, list) and isinstance(mask, list) and len(tag) == len(mask) == 2
            and all(isinstance(x, int) for x in tag + mask)):
        return f"vlan={tag}/{mask}"
    (tpid, tci), (tpid_m, tci_m) = tag, mask
    if tpid_m == tci_m == 0xFFFF:
        return f"vlan(tpid={tpid:#06x},vid={tci & 0xFFF},pcp={tci >> 13})"
    return f"vlan(tpid={tpid:#06x}/{tpid_m:#06x},tci={tci:#06x}/{tci_m:#06x})"


def _show(k, v, masked=False):
    """A megaflow field's value (or mask) as ovs-appctl prints it: addresses in their
    notation, numbers with a mask in hex."""
    import ipaddress
    if k in ("ipv4_src", "ipv4_dst", "arp_spa", "arp_tpa") and isinstance(v, int):
        return str(ipaddress.IPv4Address(v))
    if isinstance(v, str) and len(v) == 12:
        return ":".join(v[i:i + 2] for i in range(0, 12, 2))
    if isinstance(v, str) and len(v) == 32:
        return str(ipaddress.IPv6Address(bytes.fromhex(v)))
    return f"{v:#06x}" if k == "eth_type" and isinstance(v, int) else (
        hex(v) if (masked or k == "tcp_flags") and isinstance(v, int) else str(v))


@app.command("fdb-show")
def fdb_show(name: str = NAME, run_dir: Optional[str] = RUN_DIR, as_json: bool = JSON):
    """The NORMAL action's MAC learning table: port, VLAN, MAC, age (as ovs-appctl fdb/show)."""
    entries = _slowpath(name, run_dir, "fdb-show")
    rows = [{"port": port, "vlan": vlan, "mac": ":".join(f"{(mac >> (40 - 8 * i)) & 0xFF:02x}" for i in range(6)),
             "age": age} for port, vlan, mac, age in entries]
    if as_json:
        _print_json(rows)
        return
    print(" port  VLAN  MAC                Age")
    for r in rows:
        print(f"{r['port']:>5}  {r['vlan']:>4}  {r['mac']}  {r['age']:>3}")


SORT_KEYS = ("priority", "table", "n_packets", "n_bytes", "duration", "cookie")


def _sort_key(field):
    """ovs-ofctl --sort=FIELD: priority, counters, or a match field (rules without it last)."""
    from pipeline.slowpath.flowtext import ALIASES
    from pipeline.slowpath.fields import FIELDS
    if field in SORT_KEYS:
        return lambda r: (0, r[field])
    f = ALIASES.get(field, field)
    if f not in FIELDS:
        _fail(f"--sort/--rsort: unknown field {field!r} (priority, table, n_packets, n_bytes, duration, cookie, "
              "or a match field such as nw_dst)")
    return lambda r: (0, r["fields"][f]) if f in r["fields"] else (1, 0)


@app.command("dump-flows")
def dump_flows(match: str = typer.Argument("", help="only the rules this match covers (ovs-ofctl's non-strict "
                                                    "rule), e.g. 'table=0,tcp'"),
               strict: bool = typer.Option(False, "--strict", help="only the rule with exactly this match and "
                                           "priority"),
               sort: Optional[str] = typer.Option(None, "--sort", help="ascending by FIELD: priority, table, "
                                                  "n_packets, n_bytes, duration, cookie or a match field"),
               rsort: Optional[str] = typer.Option(None, "--rsort", help="descending by FIELD"),
               name: str = NAME, run_dir: Optional[str] = RUN_DIR, as_json: bool = JSON):
    """Print the rules with their counters, as ovs-ofctl dump-flows does."""
    from pipeline import control
    if sort and rsort:
        _fail("give --sort or --rsort, not both")
    key = _sort_key(sort or rsort) if (sort or rsort) else None
    wctl = _ctl(run_dir, name)
    try:    # the worker pushes its flows' counters to the slow path first
        want = control.request(wctl, "revalidate")
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and control.request(wctl, "stats")["upcall"]["revalidations_done"] < want:
            time.sleep(0.02)
    except (OSError, RuntimeError):
        pass    # no worker: the slow path's counters are all there is
    rules = _slowpath(name, run_dir, "dump-rules", match=match, strict=strict)
    if key:
        rules.sort(key=key, reverse=bool(rsort))
    if as_json:
        _print_json(rules)
        return
    for r in rules:
        print(" " + r["text"])


@app.command()
def stats(name: str = NAME, run_dir: Optional[str] = RUN_DIR,
          watch: bool = typer.Option(False, "--watch", "-w", help="refresh every --interval: rates per port "
                                     "and in total (packets/s, bits/s, drops/s by reason)"),
          interval: float = typer.Option(1.0, help="with --watch: seconds between updates (at least 0.1)"),
          as_json: bool = typer.Option(False, "--json", help="every counter as JSON; with --watch, one JSON "
                                       "object of rates per line")):
    """Counters of a running pipeline: per port, per stage, hits/misses/upcalls, drops by reason."""
    if interval < 0.1:
        _fail(f"--interval must be at least 0.1 s, not {interval:g}")
    st = _request(name, run_dir, "stats")
    if not watch:
        if as_json:
            try:            # the slow path's own counters (rules, translation, OpenFlow) beside the worker's
                st["slowpath"] = _ask(name, run_dir, "stats", "slowpath.ctl")
            except _Unanswered as e:
                st["slowpath"] = {"error": str(e)}
            _print_json(st)
        else:
            from pipeline.rates import render, since_start
            print(render(st, since_start(st)))
        return
    show = _live(interval, as_json)
    show(st)
    live = None
    if not as_json and sys.stdout.isatty():
        from rich.live import Live
        live = Live(auto_refresh=False)
        live.start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    gone = None
    try:
        while True:
            time.sleep(interval)
            out = show(_ask(name, run_dir, "stats"))
            if live:
                live.update(out, refresh=True)
            else:
                print(out if as_json else out + "\n", flush=True)
    except KeyboardInterrupt:
        pass
    except _Unanswered as e:
        gone = e
    finally:
        if live:
            live.stop()
    if gone:                # said once the live display is gone, or it would draw over the line
        _fail(f"{gone}; stopped watching", 1)


@app.command()
def ports(name: str = NAME, run_dir: Optional[str] = RUN_DIR,
          as_json: bool = typer.Option(False, "--json", help="everything, as JSON")):
    """Ports of a running pipeline with their counters and fault state; for interface ports
    (afxdp, packet, tap, pcap, netmap) also what the binding counted (io), its link state
    where the binding reports one, and its last error."""
    ps = _request(name, run_dir, "ports")
    if as_json:
        _print_json(ps)
        return
    for p in ps:
        io = p.get("io") or {}
        link = io.get("link", "up")
        # "ok" only while the port is up (port-mod) and so is its interface's link
        # (up, down, no-carrier, gone)
        state = "FAULTY" if p["faulty"] else "down" if not p.get("up", True) else "ok" if link == "up" else link
        speed = f" {io['speed_mbps']}Mb/s" if link == "up" and io.get("speed_mbps") else ""
        print(f"{p['ofport']:>3} {p['uri']:<28} {state + speed:<10} rx {p['rx_packets']} "
              f"tx {p['tx_packets']} drops {json.dumps({k: v for k, v in p['drops'].items() if v})}")
        if io:
            # the binding's view, as the JSON has it: every counter (zeros too), then what it is
            counts = [f"{k}={v}" for k, v in io.items() if isinstance(v, int) and not isinstance(v, bool)
                      and k not in IO_FACTS]
            facts = [f"{k}={_fact(v)}" for k, v in io.items() if k in IO_FACTS or isinstance(v, (bool, str))
                     and k not in ("link", "last_error")]
            if "link" in io:
                print(f"    link: {io['link']}" + (f", {io['speed_mbps']} Mb/s" if io.get("speed_mbps") else ""))
            print(f"    io: {' '.join(counts)}" + (f"; {' '.join(facts)}" if facts else ""))
            if io.get("last_error"):
                print(f"    last error: {io['last_error']}")
        if p.get("mirror"):
            print(f"    mirror: {p['mirror']['file']} ({p['mirror']['packets']} packets)")


IO_FACTS = ("speed_mbps", "mtu", "queues", "first_queue", "ifindex", "xdp_prog_id", "mem_id")


def _fact(v):
    return "yes" if v is True else "no" if v is False else v


@app.command("add-port")
def add_port(uri: str = typer.Argument(..., help="port uri, as in [[port]] (shm:NAME, afxdp:IF, packet:IF, "
                                                 "tap:NAME, ...)"),
             ofport: Optional[int] = typer.Option(None, help="its OpenFlow number (default: the next free one)"),
             slots: Optional[int] = typer.Option(None, help="ring size (default: the kind's, 1024; 256 of 64 KB "
                                                 "for ports that carry offloads)"),
             name: str = NAME, run_dir: Optional[str] = RUN_DIR):
    """Add a port to a running pipeline (as ovs-vsctl add-port); cached flows are
    revalidated (NORMAL and FLOOD include it at once). It lasts until the pipeline stops."""
    if ofport is not None and not 1 <= ofport <= 65279:        # as [[port]] ofport: 0 is not "next free"
        _fail(f"--ofport must be 1..65279 (leave it out for the next free one), not {ofport}")
    if slots is not None and not 2 <= slots <= 65536:
        _fail(f"--slots must be 2..65536, not {slots}")
    r = _request(name, run_dir, "add-port", uri=uri, ofport=ofport, slots=slots)
    print(f"added port {r['ofport']} ({r['uri']})")


@app.command("del-port")
def del_port(port: str = typer.Argument(..., help="the port: its ofport or uri"),
             name: str = NAME, run_dir: Optional[str] = RUN_DIR):
    """Remove a port from a running pipeline (as ovs-vsctl del-port); traffic on the other
    ports goes on, and outputs to it become drops."""
    r = _request(name, run_dir, "del-port", port=port)
    print(f"removed port {r['ofport']} ({r['uri']})")


@app.command("port-mod")
def port_mod(port: str = typer.Argument(..., help="the port: its ofport or uri"),
             up: bool = typer.Option(False, "--up", help="bring the port up"),
             down: bool = typer.Option(False, "--down", help="take the port down"),
             name: str = NAME, run_dir: Optional[str] = RUN_DIR):
    """Take a port down (it neither receives nor sends; floods leave it out) or bring it
    back up, as ovs-ofctl mod-port PORT down/up."""
    if up == down:
        _fail("port-mod needs --up or --down (one of them)")
    r = _request(name, run_dir, "port-mod", port=port, up=up)
    print(f"port {r['ofport']} ({r['uri']}) is {'up' if r['up'] else 'down'}")


@app.command("list")
def list_(as_json: bool = JSON):
    """The running pipelines: name, pid (the pipeline's: what --pid-file holds) and its
    worker's, uptime, ports, run directory; one whose worker does not answer (stopped,
    hung) is listed as such."""
    from pipeline import control, registry
    rows = []
    for e in registry.entries():        # entries of live workers only
        try:
            st = control.request(os.path.join(e["run_dir"], "worker.ctl"), "stats", timeout=2.0)
        except (OSError, RuntimeError) as exc:
            rows.append({"name": e["name"], "pid": None, "worker_pid": e["pid"], "answering": False,
                         "error": str(getattr(exc, "strerror", None) or exc or type(exc).__name__),
                         "uptime_s": round(time.time() - e["started"], 3) if isinstance(e.get("started"), (int, float))
                         else None, "run_dir": e["run_dir"], "config": e.get("config"),
                         "ports": list(e.get("ports") or [])})
            continue
        rows.append({"name": e["name"], "pid": st.get("supervisor_pid", st["pid"]), "worker_pid": st["pid"],
                     "answering": True, "uptime_s": st["uptime_s"], "run_dir": e["run_dir"],
                     "config": e.get("config"), "ports": [p["uri"] for p in st["ports"]], "packets": st["packets"]})
    if as_json:
        _print_json(rows)
        return
    if not rows:
        print("no pipeline is running")
        return
    print(f"{'name':<16} {'pid':>7} {'worker':>7} {'uptime':>10}  ports")
    for r in rows:
        up = _duration(r["uptime_s"]) if r["uptime_s"] is not None else "?"
        print(f"{r['name']:<16} {r['pid'] or '?':>7} {r['worker_pid']:>7} {up:>10}  {', '.join(r['ports'])}"
              + ("" if r["answering"] else f"  (NOT ANSWERING: {r['error']})"))


def _duration(s):
    s = int(s)
    return f"{s // 86400}d{s // 3600 % 24}h" if s >= 86400 else (
        f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s")


@app.command()
def check(config: str = typer.Argument(..., help="pipeline config (TOML) to check"),
          as_json: bool = JSON):
    """Parse a config as `run` would — every section, port uri and rule — without starting
    anything; print every error with its place (exit 1 if any)."""
    from pipeline import config as cfgmod
    try:
        cfg = cfgmod.load(config, rules=True)
        errors = []
    except cfgmod.ConfigError as e:
        cfg, errors = None, e.errors
    if as_json:
        _print_json({"config": config, "ok": not errors, "errors": errors,
                     "ports": [p["uri"] for p in cfg.ports] if cfg else None,
                     "rules": len(cfg.flows) if cfg else None})
    elif errors:
        for e in errors:
            typer.echo(e, err=True)
    else:
        print(f"{config}: ok: pipeline {cfg.name!r}, {len(cfg.ports)} port(s), {len(cfg.flows)} rule(s), "
              f"run_dir {cfg.run_dir}")
    raise typer.Exit(1 if errors else 0)


@app.command()
def demo(flows: int = typer.Option(1, help="distinct flows"),
         size: int = typer.Option(60, help="frame length without FCS"),
         seconds: float = typer.Option(5.0, help="generator run time (each of the two phases)"),
         batch: int = typer.Option(256, help="pipeline batch size")):
    """Run generator -> pipeline -> sink on shm: ports: print the throughput, then the
    latency at half of it."""
    from tools.shmbench import BenchPipeline
    if not 1 <= batch <= 1024:
        _fail(f"--batch must be 1..1024, not {batch}")
    if not 50 <= size <= 2048:
        _fail(f"--size must be 50..2048 bytes (60 = 64-byte frames with FCS; a frame carries its send time), not {size}")
    if not 1 <= flows <= 1_000_000:
        _fail(f"--flows must be 1..1000000, not {flows}")
    if not 0 < seconds <= 86400:
        _fail(f"--seconds must be > 0 (and at most a day), not {seconds:g}")
    # SIGTERM ends the demo as Ctrl-C does: its pipeline, traffic and temporary files go too
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    print(f"valepipe demo: gen -> pipeline (shm:a -> shm:b, in_port=1,actions=output:2) -> sink, "
          f"{size + 4}-byte frames, {flows} flow(s), batch {batch}, {seconds:g} s at full rate, then {seconds:g} s at half")
    t0 = time.monotonic()
    try:
        with BenchPipeline(flows=flows, size=size, batch=batch) as b:
            r = b.run(seconds)
            half = b.run(seconds, rate=r["mpps"] * 1e6 / 2, latency=True) if r["mpps"] else None
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except RuntimeError as e:
        _fail(f"demo failed: {e}", 1)
    st = r["stats"]
    print(f"generator sent   {r['gen']['sent']:>12} packets ({r['gen']['mpps']:.2f} Mpps offered)")
    print(f"sink received    {r['sink']['received']:>12} packets")
    print(f"pipeline         hits {st['hits']}, misses {st['misses']}, upcalls {st['upcall']['upcalls']}, "
          f"drops {sum(st['drops'].values())} {json.dumps({k: v for k, v in st['drops'].items() if v})}")
    print("ns/packet        " + ", ".join(f"{k} {v}" for k, v in st["stage_ns_per_packet"].items())
          + (f" (whole batch {st['batch_ns_per_packet']})" if st.get("batch_ns_per_packet") else ""))
    print(f"THROUGHPUT       {r['mpps']:.2f} Mpps delivered")
    lat = (half or {}).get("latency") or {}
    if lat.get("frames"):
        print(f"LATENCY          p99 {lat['p99_us']:.2f} us at half load ({half['mpps']:.2f} Mpps): "
              f"p50 {lat['p50_us']:.2f}, p99.9 {lat['p99_9_us']:.2f}, max {lat['max_us']:.2f} us "
              f"({time.monotonic() - t0:.1f} s wall)")
    else:
        print(f"LATENCY          not measured: nothing arrived at half load ({time.monotonic() - t0:.1f} s wall)")


topo_app = typer.Typer(help="Lab topologies from a TOML file: namespaces, veth pairs, TAP devices.",
                       no_args_is_help=True, rich_markup_mode=None)
app.add_typer(topo_app, name="topo")


@topo_app.command("up")
def topo_up(file: str = typer.Argument(..., help="topology (TOML): [[netns]], [[veth]], [[tap]]"),
            as_json: bool = JSON):
    """Create the namespaces, veth pairs and TAP devices of FILE, with addresses, MTU, link state."""
    _linux_only("valepipe topo")
    from tools import topo
    try:
        made = topo.up(file)
    except topo.TopoError as e:
        _fail(str(e))
    if as_json:
        _print_json(made)
        return
    for m in made:
        print(f"created {m['kind']} {m['name']}" + (f" in {m['netns']}" if m.get("netns") else ""))


@topo_app.command("down")
def topo_down(file: str = typer.Argument(..., help="the topology file given to `topo up`"),
              as_json: bool = JSON):
    """Remove exactly what `topo up FILE` created, and nothing else."""
    _linux_only("valepipe topo")
    from tools import topo
    try:
        made, errors, gone = topo.down(file)
    except topo.TopoError as e:
        _fail(str(e))
    if as_json:
        _print_json({"removed": len(made) - len(errors) - len(gone), "created": made, "errors": errors,
                     "already_gone": gone})
        raise typer.Exit(1 if errors else 0)
    print(f"removed {len(made) - len(errors) - len(gone)} of {len(made)} created objects"
          + (f"; already gone: {', '.join(gone)}" if gone else ""))
    for e in errors:
        print(f"could not remove {e}", file=sys.stderr)
    if errors:
        raise typer.Exit(1)


def _linux_only(what):
    from pipeline import hostos
    if not hostos.LINUX:
        _fail(f"{what}: network namespaces, veth and TAP devices are Linux's; not available on this OS ({hostos.NAME})")


def _version(value: bool):
    if value:
        from importlib.metadata import PackageNotFoundError, version
        try:
            v = version("valepipe")
        except PackageNotFoundError:
            v = "unknown (not installed)"
        print(f"valepipe {v}")
        raise typer.Exit(0)


@app.callback()
def _options(_v: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                     help="print the version and exit")):
    """valepipe: a packet pipeline and virtual switch on netmap rings."""


def main(argv=None):
    """The `valepipe` command. Every error ends as one line on stderr and a non-zero exit,
    usage errors included (typer would print a usage block)."""
    try:
        from typer._click.exceptions import ClickException, NoArgsIsHelpError
        from typer.exceptions import Abort
    except ImportError:                                 # typer releases built on click
        from click.exceptions import Abort, ClickException, NoArgsIsHelpError
    try:
        try:
            code = app(args=argv, prog_name="valepipe", standalone_mode=False)
        except NoArgsIsHelpError as e:
            print(e.ctx.get_help() if e.ctx else "valepipe --help lists the commands")
            code = 0
        except ClickException as e:
            cmd = e.ctx.command_path if getattr(e, "ctx", None) else "valepipe"
            msg = " ".join(e.format_message().split())
            print(f"{cmd}: {msg} (see {cmd} --help)", file=sys.stderr)
            code = 2
        except Abort:
            code = 130
    except BrokenPipeError:                             # `valepipe ... | head`: the reader left
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
