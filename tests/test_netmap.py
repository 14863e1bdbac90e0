"""netmap ports: request structs with the fact sheet's sizes and
offsets, ioctl numbers for Linux and FreeBSD, and port names read as libnetmap reads them.
(A real /dev/netmap is not on this machine: see the netmap bindings issue.)"""
import json
import os
import subprocess
import sys
import time

import pytest

from bindings.netmap import ioctl
from bindings.netmap.names import NameError_, parse
from pipeline._native import ffi, lib
from tests.conftest import ROOT, wait_for
from tests.netlab import two_ports

LAYOUTS = {
    "struct nmreq_header": (88, {"nr_version": 0, "nr_reqtype": 2, "nr_reserved": 4, "nr_name": 8,
                                 "nr_options": 72, "nr_body": 80}),
    "struct nmreq_register": (56, {"nr_offset": 0, "nr_memsize": 8, "nr_tx_slots": 16, "nr_rx_slots": 20,
                                   "nr_tx_rings": 24, "nr_rx_rings": 26, "nr_host_tx_rings": 28,
                                   "nr_host_rx_rings": 30, "nr_mem_id": 32, "nr_ringid": 34, "nr_mode": 36,
                                   "nr_extra_bufs": 40, "nr_flags": 48}),
    "struct nmreq_port_info_get": (32, {"nr_memsize": 0, "nr_tx_slots": 8, "nr_rx_slots": 12, "nr_tx_rings": 16,
                                        "nr_rx_rings": 18, "nr_host_tx_rings": 20, "nr_host_rx_rings": 22,
                                        "nr_mem_id": 24, "pad": 26}),
    "struct nmreq_vale_attach": (64, {"reg": 0, "port_index": 56, "pad1": 60}),
    "struct nmreq_vale_detach": (8, {"port_index": 0}),
    "struct nmreq_vale_list": (8, {"nr_bridge_idx": 0, "pad1": 2, "nr_port_idx": 4}),
    "struct nmreq_vale_newif": (16, {"nr_tx_slots": 0, "nr_rx_slots": 4, "nr_tx_rings": 8, "nr_rx_rings": 10,
                                     "nr_mem_id": 12, "pad1": 14}),
}


@pytest.mark.parametrize("struct", LAYOUTS)
def test_request_layouts(struct):
    size, fields = LAYOUTS[struct]
    assert ffi.sizeof(struct) == size
    for name, off in fields.items():
        assert ffi.offsetof(struct, name) == off, name


def test_ioctl_numbers_both_platforms():
    assert ioctl.numbers("linux") == {"NIOCCTRL": 0xC0586997, "NIOCTXSYNC": 0x6994, "NIOCRXSYNC": 0x6995}
    assert ioctl.numbers("freebsd") == {"NIOCCTRL": 0xC0586997, "NIOCTXSYNC": 0x20006994, "NIOCRXSYNC": 0x20006995}
    with pytest.raises(ValueError):
        ioctl.numbers("darwin")


