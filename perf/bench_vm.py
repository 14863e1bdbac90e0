#!/usr/bin/env python3
"""Guest to guest through a switch: two QEMU guests (TCG; Debian's kernel and a busybox
initramfs, tools/guest.py) with their default offloads on, on persistent TAPs that each
switch under test serves in turn, the guests staying up: the Linux bridge, Open vSwitch's
userspace datapath with AF_PACKET ports (userspace TSO on) and with AF_XDP ports (generic
XDP), valepipe with packet: and with afxdp: ports. Per case, interleaved run by run: TCP
throughput (an HTTP GET of a file from guest 1 by guest 2, busybox httpd/wget) and ping
round-trip time; prints medians and valepipe's ratios to the others.

Under emulation the guests, not the switches, set the absolute figures: only the ratios
mean anything. Needs root, qemu-system-x86, busybox-static, Open vSwitch; `make bench-vm`."""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from perf import bench_veth  # noqa: E402
from pipeline import control, hostos  # noqa: E402
from tools.guest import Guest  # noqa: E402

NS = f"vpvm{os.getpid()}"
TAPS = ("vmb1", "vmb2")
ADDR = ("10.67.0.1", "10.67.0.2")


def sh(*cmd, check=True, **kw):
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=60, **kw)


def ns(*cmd, **kw):
    return sh("ip", "netns", "exec", NS, *cmd, **kw)


class Bridge:
    name = "Linux bridge"

    def start(self):
        ns("ip", "link", "add", "vmbr", "type", "bridge")
        for t in TAPS:
            ns("ip", "link", "set", t, "master", "vmbr")
        ns("ip", "link", "set", "vmbr", "up")

    def stop(self):
        ns("ip", "link", "del", "vmbr", check=False)


class OVS(bench_veth.OVS):
    """ovsdb-server + ovs-vswitchd in the guests' namespace, netdev (userspace) datapath,
    fail-mode standalone (NORMAL); stopped as bench_veth stops it."""

    def __init__(self, port_type):
        super().__init__(port_type, NS, TAPS)

    def start(self):
        d = self.dir = tempfile.mkdtemp(prefix="vp-ovs-")
        self.env = dict(os.environ, OVS_RUNDIR=d, OVS_LOGDIR=d, OVS_DBDIR=d)
        sh("ovsdb-tool", "create", f"{d}/db", "/usr/share/openvswitch/vswitch.ovsschema")
        ns("ovsdb-server", f"{d}/db", f"--remote=punix:{d}/db.sock", f"--pidfile={d}/ovsdb.pid",
           f"--unixctl={d}/ovsdb.ctl", f"--log-file={d}/ovsdb.log", "--detach", env=self.env)
        self.vsctl("--no-wait", "init")
        # offloads on: OVS takes the guests' super-frames with their virtio-net header
        self.vsctl("--no-wait", "set", "Open_vSwitch", ".", "other_config:userspace-tso-enable=true")
        ns("ovs-vswitchd", f"unix:{d}/db.sock", f"--pidfile={d}/vswitchd.pid", f"--unixctl={d}/vswitchd.ctl",
           f"--log-file={d}/vswitchd.log", "--detach", env=self.env)
        args = ["add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev"]
        for i, t in enumerate(TAPS, 1):
            args += ["--", "add-port", "br0", t, "--", "set", "interface", t, f"ofport_request={i}"]
            if self.type == "afxdp":
                args += ["type=afxdp", "options:xdp-mode=generic"]
        self.vsctl(*args)


class Valepipe:
    def __init__(self, kind, idle_poll_us=None):
        self.kind, self.idle_poll_us = kind, idle_poll_us
        self.name = f"valepipe, {kind}: ports" + ("" if idle_poll_us is None else f" (idle_poll_us = {idle_poll_us})")

    def start(self):
        self.dir = tempfile.mkdtemp(prefix="vp-vm-")
        opts = "mode=generic," if self.kind == "afxdp" else ""
        cfg = os.path.join(self.dir, "p.toml")
        with open(cfg, "w") as f:
            f.write(f'[pipeline]\nname = "{NS}"\nrun_dir = "{self.dir}/run"\n'
                    + ("" if self.idle_poll_us is None else f"idle_poll_us = {self.idle_poll_us}\n")
                    + "".join(f'[[port]]\nuri = "{self.kind}:{t}@{opts}netns={NS}"\n' for t in TAPS)
                    + '[slowpath]\nflows = ["actions=NORMAL"]\n')
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", cfg, "--quiet"])
        control.wait_ready(os.path.join(self.dir, "run", "worker.ctl"), self.proc, timeout=20)

    def cpu_s(self):
        """CPU seconds the worker has used so far (what it takes from the guests' cores)."""
        return hostos.cpu_seconds(control.request(os.path.join(self.dir, "run", "worker.ctl"), "stats")["pid"])

    def stop(self):
        self.proc.terminate()
        self.proc.wait(15)
        shutil.rmtree(self.dir, ignore_errors=True)


