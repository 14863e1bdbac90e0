"""Linux ports end to end: hosts in namespaces joined only through a running pipeline
(AF_PACKET, AF_XDP, TAP, and mixes with shm:), with intact TCP data and matching counters."""
import os
import socket

import pytest

from bindings.adapter import in_netns
from tests.conftest import wait_for
from tests.netlab import MIXED_LAB, TAP_LAB, VETH_LAB, two_ports
from ring.region import ROLE_USER, Region

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces, veth and TAP need root")



def _io(stats, i):
    return stats["ports"][i]["io"]


def _check_pair(lab, pipe, a, b, addr_a, addr_b, kernel_ends):
    ok, out = lab.ping(a, addr_b)
    assert ok, out
    ok, out = lab.ping(b, addr_a)
    assert ok, out
    sent, got = lab.transfer(a, b, addr_b, nbytes=6_000_000)
    assert sent == got and sent.startswith("6000000 "), (sent, got)
    # the last ACKs cross: wait until every host interface's counters are the pipeline's (a
    # loaded machine may leave frames in a ring for a while; a lost one never gets there)
    def counted():
        st = pipe.stats()
        for i, (ns, ifc) in enumerate(kernel_ends):
            k = lab.link_stats(ns, ifc)
            if (_io(st, i)["rx_packets"], _io(st, i)["tx_packets"]) != (k["tx_packets"], k["rx_packets"]):
                return None
        return st
    st = wait_for(counted, timeout=30) or pipe.stats()
    for i, (ns, ifc) in enumerate(kernel_ends):
        io, port = _io(st, i), st["ports"][i]
        k = lab.link_stats(ns, ifc)
        # what the host's interface sent is what the pipeline read from its port (or what the
        # kernel dropped at its socket, counted: a worker descheduled on a loaded machine lets
        # a TCP burst overflow it), and what the pipeline sent is what the host's interface
        # received: nothing lost uncounted, nothing extra
        assert io["rx_packets"] + io["rx_kernel_drops"] == k["tx_packets"], (ifc, io, k)
        assert io["tx_packets"] == k["rx_packets"], (ifc, io, k)
        # (attaching XDP to a veth may drop its carrier for a moment: what came then is counted)
        assert port["rx_packets"] == io["rx_packets"] and port["tx_packets"] == io["tx_packets"] + io["tx_link_down"]
        assert io["rx_truncated"] == io["tx_errors"] == io["rx_errors"] == 0, io
    assert st["drops"]["tx_ring_full"] == 0 and st["misses"] >= 2
    return st


def test_packet_ports_join_two_namespaces(lab, pipeline_factory):
    L = lab(VETH_LAB)
    p = pipeline_factory(two_ports("pk" + L.tag, L.uri("packet", "a1", "vS"),
                                   L.uri("packet", "b1", "vS")))
    # the hosts see the pipeline's counters on their own interfaces (a0 <-> a1, b0 <-> b1):
    # compare the pipeline's port counters with the far ends a0 and b0
    _check_pair(L, p, "vA", "vB", "10.61.0.1", "10.61.0.2", [("vA", "a0"), ("vB", "b0")])


def test_afxdp_ports_join_two_namespaces(lab, pipeline_factory):
    L = lab(VETH_LAB)
    p = pipeline_factory(two_ports("xd" + L.tag, L.uri("afxdp", "a1", "vS"),
                                   L.uri("afxdp", "b1", "vS")))
    st = _check_pair(L, p, "vA", "vB", "10.61.0.1", "10.61.0.2", [("vA", "a0"), ("vB", "b0")])
    assert _io(st, 0)["xdp_mode"] in ("native", "generic") and _io(st, 0)["xdp_prog_id"] > 0
    assert L.xdp_attached("vS", "a1")
    p.stop()
    # the program went with the port: nothing left on the interface
    assert not L.xdp_attached("vS", "a1") and not L.xdp_attached("vS", "b1")


