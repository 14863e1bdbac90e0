"""Test labs: namespaces and links made with `valepipe topo` (so only what a test created
is removed), and what tests do inside them: ping, a checksummed TCP transfer, counters."""
import os
import subprocess
import sys
import uuid

from tools import topo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
XFER = r'''
import hashlib, os, socket, sys
mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "serve":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port)); s.listen(1); s.settimeout(30); print("ready", flush=True)
    c, _ = s.accept(); c.settimeout(30); h = hashlib.sha256(); n = 0
    while True:
        b = c.recv(1 << 16)
        if not b: break
        h.update(b); n += len(b)
    print(n, h.hexdigest(), flush=True)
else:
    data = os.urandom(int(sys.argv[4]))
    s = socket.create_connection((host, port), timeout=30); s.sendall(data); s.close()
    print(len(data), hashlib.sha256(data).hexdigest(), flush=True)
'''


def two_ports(name, p1, p2, flows=("actions=NORMAL",), run_dir="@RUN@"):
    """A pipeline config joining two ports (run_dir @RUN@ is pipeline_factory's)."""
    return (f'[pipeline]\nname = "{name}"\nrun_dir = "{run_dir}"\n[[port]]\nuri = "{p1}"\n[[port]]\nuri = "{p2}"\n'
            "[slowpath]\nflows = [" + ", ".join(f'"{f}"' for f in flows) + "]\n")


class Lab:
    """A topology file brought up under unique names: `lab.ns("A")`, `lab.ifc("a0")`."""

    def __init__(self, tmpdir, text):
        self.tag = uuid.uuid4().hex[:5]
        self.path = os.path.join(tmpdir, f"lab-{self.tag}.toml")
        with open(self.path, "w") as f:
            f.write(text.replace("@", self.tag))
        topo.up(self.path)

    def name(self, n):
        return n + self.tag

    def uri(self, kind, ifname, ns, opts=""):
        """A port on this lab's interface `ifname`, opened inside namespace `ns`."""
        return f"{kind}:{self.name(ifname)}@{opts + ',' if opts else ''}netns={self.name(ns)}"

    def down(self):
        topo.down(self.path)

    def run(self, ns, *cmd, timeout=60, check=True):
        return subprocess.run(["ip", "netns", "exec", self.name(ns), *cmd], capture_output=True, text=True,
                              timeout=timeout, check=check)

    def ping(self, ns, addr, count=3, interval=0.2):
        r = self.run(ns, "ping", "-c", str(count), "-i", str(interval), "-W", "2", addr, check=False)
        return r.returncode == 0, r.stdout + r.stderr

    def transfer(self, src_ns, dst_ns, dst_addr, nbytes=6_000_000, port=5201):
        """Send random bytes over TCP; returns (sent digest, received digest) lines."""
        from tests.conftest import start, stop
        srv = start(["ip", "netns", "exec", self.name(dst_ns), sys.executable, "-c", XFER,
                     "serve", dst_addr, str(port)], stdout=subprocess.PIPE, text=True)
        try:
            assert srv.stdout.readline().strip() == "ready"
            sent = self.run(src_ns, sys.executable, "-c", XFER, "send", dst_addr, str(port), str(nbytes)).stdout.strip()
            got = srv.communicate(timeout=60)[0].strip()
        finally:
            stop(srv)
        return sent, got

    def link_stats(self, ns, ifname):
        from pyroute2 import IPRoute
        with IPRoute(netns=self.name(ns)) as ipr:
            link = ipr.get_links(ifname=self.name(ifname))[0]
            st = link.get_attr("IFLA_STATS64")
            return {"rx_packets": st["rx_packets"], "tx_packets": st["tx_packets"],
                    "xdp": link.get_attr("IFLA_XDP")}

    def xdp_attached(self, ns, ifname):
        xdp = self.link_stats(ns, ifname)["xdp"]
        return bool(xdp and xdp.get_attr("IFLA_XDP_ATTACHED"))


def _netns(*names):
    return "".join(f'[[netns]]\nname = "{n}@"\n' for n in names)


def _host_veth(host, end, address):
    """Host namespace `host` on veth END0 (with `address`), its other end END1 in vS."""
    return (f'[[veth]]\nname = "{end}0@"\nnetns = "{host}@"\naddress = ["{address}"]\nipv6 = false\n'
            f'peer = "{end}1@"\npeer_netns = "vS@"\npeer_ipv6 = false\n')


def _host_tap(host, name, address):
    """Host namespace `host` whose only link is TAP `name` (the pipeline holds its file side)."""
    return f'[[tap]]\nname = "{name}@"\nnetns = "{host}@"\naddress = ["{address}"]\nipv6 = false\n'


# No interface speaks IPv6 (no router solicitations or DAD frames sent before the pipeline
# listens), so every frame the hosts send is one the test caused and counters compare
# exactly; peers have tx offloads off (topo's default), as a wire would deliver.
# Two hosts (A, B) and a switch namespace S: A's a0 <-> a1 in S, B's b0 <-> b1 in S.
VETH_LAB = _netns("vA", "vB", "vS") + _host_veth("vA", "a", "10.61.0.1/24") + _host_veth("vB", "b", "10.61.0.2/24")
# Two hosts whose only link is a TAP device each
TAP_LAB = _netns("vA", "vB") + _host_tap("vA", "ta", "10.62.0.1/24") + _host_tap("vB", "tb", "10.62.0.2/24")
# Host A behind a veth (its switch end a1 in S), host B on a TAP: kinds mixed in one pipeline
MIXED_LAB = _netns("vA", "vB", "vS") + _host_veth("vA", "a", "10.63.0.1/24") + _host_tap("vB", "tb", "10.63.0.2/24")


class GuestNic:
    """Stands in for QEMU's virtio-net on a TAP (`script=no`): a guest namespace's TAP
    (its NIC, offloads on as virtio-net has them) joined to the file side of the host's TAP
    for that guest, frames copied both ways with their virtio_net_hdr; the host's TAP is
    left down, as QEMU leaves it. The pipeline serves the host's TAP."""

    def __init__(self, lab, guest_ns, guest_if, address, host_ns, host_if):
        import threading
        from pipeline._native import ffi, lib
        from bindings.adapter import in_netns
        from tools.topo import _configure
        err = ffi.new("char[256]")
        self.fds = []
        for ns, ifc in ((guest_ns, guest_if), (host_ns, host_if)):
            with in_netns(lab.name(ns)):
                fd = lib.vp_tap_open(lab.name(ifc).encode(), 1, 1, err, 256)
            assert fd >= 0, ffi.string(err)
            self.fds.append(fd)
        _configure(lab.name(guest_ns), lab.name(guest_if), {"address": [address], "ipv6": False})
        with in_netns(lab.name(host_ns)), open(f"/proc/sys/net/ipv6/conf/{lab.name(host_if)}/disable_ipv6", "w") as f:
            f.write("1")
        self.stop = False
        self.thread = threading.Thread(target=self._copy, daemon=True)
        self.thread.start()

    def _copy(self):
        import select
        a, b = self.fds
        while not self.stop:
            for fd in select.select([a, b], [], [], 0.1)[0]:
                try:
                    frame = os.read(fd, 65536 + 64)
                    os.write(b if fd == a else a, frame)
                except (BlockingIOError, OSError):
                    pass

    def close(self):
        """The guest's QEMU exits (a second call does nothing)."""
        self.stop = True
        self.thread.join()
        for fd in self.fds:
            os.close(fd)
        self.fds = []
