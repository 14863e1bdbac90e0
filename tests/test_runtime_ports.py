"""Ports added, taken down, brought up and removed while a pipeline forwards, between
hosts in namespaces: the port changed behaves at once, and traffic between the ports
not touched loses nothing meanwhile."""
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, wait_for
from tests.netlab import _host_veth, _netns, two_ports

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and veth need root")

LAB = (_netns("vA", "vB", "vC", "vS") + _host_veth("vA", "a", "10.64.0.1/24") + _host_veth("vB", "b", "10.64.0.2/24")
       + _host_veth("vC", "c", "10.64.0.3/24"))


def reaches(L, ns, addr):
    """A ping gets through within a generous deadline (the change is immediate; a loaded
    machine may still take a moment to run the revalidation)."""
    return wait_for(lambda: L.ping(ns, addr, 1)[0], 20, 0.2)


def settled(pipe):
    """The revalidation a port change started has finished: cached flows follow it."""
    return wait_for(lambda: (lambda u: u["revalidations_done"] >= u["revalidations"])(pipe.stats()["upcall"]), 20, 0.05)


def vp(*args):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_ports_change_under_traffic(lab, pipeline_factory):
    L = lab(LAB)
    name = "rp" + L.tag
    pipe = pipeline_factory(two_ports(name, L.uri("packet", "a1", "vS"), L.uri("packet", "b1", "vS")))
    # A pings B steadily the whole time (as fast as the test's changes go: ~5 s)
    ping = subprocess.Popen(["ip", "netns", "exec", L.name("vA"), "ping", "-c", "400", "-i", "0.02", "-W", "2",
                             "10.64.0.2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert L.ping("vA", "10.64.0.2", 1)[0]
        assert not L.ping("vA", "10.64.0.3", 1)[0]                   # C is not on the switch yet
        c_uri = L.uri("packet", "c1", "vS")
        r = vp("add-port", c_uri, "--name", name)
        assert r.returncode == 0 and "added port 3" in r.stdout, r.stderr
        assert reaches(L, "vA", "10.64.0.3")
        assert [p["ofport"] for p in pipe.stats()["ports"]] == [1, 2, 3]
        r = vp("port-mod", "3", "--down", "--name", name)
        assert r.returncode == 0 and "is down" in r.stdout, r.stderr
        assert settled(pipe)
        assert not L.ping("vA", "10.64.0.3", 2)[0]
        assert vp("port-mod", c_uri, "--up", "--name", name).returncode == 0
        assert reaches(L, "vC", "10.64.0.1")
        r = vp("del-port", "3", "--name", name)
        assert r.returncode == 0 and "removed port 3" in r.stdout, r.stderr
        assert settled(pipe)
        assert not L.ping("vA", "10.64.0.3", 2)[0]
        assert [p["ofport"] for p in pipe.stats()["ports"]] == [1, 2]
        # C's MAC went with its port (as in OVS): A's frames to it are flooded until C answers
        assert wait_for(lambda: not any(ln.split()[0] == "3" for ln in pipe.cli("fdb-show").splitlines()[1:]), 10)
        # and the port can come back
        assert vp("add-port", c_uri, "--ofport", "7", "--name", name).returncode == 0
        assert reaches(L, "vA", "10.64.0.3")
        out, _ = ping.communicate(timeout=120)
    finally:
        if ping.poll() is None:
            ping.kill()
            ping.wait()
    assert "400 packets transmitted, 400 received" in out, out
    st = pipe.stats()
    assert st["drops"]["tx_ring_full"] == 0 and not any(p["faulty"] for p in st["ports"])
