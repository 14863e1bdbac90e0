"""A private Open vSwitch (ovsdb-server + ovs-vswitchd with the dummy datapath) in a temp
directory, used as an oracle: add rules, ofproto/trace packets over its unixctl socket, or
push real frames through it (netdev-dummy/receive) and read what each port sent from its
`options:tx_pcap` capture."""
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time

NEEDED = ("ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovs-ofctl")


class ProtocolDependent(Exception):
    """A rule whose meaning in Open vSwitch depends on the OpenFlow version that carried it."""


def masked_set_field(text):
    return re.search(r"set_field:[^,]*/[^,]*->", text.partition("actions=")[2]) is not None


def needs_of13(text):
    """Whether ovs-ofctl needs OpenFlow 1.1+ to keep this rule's meaning."""
    acts = text.partition("actions=")[2]
    return "goto_table" in acts or "push_vlan" in acts or masked_set_field(text)


def vlan_match_oxm_exact(text):
    """Whether OpenFlow 1.1+'s OXM carries the rule's vlan_tci match unchanged. ovs-ofctl
    puts it as vlan_vid (maskable) and, only when the VID part is not 0, an exact vlan_pcp:
    a partial PCP mask becomes exact, a PCP with VID 0 is dropped, and a PCP without a tag
    makes the switch refuse the rule (OFPBMC_BAD_PREREQ). NXM (OpenFlow 1.0) carries it all."""
    from pipeline.slowpath.flowtext import FlowError, parse_flow
    try:
        v, m = parse_flow(text).match.get("vlan_tci", (0, 0))
    except FlowError:
        return True
    pcp_mask = m & 0xE000
    if pcp_mask == 0:
        return True
    if pcp_mask == 0xE000 and v & m & 0x1000:
        return True                              # a tag, its PCP exact: vlan_vid + vlan_pcp
    return bool(m & 0x1000) and v == 0           # no tag: an untagged frame's PCP bits are 0


def available():
    return all(shutil.which(b) for b in NEEDED) and os.path.exists("/usr/share/openvswitch/vswitch.ovsschema")


