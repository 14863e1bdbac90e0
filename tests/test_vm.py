"""Two real QEMU guests (Debian's kernel, a busybox initramfs; TCG) whose virtio-net NICs
are joined only through a running pipeline, with the guests' default offloads on (TSO,
GSO, checksum offload): ping, a checksummed TCP transfer of tens of MB with the rules
changed during it (blocked, then restored), and port counters equal to the guests' own.
For packet: and afxdp: (generic XDP) on the TAPs QEMU opens, and tap: (the pipeline's
TAPs, each guest on a macvtap over one). Runs with `make test-vm` (minutes under TCG)."""
import os
import shutil
import subprocess
import time

import pytest

from tests.conftest import wait_for
from tests.netlab import two_ports

pytestmark = [
    pytest.mark.skipif(os.environ.get("VALEPIPE_VM_TESTS") != "1", reason="QEMU guests: run with make test-vm"),
    pytest.mark.skipif(os.geteuid() != 0, reason="TAPs and namespaces need root"),
    pytest.mark.skipif(not shutil.which("qemu-system-x86_64"), reason="no qemu-system-x86 (tools/system-packages --test)"),
]
MB = int(os.environ.get("VALEPIPE_VM_MB", "32"))         # the TCP transfer
ADDR = ["10.66.0.1", "10.66.0.2"]


def _sh(*cmd):
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30)


def _macvtap_fd(ns, lower, name, workdir):
    """A macvtap in passthru mode on the pipeline's TAP `lower`, opened as QEMU's NIC
    backend (what libvirt's <interface type='direct'> does)."""
    _sh("ip", "-n", ns, "link", "add", "link", lower, "name", name, "type", "macvtap", "mode", "passthru")
    _sh("ip", "-n", ns, "link", "set", name, "up")
    cat = lambda path: subprocess.run(["ip", "netns", "exec", ns, "cat", path], check=True,  # noqa: E731
                                      capture_output=True, text=True).stdout.strip()
    idx = cat(f"/sys/class/net/{name}/ifindex")
    major, minor = (int(v) for v in cat(f"/sys/class/net/{name}/macvtap/tap{idx}/dev").split(":"))
    node = os.path.join(workdir, f"tap{idx}")
    os.mknod(node, 0o600 | 0o020000, os.makedev(major, minor))
    return os.open(node, os.O_RDWR)


def _ifstats(ns, ifname):
    from pyroute2 import IPRoute
    with IPRoute(netns=ns) as ipr:
        return ipr.get_links(ifname=ifname)[0].get_attr("IFLA_STATS64")