@pytest.mark.parametrize("text,kernel,mode,ringid,flags,mem_id", [
    ("netmap:eth0", "eth0", lib.NR_REG_ALL_NIC, 0, 0, 0),
    ("netmap:eth0-2", "eth0", lib.NR_REG_ONE_NIC, 2, 0, 0),
    ("netmap:eth0^", "eth0", lib.NR_REG_SW, 0, 0, 0),
    ("netmap:eth0^1", "eth0", lib.NR_REG_ONE_SW, 1, 0, 0),
    ("netmap:eth0*", "eth0", lib.NR_REG_NIC_SW, 0, 0, 0),
    ("netmap:eth0-1/x", "eth0", lib.NR_REG_ONE_NIC, 1, lib.NR_EXCLUSIVE, 0),
    ("netmap:eth0/RT", "eth0", lib.NR_REG_ALL_NIC, 0, lib.NR_RX_RINGS_ONLY | lib.NR_TX_RINGS_ONLY, 0),
    ("netmap:eth0{3", "eth0{3", lib.NR_REG_ALL_NIC, 0, 0, 0),
    ("vale0:p1", "vale0:p1", lib.NR_REG_ALL_NIC, 0, 0, 0),
    ("vale:p1", "vale:p1", lib.NR_REG_ALL_NIC, 0, 0, 0),
    ("valeX:vm}x", "valeX:vm}x", lib.NR_REG_ALL_NIC, 0, 0, 0),
    ("vale1:a@7", "vale1:a", lib.NR_REG_ALL_NIC, 0, 0, 7),
    ("vale0:a/t@2", "vale0:a", lib.NR_REG_ALL_NIC, 0, lib.NR_MONITOR_TX, 2),
])
def test_names_libnetmap_accepts(text, kernel, mode, ringid, flags, mem_id):
    n = parse(text)
    assert (n.kernel_name, n.mode, n.ringid, n.flags, n.mem_id) == (kernel, mode, ringid, flags, mem_id)


def test_name_options():
    n = parse("vale0:a@conf:rings=2,slots=512,tx-slots=256")
    assert n.conf() == {"nr_tx_rings": 2, "nr_rx_rings": 2, "nr_tx_slots": 256, "nr_rx_slots": 512}
    assert parse("vale1:b@share=vale1:a").options == {"share": {"port": "vale1:a"}}
    assert parse("netmap:eth0@extmem:file=/dev/hugepages/x,buf-num=4096").options["extmem"]["buf_num"] == "4096"
    # valepipe's own option: the namespace netmap looks the interface up in
    assert parse("netmap:h0^@netns=lab1").options == {"netns": {"name": "lab1"}}


@pytest.mark.parametrize("text,why", [
    ("eth0", "missing ':'"), ("pcap:eth0", "not a netmap"), ("netmap0:eth0", "no identifier"),
    ("netmap:", "expected a port name"), ("netmap:eth0-", "needs a ring number"),
    ("netmap:eth0-4095", "out of range"), ("netmap:eth0^*", "only one ring selector"),
    ("netmap:eth0/q", "unknown flag"), ("netmap:eth0{", "needs an identifier"),
    ("vale0:a@0", "1..65535"), ("vale0:a@conf:rings=x", "must be a number"),
    ("vale0:a@conf:rings=1,rings=2", "set twice"), ("vale0:a@conf:colour=1", "no key"),
    ("vale0:a@share", "needs port"), ("netmap:h0@netns", "needs name"), ("vale0:a@conf=3", "no default key"),
    ("vale0:a@offset=4", "disabled"), ("vale0:a@bogus", "unknown option"),
    ("vale0:a@conf:rings=1@conf:slots=2", "given twice"), ("netmap:" + "e" * 64, "longer than"),
])
def test_names_libnetmap_rejects(text, why):
    with pytest.raises(NameError_, match=why):
        parse(text)


def test_compiled_ioctl_numbers_are_this_platforms():
    import sys
    compiled = [lib.vp_netmap_ioctl_number(i) for i in range(3)]
    assert compiled == [ioctl.numbers()[k] for k in ("NIOCCTRL", "NIOCTXSYNC", "NIOCRXSYNC")], sys.platform


@pytest.mark.skipif(os.path.exists("/dev/netmap"), reason="netmap is loaded here")
def test_without_netmap_the_port_says_why(tmp_path):
    cfg = tmp_path / "p.toml"
    cfg.write_text(f'[pipeline]\nname = "nm"\nrun_dir = "{tmp_path}/run"\n[[port]]\nuri = "vale0:a"\n')
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(cfg), "-q", "--duration", "1"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "netmap kernel module is not loaded" in r.stderr and "Traceback" not in r.stderr


