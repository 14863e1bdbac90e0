"""`valepipe`: run and inspect pipelines, generate and count traffic (typer)."""
import json
import os
import signal
import sys
import time
from typing import List, Optional

import typer

# no rich markup: help texts show TOML sections ([pipeline]) and uri options literally
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="valepipe: a packet pipeline and virtual switch on netmap rings.\n\n"
                       "Ports are URIs: shm:NAME (netmap rings in shared memory; a generator, sink "
                       "or test attaches as the other end), afxdp:IFNAME, packet:IFNAME, tap:NAME, "
                       "pcap:FILE, and on a netmap host netmap:IF and valeX:PORT.")


def _fail(msg, code=2):
    typer.echo(f"valepipe: {msg}", err=True)
    raise typer.Exit(code)


def _pin(cpu):
    if cpu is not None:
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError as e:
            _fail(f"cannot pin to CPU {cpu}: {e.strerror}")


def _render(st):
    lines = [f"up {st['uptime_s']:.1f}s  packets {st['packets']}  hits {st['hits']}  misses {st['misses']}  "
             f"flows {st['flows']}/{st['flow_limit']}  upcalls {st['upcall']['upcalls']} "
             f"(flows {st['upcall']['upcall_flows']}, channel {'up' if st['upcall']['channel_up'] else 'DOWN'})"]
    ns = st["stage_ns_per_packet"]
    lines.append("ns/packet  " + "  ".join(f"{k} {v if v is not None else '-'}" for k, v in ns.items()))
    for p in st["ports"]:
        d = {k: v for k, v in p["drops"].items() if v}
        link = f"  LINK {p['link'].upper()}" if p.get("link", "up") != "up" else ""
        lines.append(f"  {p['ofport']:>3} {p['uri']:<24} rx {p['rx_packets']:>12} tx {p['tx_packets']:>12}"
                     f"{'  FAULTY' if p['faulty'] else ''}{link}{'  drops ' + str(d) if d else ''}")
    drops = {k: v for k, v in st["drops"].items() if v}
    perr = {k: v for k, v in st["parse_errors"].items() if v}
    if drops:
        lines.append(f"  drops: {drops}")
    if perr:
        lines.append(f"  parse errors: {perr}")
    return "\n".join(lines)


@app.command()
def run(config: str = typer.Argument(..., help="pipeline config (TOML): [pipeline], [[port]], [slowpath]"),
        duration: Optional[float] = typer.Option(None, help="stop after this many seconds"),
        interval: float = typer.Option(1.0, help="seconds between live counter updates"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="no live counters"),
        stats_json: Optional[str] = typer.Option(None, help="write the final counters to this file as JSON"),
        cpu: Optional[int] = typer.Option(None, help="pin the worker to this CPU"),
        mirror: List[str] = typer.Option([], help="PORT=FILE: write what PORT (ofport or uri) sends to a pcap "
                                         "file (tcpdump -r FILE); repeatable"),
        supervised: bool = typer.Option(True, "--supervise/--no-supervise",
                                        help="restart the worker (with its ports and rules) if it crashes")):
    """Start the slow path and one worker, forward until SIGINT/SIGTERM, print counters.

    Port uris: shm:NAME, afxdp:IFNAME[:QUEUE], packet:IFNAME, tap:NAME, pcap:FILE[@write],
    each with @options (queues=N, netns=NS, ...); netmap:IF[^] and valeX:PORT as libnetmap
    names them (the README's Ports section lists them all)."""
    from pipeline import config as cfgmod
    from pipeline.supervisor import crash_leftovers, supervise
    try:
        cfg = cfgmod.load(config)
        cfgmod.add_mirrors(cfg, mirror)
    except cfgmod.ConfigError as e:
        _fail(str(e))
    deadline = time.monotonic() + duration if duration else None
    if not supervised:
        raise typer.Exit(_run_worker(cfg, deadline, interval, quiet, stats_json, cpu, 0))
    raise typer.Exit(supervise(lambda restarts: _run_worker(cfg, deadline, interval, quiet, stats_json, cpu, restarts),
                               give_up=crash_leftovers(cfg)))


