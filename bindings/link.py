"""Link state of the interface under a port: up, down, no carrier or gone, and its speed;
a TAP can be brought up (as Open vSwitch does for its ports).

A Link keeps a socket opened in the port's network namespace, so the interface is found
there by index however the pipeline's own namespace differs; a few ioctls per call.
"""
import ctypes
import errno
import fcntl
import socket
import struct

SIOCGIFNAME, SIOCGIFFLAGS, SIOCSIFFLAGS, SIOCGIFMTU, SIOCGIFINDEX, SIOCETHTOOL = \
    0x8910, 0x8913, 0x8914, 0x8921, 0x8933, 0x8946
ETHTOOL_GSET, ETHTOOL_GDRVINFO = 0x1, 0x3
IFF_UP, IFF_RUNNING = 0x1, 0x40
IFREQ = 40                       # struct ifreq: a 16-byte name and a 24-byte union

HINTS = {
    "down": "the interface is administratively down{why}; frames to it are dropped (tx_link_down) "
            "until it is up: {up_cmd}",
    "no-carrier": "no carrier{cause}; frames to it are dropped (tx_link_down) until it has one",
    "gone": "the interface no longer exists{renamed}; frames to it are dropped (tx_link_down); the port "
            "re-opens an interface of its name when one appears (a guest's QEMU re-creating its TAP)",
}


class Link:
    """The interface with index `ifindex` (or name `ifname`), seen from the namespace the
    caller is in when it makes this object."""

    def __init__(self, ifname=None, ifindex=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.ifname = ifname
        self.ifindex = ifindex if ifindex is not None else self._index(ifname)
        self.last = "up"                          # what was last reported
        self.netns = None                         # the namespace's name, for the commands hints give
        self.left_down = False                    # a TAP the port was told not to bring up (up=no)

    def close(self):
        self.sock.close()

    def _ioctl(self, req, ifname, data=b""):
        ifr = struct.pack("16s", ifname.encode()) + data.ljust(IFREQ - 16, b"\0")
        return fcntl.ioctl(self.sock.fileno(), req, ifr)

    def _index(self, ifname):
        return struct.unpack_from("i", self._ioctl(SIOCGIFINDEX, ifname), 16)[0]

    def name(self):
        """The interface's current name, or None once it is gone."""
        try:
            r = fcntl.ioctl(self.sock.fileno(), SIOCGIFNAME,
                            struct.pack("16si", b"", self.ifindex).ljust(IFREQ, b"\0"))
        except OSError as e:
            if e.errno in (errno.ENODEV, errno.ENXIO):
                return None
            raise
        return r[:16].split(b"\0", 1)[0].decode()

    def _flags(self, ifname):
        return struct.unpack_from("H", self._ioctl(SIOCGIFFLAGS, ifname), 16)[0]

    def _ethtool(self, ifname, cmd, size):
        buf = ctypes.create_string_buffer(struct.pack("I", cmd), size)
        self._ioctl(SIOCETHTOOL, ifname, struct.pack("P", ctypes.addressof(buf)))
        return buf.raw

    def driver(self):
        """The kernel driver's name ("tun" for a TAP, "veth", ...), or None."""
        try:
            return self._ethtool(self.ifname or self.name(), ETHTOOL_GDRVINFO, 196)[4:36].split(b"\0", 1)[0].decode()
        except (OSError, AttributeError):
            return None

    def mtu(self):
        return struct.unpack_from("i", self._ioctl(SIOCGIFMTU, self.name()), 16)[0]

    def is_tap(self):
        return self.driver() == "tun"

    def bring_up(self):
        """Set IFF_UP if it is not set; True if it had to be."""
        name = self.name()
        flags = self._flags(name)
        if flags & IFF_UP:
            return False
        self._ioctl(SIOCSIFFLAGS, name, struct.pack("H", flags | IFF_UP))
        return True

    def returned(self):
        """True when an interface of this one's name exists now with another index: the
        name is back (a guest's QEMU re-created its TAP)."""
        if not self.ifname:
            return False
        try:
            return self._index(self.ifname) != self.ifindex
        except OSError:
            return False

    def state(self):
        """{"link": up|down|no-carrier|gone, "speed_mbps": N or None, "ifname": current name}."""
        name = self.name()
        if name is None:
            return {"link": "gone", "speed_mbps": None, "ifname": self.ifname}
        flags = self._flags(name)
        link = "down" if not flags & IFF_UP else "up" if flags & IFF_RUNNING else "no-carrier"
        speed = None
        try:
            cmd = self._ethtool(name, ETHTOOL_GSET, 44)
            s = struct.unpack_from("H", cmd, 12)[0] | struct.unpack_from("H", cmd, 32)[0] << 16
            speed = None if s in (0, 0xFFFF, 0xFFFFFFFF) else s
        except OSError:
            pass
        return {"link": link, "speed_mbps": speed, "ifname": name}

    def change(self):
        """A sentence when the state differs from the last one reported, else None."""
        st = self.state()
        if st["link"] == self.last:
            return None
        self.last = st["link"]
        if st["link"] == "up":
            return "link up" + (f" ({st['speed_mbps']} Mb/s)" if st["speed_mbps"] else "")
        renamed = "" if st["ifname"] == self.ifname or st["link"] == "gone" else f" (now {st['ifname']})"
        if st["link"] == "gone" and self.ifname:
            try:
                self._index(self.ifname)
                renamed = f" (a new {self.ifname} exists, but the port holds the old one)"
            except OSError:
                pass
        up_cmd = f"ip {'-n ' + self.netns + ' ' if self.netns else ''}link set {st['ifname']} up"
        why = " (the port has up=no, so valepipe leaves it so)" if self.left_down else ""
        cause = ""
        if st["link"] == "no-carrier":
            drv = self.driver()
            cause = (" (for a TAP: nothing holds its file side; is its QEMU running?)" if drv == "tun" else
                     " (a veth: is its peer down, or gone with its namespace?)" if drv == "veth" else "")
        return f"link {st['link']}: " + HINTS[st["link"]].format(renamed=renamed, up_cmd=up_cmd, why=why, cause=cause)
