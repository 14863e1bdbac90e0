"""The portable build (VP_TARGET_OS=portable: the kernels every OS builds, what FreeBSD's
build has but its few calls of its own in pipeline/hostos.c), built with this machine's
compiler into a copy of the tree and run from there: its CLI offers only its port kinds,
refuses Linux's ("not available on this OS"), and a pipeline of it forwards between shm:
ports whose peers (its own gen and sink) get the region's memory over its socket."""
import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT, copy_checkout, wait_for
from tests.test_e2e import cfg
from tests.test_shm_peers import _claimed

@pytest.fixture(scope="module")
def portable(tmp_path_factory):
    tree = copy_checkout(tmp_path_factory.mktemp("portable") / "tree", module=False)
    r = subprocess.run([sys.executable, "pipeline/native_build.py"], cwd=tree, capture_output=True, text=True,
                       env=dict(os.environ, VP_TARGET_OS="portable"), timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    return tree


def cli(tree, *args, timeout=60):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=tree, capture_output=True, text=True,
                          timeout=timeout)


def test_help_lists_only_its_port_kinds(portable):
    for args in (["--help"], ["run", "--help"]):
        out = cli(portable, *args).stdout
        assert "shm:NAME" in out and "pcap:FILE" in out and "valeX:PORT" in out, out
        assert not re.search(r"\b(afxdp|packet|tap):[A-Z]|netns=", out), out
    out = cli(ROOT, "--help").stdout                 # this checkout's Linux build has them
    assert "afxdp:IFNAME" in out and "tap:NAME" in out, out


@pytest.mark.parametrize("uri,words", [
    ("tap:vp0", ["tap: ports are Linux's, not available on this OS", "this portable build has netmap, pcap, shm, vale"]),
    ("packet:lo", ["packet: ports are Linux's, not available on this OS"]),
    ("afxdp:lo@queues=2", ["afxdp: ports are Linux's, not available on this OS"]),
    ("vale0:vp@netns=ns1", ["network namespaces are Linux's; not available on this OS"]),
])
def test_linux_port_kinds_are_refused(portable, uniq, tmp_path, uri, words):
    conf = tmp_path / "p.toml"
    conf.write_text(f'[pipeline]\nname = "{uniq}"\nrun_dir = "{tmp_path}/run"\n'
                    f'[[port]]\nuri = "shm:{uniq}a"\n[[port]]\nuri = "{uri}"\n')
    r = cli(portable, "run", str(conf), "-q", "--duration", "1")
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    for w in words:
        assert w in r.stderr, r.stderr
    assert not os.path.exists(f"/dev/shm/valepipe.{uniq}a") and not os.path.exists(tmp_path / "run")


def test_a_pipeline_of_it_forwards_between_shm_ports(portable, uniq, pipeline_factory):
    pipe = pipeline_factory(cfg(uniq, ["in_port=1,actions=output:2"], ports=("a", "b")), root=portable)
    sink = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "sink", f"shm:{uniq}b", "--count", "300",
                             "--duration", "60", "--json"], cwd=portable, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        # the sink receives from its first frame on once it holds the ring (a frame waiting
        # before it attached would be discarded at its start, not counted)
        assert wait_for(lambda: _claimed(f"{uniq}b", rx=True) == sink.pid, timeout=60)
        # one frame sets the flow up; the rest are fast-path hits
        assert cli(portable, "gen", f"shm:{uniq}a", "--count", "1").returncode == 0
        assert wait_for(lambda: pipe.stats()["flows"] >= 1, timeout=20)
        r = cli(portable, "gen", f"shm:{uniq}a", "--count", "299", "--rate", "20000")
        assert r.returncode == 0, r.stderr
        out, err = sink.communicate(timeout=90)
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()
    assert json.loads(out)["received"] == 300, (out, err)
    st = pipe.stats()
    assert st["ports"][0]["rx_packets"] == 300 and st["ports"][1]["tx_packets"] == 300, st["ports"]