def _run_worker(cfg, deadline, interval, quiet, stats_json, cpu, restarts):
    """One worker's life (in the supervisor's child); returns the exit code."""
    from pipeline.ports import PortError
    from pipeline.worker import Worker
    try:
        _pin(cpu)
        try:
            # a restarted worker keeps the slow path's rules of this run
            w = Worker(cfg, keep_rules=restarts > 0)
        except (PortError, RuntimeError, OSError) as e:
            _fail(str(e))
    except typer.Exit as e:          # the child's exit code, for the supervisor
        return e.exit_code
    w.restarts = restarts
    signal.signal(signal.SIGTERM, lambda *_: w.stop())
    signal.signal(signal.SIGINT, lambda *_: w.stop())
    live = None
    if not quiet:
        if sys.stdout.isatty():
            from rich.live import Live
            live = Live(auto_refresh=False)
            live.start()
            tick = lambda w: live.update(_render(w.stats()), refresh=True)  # noqa: E731
        else:
            tick = lambda w: print(_render(w.stats()), flush=True)  # noqa: E731
    else:
        tick = None
    try:
        w.run(duration=max(0.001, deadline - time.monotonic()) if deadline else None, on_tick=tick, tick_s=interval)
    finally:
        if live:
            live.stop()
        final = w.stats()
        w.close()
    if stats_json:
        with open(stats_json, "w") as f:
            json.dump(final, f, indent=1)
    if not quiet:
        print(_render(final))
    return 0


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
        duration: Optional[float] = typer.Option(None, help="stop after this many seconds"),
        batch: int = typer.Option(256, help="slots filled per ring publish"),
        rx: Optional[str] = typer.Option(None, help="also count what arrives on this port, in the same "
                                          "loop (pkt-gen txrx: one core, no scheduler in between)"),
        idle_stop: float = typer.Option(1.0, help="with --rx: stop once nothing arrived for this long"),
        cpu: Optional[int] = typer.Option(None, help="pin to this CPU"),
        owner: Optional[str] = OWNER,
        as_json: bool = typer.Option(False, "--json", help="print the result as JSON")):
    """pkt-gen-style generator: prebuilt UDP/IPv4 frames, C batch loop (one sync ioctl per
    batch on netmap ports)."""
    from bindings.netmap.port import NetmapError
    from ring.region import RegionError
    from tools.traffic import Generator, Sink
    _pin(cpu)
    uid = _owner_uid(owner)
    if count == 0 and duration is None:
        duration = 10.0
    try:
        g = Generator(port, size=size, flows=flows, rate=rate, count=count, batch=batch, owner=uid)
        s = Sink(rx, count=count, owner=uid) if rx else None
    except (RegionError, NetmapError, ValueError) as e:
        _fail(str(e))
    try:
        res = g.run(duration=duration, sink=s, idle_stop_s=idle_stop)
        if s:
            res["rx"] = s.result()
    finally:
        g.close()
        if s:
            s.close()
    if as_json:
        print(json.dumps(res))
    else:
        print(f"sent {res['sent']} packets in {res['seconds']:.3f} s: {res['mpps']:.3f} Mpps")
        if s:
            print(f"received {res['rx']['received']} packets in {res['rx']['seconds']:.3f} s: "
                  f"{res['rx']['mpps']:.3f} Mpps")


@app.command()
def sink(port: str = typer.Argument(..., help="port to receive on: shm:NAME, or netmap:IF / valeX:PORT"),
         count: int = typer.Option(0, help="stop after this many packets"),
         duration: Optional[float] = typer.Option(None, help="stop after this many seconds"),
         idle_stop: Optional[float] = typer.Option(None, help="stop once nothing arrived for this many seconds"),
         cpu: Optional[int] = typer.Option(None, help="pin to this CPU"),
         owner: Optional[str] = OWNER,
         as_json: bool = typer.Option(False, "--json", help="print the result as JSON")):
    """Count packets arriving on a port (C batch loop) and report the rate."""
    from bindings.netmap.port import NetmapError
    from ring.region import RegionError
    from tools.traffic import Sink
    _pin(cpu)
    uid = _owner_uid(owner)
    try:
        s = Sink(port, count=count, owner=uid)
    except (RegionError, NetmapError) as e:
        _fail(str(e))
    try:
        res = s.run(duration=duration, idle_stop_s=idle_stop)
    finally:
        s.close()
    print(json.dumps(res) if as_json else
          f"received {res['received']} packets in {res['seconds']:.3f} s: {res['mpps']:.3f} Mpps")


