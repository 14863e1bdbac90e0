"""Linux ports when things go wrong: missing interfaces, no privileges, a link going down
under a running pipeline, a killed worker — a clear message, counters, nothing left over."""
import os
import shutil
import signal
import subprocess
import sys

import pytest
from pyroute2 import netns as nsmod

from tests.conftest import ROOT, wait_for
from tests.netlab import VETH_LAB, two_ports
from tools import topo

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and veth need root")



@pytest.fixture
def vlab(lab):
    return lab(VETH_LAB)


def _cli_run(tmp_path, p1, p2, prefix=(), duration="2"):
    cfg = tmp_path / "p.toml"
    cfg.write_text(two_ports(f"er{os.getpid() % 10000}", p1, p2, run_dir=f"{tmp_path}/run"))
    return subprocess.run([*prefix, sys.executable, "-m", "pipeline.cli", "run", str(cfg), "-q",
                           "--duration", duration], cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("kind,message", [("packet", "no interface"), ("afxdp", "no interface"),
                                          ("tap", "no network namespace")])
def test_missing_interface_is_a_clear_error(vlab, tmp_path, kind, message):
    good = vlab.uri("packet", "b1", "vS")
    bad = {"packet": f"packet:nosuch0@netns={vlab.name('vS')}", "afxdp": f"afxdp:nosuch0@netns={vlab.name('vS')}",
           "tap": "tap:tx0@netns=nosuch-ns"}[kind]
    r = _cli_run(tmp_path, good, bad)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.skipif(not shutil.which("setpriv"), reason="setpriv (util-linux) not installed")
@pytest.mark.parametrize("kind", ["packet", "afxdp"])
def test_no_privileges_is_a_clear_error(vlab, tmp_path, kind):
    # root's uid without any capability: what an unprivileged user gets
    drop = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--"]
    r = _cli_run(tmp_path, f"{kind}:{vlab.name('a1')}", f"{kind}:{vlab.name('b1')}",
                 prefix=["ip", "netns", "exec", vlab.name("vS"), *drop])
    assert r.returncode == 2 and "permission denied" in r.stderr and "run as root" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not vlab.xdp_attached("vS", "a1") and not vlab.xdp_attached("vS", "b1")


@pytest.mark.parametrize("kind", ["packet", "afxdp"])
def test_link_down_while_running(vlab, pipeline_factory, kind):
    p = pipeline_factory(two_ports("er" + kind[:2], vlab.uri(kind, "a1", "vS"),
                                   vlab.uri(kind, "b1", "vS")))
    assert vlab.ping("vA", "10.61.0.2")[0]
    subprocess.run(["ip", "-n", vlab.name("vS"), "link", "set", vlab.name("b1"), "down"], check=True)
    ok, _ = vlab.ping("vA", "10.61.0.2", count=2)
    assert not ok
    st = p.stats()
    assert p.proc.poll() is None                          # still forwarding what it can
    # what could not be sent is counted: dropped while the link is down (before the worker
    # saw it go: refused by the interface, or a full ring)
    lost = sum(st["ports"][1]["drops"][k] for k in ("tx_errors", "tx_ring_full", "tx_link_down"))
    assert lost > 0, st["ports"][1]
    subprocess.run(["ip", "-n", vlab.name("vS"), "link", "set", vlab.name("b1"), "up"], check=True)
    assert wait_for(lambda: vlab.ping("vA", "10.61.0.2", count=1)[0], timeout=15, step=0.2)
    final = p.stop()
    assert final is not None
    assert f"link down: the interface is administratively down; frames to it are dropped (tx_link_down) until " \
           f"it is up: ip -n {vlab.name('vS')} link set {vlab.name('b1')} up" in p.proc.stderr.read()


def test_killed_worker_leaves_no_xdp_program(vlab, pipeline_factory):
    p = pipeline_factory(two_ports("erkx", vlab.uri("afxdp", "a1", "vS"),
                                   vlab.uri("afxdp", "b1", "vS")))
    assert vlab.xdp_attached("vS", "a1") and vlab.xdp_attached("vS", "b1")
    slow = p.stats()["upcall"]["slowpath_pid"]
    os.killpg(p.proc.pid, signal.SIGKILL)                  # supervisor and worker at once: a crash
    p.proc.wait()
    # the slow path does not outlive its worker
    assert wait_for(lambda: not os.path.exists(f"/proc/{slow}") or
                    open(f"/proc/{slow}/stat").read().split()[2] == "Z", timeout=5)
    # the bpf_link died with the process: the interfaces are as before
    assert wait_for(lambda: not vlab.xdp_attached("vS", "a1") and not vlab.xdp_attached("vS", "b1"), timeout=5)
    # and the interfaces can be taken again at once
    q = pipeline_factory(two_ports("erky", vlab.uri("afxdp", "a1", "vS"),
                                   vlab.uri("afxdp", "b1", "vS")))
    assert vlab.ping("vA", "10.61.0.2")[0]
    q.stop()


def test_topo_failure_rolls_back_and_down_removes_only_its_own(tmp_path):
    before = set(nsmod.listnetns())
    tag = str(os.getpid() % 100000)
    bad = tmp_path / "bad.toml"
    # the second veth takes a name the namespace has already (its lo): up fails after
    # creating the namespace and first pair (a name used twice in the file is refused before)
    bad.write_text(f'[[netns]]\nname = "tf{tag}"\n[[veth]]\nname = "tf{tag}a"\nnetns = "tf{tag}"\npeer = "tf{tag}b"\n'
                   f'peer_netns = "tf{tag}"\n[[veth]]\nname = "lo"\nnetns = "tf{tag}"\npeer = "tf{tag}c"\n')
    with pytest.raises(topo.TopoError, match="already exists"):
        topo.up(str(bad))
    # (only this test's names: other tests on the machine make namespaces meanwhile)
    assert f"tf{tag}" not in set(nsmod.listnetns()) - before
    good = tmp_path / "good.toml"
    good.write_text(f'[[netns]]\nname = "tg{tag}"\n')
    nsmod.create(f"tf{tag}")                              # not the topology's: must survive
    try:
        topo.up(str(good))
        assert f"tg{tag}" in nsmod.listnetns()
        topo.down(str(good))
        assert f"tg{tag}" not in nsmod.listnetns() and f"tf{tag}" in nsmod.listnetns()
    finally:
        nsmod.remove(f"tf{tag}")


def test_interface_with_an_xdp_program_is_refused(vlab, pipeline_factory, tmp_path):
    """Another switch's XDP program on the interface: a clear refusal, and the other
    switch keeps its program and keeps forwarding."""
    p = pipeline_factory(two_ports("erx1", vlab.uri("afxdp", "a1", "vS"),
                                   vlab.uri("afxdp", "b1", "vS")))
    r = _cli_run(tmp_path, vlab.uri("afxdp", "a1", "vS"), vlab.uri("packet", "b1", "vS"))
    assert r.returncode == 2 and "already has an XDP program attached" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert vlab.xdp_attached("vS", "a1") and vlab.ping("vA", "10.61.0.2")[0]
    p.stop()
