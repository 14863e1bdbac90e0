"""A private Open vSwitch (ovsdb-server + ovs-vswitchd with the dummy datapath) in a temp
directory, used as an oracle: add rules, ofproto/trace packets over its unixctl socket."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

NEEDED = ("ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovs-ofctl")


def available():
    return all(shutil.which(b) for b in NEEDED) and os.path.exists("/usr/share/openvswitch/vswitch.ovsschema")


class OVS:
    def __init__(self, nports=4):
        self.dir = tempfile.mkdtemp(prefix="valepipe-ovs-")
        self.env = dict(os.environ, OVS_RUNDIR=self.dir, OVS_LOGDIR=self.dir, OVS_DBDIR=self.dir)
        self.sock = None
        try:
            self._start(nports)
        except BaseException:
            self.close()                 # the daemons already started: nobody else would stop them
            raise

    def _start(self, nports):
        d = self.dir
        self._run("ovsdb-tool", "create", f"{d}/db", "/usr/share/openvswitch/vswitch.ovsschema")
        self._run("ovsdb-server", f"{d}/db", f"--remote=punix:{d}/db.sock", f"--pidfile={d}/ovsdb.pid",
                  f"--unixctl={d}/ovsdb.ctl", f"--log-file={d}/ovsdb.log", "--detach")
        self.vsctl("--no-wait", "init")
        self._run("ovs-vswitchd", f"unix:{d}/db.sock", "--enable-dummy=override", f"--pidfile={d}/vswitchd.pid",
                  f"--unixctl={d}/vswitchd.ctl", f"--log-file={d}/vswitchd.log", "--detach")
        args = ["add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=dummy",
                "protocols=OpenFlow10,OpenFlow13", "fail-mode=secure"]
        for i in range(1, nports + 1):
            args += ["--", "add-port", "br0", f"p{i}", "--", "set", "interface", f"p{i}", "type=dummy",
                     f"ofport_request={i}"]
        self.vsctl(*args)
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
        semantics), else OpenFlow 1.3 (goto_table, write_metadata)."""
        try:
            self.ofctl("add-flow", "br0", text)
        except RuntimeError:
            self.ofctl("-O", "OpenFlow13", "add-flow", "br0", text)

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