def _ctl(run_dir, name, which="worker.ctl"):
    from pipeline.config import default_run_dir
    return os.path.join(run_dir or default_run_dir(name), which)


def _slowpath(name, run_dir, cmd, **args):
    from pipeline import control
    try:
        return control.request(_ctl(run_dir, name, "slowpath.ctl"), cmd, **args)
    except RuntimeError as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"cannot reach the slow path of pipeline {name!r}: {e}")


NAME = typer.Option("valepipe", "--name", help="pipeline name ([pipeline].name)")
RUN_DIR = typer.Option(None, "--run-dir", help="the pipeline's run directory (default /run/valepipe/NAME)")


@app.command("add-flow")
def add_flow(flow: str = typer.Argument(..., help="a rule in ovs-ofctl syntax, e.g. "
                                                  "'table=0,priority=10,tcp,tp_dst=80,actions=output:2'"),
             name: str = NAME, run_dir: Optional[str] = RUN_DIR):
    """Add (or replace) a rule; cached flows are revalidated against it."""
    _slowpath(name, run_dir, "add-flows", flows=[flow])


@app.command("add-flows")
def add_flows(file: str = typer.Argument(..., help="file with one rule per line ('#' comments)"),
              name: str = NAME, run_dir: Optional[str] = RUN_DIR):
    """Add every rule of a file; nothing is added if any rule is invalid."""
    try:
        lines = [ln.strip() for ln in open(file, encoding="utf-8")]
    except OSError as e:
        _fail(f"{file}: {e.strerror}")
    n = _slowpath(name, run_dir, "add-flows", flows=[ln for ln in lines if ln and not ln.startswith("#")])
    print(f"added {n} rule(s)")


@app.command("del-flows")
def del_flows(match: str = typer.Argument("", help="delete the rules this match covers (all when empty)"),
              name: str = NAME, run_dir: Optional[str] = RUN_DIR):
    """Delete rules (non-strict, as ovs-ofctl del-flows)."""
    print(f"deleted {_slowpath(name, run_dir, 'del-flows', match=match)} rule(s)")


@app.command("mod-flows")
def mod_flows(flow: str = typer.Argument(..., help="match plus new actions, e.g. 'in_port=1,actions=output:3'"),
              name: str = NAME, run_dir: Optional[str] = RUN_DIR):
    """Change the actions of the rules the match covers (non-strict)."""
    print(f"modified {_slowpath(name, run_dir, 'mod-flows', flow=flow)} rule(s)")


@app.command()
def trace(flow: str = typer.Argument(..., help="'in_port=1,tcp,nw_dst=10.0.0.1,tp_dst=80' or "
                                               "'in_port=1 <packet in hex>'"),
          name: str = NAME, run_dir: Optional[str] = RUN_DIR):
    """Show how the tables handle a flow or packet: each table visited, the rule hit, the
    Megaflow: and Datapath actions: lines, in the shape of ovs-appctl ofproto/trace."""
    print(_slowpath(name, run_dir, "trace", flow=flow))


