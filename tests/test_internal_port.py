"""The LOCAL port (internal:NAME): the pipeline creates a TAP interface in the host stack
(here in a namespace), brings it up and takes it away at exit; its OpenFlow number is LOCAL
(65534), rules name it as Open vSwitch's do (in_port=LOCAL, output:LOCAL, LOCAL), and NORMAL
and FLOOD include it. Tested through the host stack: ping between the host behind LOCAL
and another namespace on a TAP port of the same switch."""
import os
import subprocess
import sys

import pytest

from pipeline import control
from tests.conftest import ROOT, wait_for
from tests.netlab import _host_tap, _netns

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and TAP devices need root")
LAB = _netns("vH", "vB") + _host_tap("vB", "tb", "10.64.0.2/24")


def _cfg(L, flows):
    return (f'[pipeline]\nname = "lo{L.tag}"\nrun_dir = "@RUN@"\n'
            f'[[port]]\nuri = "internal:{L.name("vpi")}@netns={L.name("vH")}"\n'
            f'[[port]]\nuri = "{L.uri("tap", "tb", "vB")}"\nofport = 1\n'
            "[slowpath]\nflows = [" + ", ".join(f'"{f}"' for f in flows) + "]\n")


def _link(L, ns, ifname):
    r = L.run(ns, "ip", "-o", "link", "show", L.name(ifname), check=False)
    return r.stdout if r.returncode == 0 else None


def test_local_port_carries_the_host_stack(lab, pipeline_factory):
    L = lab(LAB)
    pipe = pipeline_factory(_cfg(L, ["actions=NORMAL"]))
    link = _link(L, "vH", "vpi")
    assert link and "UP" in link.split(">")[0] and "tun" not in link, link      # made, and up
    ports = control.request(pipe.ctl, "ports")
    assert [(p["kind"], p["ofport"]) for p in ports] == [("internal", 65534), ("tap", 1)]
    L.run("vH", "ip", "addr", "add", "10.64.0.1/24", "dev", L.name("vpi"))
    ok, out = L.ping("vH", "10.64.0.2")                                          # NORMAL learns LOCAL
    assert ok, out
    fdb = control.request(os.path.join(pipe.dir, "run", "slowpath.ctl"), "fdb-show")
    assert {p for p, *_ in fdb} == {65534, 1}, fdb

    sp = os.path.join(pipe.dir, "run", "slowpath.ctl")
    control.request(sp, "del-flows", match="")
    control.request(sp, "add-flows", flows=["in_port=LOCAL,actions=output:1", "in_port=1,actions=output:LOCAL"])
    ok, out = L.ping("vB", "10.64.0.1")
    assert ok, out
    control.request(sp, "mod-flows", flow="in_port=1,actions=drop")
    n = control.request(pipe.ctl, "revalidate")
    assert wait_for(lambda: pipe.stats()["upcall"]["revalidations_done"] >= n)
    ok, _ = L.ping("vB", "10.64.0.1", count=2)
    assert not ok                                                              # nothing reaches the host
    control.request(sp, "mod-flows", flow="in_port=1,actions=FLOOD")            # FLOOD includes LOCAL
    n = control.request(pipe.ctl, "revalidate")
    assert wait_for(lambda: pipe.stats()["upcall"]["revalidations_done"] >= n)
    ok, out = L.ping("vB", "10.64.0.1")
    assert ok, out

    assert pipe.stop() is not None
    assert _link(L, "vH", "vpi") is None                                       # taken away with it


def test_an_existing_interface_is_not_taken_over(lab, tmp_path):
    L = lab(LAB)
    L.run("vH", "ip", "link", "add", L.name("vpi"), "type", "veth", "peer", "name", L.name("vpj"))
    cfg = tmp_path / "p.toml"
    cfg.write_text(_cfg(L, []).replace("@RUN@", str(tmp_path / "run")))
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(cfg), "--quiet"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "already exists" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "veth" in L.run("vH", "ip", "-d", "link", "show", L.name("vpi")).stdout        # left alone


@pytest.mark.parametrize("text,msg", [
    ('[[port]]\nuri = "internal:x1"\nofport = 5\n', "OpenFlow port LOCAL"),
    ('[[port]]\nuri = "internal:x1"\n[[port]]\nuri = "internal:x2"\n', "one internal: port"),
])
def test_internal_port_config_errors(text, msg):
    from pipeline import config
    with pytest.raises(config.ConfigError) as e:
        config.parse(text)
    assert msg in str(e.value)
