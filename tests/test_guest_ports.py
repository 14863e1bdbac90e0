"""What a guest's port met when real QEMU guests were joined (issue 14's tester), without a
guest: the bindings' losses in the same drop ledger as the stages' (by port and reason, in
`stats`, the display and the metrics), a dead guest's frames dropped and counted, not
retried and sent stale, a guest's TAP re-opened when its QEMU re-creates it, and the
display's receive time counting busy cycles only."""
import json
import os
import time

import pytest

from tests.conftest import wait_for
from tests.netlab import GuestNic, two_ports
from tests.test_link_state import Log

root = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and TAP need root")

GUESTS = '[[netns]]\nname = "gA@"\n[[netns]]\nname = "gB@"\n[[netns]]\nname = "vH@"\n'
# a TAP made for guest A before its QEMU starts (ip tuntap add): it outlives the guest
PERSISTENT_VM1 = '[[tap]]\nname = "vm1@"\nnetns = "vH@"\nipv6 = false\nup = false\n'
A, B = "10.65.0.1", "10.65.0.2"
CROSS = ("in_port=1,actions=output:2", "in_port=2,actions=output:1")


def _send_udp(lab, ns, dst, count, size=100, gso=0, pace=0.0):
    """`count` UDP datagrams from namespace ns; gso: as UDP_SEGMENT super-frames of that
    segment size (what a guest's GSO hands its NIC whole)."""
    code = ("import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            + (f"s.setsockopt(17, 103, {gso})\n" if gso else "")
            + f"for i in range({count}):\n    s.sendto(bytes([i % 256]) * {size}, ('{dst}', 9))\n"
            + f"    time.sleep({pace})\n")
    lab.run(ns, "python3", "-c", code)


MACS = {"A": "02:00:00:65:00:01", "B": "02:00:00:65:00:02"}


def _guest(lab, which):
    """Guest A or B as QEMU starts it: the same MAC each time (-device virtio-net-pci,mac=),
    and its neighbour's address known (no ARP: every frame is one the test sent)."""
    ns, ifc, addr, other = ("gA", "ea", A, "B") if which == "A" else ("gB", "eb", B, "A")
    g = GuestNic(lab, ns, ifc, addr + "/24", "vH", "vm1" if which == "A" else "vm2")
    lab.run(ns, "ip", "link", "set", lab.name(ifc), "address", MACS[which])
    lab.run(ns, "ip", "neigh", "replace", A if other == "A" else B, "lladdr", MACS[other], "dev", lab.name(ifc),
            "nud", "permanent")
    return g


def _settled(pipe, key=lambda st: st):
    """Stats once they stopped changing for half a second."""
    last = [None, time.monotonic()]

    def still():
        st = pipe.stats()
        now = [(p["rx_packets"], p["tx_packets"], sum(p["drops"].values()), p["upcall_inflight"]) for p in st["ports"]]
        if now != last[0]:
            last[0], last[1] = now, time.monotonic()
        return st if time.monotonic() - last[1] > 0.5 and not any(p["upcall_inflight"] for p in st["ports"]) else None
    st = wait_for(still, timeout=30, step=0.1)
    assert st, "the pipeline's counters did not settle"
    return st


@root
def test_binding_losses_are_in_the_ledger(lab, pipeline_factory):
    """Guests' super-frames into ports with offload=no are dropped by the binding as
    rx_truncated: the port's drops and in_drops, the pipeline's drops, `stats`, the display's
    rates and the metrics say so, and per direction sent = delivered + counted drops."""
    from prometheus_client import generate_latest
    from prometheus_client.core import CollectorRegistry
    from pipeline.metrics import Collector
    from pipeline.rates import since_start
    L = lab(GUESTS)
    guests = [_guest(L, "A"), _guest(L, "B")]
    try:
        name = "gl" + L.tag
        p = pipeline_factory(two_ports(name, L.uri("packet", "vm1", "vH", "offload=no"),
                                       L.uri("packet", "vm2", "vH", "offload=no"), flows=CROSS))
        ok, out = L.ping("gA", B)
        assert ok, out
        _send_udp(L, "gA", B, 7, size=6000, gso=1200)          # 7 super-frames, 5 segments each
        _send_udp(L, "gA", B, 40)
        st = _settled(p)
        p1, p2 = st["ports"]
        assert p1["drops"]["rx_truncated"] == 7 and p1["in_drops"]["rx_truncated"] == 7, p1
        assert st["drops"]["rx_truncated"] == 7, st["drops"]
        for src, dst, (ns, ifc) in ((p1, p2, ("vH", "vm1")), (p2, p1, ("vH", "vm2"))):
            sent = L.link_stats(ns, ifc)["rx_packets"]          # what the guest's NIC handed the host
            dropped = sum(src["in_drops"].values()) + sum(dst["drops"][k] for k in ("tx_errors", "tx_link_down"))
            assert sent == dst["io"]["tx_packets"] + dropped, (sent, src, dst)
        assert "port 1 rx_truncated 7" in p.cli("stats", "--name", name)
        assert since_start(st)["total"]["drops_ps"] > 0
        reg = CollectorRegistry(auto_describe=False)
        reg.register(Collector(p.run_dir, name))
        text = generate_latest(reg).decode()
        assert f'valepipe_port_drops_total{{ofport="1",port="{p1["uri"]}",reason="rx_truncated"}} 7.0' in text, text
        assert 'valepipe_drops_total{reason="rx_truncated"} 7.0' in text
    finally:
        for g in guests:
            g.close()


