"""Link state of the interfaces under ports, as a user sees it: `valepipe ports`, the
stats, one log line per change; TAPs the pipeline serves are brought up unless up=no."""
import os

import pytest

from tests.conftest import wait_for
from tests.netlab import TAP_LAB, VETH_LAB, two_ports

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces, veth and TAP need root")


def _ports_cli(pipe):
    return pipe.cli("ports").splitlines()


def _link(pipe, i):
    return pipe.stats()["ports"][i].get("link")


class Log:
    """What the running pipeline has written to stderr so far (read without blocking)."""

    def __init__(self, pipe):
        self.fd, self.text = pipe.proc.stderr.fileno(), ""
        os.set_blocking(self.fd, False)

    def wait(self, text, timeout=10):
        def seen():
            try:
                self.text += os.read(self.fd, 65536).decode()
            except BlockingIOError:
                pass
            return text in self.text
        return wait_for(seen, timeout=timeout)


@pytest.mark.parametrize("kind", ["packet", "afxdp"])
def test_link_down_up_and_gone(lab, pipeline_factory, kind):
    L = lab(VETH_LAB)
    name = "ls" + kind[:2] + L.tag
    p = pipeline_factory(two_ports(name, L.uri(kind, "a1", "vS"), L.uri(kind, "b1", "vS")))
    # attaching XDP to a veth may drop its carrier for a moment
    assert wait_for(lambda: _link(p, 0) == _link(p, 1) == "up", timeout=10)
    ok, out = L.ping("vA", "10.61.0.2")
    assert ok, out
    log = Log(p)
    a1, b1 = (f"port {i} {kind}:{L.name(n)}@netns={L.name('vS')}" for i, n in ((1, "a1"), (2, "b1")))
    L.run("vS", "ip", "link", "set", L.name("a1"), "down")
    assert wait_for(lambda: _link(p, 0) == "down", timeout=10)
    line = [ln for ln in _ports_cli(p) if L.name("a1") in ln][0]
    assert " down " in line and " ok " not in line, line
    assert log.wait(f"{a1}: link down: the interface is administratively down"), log.text
    L.run("vS", "ip", "link", "set", L.name("a1"), "up")
    assert wait_for(lambda: _link(p, 0) == "up", timeout=10)
    assert log.wait(f"{a1}: link up"), log.text
    # the veth pair goes away: the port says so (it did say "ok" before)
    L.run("vS", "ip", "link", "del", L.name("b1"))
    assert wait_for(lambda: _link(p, 1) == "gone", timeout=10)
    line = [ln for ln in _ports_cli(p) if L.name("b1") in ln][0]
    assert " gone " in line, line
    assert log.wait(f"{b1}: link gone: the interface no longer exists"), log.text
    assert log.text.count("link down") == 1 and log.text.count("link gone") == 1, log.text


def test_pipeline_tap_comes_up(lab, pipeline_factory):
    """A tap: the pipeline made is up (before, it stayed down and every send failed with EIO);
    with up=no it is left down, and ports and the log say so."""
    L = lab('[[netns]]\nname = "vA@"\n[[netns]]\nname = "vB@"\n')
    ta, tb = L.name("ta"), L.name("tb")
    p = pipeline_factory(two_ports("tu" + L.tag, f"tap:{ta}@netns={L.name('vA')}",
                                   f"tap:{tb}@up=no,netns={L.name('vB')}"))
    st = p.stats()["ports"]
    assert st[0]["link"] == "up" and st[0]["io"]["brought_up"], st[0]
    assert st[1]["link"] == "down", st[1]
    assert "UP" in L.run("vA", "ip", "-br", "link", "show", ta).stdout
    lines = _ports_cli(p)
    assert " ok " in lines[0] and " down " in [ln for ln in lines if tb in ln][0], lines
    log = Log(p)
    assert log.wait(f"port 2 tap:{tb}@up=no,netns={L.name('vB')}: link down: the interface is administratively "
                    f"down (the port has up=no, so valepipe leaves it so); frames to it are dropped (tx_link_down) "
                    f"until it is up: ip -n {L.name('vB')} link set {tb} up"), log.text
    assert "port 1" not in log.text