def measure(g1, g2, mb, pings):
    """(TCP Mbit/s from g1 to g2, median ping RTT in ms); Mbit/s is None when TCP did not
    get through (the reason is printed)."""
    out = g2.check(f"ping -c {pings} -i 0.2 -W 2 {ADDR[0]}", timeout=60)
    rtts = [float(v) for v in re.findall(r"time=([0-9.]+) ms", out)]
    # (busybox wget -T crashes: the whole transfer gets timeout's limit instead)
    out = g2.run(f"time -f 'XFER %e' timeout 60 sh -c 'wget -q -O - http://{ADDR[0]}/data | wc -c' 2>&1",
                 timeout=600)[1]
    secs, count = re.search(r"XFER ([0-9.]+)", out), re.search(r"^(\d+)$", out, re.M)
    if not secs:
        raise RuntimeError(f"unexpected output of the transfer: {out!r}")
    got, secs = int(count.group(1)) if count else 0, float(secs.group(1))
    rtt = statistics.median(rtts) if rtts else None
    if got != mb << 20:
        print(f"  TCP failed: {got} of {mb << 20} bytes: {out.splitlines()[0]}", file=sys.stderr)
        return None, rtt
    return mb * 8 * 1.048576 / max(secs, 0.01), rtt


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mb", type=int, default=32, help="size of the TCP transfer")
    ap.add_argument("--pings", type=int, default=10)
    ap.add_argument("--only", default="", help="comma list of: bridge,ovs-packet,ovs-afxdp,vp-packet,vp-afxdp,vp-packet-poll,"
                    "vp-afxdp-poll (the last two: idle_poll_us = 200 instead of auto; the default set leaves them out)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    cases = {"bridge": Bridge(), "ovs-packet": OVS("system"), "ovs-afxdp": OVS("afxdp"),
             "vp-packet": Valepipe("packet"), "vp-afxdp": Valepipe("afxdp"),
             "vp-packet-poll": Valepipe("packet", 200), "vp-afxdp-poll": Valepipe("afxdp", 200)}
    cases = {k: v for k, v in cases.items() if k in a.only.split(",")} if a.only else \
        {k: v for k, v in cases.items() if not k.endswith("-poll")}
    sh("ip", "netns", "add", NS)
    guests, results = [], {k: [] for k in cases}
    try:
        ns("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
        for t in TAPS:
            ns("ip", "tuntap", "add", "dev", t, "mode", "tap")
            ns("ip", "link", "set", t, "up")
        guests = [Guest(f"b{i + 1}", f"tap,id=n0,ifname={t},script=no,downscript=no,vhost=off", ADDR[i] + "/24",
                        netns=NS, mac=f"52:54:00:00:01:0{i + 1}") for i, t in enumerate(TAPS)]
        for g in guests:
            g.wait_ready()
        g1, g2 = guests
        g1.check(f"mkdir -p /tmp/w && dd if=/dev/urandom of=/tmp/w/data bs=1M count={a.mb} 2>/dev/null && "
                 f"httpd -p 80 -h /tmp/w", timeout=300)
        for r in range(a.runs):
            for key, sw in cases.items():
                sw.start()
                try:
                    g2.check(f"ping -c 2 -W 5 {ADDR[0]}", timeout=60)       # learning, ARP
                    cpu0 = sw.cpu_s() if hasattr(sw, "cpu_s") else None
                    mbps, rtt = measure(g1, g2, a.mb, a.pings)
                    cpu = f"  worker CPU {sw.cpu_s() - cpu0:.2f} s" if cpu0 is not None else ""
                finally:
                    sw.stop()
                results[key].append((mbps and round(mbps, 1), rtt))
                print(f"run {r + 1} {key:<16} {mbps or 0:8.1f} Mbit/s  ping {rtt:.3f} ms{cpu}", file=sys.stderr, flush=True)
    finally:
        for g in guests:
            g.close()
        sh("ip", "netns", "del", NS, check=False)
    def median(xs):
        xs = [x for x in xs if x is not None]
        return statistics.median(xs) if xs else None
    med = {k: (median(x for x, _ in v), median(y for _, y in v)) for k, v in results.items() if v}
    if a.json:
        print(json.dumps({"runs": results, "median": med}, indent=1))
        return
    print("| switch | TCP Mbit/s (median) | runs | ping ms (median) |\n|---|---:|---|---:|")
    for k, sw in cases.items():
        tcp = f"{med[k][0]:.1f}" if med[k][0] else "no TCP"
        print(f"| {sw.name} | {tcp} | {', '.join(str(x or 'failed') for x, _ in results[k])} | {med[k][1]:.3f} |")
    for num, den in (("vp-packet", "bridge"), ("vp-afxdp", "bridge"), ("vp-packet", "ovs-packet"),
                     ("vp-afxdp", "ovs-afxdp"), ("vp-packet-poll", "bridge"), ("vp-afxdp-poll", "bridge")):
        if num in med and den in med and med[num][0] and med[den][0]:
            print(f"{num} / {den}: TCP {med[num][0] / med[den][0]:.2f}x, ping {med[num][1] / med[den][1]:.2f}x")


if __name__ == "__main__":
    main()
