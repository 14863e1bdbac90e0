"""pcap: ports and --mirror: a capture replayed through the pipeline comes out byte for
byte as expected, in files tcpdump reads; bad files are refused or counted."""
import os
import shutil
import struct
import subprocess
import sys

import pytest
from scapy.all import ARP, IP, TCP, UDP, Dot1Q, Ether, rdpcap, wrpcap

from tests.conftest import ROOT

CFG = """
[pipeline]
name = "pc{tag}"
run_dir = "{dir}/run"
[[port]]
uri = "pcap:{dir}/in.pcap@rate={rate}"
[[port]]
uri = "pcap:{dir}/out.pcap@write"
[slowpath]
flows = ["in_port=1,udp,actions=mod_nw_dst:10.9.9.9,mod_tp_dst:4444,output:2",
         "in_port=1,arp,actions=drop",
         "priority=0,in_port=1,actions=output:2"]
"""


def _frames():
    out = []
    for i in range(40):
        out.append(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") /
                   IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1000 + i % 5, dport=53) / (b"u" * i))
        out.append(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / Dot1Q(vlan=7) /
                   IP(src="10.0.0.1", dst="10.0.0.3") / TCP(sport=2000 + i % 3, dport=80, flags="A") / (b"t" * i))
        out.append(Ether(src="02:00:00:00:00:01", dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="10.0.0.1", pdst="10.0.0.2"))
    for n, f in enumerate(out):
        f.time = 1_700_000_000 + n * 0.001
    return out


def _expected(frames):
    exp = []
    for f in frames:
        if ARP in f:
            continue
        g = f.copy()
        if UDP in g and Dot1Q not in g:
            g[IP].dst = "10.9.9.9"
            g[UDP].dport = 4444
            del g[IP].chksum, g[UDP].chksum
        exp.append(bytes(g.__class__(bytes(g))))
    return exp


def _run(tmp_path, rate="max", extra=()):
    cfg = tmp_path / "p.toml"
    cfg.write_text(CFG.format(tag=os.getpid() % 10000, dir=tmp_path, rate=rate))
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(cfg), "-q", "--duration", "4",
                        "--stats-json", str(tmp_path / "st.json"), *extra], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    import json
    return json.load(open(tmp_path / "st.json")), r


@pytest.mark.parametrize("rate", ["max", "recorded"])
def test_pcap_in_pipeline_pcap_out(tmp_path, rate):
    frames = _frames()
    wrpcap(str(tmp_path / "in.pcap"), frames)
    st, _ = _run(tmp_path, rate, ["--mirror", f"2={tmp_path}/mirror.pcap"])
    out = [bytes(p) for p in rdpcap(str(tmp_path / "out.pcap"))]
    exp = _expected(frames)
    # the first frame of each flow waits for the slow path, so order across flows may
    # change; each flow's own order and every byte may not
    assert sorted(out) == sorted(exp)
    for key in {e[14:40] for e in exp}:
        assert [o for o in out if o[14:40] == key] == [e for e in exp if e[14:40] == key]
    mirror = [bytes(p) for p in rdpcap(str(tmp_path / "mirror.pcap"))]
    assert mirror == out
    io_in, io_out = st["ports"][0]["io"], st["ports"][1]["io"]
    assert io_in["rx_packets"] == len(frames) and io_in["eof"]
    assert io_out["tx_packets"] == len(exp) and st["ports"][1]["mirror"]["packets"] == len(exp)
    if shutil.which("tcpdump"):
        r = subprocess.run(["tcpdump", "-nr", str(tmp_path / "out.pcap")], capture_output=True, text=True)
        assert r.returncode == 0 and len(r.stdout.splitlines()) == len(exp)


def test_pcap_bad_records_are_counted(tmp_path):
    frames = _frames()[:9]
    wrpcap(str(tmp_path / "in.pcap"), frames)
    data = bytearray(open(tmp_path / "in.pcap", "rb").read())
    # record 3: captured length 0; record 5: longer than a buffer; then a cut-off tail
    offs, off = [], 24
    while off < len(data):
        offs.append(off)
        off += 16 + struct.unpack_from("<I", data, off + 8)[0]
    struct.pack_into("<II", data, offs[5] + 8, 3000, 3000)
    data = data[:offs[5] + 16] + b"\0" * 3000 + data[offs[6]:]
    struct.pack_into("<I", data, offs[3] + 8, 0)
    data = data[:offs[3] + 16] + data[offs[4]:]
    data += b"\x01\x02\x03"
    open(tmp_path / "in.pcap", "wb").write(bytes(data))
    st, _ = _run(tmp_path)
    io = st["ports"][0]["io"]
    assert io["rx_packets"] == 7 and io["rx_truncated"] == 1 and io["rx_errors"] == 2, io


def test_pcap_not_a_capture_is_refused(tmp_path):
    (tmp_path / "in.pcap").write_bytes(b"\x0a\x0d\x0d\x0a" + b"\0" * 40)     # pcapng
    cfg = tmp_path / "p.toml"
    cfg.write_text(CFG.format(tag=1, dir=tmp_path, rate="max"))
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(cfg), "-q", "--duration", "1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "not a pcap file" in r.stderr and "Traceback" not in r.stderr


def test_pcap_writer_closed_when_the_port_cannot_be_made(tmp_path):
    """A port refused after its output file was opened leaves no file descriptor behind."""
    from bindings.adapter import AdapterError
    from bindings.pcap import PcapAdapter
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(AdapterError, match="bad geometry"):
        PcapAdapter(f"pcap:{tmp_path}/out.pcap@write", slots=1)
    assert len(os.listdir("/proc/self/fd")) == before