@root
@pytest.mark.parametrize("kind", ["packet", "afxdp"])
def test_dead_guest_frames_are_dropped(lab, pipeline_factory, kind):
    """Guest A's QEMU exits; its persistent TAP stays, without carrier. What B sends it is
    dropped and counted (tx_link_down), not retried for ever (tx_again) nor handed to the
    guest, stale, when it comes back."""
    L = lab(GUESTS + PERSISTENT_VM1)
    opts = "mode=generic" if kind == "afxdp" else ""
    a, b = _guest(L, "A"), _guest(L, "B")
    try:
        p = pipeline_factory(two_ports("gd" + L.tag, L.uri(kind, "vm1", "vH", opts), L.uri(kind, "vm2", "vH", opts)))
        ok, out = L.ping("gB", A)
        assert ok, out
        a.close()                                               # the guest is gone, its TAP is not
        assert wait_for(lambda: p.stats()["ports"][0].get("link") == "no-carrier", timeout=10)
        io0 = p.stats()["ports"][0]["io"]
        again = io0["tx_again"]
        _send_udp(L, "gB", A, 400, pace=0.002)
        st = _settled(p)
        port = st["ports"][0]
        # nothing reached the dead guest: sent frames and bytes stay as they were (a frame
        # the device refused is taken back from both)
        assert (port["io"]["tx_packets"], port["io"]["tx_bytes"]) == (io0["tx_packets"], io0["tx_bytes"]), port["io"]
        assert port["drops"]["tx_link_down"] >= 400, json.dumps(port)
        assert port["io"]["tx_again"] == again, port["io"]
        assert port["tx_packets"] == port["io"]["tx_packets"] + port["drops"]["tx_link_down"] + \
            port["drops"]["tx_errors"], port                    # into its ring = sent + dropped
        a = _guest(L, "A")                                      # the guest restarts on its TAP
        assert wait_for(lambda: p.stats()["ports"][0].get("link") == "up", timeout=10)
        time.sleep(1.0)
        assert L.link_stats("gA", "ea")["rx_packets"] == 0       # nothing stale arrived
        ok, out = L.ping("gB", A)
        assert ok, out
    finally:
        a.close()
        b.close()


@root
@pytest.mark.parametrize("kind", ["packet", "afxdp"])
def test_guest_restart_reopens_its_tap(lab, pipeline_factory, kind):
    """A TAP QEMU creates (-netdev tap,ifname=vm1,script=no) goes with its guest and comes
    back when the guest restarts: the port says gone, then re-opens the new one by its name
    and forwards again; what was sent meanwhile is counted."""
    L = lab(GUESTS)
    opts = "mode=generic" if kind == "afxdp" else ""
    a, b = _guest(L, "A"), _guest(L, "B")
    try:
        p = pipeline_factory(two_ports("gr" + L.tag, L.uri(kind, "vm1", "vH", opts), L.uri(kind, "vm2", "vH", opts)))
        log = Log(p)
        ok, out = L.ping("gB", A)
        assert ok, out
        for restart in (1, 2):
            a.close()
            assert wait_for(lambda: p.stats()["ports"][0].get("link") == "gone", timeout=10)
            assert " gone " in [ln for ln in p.cli("ports").splitlines() if L.name("vm1") in ln][0]
            _send_udp(L, "gB", A, 20)
            assert wait_for(lambda: p.stats()["ports"][0]["drops"]["tx_link_down"] >= 20 * restart, timeout=10)
            a = _guest(L, "A")
            assert wait_for(lambda: p.stats()["ports"][0].get("link") == "up", timeout=10)
            ok, out = L.ping("gB", A)
            assert ok, (restart, out)
            ok, out = L.ping("gA", B)
            assert ok, (restart, out)
            back = f"port 1 {p.stats()['ports'][0]['uri']}: its interface is back; re-opened"
            assert log.wait(back) and log.text.count(back) == restart, log.text
        st = p.stats()["ports"][0]
        assert st["io"]["reopened"] == 2 and " ok " in p.cli("ports").splitlines()[0], st
    finally:
        a.close()
        b.close()


def test_receive_time_is_busy_time(pipeline_factory, uniq):
    """ns/packet of receive counts the calls that took packets: an idle pipeline's polls
    (a receive call every few microseconds finding nothing) add no time to it."""
    p = pipeline_factory(two_ports("rt" + uniq, f"shm:{uniq}a", f"shm:{uniq}b"))
    before = p.stats()
    time.sleep(1.0)
    after = p.stats()
    assert after["stage_packets"]["receive"] == before["stage_packets"]["receive"] == 0
    assert after["stage_ns_total"]["receive"] == before["stage_ns_total"]["receive"] == 0, after["stage_ns_total"]
