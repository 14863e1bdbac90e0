"""Real controllers, unmodified, drive valepipe over OpenFlow 1.3 as they drive Open vSwitch:
Faucet (from PyPI) switches hosts in namespaces on veth ends — two VLANs, an ACL, learning
with idle timeouts and flow_removed, a host moving, Faucet restarted (the switch forwards
per fail_mode, then resyncs), its Prometheus counters agreeing with valepipe's — and
os-ken's simple_switch_13 (the app file of an os-ken release that shipped it) lets hosts
ping through it."""
import os
import re
import socket
import subprocess
import sys
import urllib.request

import pytest

from tests import openflow_lab as oflab
from tests.conftest import ROOT, stop, wait_for
from tests.netlab import _host_veth, _netns

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and veth need root")
BIN = os.path.dirname(sys.executable)
HOSTS = {"A": ("a", "10.67.0.1", 1), "B": ("b", "10.67.0.2", 2), "C": ("c", "10.67.0.3", 3),
         "D": ("d", "10.67.0.4", 4), "E": ("e", "10.67.0.5", 5)}
LAB = _netns(*[f"o{h}" for h in HOSTS], "vS") + "".join(
    _host_veth(f"o{h}", end, f"{ip}/24") for h, (end, ip, _) in HOSTS.items())
FAUCET_YAML = """
vlans:
  office: {vid: 100}
  guest: {vid: 200}
acls:
  no5001:
    - rule: {dl_type: 0x800, nw_proto: 6, tcp_dst: 5001, actions: {allow: 0}}
    - rule: {actions: {allow: 1}}
dps:
  vp1:
    dp_id: %d
    hardware: "Open vSwitch"
    timeout: 16
    arp_neighbor_timeout: 3
    nd_neighbor_timeout: 3
    use_idle_timeout: true
    interfaces:
      1: {native_vlan: office, acl_in: no5001}
      2: {native_vlan: office}
      3: {native_vlan: guest}
      4: {native_vlan: guest}
      5: {native_vlan: office}
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Faucet:
    """Faucet on a port of its own, its logs and Prometheus endpoint in `dir`."""

    def __init__(self, processes, d, dpid):
        self.dir, self.port, self.prom = d, free_port(), free_port()
        with open(f"{d}/faucet.yaml", "w") as f:
            f.write(FAUCET_YAML % dpid)
        self.processes, self.proc = processes, None
        self.start()

    def start(self):
        env = dict(os.environ, PATH=BIN + ":" + os.environ["PATH"], FAUCET_CONFIG=f"{self.dir}/faucet.yaml",
                   FAUCET_LOG=f"{self.dir}/faucet.log", FAUCET_EXCEPTION_LOG=f"{self.dir}/exceptions.log",
                   FAUCET_PROMETHEUS_ADDR="127.0.0.1", FAUCET_PROMETHEUS_PORT=str(self.prom))
        self.proc = self.processes([f"{BIN}/faucet", "--ryu-ofp-listen-host=127.0.0.1",
                                    f"--ryu-ofp-tcp-listen-port={self.port}"], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self):
        stop(self.proc)

    def metrics(self):
        """Faucet's own counters for the switch: name -> {labels: value}."""
        from prometheus_client.parser import text_string_to_metric_families
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{self.prom}/metrics", timeout=5).read().decode()
        except OSError:
            return {}
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
        return out

    def value(self, name, **labels):
        for k, v in self.metrics().get(name, {}).items():
            if all(dict(k).get(a) == b for a, b in labels.items()):
                return v
        return None

    def log(self):
        try:
            return open(f"{self.dir}/faucet.log").read() + open(f"{self.dir}/exceptions.log").read()
        except OSError:
            return ""


def ping(L, h, ip, count=2):
    return L.ping(f"o{h}", ip, count)[0]


def reaches(L, h, ip, timeout=30):
    return wait_for(lambda: ping(L, h, ip, 1), timeout, 0.2)


