#!/usr/bin/env python3
"""Switches side by side on veth: trafgen (netsniff-ng, one process) in a generator
namespace sends 64-byte UDP frames through the switch under test to a sink namespace,
whose veth counts what arrives. Cases, interleaved run by run: no switch (the veth
ceiling), the Linux bridge, Open vSwitch's userspace datapath with AF_PACKET and with
AF_XDP ports, valepipe with packet: and with afxdp: ports. Prints delivered Mpps
(median of the runs) and the ratios that matter.

Needs root, trafgen (netsniff-ng), Open vSwitch; run `make bench-veth`."""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tools import topo  # noqa: E402
import charts  # noqa: E402  (perf/charts.py, beside this script)

LAB = os.path.join(ROOT, "perf", "veth_lab.toml")
GEN, SW, SINK = "vpgen", "vpsw", "vpsink"
GEN_CPU, SWITCH_CPU = 0, 1
# flows come from the UDP ports: 3125 source x 32 destination ports (coprime periods)
# give 100,000 distinct 5-tuples
PORTS = {1: ("1000", "9"), 1000: ("dinc(1000, 1999)", "9"), 100_000: ("dinc(1000, 4124)", "dinc(1, 32)")}
TRAFGEN = """{{
  eth(da=02:00:00:00:00:99, sa=02:00:00:00:00:01, type=0x0800),
  ipv4(saddr=10.0.0.1, daddr=10.0.0.2, ttl=64),
  udp(sp={sp}, dp={dp}),
  fill(0x41, 18)
}}
"""


def sh(*cmd, check=True, **kw):
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


def ns(name, *cmd, **kw):
    return sh("ip", "netns", "exec", name, *cmd, **kw)


def rx_packets(netns, ifname):
    return int(ns(netns, "cat", f"/sys/class/net/{ifname}/statistics/rx_packets").stdout)


class NoSwitch:
    name, dev, sink_if = "no switch (veth ceiling)", "d0", "d1"

    def start(self):
        pass

    def stop(self):
        pass


class LinuxBridge:
    name, dev, sink_if = "Linux bridge", "g0", "s0"

    def start(self):
        ns(SW, "ip", "link", "add", "vpbr0", "type", "bridge")
        for i in ("g1", "s1"):
            ns(SW, "ip", "link", "set", i, "master", "vpbr0")
        ns(SW, "ip", "link", "set", "vpbr0", "up")

    def stop(self):
        ns(SW, "ip", "link", "del", "vpbr0", check=False)


class OVS:
    """ovsdb-server + ovs-vswitchd inside the switch namespace, netdev (userspace) datapath."""
    dev, sink_if = "g0", "s0"

    def __init__(self, port_type, netns=SW, ports=("g1", "s1")):
        self.type, self.netns, self.ports = port_type, netns, ports
        self.name = f"Open vSwitch userspace, {'AF_XDP' if port_type == 'afxdp' else 'AF_PACKET'} ports"

    def start(self):
        d = self.dir = tempfile.mkdtemp(prefix="vp-ovs-")
        env = dict(os.environ, OVS_RUNDIR=d, OVS_LOGDIR=d, OVS_DBDIR=d)
        self.env = env
        sh("ovsdb-tool", "create", f"{d}/db", "/usr/share/openvswitch/vswitch.ovsschema")
        ns(SW, "ovsdb-server", f"{d}/db", f"--remote=punix:{d}/db.sock", f"--pidfile={d}/ovsdb.pid",
           f"--unixctl={d}/ovsdb.ctl", f"--log-file={d}/ovsdb.log", "--detach", env=env)
        self.vsctl("--no-wait", "init")
        self.vsctl("--no-wait", "set", "Open_vSwitch", ".", f"other_config:pmd-cpu-mask={1 << SWITCH_CPU:#x}")
        ns(SW, "taskset", "-c", str(SWITCH_CPU), "ovs-vswitchd", f"unix:{d}/db.sock", f"--pidfile={d}/vswitchd.pid",
           f"--unixctl={d}/vswitchd.ctl", f"--log-file={d}/vswitchd.log", "--detach", env=env)
        args = ["add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev", "fail-mode=secure"]
        for i, p in ((1, "g1"), (2, "s1")):
            args += ["--", "add-port", "br0", p, "--", "set", "interface", p, f"ofport_request={i}"]
            if self.type == "afxdp":
                args += [f"type=afxdp"]
        self.vsctl(*args)
        sh("ovs-ofctl", "add-flow", f"unix:{d}/br0.mgmt", "in_port=1,actions=output:2", env=env)

    def vsctl(self, *args):
        sh("ovs-vsctl", f"--db=unix:{self.dir}/db.sock", "--timeout=30", *args, env=self.env)

    def stop(self):
        for pid in ("vswitchd.pid", "ovsdb.pid"):
            try:
                os.kill(int(open(os.path.join(self.dir, pid)).read()), signal.SIGTERM)
            except (OSError, ValueError):
                pass
        time.sleep(1.0)
        # what OVS may leave on the interfaces is ours to remove: we made them
        for p in self.ports:
            ns(self.netns, "ip", "link", "set", "dev", p, "xdp", "off", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


class Valepipe:
    dev, sink_if = "g0", "s0"

    def __init__(self, kind, options="", idle_poll_us=None):
        self.kind, self.opts = kind, "," + options if options else ""
        self.idle_poll_us = idle_poll_us
        self.name = f"valepipe, {kind}: ports" + (f" ({options})" if options else "") + \
            ("" if idle_poll_us is None else f" idle_poll_us = {idle_poll_us}")

    def start(self):
        self.dir = tempfile.mkdtemp(prefix="vp-bench-")
        cfg = os.path.join(self.dir, "p.toml")
        with open(cfg, "w") as f:
            f.write(f'[pipeline]\nname = "benchveth"\nrun_dir = "{self.dir}/run"\nflow_limit = 400000\n'
                    + ("" if self.idle_poll_us is None else f"idle_poll_us = {self.idle_poll_us}\n") +
                    f'[[port]]\nuri = "{self.kind}:g1@netns={SW}{self.opts}"\n[[port]]\nuri = "{self.kind}:s1@netns={SW}{self.opts}"\n'
                    '[slowpath]\nflows = ["in_port=1,actions=output:2"]\n')
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", cfg, "-q", "--cpu", str(SWITCH_CPU),
                                      "--stats-json", os.path.join(self.dir, "st.json")], cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while not os.path.exists(os.path.join(self.dir, "run", "worker.ctl")):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"valepipe did not start: {self.proc.stderr.read()}")
            time.sleep(0.05)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        try:
            self.stats = json.load(open(os.path.join(self.dir, "st.json")))
        except OSError:
            self.stats = None
        shutil.rmtree(self.dir, ignore_errors=True)