def _through(tx_uri, rx_uri, frames, chunk=10):
    """Frames sent by a netmap user of tx_uri (a TXSYNC per chunk), as received by a netmap
    user of rx_uri (RXSYNC until they are all there, or 10 s per chunk)."""
    from bindings.netmap.port import NetmapPort
    tx, rx = NetmapPort(tx_uri), NetmapPort(rx_uri)
    got = []
    try:
        for i in range(0, len(frames), chunk):
            assert tx.ring_port.send(frames[i:i + chunk]) == len(frames[i:i + chunk])
            lib.vp_netmap_sync(tx.fd, 1)
            wait_for(lambda: (lib.vp_netmap_sync(rx.fd, 0), got.extend(rx.ring_port.recv()))[0]
                     or len(got) >= min(i + chunk, len(frames)), timeout=10)
    finally:
        tx.close()
        rx.close()
    return got


def _frames(n, size=64):
    return [bytes.fromhex("020000000002020000000001") + b"\x88\xb5" + bytes([i]) * (size - 14) for i in range(n)]


@pytest.mark.skipif(not os.path.exists("/dev/netmap"), reason="no /dev/netmap: the netmap module is not loaded")
@pytest.mark.parametrize("share", [False, True], ids=["copy", "zero-copy"])
def test_pipeline_between_two_vale_switches(pipeline_factory, share):
    """A sender on VALE switch vp0, the pipeline joining vp0 and vp1, a receiver on vp1:
    every frame arrives, through real netmap rings and sync ioctls. With @share= both of the
    pipeline's ports live in one memory region and it swaps buffers instead of copying."""
    from pipeline import control
    second = "valevp1:sw@share=valevp0:sw" if share else "valevp1:sw"
    p = pipeline_factory(two_ports("nmv", "valevp0:sw", second, flows=("in_port=1,actions=output:2",)))
    frames = _frames(100)
    assert _through("valevp0:gen", "valevp1:sink", frames) == frames
    st = p.stats()
    ports = control.request(p.ctl, "ports")
    assert (ports[0]["io"]["mem_id"] == ports[1]["io"]["mem_id"]) == share
    # the first frame went through the slow path; the fast path moved the rest
    assert (st["tx_swapped"] >= 90) if share else (st["tx_copied"] >= 90 and st["tx_swapped"] == 0), st


@pytest.mark.skipif(not os.path.exists("/dev/netmap"), reason="no /dev/netmap: the netmap module is not loaded")
def test_vale_control_requests():
    """vale-ctl's requests: a persistent port is created, attached, listed, detached and
    removed; the kernel's refusals come back as messages."""
    from bindings.netmap.port import NetmapError, vale_attach, vale_delif, vale_detach, vale_list, vale_newif
    vale_newif("vpper0")
    try:
        with pytest.raises(NetmapError, match="vpper0"):
            vale_newif("vpper0")                        # exists already
        idx = vale_attach("valevpc:vpper0")
        assert (idx, "valevpc:vpper0") in [(p, n) for _, p, n in vale_list()]
        assert vale_detach("valevpc:vpper0") == idx
        assert "valevpc:vpper0" not in [n for _, _, n in vale_list()]
    finally:
        vale_delif("vpper0")
    with pytest.raises(NetmapError):
        vale_delif("vpper0")
    with pytest.raises(NetmapError, match="must not start with 'vale'"):
        vale_newif("valebad")


NETMAP = pytest.mark.skipif(not os.path.exists("/dev/netmap"), reason="no /dev/netmap: the netmap module is not loaded")


@NETMAP
def test_gen_and_sink_on_one_vale_switch():
    """valepipe gen/sink as netmap users of a VALE switch (one sync ioctl per batch): every
    frame sent is counted on the other port, with no sync errors."""
    sw = f"valeg{os.getpid() % 10000}"
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "gen", f"{sw}:gen", "--rx", f"{sw}:sink",
                        "--count", "20000", "--size", "1514", "--batch", "64", "--json"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["sent"] == res["rx"]["received"] == 20000, res
    assert res["rx"]["bytes"] == 20000 * 1514 and res["sync_errors"] == res["rx"]["sync_errors"] == 0