class PcapTail:
    """The frames a pcap file gained since the last read (a capture still being written)."""

    def __init__(self, path):
        self.path, self.pos = path, 24              # after the file header

    def read(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return []
        out, pos = [], 0
        while pos + 16 <= len(data):
            incl = struct.unpack_from("<I", data, pos + 8)[0]
            if pos + 16 + incl > len(data):
                break                               # a record still being written
            out.append(data[pos + 16:pos + 16 + incl])
            pos += 16 + incl
        self.pos += pos
        return out


class OVS:
    def __init__(self, nports=4, capture=False, flow_limit=None):
        """capture: every port (and the bridge's LOCAL port, br0) records what it sends;
        flow_limit=0: no datapath flow is ever installed, so every packet is translated
        anew (OVS's own caching out of the comparison)."""
        self.dir = tempfile.mkdtemp(prefix="valepipe-ovs-")
        self.env = dict(os.environ, OVS_RUNDIR=self.dir, OVS_LOGDIR=self.dir, OVS_DBDIR=self.dir)
        self.sock = None
        try:
            self._start(nports, capture, flow_limit)
        except BaseException:
            self.close()                 # the daemons already started: nobody else would stop them
            raise

    def _start(self, nports, capture, flow_limit):
        d = self.dir
        self._run("ovsdb-tool", "create", f"{d}/db", "/usr/share/openvswitch/vswitch.ovsschema")
        self._run("ovsdb-server", f"{d}/db", f"--remote=punix:{d}/db.sock", f"--pidfile={d}/ovsdb.pid",
                  f"--unixctl={d}/ovsdb.ctl", f"--log-file={d}/ovsdb.log", "--detach")
        self.vsctl("--no-wait", "init")
        if flow_limit is not None:
            self.vsctl("--no-wait", "set", "Open_vSwitch", ".", f"other_config:flow-limit={flow_limit}")
        self._run("ovs-vswitchd", f"unix:{d}/db.sock", "--enable-dummy=override", f"--pidfile={d}/vswitchd.pid",
                  f"--unixctl={d}/vswitchd.ctl", f"--log-file={d}/vswitchd.log", "--detach")
        args = ["add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=dummy",
                "protocols=OpenFlow10,OpenFlow13", "fail-mode=secure"]
        for i in range(1, nports + 1):
            args += ["--", "add-port", "br0", f"p{i}", "--", "set", "interface", f"p{i}", "type=dummy",
                     f"ofport_request={i}"]
            if capture:
                args += [f"options:tx_pcap={d}/p{i}.pcap"]
        if capture:
            args += ["--", "set", "interface", "br0", f"options:tx_pcap={d}/br0.pcap"]
        self.vsctl(*args)
        self.captures = {}                          # capture file -> PcapTail
        self.received = 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(f"{d}/vswitchd.ctl")
        self.buf, self.id = "", 0
        self.dp_to_of = {}
        for line in self.appctl("dpif/show").splitlines():
            m = re.match(r"\s+\S+ (\d+)/(\d+):", line)
            if m:
                self.dp_to_of[int(m.group(2))] = int(m.group(1))
        self.ofctl("del-flows", "br0")

    def _run(self, *cmd):
        subprocess.run(cmd, env=self.env, check=True, capture_output=True, timeout=30)

    def vsctl(self, *args):
        self._run("ovs-vsctl", f"--db=unix:{self.dir}/db.sock", *args)

    def ofctl(self, *args):
        r = subprocess.run(["ovs-ofctl", *args], env=self.env, capture_output=True, text=True, timeout=30)
        if r.returncode:
            raise RuntimeError(f"ovs-ofctl {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def add_flow(self, text):
        """OpenFlow 1.0 + NXM when it can express the rule (keeps OF1.0 mod_vlan_vid
        semantics), else OpenFlow 1.3 (push_vlan). A masked set_field goes as OpenFlow 1.3:
        ovs-ofctl turns set_field:10.0.0.0/8->ip_dst into an OF1.0 mod_nw_dst, which drops
        the mask; a rule with one that only OF1.0 carries raises ProtocolDependent. So does
        one that goes over OpenFlow 1.3 with a VLAN match OXM cannot carry (see
        vlan_match_oxm_exact)."""
        exact = vlan_match_oxm_exact(text)
        if masked_set_field(text):
            try:
                self.ofctl("-O", "OpenFlow13", "add-flow", "br0", text)
            except RuntimeError:
                if not exact:
                    raise ProtocolDependent(text) from None    # refused for how OXM carries its VLAN match
                self.ofctl("add-flow", "br0", text)      # refused by both: RuntimeError
                self.ofctl("--strict", "del-flows", "br0", text.partition(",actions=")[0])
                raise ProtocolDependent(text) from None
            if not exact:
                self.ofctl("-O", "OpenFlow13", "--strict", "del-flows", "br0", text.partition(",actions=")[0])
                raise ProtocolDependent(text)
            return
        order = [["-O", "OpenFlow13"], []] if needs_of13(text) else [[], ["-O", "OpenFlow13"]]
        errors, oxm_refused = [], False
        for args in order:
            try:
                self.ofctl(*args, "add-flow", "br0", text)
            except RuntimeError as e:
                errors.append(e)
                oxm_refused |= bool(args) and not exact and "OFPBMC_BAD_PREREQ" in str(e)
                continue
            if args and not exact:
                # taken over OpenFlow 1.3 with another VLAN match than the text says
                self.ofctl("-O", "OpenFlow13", "--strict", "del-flows", "br0", text.partition(",actions=")[0])
                raise ProtocolDependent(text)
            return
        if oxm_refused:
            raise ProtocolDependent(text)       # refused for how OXM carries its VLAN match
        raise errors[-1]

    def appctl(self, method, *params):
        """One JSON-RPC call on the persistent unixctl connection (~0.3 ms)."""
        self.id += 1
        self.sock.sendall(json.dumps({"method": method, "params": list(params), "id": self.id}).encode())
        dec = json.JSONDecoder()
        while True:
            try:
                obj, end = dec.raw_decode(self.buf)
                self.buf = self.buf[end:].lstrip()
                if obj.get("error"):
                    raise RuntimeError(f"{method}: {obj['error']}")
                return obj["result"]
            except json.JSONDecodeError:
                data = self.sock.recv(1 << 16)
                if not data:
                    raise ConnectionError("ovs-vswitchd closed its unixctl socket")
                self.buf += data.decode()

    def add_flows(self, texts):
        for t in texts:
            self.add_flow(t)

    def receive(self, port, frame, timeout=10.0):
        """Push a frame in on dummy port `port` (p1.., or br0 for LOCAL) and wait until the
        datapath has handled it: its main thread takes port input and this socket in turn,
        so once its packet counter moved the frame has been translated and sent."""
        self.appctl("netdev-dummy/receive", port, frame.hex())
        self.received += 1
        deadline = time.monotonic() + timeout
        while True:
            out = self.appctl("dpif-netdev/pmd-stats-show")
            m = re.search(r"main thread:\s+packets received: (\d+)", out)
            if m and int(m.group(1)) >= self.received:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"ovs-vswitchd did not take frame {self.received} on {port}")

    def sent(self, port):
        """Frames port `port` (p1.., br0) sent since the last call, from its capture."""
        path = f"{self.dir}/{port}.pcap"
        if path not in self.captures:
            self.captures[path] = PcapTail(path)
        return self.captures[path].read()

    def trace(self, in_port, hexpkt):
        out = self.appctl("ofproto/trace", "br0", f"in_port={in_port}", hexpkt)
        dp = re.search(r"^Datapath actions: (.*)$", out, re.M).group(1)
        mf = re.search(r"^Megaflow: (.*)$", out, re.M).group(1)
        return dp, mf, out

    def close(self):
        try:
            if self.sock:
                self.sock.close()
        except OSError:
            pass
        for pid in ("vswitchd.pid", "ovsdb.pid"):
            try:
                os.kill(int(open(f"{self.dir}/{pid}").read()), signal.SIGTERM)
            except (OSError, ValueError):
                pass
        time.sleep(0.1)
        shutil.rmtree(self.dir, ignore_errors=True)