def test_tap_ports_join_two_namespaces(lab, pipeline_factory):
    L = lab(TAP_LAB)
    p = pipeline_factory(two_ports("tp" + L.tag, L.uri("tap", "ta", "vA"),
                                   L.uri("tap", "tb", "vB")))
    _check_pair(L, p, "vA", "vB", "10.62.0.1", "10.62.0.2", [("vA", "ta"), ("vB", "tb")])


def test_afxdp_to_tap(lab, pipeline_factory):
    L = lab(MIXED_LAB)
    p = pipeline_factory(two_ports("mx" + L.tag, L.uri("afxdp", "a1", "vS"),
                                   L.uri("tap", "tb", "vB")))
    _check_pair(L, p, "vA", "vB", "10.63.0.1", "10.63.0.2", [("vA", "a0"), ("vB", "tb")])


def test_packet_to_shm(lab, pipeline_factory, uniq):
    """Frames from a shm: peer leave through packet: onto a veth, and back, unchanged."""
    L = lab(VETH_LAB)
    pipeline_factory(two_ports("ps" + L.tag, L.uri("packet", "a1", "vS"), f"shm:{uniq}p",
                               ["in_port=1,actions=output:2", "in_port=2,actions=output:1"]))
    with in_netns(L.name("vA")):
        raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88B5))
    raw.bind((L.name("a0"), 0))
    raw.settimeout(5)
    region = Region.attach(f"{uniq}p")
    try:
        peer = region.port(f"{uniq}p", ROLE_USER)
        mac_a0 = raw.getsockname()[4]
        frames = [mac_a0 + bytes.fromhex("020000000001") + b"\x88\xb5" + bytes([i]) * (46 + i) for i in range(20)]
        assert peer.send(frames) == 20
        got = [raw.recv(2048) for _ in range(20)]
        assert got == frames
        back = [b"\xff" * 6 + mac_a0 + b"\x88\xb5" + bytes([i]) * (50 + i) for i in range(20)]
        for f in back:
            raw.send(f)
        rx = wait_for(lambda: peer.recv() or None, timeout=5)
        rx += [f for _ in range(20) for f in peer.recv()]
        assert rx == back
    finally:
        raw.close()
        region.close()


def test_guest_tap_through_packet_port(lab, pipeline_factory, uniq):
    """QEMU's arrangement: another process holds a TAP's file side (here the test, standing
    in for the guest's NIC); the pipeline serves the guest from the interface side."""
    import select
    from pipeline._native import ffi, lib
    from pipeline.ports import PortError, open_ports
    from tools.topo import _configure
    L = lab('[[netns]]\nname = "vG@"\n')
    tap, ns = L.name("vm"), L.name("vG")
    err = ffi.new("char[256]")
    with in_netns(ns):
        fd = lib.vp_tap_open(tap.encode(), 1, 0, err, 256)
    assert fd >= 0, ffi.string(err)
    try:
        _configure(ns, tap, {"ipv6": False})
        # the guest's TAP is taken: tap: says what to use instead
        with pytest.raises(PortError, match=f"packet:{tap}"):
            open_ports([{"uri": f"tap:{tap}@netns={ns}", "ofport": 1}])
        p = pipeline_factory(two_ports("gt" + L.tag, f"packet:{tap}@netns={ns}", f"shm:{uniq}g",
                                       ["in_port=1,actions=output:2", "in_port=2,actions=output:1"]))
        region = Region.attach(f"{uniq}g")
        try:
            peer = region.port(f"{uniq}g", ROLE_USER)
            guest_mac = bytes.fromhex("525400000001")
            out = [b"\xff" * 6 + guest_mac + b"\x88\xb5" + bytes([i]) * (60 + i) for i in range(16)]
            for f in out:
                os.write(fd, f)                           # the guest transmits
            rx = []
            wait_for(lambda: rx.extend(peer.recv()) or len(rx) >= 16, timeout=5)
            assert rx == out
            back = [guest_mac + b"\x02" * 6 + b"\x88\xb5" + bytes([i]) * (50 + i) for i in range(16)]
            assert peer.send(back) == 16
            got = []
            while len(got) < 16 and select.select([fd], [], [], 5)[0]:
                f = os.read(fd, 2048)
                if f[12:14] == b"\x88\xb5":
                    got.append(f)
            assert got == back                            # the guest receives
            st = p.stats()["ports"][0]["io"]
            assert st["rx_packets"] == 16 and st["tx_packets"] == 16
        finally:
            region.close()
    finally:
        os.close(fd)