def tcp_connects(L, src, dst_ip, port):
    """A TCP connection from host `src` to a listener on `dst_ip:port` (in its host)."""
    dst = next(h for h, (_, ip, _) in HOSTS.items() if ip == dst_ip)
    srv = subprocess.Popen(["ip", "netns", "exec", L.name(f"o{dst}"), sys.executable, "-c",
                            f"import socket;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
                            f"s.bind(('{dst_ip}',{port}));s.listen(1);s.settimeout(8);"
                            f"print('ready',flush=True);c,_=s.accept();c.close()"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert srv.stdout.readline().strip() == "ready"
        r = L.run(f"o{src}", sys.executable, "-c", f"import socket;socket.create_connection(('{dst_ip}',{port}),"
                  f"timeout=3).close()", check=False)
        return r.returncode == 0
    finally:
        srv.kill()
        srv.wait()


def rules(pipe):
    return pipe.cli("dump-flows")


def diagnosis(pipe, faucet):
    """What a failure message shows: the switch's OpenFlow counters and drops, its rules,
    the end of Faucet's log."""
    st = pipe.stats()
    return (f"openflow {oflab.openflow_stats(pipe)}\ndrops {dict((k, v) for k, v in st['drops'].items() if v)}\n"
            f"upcall {st['upcall']}\n{rules(pipe)[-4000:]}\nfaucet: {faucet.log()[-2000:]}")


def test_faucet_drives_valepipe(lab, pipeline_factory, processes, tmp_path):
    L = lab(LAB)
    dpid = 0x5600 + int(L.tag, 16) % 4096
    faucet = Faucet(processes, str(tmp_path), dpid)
    name = "fc" + L.tag
    cfg = oflab.config(name, [L.uri("packet", f"{end}1", "vS") for end, _, _ in HOSTS.values()], listen="",
                     controller=[f"tcp:127.0.0.1:{faucet.port}"],
                     extra=f"datapath_id = {dpid}\nfail_mode = \"secure\"\ninactivity_probe = 2\nmax_backoff = 2\n")
    pipe = pipeline_factory(cfg)
    assert wait_for(lambda: faucet.value("of_dp_connections_total", dp_id=hex(dpid)) == 1, 30), faucet.log()[-2000:]
    assert wait_for(lambda: "Cold start configuring DP" in faucet.log() and "priority=0" in rules(pipe), 30)

    # two VLANs: hosts ping within theirs, never across
    assert reaches(L, "A", "10.67.0.2"), diagnosis(pipe, faucet)
    assert reaches(L, "A", "10.67.0.5") and reaches(L, "C", "10.67.0.4")
    for src, dst in (("A", "10.67.0.3"), ("B", "10.67.0.4"), ("D", "10.67.0.5")):
        assert not ping(L, src, dst), (src, dst)
    # the ACL on port 1 (A): TCP to 5001 is dropped, other ports pass
    assert tcp_connects(L, "A", "10.67.0.2", 5002)
    assert not tcp_connects(L, "A", "10.67.0.2", 5001)
    assert tcp_connects(L, "B", "10.67.0.5", 5001)                      # only port 1 has the ACL
    flows = rules(pipe)
    assert "tp_dst=5001 actions=drop" in flows and "cookie=0x5adc15c0" in flows

    # Faucet's counters agree with valepipe's
    st = oflab.openflow_stats(pipe)
    m = faucet.value
    assert wait_for(lambda: m("of_packet_ins_total", dp_id=hex(dpid)) == oflab.openflow_stats(pipe)["packet_ins"], 10)
    assert m("of_errors_total", dp_id=hex(dpid)) == 0 and st["errors_sent"] == 0
    assert m("of_flowmsgs_sent_total", dp_id=hex(dpid)) >= st["flow_mods"] > 0
    learned = re.findall(r"table=\d+, .*dl_vlan=(\d+),dl_src=", flows)
    for vid in ("100", "200"):
        assert m("vlan_hosts_learned", dp_id=hex(dpid), vlan=vid) == learned.count(vid), (vid, learned)

    # a host moves: A's address and MAC come up on E's port (5); B finds it there
    a_mac = L.run("oA", "cat", f"/sys/class/net/{L.name('a0')}/address").stdout.strip()
    L.run("oA", "ip", "link", "set", L.name("a0"), "down")
    L.run("oE", "ip", "link", "set", L.name("e0"), "down")
    L.run("oE", "ip", "link", "set", L.name("e0"), "address", a_mac)
    L.run("oE", "ip", "addr", "flush", "dev", L.name("e0"))
    L.run("oE", "ip", "addr", "add", "10.67.0.1/24", "dev", L.name("e0"))
    L.run("oE", "ip", "link", "set", L.name("e0"), "up")
    assert reaches(L, "E", "10.67.0.2", 40)
    assert reaches(L, "B", "10.67.0.1", 40)
    assert wait_for(lambda: re.search(rf"in_port=5,dl_vlan=100,dl_src={a_mac}", rules(pipe)), 10)

    # learning with idle timeouts: a host that goes quiet is forgotten through flow_removed
    removed = oflab.openflow_stats(pipe)["flow_removed"]
    assert wait_for(lambda: oflab.openflow_stats(pipe)["flow_removed"] > removed, 60)
    quiet = wait_for(lambda: faucet.value("vlan_hosts_learned", dp_id=hex(dpid), vlan="200") == 0, 60)
    assert quiet and "dl_vlan=200,dl_src=" not in rules(pipe)

    # Faucet goes away: secure mode keeps the rules (learned hosts still ping, VLANs apart)
    assert reaches(L, "B", "10.67.0.1")
    faucet.stop()
    assert wait_for(lambda: oflab.openflow_stats(pipe)["controllers_connected"] == 0, 20)
    assert ping(L, "B", "10.67.0.1") and not ping(L, "B", "10.67.0.3")
    assert not oflab.openflow_stats(pipe)["fail_open_now"]
    # and comes back: it reconnects (backoff), resyncs the tables, hosts are learned anew
    faucet.start()
    assert wait_for(lambda: oflab.openflow_stats(pipe)["controllers_connected"] == 1, 40)
    assert reaches(L, "C", "10.67.0.4", 40) and reaches(L, "B", "10.67.0.1", 40)
    assert not ping(L, "C", "10.67.0.2")
    assert pipe.stats()["upcall"]["slowpath_restarts"] == 0


def simple_switch_13():
    """os-ken's simple_switch_13.py, unmodified, from os-ken 1.4.1 (the last release that
    ships its sample apps): `make test` fetches it with pip (its Makefile target, run here
    when pytest runs alone)."""
    target = "build/openflow-apps/simple_switch_13.py"
    if not os.path.exists(os.path.join(ROOT, target)):
        subprocess.run(["make", "-s", target], cwd=ROOT, check=True, capture_output=True, timeout=300)
    return os.path.join(ROOT, target)


def test_os_ken_simple_switch_13(lab, pipeline_factory, processes):
    app = simple_switch_13()
    L = lab(_netns("oA", "oB", "oC", "vS") + _host_veth("oA", "a", "10.68.0.1/24")
            + _host_veth("oB", "b", "10.68.0.2/24") + _host_veth("oC", "c", "10.68.0.3/24"))
    port = free_port()
    processes([f"{BIN}/osken-manager", "--ofp-listen-host=127.0.0.1", f"--ofp-tcp-listen-port={port}", app],
              env=dict(os.environ, PATH=BIN + ":" + os.environ["PATH"]),
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    name = "ss" + L.tag
    pipe = pipeline_factory(oflab.config(name, [L.uri("packet", f"{e}1", "vS") for e in "abc"], listen="",
                                       controller=[f"tcp:127.0.0.1:{port}"], extra="max_backoff = 1\n"))
    assert wait_for(lambda: "CONTROLLER:65535" in pipe.cli("dump-flows"), 30)     # its table-miss rule
    assert wait_for(lambda: L.ping("oA", "10.68.0.2", 1)[0], 30, 0.2)
    assert L.ping("oA", "10.68.0.2", 5)[0] and L.ping("oC", "10.68.0.1", 3)[0]
    flows = pipe.cli("dump-flows")
    # the app learned: a priority-1 rule per direction, and they carry the traffic now
    assert len(re.findall(r"priority=1,in_port=\d,dl_src=", flows)) >= 4, flows
    st = oflab.openflow_stats(pipe)
    assert st["packet_ins"] >= 2 and st["packet_outs"] >= 1 and st["errors_sent"] == 0
    hits = pipe.stats()["hits"] + pipe.stats()["megaflow_hits"]
    assert L.ping("oB", "10.68.0.1", 5)[0]
    assert pipe.stats()["hits"] + pipe.stats()["megaflow_hits"] > hits          # in the fast path
