"""pcap: ports — a capture file read as a port's receptions, or written with what it sends.

`pcap:FILE[@rate=max|recorded,loop=N]` reads FILE (loop=0 forever); frames sent to it are
counted as tx_discarded. `pcap:FILE@write` writes what the port sends (tcpdump-readable).
"""
import os
import stat
import struct

from bindings.adapter import Adapter, AdapterError, parse_uri
from pipeline._native import ffi, lib

OPTIONS = {"write": False, "rate": "max", "loop": 1}
MAGICS = {b"\xd4\xc3\xb2\xa1": (0, 0), b"\xa1\xb2\xc3\xd4": (1, 0),
          b"\x4d\x3c\xb2\xa1": (0, 1), b"\xa1\xb2\x3c\x4d": (1, 1)}   # (swapped, ns) on little-endian
LINKTYPE_ETHERNET = 1
MAX_REPLAY = 1 << 30          # bytes of a capture replayed (held in memory)


def pcap_header(snaplen=65535):
    return struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET)


class PcapWriter:
    """A pcap file written by C (mirrors, pcap:...@write ports)."""

    def __init__(self, path):
        from pipeline.userfiles import UserFileError, open_write
        try:        # never through a link, into a FIFO (no hang) or another user's file
            fd = open_write(path, "pcap file")
        except UserFileError as e:
            raise AdapterError(f"cannot write {e}") from None
        os.write(fd, pcap_header())
        self.path = path
        self.c = ffi.new("struct vp_pcap_out *")
        self.c.fd = fd

    def stats(self):
        return {"file": self.path, "packets": self.c.packets, "bytes": self.c.bytes,
                "write_errors": self.c.write_errors}

    def close(self):
        if self.c.fd >= 0:
            lib.vp_pcap_flush(self.c)
            os.close(self.c.fd)
            self.c.fd = -1


def read_pcap(path):
    """Check a pcap file's header; returns (bytes, swapped, ns) for the C reader."""
    try:
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as f:   # a FIFO: no hang
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_REPLAY:    # kept in memory: bounded
                raise AdapterError(f"cannot read pcap {path}: " + ("larger than 1 GiB" if stat.S_ISREG(st.st_mode)
                                                                   else "not a regular file"))
            data = f.read(MAX_REPLAY + 1)
    except OSError as e:
        raise AdapterError(f"cannot read pcap {path}: {e.strerror}") from None
    if len(data) < 24 or data[:4] not in MAGICS:
        raise AdapterError(f"{path} is not a pcap file (pcapng is not read; convert with editcap -F pcap)")
    swapped, ns = MAGICS[data[:4]]
    if struct.pack("<I", 1) != struct.pack("=I", 1):
        swapped = 1 - swapped
    order = ">" if (data[:4] in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d")) else "<"
    linktype = struct.unpack(order + "I", data[20:24])[0] & 0x0FFFFFFF
    if linktype != LINKTYPE_ETHERNET:
        raise AdapterError(f"{path}: link type {linktype}, only Ethernet (1) can be replayed")
    return data, swapped, ns


class PcapAdapter(Adapter):
    kind = "pcap"

    def __init__(self, uri, slots=1024):
        path, opt = parse_uri(uri, "pcap", OPTIONS)
        if opt["rate"] not in ("max", "recorded"):
            raise AdapterError(f"{uri!r}: rate must be max or recorded")
        if opt["loop"] < 0:
            raise AdapterError(f"{uri!r}: loop must be >= 0 (0: forever)")
        # the file stays open or in memory for the port's life
        self.writer = PcapWriter(path) if opt["write"] else None
        if not opt["write"]:
            self.data, swapped, ns = read_pcap(path)
        try:
            super().__init__(uri, os.path.basename(path)[:48] or "pcap", slots=slots)
        except AdapterError:
            if self.writer:              # no region, so no close() will come for the file
                self.writer.close()
            raise
        if self.writer:
            lib.vp_pcap_out_init(self.io, self.writer.c)
            self.info = {"file": path, "direction": "write"}
        else:
            self.src = ffi.from_buffer(self.data)
            self.c = ffi.new("struct vp_pcap_in *", dict(
                data=self.src, size=len(self.data), off=24, swapped=swapped, nsec=ns,
                recorded_rate=opt["rate"] == "recorded", loops=opt["loop"] - 1))
            lib.vp_pcap_in_init(self.io, self.c)
            self.info = {"file": path, "direction": "read", "rate": opt["rate"]}

    def stats(self):
        st = super().stats()
        if not self.writer:
            st["eof"] = bool(self.c.eof)
        return st

    def close_io(self):
        if self.writer:
            self.writer.close()