@app.command("dump-megaflows")
def dump_megaflows(name: str = NAME, run_dir: Optional[str] = RUN_DIR):
    """The fast path's megaflows: masked key, counters, actions (as ovs-appctl dpctl/dump-flows)."""
    from pipeline import control
    try:
        flows = control.request(_ctl(run_dir, name), "megaflows")
    except (OSError, RuntimeError) as e:
        _fail(f"cannot reach pipeline {name!r}: {e}")
    for f in flows:
        parts = []
        for k, m in f["mask"].items():
            if k in ("layers", "in_port"):
                continue
            v = f["key"].get(k, 0)
            full = m == (("f" * len(m)) if isinstance(m, str) else {"eth_type": 0xFFFF}.get(k, _ones(m)))
            parts.append(f"{k}={_show(k, v)}" if full else f"{k}={_show(k, v)}/{_show(k, m)}")
        used = "never" if f["used_s"] is None else f"{f['used_s']}s"
        print(f"in_port={f['key']['in_port']}{''.join(',' + p for p in parts)}, packets:{f['packets']}, "
              f"bytes:{f['bytes']}, used:{used}, actions:{f['actions']}")


def _ones(v):
    """v if it is all ones in its width (an exact match), else -1."""
    return v if isinstance(v, int) and v and (v + 1) & v == 0 and v.bit_length() % 8 == 0 else -1


def _show(k, v):
    import ipaddress
    if k in ("ipv4_src", "ipv4_dst", "arp_spa", "arp_tpa") and isinstance(v, int):
        return str(ipaddress.IPv4Address(v))
    if isinstance(v, str) and len(v) == 12:
        return ":".join(v[i:i + 2] for i in range(0, 12, 2))
    if isinstance(v, str) and len(v) == 32:
        return str(ipaddress.IPv6Address(bytes.fromhex(v)))
    return hex(v) if k in ("eth_type", "tcp_flags") and isinstance(v, int) else str(v)


@app.command("fdb-show")
def fdb_show(name: str = NAME, run_dir: Optional[str] = RUN_DIR):
    """The NORMAL action's MAC learning table: port, VLAN, MAC, age (as ovs-appctl fdb/show)."""
    print(" port  VLAN  MAC                Age")
    for port, vlan, mac, age in _slowpath(name, run_dir, "fdb-show"):
        m = ":".join(f"{(mac >> (40 - 8 * i)) & 0xFF:02x}" for i in range(6))
        print(f"{port:>5}  {vlan:>4}  {m}  {age:>3}")


@app.command("dump-flows")
def dump_flows(name: str = NAME, run_dir: Optional[str] = RUN_DIR):
    """Print every rule with its counters, as ovs-ofctl dump-flows does."""
    from pipeline import control
    wctl = _ctl(run_dir, name)
    try:    # the worker pushes its flows' counters to the slow path first
        want = control.request(wctl, "revalidate")
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and control.request(wctl, "stats")["upcall"]["revalidations_done"] < want:
            time.sleep(0.02)
    except (OSError, RuntimeError):
        pass    # no worker: the slow path's counters are all there is
    for line in _slowpath(name, run_dir, "dump-flows"):
        print(" " + line)


@app.command()
def stats(name: str = typer.Option("valepipe", help="pipeline name ([pipeline].name)"),
          run_dir: Optional[str] = typer.Option(None, help="the pipeline's run directory"),
          as_json: bool = typer.Option(False, "--json")):
    """Counters of a running pipeline: per port, per stage, hits/misses/upcalls, drops by reason."""
    from pipeline import control
    try:
        st = control.request(_ctl(run_dir, name), "stats")
    except (OSError, RuntimeError) as e:
        _fail(f"cannot reach pipeline {name!r}: {e}")
    print(json.dumps(st, indent=1) if as_json else _render(st))