MQ_LAB = VETH_LAB.replace('peer_ipv6 = false\n', 'peer_ipv6 = false\nqueues = 2\n')


@pytest.mark.parametrize("kind", ["packet", "afxdp"])
def test_two_queues(lab, pipeline_factory, kind):
    """queues=2: two sockets per port (a fanout group, or an AF_XDP socket per queue),
    each an rx ring of the port; traffic on both arrives intact."""
    L = lab(MQ_LAB)
    p = pipeline_factory(two_ports("mq" + L.tag, L.uri(kind, "a1", "vS", "queues=2"),
                                   L.uri(kind, "b1", "vS", "queues=2")))
    st = _check_pair(L, p, "vA", "vB", "10.61.0.1", "10.61.0.2", [("vA", "a0"), ("vB", "b0")])
    assert _io(st, 0)["queues"] == 2


def test_tap_two_queues(lab, pipeline_factory):
    L = lab(TAP_LAB.replace('ipv6 = false\n', 'ipv6 = false\nqueues = 2\n'))
    p = pipeline_factory(two_ports("tq" + L.tag, L.uri("tap", "ta", "vA", "queues=2"),
                                   L.uri("tap", "tb", "vB", "queues=2")))
    _check_pair(L, p, "vA", "vB", "10.62.0.1", "10.62.0.2", [("vA", "ta"), ("vB", "tb")])


def test_idle_worker_sleeps_until_a_port_wakes_it(lab, pipeline_factory, tmp_path):
    """idle_poll_us "auto": every port has an fd (packet:), so the idle worker polls for no
    time and sleeps until a frame (or Python's next turn) wakes it: one nap per gap between
    frames, not a nap every 10..1000 us (each a wake-up that takes a guest's CPU). With a
    shm: port in the chain it polls 200 us and naps (nothing wakes it for that port)."""
    L = lab(VETH_LAB)
    p = pipeline_factory(two_ports("iw" + L.tag, L.uri("packet", "a1", "vS"), L.uri("packet", "b1", "vS")))
    ch = p.stats()["chain"]
    assert (ch["idle_poll_us"], ch["ports_wake"]) == (0, True), ch
    ok, out = L.ping("vA", "10.61.0.2")
    assert ok, out
    before = p.stats()
    n, gap = 40, 0.02
    ok, out = L.ping("vA", "10.61.0.2", count=n, interval=gap)
    assert ok, out
    after = p.stats()
    naps = after["chain"]["idle_naps"] - before["chain"]["idle_naps"]
    secs = after["uptime_s"] - before["uptime_s"]
    # a nap per frame and direction (4 per ping), one per Python turn (100/s) and slack;
    # naps of 10 us doubling up to 1 ms would be ~7 per 20 ms gap and direction
    assert naps <= 4 * n + 100 * secs + 40, (naps, secs)
    mixed = pipeline_factory(two_ports("iw2" + L.tag, L.uri("packet", "b1", "vS"), f"shm:iw2{L.tag}"))
    ch = mixed.stats()["chain"]
    assert (ch["idle_poll_us"], ch["ports_wake"]) == (200, False), ch
    mixed.stop()
    p.stop()
    # AF_XDP ports wake the worker with their fds, but are polled first: a sleeping AF_XDP
    # consumer costs the kernel a wake-up every few frames
    xdp = pipeline_factory(two_ports("iw3" + L.tag, L.uri("afxdp", "a1", "vS", "mode=generic"),
                                     L.uri("afxdp", "b1", "vS", "mode=generic")))
    ch = xdp.stats()["chain"]
    assert (ch["idle_poll_us"], ch["ports_wake"]) == (200, True), ch