@pytest.mark.parametrize("kind", ["packet", "afxdp", "tap"])
def test_two_guests(lab, pipeline_factory, tmp_path, kind):
    from tools.guest import Guest
    L = lab('[[netns]]\nname = "vH@"\n')
    ns, name = L.name("vH"), "vm" + kind[:2] + L.tag
    taps, fds, guests = [L.name("vm1"), L.name("vm2")], [], []
    # the host's side of the guests says nothing of its own (no IPv6 router solicitations
    # or DAD): every frame the ports count is one the guests exchanged
    _sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
        "net.ipv6.conf.default.disable_ipv6=1")
    try:
        if kind == "tap":
            # the pipeline makes the TAPs (and brings them up); a guest sits on each
            pipe = pipeline_factory(two_ports(name, f"tap:{taps[0]}@netns={ns}", f"tap:{taps[1]}@netns={ns}"))
            fds = [_macvtap_fd(ns, t, L.name(f"mv{i}"), str(tmp_path)) for i, t in enumerate(taps)]
            netdevs = [f"tap,id=n0,fd={fd},vhost=off" for fd in fds]
            # frames between guest and port pass the macvtap, then the pipeline's TAP
            path = [(L.name(f"mv{i}"), t) for i, t in enumerate(taps)]
        else:
            # the README's recipe: persistent TAPs first, then the pipeline, then QEMU
            for t in taps:
                _sh("ip", "-n", ns, "tuntap", "add", "dev", t, "mode", "tap")
            opts = "@mode=generic," if kind == "afxdp" else "@"
            pipe = pipeline_factory(two_ports(name, f"{kind}:{taps[0]}{opts}netns={ns}",
                                              f"{kind}:{taps[1]}{opts}netns={ns}"))
            netdevs = [f"tap,id=n0,ifname={t},script=no,downscript=no,vhost=off" for t in taps]
            path = [(t,) for t in taps]
        guests = [Guest(f"g{i + 1}", nd, ADDR[i] + "/24", netns=ns, mac=f"52:54:00:00:00:0{i + 1}", pass_fds=fds)
                  for i, nd in enumerate(netdevs)]
        for g in guests:
            g.wait_ready()
        g1, g2 = guests
        assert wait_for(lambda: all(p.get("link") == "up" for p in pipe.stats()["ports"]), timeout=30), pipe.stats()
        g1.check(f"ping -c 3 -W 5 {ADDR[1]}", timeout=60)

        want = g1.check(f"mkdir -p /tmp/w && dd if=/dev/urandom of=/tmp/w/data bs=1M count={MB} 2>/dev/null && "
                        f"sha256sum /tmp/w/data && httpd -p 80 -h /tmp/w", timeout=300).split()[0]
        token = g2.send(f"wget -q -O - http://{ADDR[0]}/data | sha256sum")
        tx = lambda: pipe.stats()["ports"][1]["io"]["tx_bytes"]  # noqa: E731
        # blocked early: under TCG the rest takes seconds, longer than the CLI takes to act
        assert wait_for(lambda: tx() > 1 << 19, timeout=300, step=0.1), "the transfer did not start"
        # rules changed under the transfer: with none, nothing crosses; restored, it completes
        pipe.cli("del-flows")
        time.sleep(2)
        blocked = tx()
        time.sleep(3)
        assert tx() == blocked, "frames crossed with no rule"
        assert blocked < MB << 20, "the transfer finished before it could be blocked (a larger VALEPIPE_VM_MB?)"
        pipe.cli("add-flow", "actions=NORMAL")
        rc, out = g2.result(token, timeout=900)
        assert rc == 0 and out.split()[0] == want, (rc, out, want)

        def ledger():
            """What does not add up yet, per guest: every frame a guest sent reached the port,
            or a kernel counter says where it stopped (a TAP's or macvtap's queue, the
            socket); the same the other way."""
            st, wrong = pipe.stats(), []
            for i, g in enumerate(guests):
                gc, io = g.counters(), st["ports"][i]["io"]
                devs = [_ifstats(ns, d) for d in path[i]]
                if kind == "tap":       # guest -> macvtap -> (xmit) the pipeline's TAP -> port, and back
                    to_port = devs[0]["tx_dropped"] + devs[1]["tx_dropped"]
                    from_port = devs[1]["rx_dropped"] + devs[0]["rx_dropped"]
                else:                   # guest -> (QEMU writes) the TAP -> socket, and back out of the TAP
                    to_port, from_port = devs[0]["rx_dropped"], devs[0]["tx_dropped"]
                if gc["tx_packets"] != io["rx_packets"] + io["rx_kernel_drops"] + to_port or \
                        io["tx_packets"] != gc["rx_packets"] + from_port:
                    wrong.append((kind, i, gc, io, devs))
            return st, wrong

        # the last ACKs, and a frame still in a TAP's queue that an emulated guest has not
        # read yet (counted by neither side until it does): the books close once it has
        assert wait_for(lambda: not ledger()[1], timeout=30, step=0.5), ledger()[1]
        st = pipe.stats()
        for p in st["ports"]:
            assert p["io"]["rx_truncated"] == p["io"]["rx_errors"] == p["io"]["tx_errors"] == 0, p["io"]
        # the guests' offloads were on: they sent super-frames and partial checksums
        assert st["ports"][0]["io"]["rx_gso"] > 0 and st["ports"][0]["io"]["rx_csum_partial"] > 0, st["ports"][0]["io"]
        assert st["drops"]["bad_offload"] == st["drops"]["too_big"] == 0, st["drops"]
    finally:
        for g in guests:
            g.close()
        for fd in fds:
            os.close(fd)
