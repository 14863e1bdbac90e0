"""What the OpenFlow tests share: a pipeline with an OpenFlow listener on shm: ports,
`ovs-ofctl -O OpenFlow13` against it and against an Open vSwitch bridge, output made
comparable, and a bare OpenFlow 1.3 client (os-ken's controller-side codecs) for
requests no tool sends."""
import re
import socket
import struct
import subprocess
import time

from pipeline import control

OFCTL = ("ovs-ofctl", "-O", "OpenFlow13")


def config(name, ports, listen="ptcp:0:127.0.0.1", controller=None, extra="", flows=()):
    lines = [f'[pipeline]\nname = "{name}"\nrun_dir = "@RUN@"\n']
    for uri in ports:
        lines.append(f'[[port]]\nuri = "{uri}"\n')
    lines.append("[openflow]\n")
    if listen:
        lines.append(f'listen = "{listen}"\n')
    if controller:
        lines.append("controller = [" + ", ".join(f'"{c}"' for c in controller) + "]\n")
    lines.append(extra)
    if flows:
        lines.append("[slowpath]\nflows = [" + ", ".join(f'"{f}"' for f in flows) + "]\n")
    return "".join(lines)


def openflow_stats(pipe):
    return control.request(f"{pipe.run_dir}/slowpath.ctl", "stats")["openflow"]


def listen_port(pipe):
    return openflow_stats(pipe)["listen_port"]


def ofctl(target, *args, env=None, check=True):
    r = subprocess.run([*OFCTL, args[0], target, *args[1:]], capture_output=True, text=True, env=env, timeout=60)
    if check and r.returncode:
        raise AssertionError(f"ovs-ofctl {' '.join(args)} on {target}: {r.stderr.strip()}")
    return r.stdout + r.stderr


def norm(text):
    """ovs-ofctl output with what differs between two runs taken out (durations, xids)."""
    text = re.sub(r"duration=[0-9.]+s", "duration=X", text)
    return re.sub(r"xid=0x[0-9a-f]+", "xid=X", text)


class Client:
    """A bare controller-side connection: sends bytes, reads whole messages."""

    def __init__(self, port, host="127.0.0.1", hello=True, sock=None):
        """sock: a connection the switch made (to a test acting as its controller)."""
        self.s = sock or socket.create_connection((host, port), timeout=10)
        self.buf = b""
        if hello:
            from os_ken.ofproto import ofproto_v1_3 as ofp
            self.send(struct.pack("!BBHI", 4, ofp.OFPT_HELLO, 16, 1) + struct.pack("!HHI", 1, 8, 1 << 4))
            assert self.recv()[1] == ofp.OFPT_HELLO

    def send(self, data):
        self.s.sendall(data)

    def send_msg(self, msg, xid=None):
        """An os-ken message object (controller-side, serializable)."""
        if xid is not None:
            msg.xid = xid
        msg.serialize()
        self.send(bytes(msg.buf))

    def recv(self, timeout=10):
        """(version, type, xid, whole message)."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 8:
                ln = struct.unpack_from("!H", self.buf, 2)[0]
                if ln >= 8 and len(self.buf) >= ln:
                    raw, self.buf = self.buf[:ln], self.buf[ln:]
                    v, t, _, xid = struct.unpack_from("!BBHI", raw)
                    return v, t, xid, raw
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no OpenFlow message")
            self.s.settimeout(left)
            data = self.s.recv(1 << 16)
            if not data:
                raise ConnectionError("the switch closed the connection")
            self.buf += data

    def until(self, want_type, xid=None, timeout=10):
        """Messages up to one of `want_type` (and xid); returns (it, the ones before)."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            m = self.recv(max(0.01, deadline - time.monotonic()))
            if m[1] == want_type and (xid is None or m[2] == xid):
                return m, seen
            seen.append(m)

    def close(self):
        self.s.close()


def dp():
    """A stand-in datapath for os-ken's message classes."""
    from pipeline.slowpath.openflow.codec import DP
    return DP


class Controller:
    """A listening socket the switch connects to (its `controller`): accept() -> Client."""

    def __init__(self):
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(4)
        self.port = self.ls.getsockname()[1]

    def accept(self, timeout=30):
        self.ls.settimeout(timeout)
        s, _ = self.ls.accept()
        return Client(0, sock=s)

    def close(self):
        self.ls.close()