def measure(sw, flows, seconds, warmup):
    conf = tempfile.NamedTemporaryFile("w", suffix=".trafgen", delete=False)
    sp, dp = PORTS[flows]
    conf.write(TRAFGEN.format(sp=sp, dp=dp))
    conf.close()
    sw.start()
    gen = None
    try:
        sink_ns = SINK if sw.sink_if == "s0" else SINK
        gen = subprocess.Popen(["ip", "netns", "exec", GEN, "taskset", "-c", str(GEN_CPU), "trafgen", "--dev", sw.dev,
                                "--conf", conf.name, "-P", "1", "--no-sock-mem", "-q"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        time.sleep(warmup)
        if gen.poll() is not None:
            raise RuntimeError(f"trafgen exited: {gen.stderr.read().decode()}")
        a, t0 = rx_packets(sink_ns, sw.sink_if), time.monotonic()
        time.sleep(seconds)
        b, t1 = rx_packets(sink_ns, sw.sink_if), time.monotonic()
        return (b - a) / (t1 - t0) / 1e6
    finally:
        if gen:
            # trafgen -P 1 forks its sender, which outlives a SIGINT to its parent: end the
            # whole process group, and make sure it is gone before the next case
            for sig in (signal.SIGINT, signal.SIGKILL):
                try:
                    os.killpg(gen.pid, sig)
                except ProcessLookupError:
                    break
                time.sleep(0.5)
            gen.wait()
        sw.stop()
        os.unlink(conf.name)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0, help="measured window per case")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of traffic before measuring")
    ap.add_argument("--flows", default="1,1000,100000")
    ap.add_argument("--afxdp-options", default="", help="extra afxdp: port options, e.g. mode=generic")
    ap.add_argument("--only", default="", help="comma list of case keys: none,bridge,ovs-packet,ovs-afxdp,vp-packet,vp-afxdp, "
                    "vp-packet-poll,vp-afxdp-poll (idle_poll_us = 200 instead of auto; not in the default set)")
    ap.add_argument("--chart", default=os.path.join(ROOT, "perf", "out", "veth_switches.png"),
                    help="PNG chart of the medians (matplotlib)")
    a = ap.parse_args()
    for tool in ("trafgen", "ovs-vswitchd", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"bench_veth: {tool} not found (tools/system-packages --bench installs it)")
    cases = {"none": NoSwitch(), "bridge": LinuxBridge(), "ovs-packet": OVS("system"), "ovs-afxdp": OVS("afxdp"),
             "vp-packet": Valepipe("packet"), "vp-afxdp": Valepipe("afxdp", a.afxdp_options),
             "vp-packet-poll": Valepipe("packet", idle_poll_us=200),
             "vp-afxdp-poll": Valepipe("afxdp", a.afxdp_options, idle_poll_us=200)}
    cases = {k: v for k, v in cases.items() if k in a.only.split(",")} if a.only else \
        {k: v for k, v in cases.items() if not k.endswith("-poll")}
    flows = [int(f) for f in a.flows.split(",")]
    topo.up(LAB)
    res = {(k, f): [] for k in cases for f in flows}
    try:
        for run in range(a.runs):
            for f in flows:
                for k, sw in cases.items():
                    mpps = measure(sw, f, a.seconds, a.warmup)
                    res[(k, f)].append(mpps)
                    print(f"run {run + 1} flows {f:>6} {sw.name:<42} {mpps:6.3f} Mpps", flush=True)
    finally:
        topo.down(LAB)
    print(f"\n64-byte frames, delivered Mpps, median of {a.runs} interleaved runs ({a.seconds:g} s each)")
    print(f"{'switch':<44}" + "".join(f"{f:>10}" for f in flows))
    for k, sw in cases.items():
        print(f"{sw.name:<44}" + "".join(f"{statistics.median(res[(k, f)]):>10.3f}" for f in flows))
    for num, den, label in (("vp-afxdp", "ovs-afxdp", "valepipe afxdp / OVS AF_XDP"),
                            ("vp-packet", "ovs-packet", "valepipe packet / OVS AF_PACKET")):
        if num in cases and den in cases:
            print(f"{label:<44}" + "".join(
                f"{statistics.median(res[(num, f)]) / max(statistics.median(res[(den, f)]), 1e-9):>9.2f}x" for f in flows))
    charts.draw(lambda: charts.side_by_side(
        [f"{f:,} flow{'s' * (f != 1)}" for f in flows],
        {sw.name: [statistics.median(res[(k, f)]) for f in flows] for k, sw in cases.items()}, a.chart,
        "64-byte frames on veth: valepipe, Open vSwitch 3.1, the Linux bridge"))


if __name__ == "__main__":
    main()
