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