# host H's stack on h0 (10.64.0.1); peer P on the veth's other end, h1 (10.64.0.2)
HOST_RING_LAB = ('[[netns]]\nname = "nH@"\n[[netns]]\nname = "nP@"\n'
                 '[[veth]]\nname = "h0@"\nnetns = "nH@"\naddress = ["10.64.0.1/24"]\nipv6 = false\n'
                 'peer = "h1@"\npeer_netns = "nP@"\npeer_address = ["10.64.0.2/24"]\npeer_ipv6 = false\n')


@NETMAP
@pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and veth need root")
def test_pipeline_between_nic_and_host_stack(lab, pipeline_factory):
    """netmap:h0 (the NIC's rings) and netmap:h0^ (its host rings): once h0 is in netmap mode
    its stack no longer sees the wire, so the peer reaches H only through the pipeline —
    ping and a checksummed TCP transfer both ways, and the pipeline counted every frame."""
    L = lab(HOST_RING_LAB)
    nic = f"netmap:{L.name('h0')}@netns={L.name('nH')}"
    host = f"netmap:{L.name('h0')}^@netns={L.name('nH')}"
    p = pipeline_factory(two_ports("nh" + L.tag, nic, host,
                                   flows=("in_port=1,actions=output:2", "in_port=2,actions=output:1")))
    ok, out = L.ping("nP", "10.64.0.1")
    assert ok, out
    sent, got = L.transfer("nP", "nH", "10.64.0.1", nbytes=2_000_000)
    assert sent == got and sent.startswith("2000000 "), (sent, got)
    st = p.stats()
    wire, stack = st["ports"]
    assert wire["rx_packets"] >= 3 + 2_000_000 // 1500 and stack["rx_packets"] >= 3, st["ports"]
    assert wire["rx_packets"] == stack["tx_packets"] and stack["rx_packets"] == wire["tx_packets"], st["ports"]
    assert sum(st["drops"].values()) == 0, st["drops"]
    assert wire["io"]["mem_id"] == stack["io"]["mem_id"] and st["tx_swapped"] > 0     # one region: swaps



@NETMAP
@pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and veth need root")
def test_link_down_under_a_netmap_port(lab, pipeline_factory):
    """The peer's link goes down and up while the pipeline runs on netmap:h0 and h0^: the
    pipeline survives, any refused sync is counted (never a crash), and traffic resumes."""
    L = lab(HOST_RING_LAB)
    nic = f"netmap:{L.name('h0')}@netns={L.name('nH')}"
    p = pipeline_factory(two_ports("nd" + L.tag, nic, nic.replace("@", "^@", 1),
                                   flows=("in_port=1,actions=output:2", "in_port=2,actions=output:1")))
    assert L.ping("nP", "10.64.0.1")[0]
    for state in ("down", "up"):
        subprocess.run(["ip", "-n", L.name("nH"), "link", "set", L.name("h0"), state], check=True, timeout=30)
        time.sleep(0.5)
    assert wait_for(lambda: L.ping("nP", "10.64.0.1", count=1)[0], timeout=20, step=0.2)
    st = p.stats()
    assert p.proc.poll() is None and isinstance(st["ports"][0]["io"]["sync_errors"], int)
    p.stop()
    assert "Traceback" not in p.proc.stderr.read()


@NETMAP
def test_pipeline_on_netmap_pipes(pipeline_factory):
    """netmap pipes: the pipeline holds the `{1` ends, a sender and a receiver the `}1` ends;
    frames cross master -> slave -> pipeline -> master -> slave, in order."""
    sw = f"valep{os.getpid() % 10000}"
    pipeline_factory(two_ports("np", f"{sw}:a{{1", f"{sw}:b{{1", flows=("in_port=1,actions=output:2",)))
    frames = _frames(20, size=60)
    assert _through(f"{sw}:a}}1", f"{sw}:b}}1", frames, chunk=20) == frames