@app.command()
def ports(name: str = typer.Option("valepipe", help="pipeline name"),
          run_dir: Optional[str] = typer.Option(None, help="the pipeline's run directory"),
          as_json: bool = typer.Option(False, "--json", help="everything, as JSON")):
    """Ports of a running pipeline with their counters and fault state; for interface ports
    (afxdp, packet, tap, pcap, netmap) also what the binding counted (io) and its last error."""
    from pipeline import control
    try:
        ps = control.request(_ctl(run_dir, name), "ports")
    except (OSError, RuntimeError) as e:
        _fail(f"cannot reach pipeline {name!r}: {e}")
    if as_json:
        print(json.dumps(ps, indent=1))
        return
    for p in ps:
        # a port is "ok" only while its interface's link is up (link: up/down/no-carrier/gone)
        state = "FAULTY" if p["faulty"] else (p.get("link", "up") if p.get("link", "up") != "up" else "ok")
        io = p.get("io") or {}
        speed = f" {io['speed_mbps']}Mb/s" if io.get("link") == "up" and io.get("speed_mbps") else ""
        print(f"{p['ofport']:>3} {p['uri']:<28} {state + speed:<10} rx {p['rx_packets']} "
              f"tx {p['tx_packets']} drops {json.dumps({k: v for k, v in p['drops'].items() if v})}")
        if io:
            counts = {k: io[k] for k in ("rx_truncated", "rx_kernel_drops", "rx_errors", "tx_errors", "tx_again",
                                         "tx_discarded", "sync_errors", "rx_gso", "rx_csum_partial") if io.get(k)}
            extra = {k: io[k] for k in ("xdp_mode", "zerocopy", "queues", "netns", "mem_id", "mtu", "offload")
                     if io.get(k) is not None}
            print(f"    io: {json.dumps(counts)} {json.dumps(extra)}"
                  + (f" last error: {io['last_error']}" if io.get("last_error") else ""))
        if p.get("mirror"):
            print(f"    mirror: {p['mirror']['file']} ({p['mirror']['packets']} packets)")


@app.command()
def demo(flows: int = typer.Option(1, help="distinct flows"),
         size: int = typer.Option(60, help="frame length without FCS"),
         seconds: float = typer.Option(5.0, help="generator run time"),
         batch: int = typer.Option(256, help="pipeline batch size")):
    """Run generator -> pipeline -> sink on shm: ports and print the throughput."""
    from tools.shmbench import measure
    print(f"valepipe demo: gen -> pipeline (shm:a -> shm:b, in_port=1,actions=output:2) -> sink, "
          f"{size + 4}-byte frames, {flows} flow(s), batch {batch}, {seconds:g} s")
    t0 = time.monotonic()
    r = measure(flows=flows, size=size, batch=batch, seconds=seconds)
    st = r["stats"]
    print(f"generator sent   {r['gen']['sent']:>12} packets ({r['gen']['mpps']:.2f} Mpps offered)")
    print(f"sink received    {r['sink']['received']:>12} packets")
    print(f"pipeline         hits {st['hits']}, misses {st['misses']}, upcalls {st['upcall']['upcalls']}, "
          f"drops {sum(st['drops'].values())} {json.dumps({k: v for k, v in st['drops'].items() if v})}")
    print("ns/packet        " + ", ".join(f"{k} {v}" for k, v in st["stage_ns_per_packet"].items()))
    print(f"THROUGHPUT       {r['mpps']:.2f} Mpps delivered ({time.monotonic() - t0:.1f} s wall)")


topo_app = typer.Typer(help="Lab topologies from a TOML file: namespaces, veth pairs, TAP devices.",
                       no_args_is_help=True, rich_markup_mode=None)
app.add_typer(topo_app, name="topo")


@topo_app.command("up")
def topo_up(file: str = typer.Argument(..., help="topology (TOML): [[netns]], [[veth]], [[tap]]")):
    """Create the namespaces, veth pairs and TAP devices of FILE, with addresses, MTU, link state."""
    from tools import topo
    try:
        made = topo.up(file)
    except topo.TopoError as e:
        _fail(str(e))
    for m in made:
        print(f"created {m['kind']} {m['name']}" + (f" in {m['netns']}" if m.get("netns") else ""))


@topo_app.command("down")
def topo_down(file: str = typer.Argument(..., help="the topology file given to `topo up`")):
    """Remove exactly what `topo up FILE` created, and nothing else."""
    from tools import topo
    try:
        made, errors = topo.down(file)
    except topo.TopoError as e:
        _fail(str(e))
    print(f"removed {len(made) - len(errors)} of {len(made)} created objects")
    for e in errors:
        print(f"could not remove {e}", file=sys.stderr)
    if errors:
        raise typer.Exit(1)

def main():
    app()


if __name__ == "__main__":
    main()