def test_persistent_tap_waits_for_its_guest(lab, pipeline_factory):
    """A TAP made for a guest (ip tuntap add), not yet opened by QEMU: the pipeline brings it
    up and reports no carrier until a process holds its file side."""
    from pipeline._native import ffi, lib
    from bindings.adapter import in_netns
    L = lab(TAP_LAB.replace('address = ["10.62.0.1/24"]\n', 'address = ["10.62.0.1/24"]\nup = false\n'))
    ta = L.name("ta")
    assert "DOWN" in L.run("vA", "ip", "-br", "link", "show", ta).stdout
    p = pipeline_factory(two_ports("tw" + L.tag, f"packet:{ta}@netns={L.name('vA')}", f"tap:{L.name('tq')}"
                                   f"@netns={L.name('vB')}"))
    assert _link(p, 0) == "no-carrier"
    log = Log(p)
    assert log.wait("link no-carrier: no carrier (for a TAP: nothing holds its file side; is its QEMU running?)")
    err = ffi.new("char[256]")
    with in_netns(L.name("vA")):
        fd = lib.vp_tap_open(ta.encode(), 1, 1, err, 256)       # the guest's QEMU arrives
    try:
        assert fd >= 0
        assert wait_for(lambda: _link(p, 0) == "up", timeout=10)
        assert log.wait("link up")
    finally:
        os.close(fd)
    assert wait_for(lambda: _link(p, 0) == "no-carrier", timeout=10)


@pytest.mark.parametrize("kind", ["packet", "afxdp"])
def test_frames_refused_as_the_link_goes_are_tx_link_down(lab, pipeline_factory, kind):
    """Traffic into a port whose interface is set down at a random moment: the frames the
    device refused before the worker's next look at the link (ENETDOWN, EBUSY) are counted
    as what they are, tx_link_down, not device errors; sent = delivered + counted drops."""
    import random
    import subprocess
    import sys
    import time
    L = lab(VETH_LAB)
    opts = "mode=generic" if kind == "afxdp" else ""
    p = pipeline_factory(two_ports("lr" + kind[:2] + L.tag, L.uri(kind, "a1", "vS", opts), L.uri(kind, "b1", "vS", opts)))
    assert wait_for(lambda: _link(p, 0) == _link(p, 1) == "up", timeout=10)
    mac = L.run("vA", "cat", f"/sys/class/net/{L.name('a0')}/address").stdout.strip()
    L.run("vB", "ip", "neigh", "replace", "10.61.0.1", "lladdr", mac, "dev", L.name("b0"), "nud", "permanent")
    code = ("import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nend = time.time() + 1.5\n"
            "while time.time() < end:\n    s.sendto(b'x' * 64, ('10.61.0.1', 9))\n    time.sleep(0.0002)\n")
    sender = subprocess.Popen(["ip", "netns", "exec", L.name("vB"), sys.executable, "-c", code])
    time.sleep(random.uniform(0.1, 0.8))
    L.run("vS", "ip", "link", "set", L.name("a1"), "down")
    sender.wait(30)
    def settled():
        st = p.stats()
        port = st["ports"][0]
        return st if port.get("link") == "down" and st["ports"][1]["rx_packets"] == \
            port["tx_packets"] + sum(st["ports"][1]["in_drops"].values()) else None
    st = wait_for(settled, timeout=10) or p.stats()
    port = st["ports"][0]
    assert port["drops"]["tx_link_down"] > 0, port
    assert port["drops"]["tx_errors"] == 0, port
    assert port["tx_packets"] == port["io"]["tx_packets"] + port["drops"]["tx_link_down"], port


def test_idle_worker_sleeps_while_a_link_is_down_and_sends_when_back(lab, pipeline_factory):
    """A packet: port's interface set down leaves an error pending on its socket (ENETDOWN):
    the idle worker must not be woken by it over and over (it spun a core until the next
    frame), and the first frame sent once the link is back must not fail with it."""
    import time
    L = lab(VETH_LAB)
    p = pipeline_factory(two_ports("ld" + L.tag, L.uri("packet", "a1", "vS"), L.uri("packet", "b1", "vS")))
    ok, out = L.ping("vA", "10.61.0.2")
    assert ok, out
    L.run("vS", "ip", "link", "set", L.name("a1"), "down")
    assert wait_for(lambda: _link(p, 0) == "down", timeout=10)
    for _ in range(2):                  # while down, then once it is back up (and idle)
        before = p.stats()
        time.sleep(1.0)
        after = p.stats()
        naps = after["chain"]["idle_naps"] - before["chain"]["idle_naps"]
        secs = after["uptime_s"] - before["uptime_s"]
        # sleeping: a nap per Python turn (100 a second) and a few; spinning: ~10^6 a second
        assert naps < 300 * secs, (naps, secs, after["chain"])
        L.run("vS", "ip", "link", "set", L.name("a1"), "up")
        assert wait_for(lambda: _link(p, 0) == "up", timeout=10)
    errors = p.stats()["ports"][0]["drops"]["tx_errors"]
    ok, out = L.ping("vB", "10.61.0.1", count=3)
    assert ok and " 0% packet loss" in out, out
    assert p.stats()["ports"][0]["drops"]["tx_errors"] == errors
