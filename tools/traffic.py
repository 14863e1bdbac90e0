"""pkt-gen-style traffic on a port's user side (shm:, or netmap:/valeX: on a netmap host):
`Generator` sends prebuilt frames, `Sink` counts what arrives. The per-packet loops are C
(traffic.c); Python only paces."""
import os
import time

from bindings.netmap.names import is_netmap
from pipeline._native import ffi, lib
from ring.region import ROLE_USER, Region, RegionNotReady, parse_shm_uri

DEFAULT_DST = bytes.fromhex("020000000002")
DEFAULT_SRC = bytes.fromhex("020000000001")


def attach(uri, wait_s=10.0, owner=None):
    """Become the user side of a port: (what to close, its RingPort, netmap fd or -1).
    shm: waits for its pipeline to create the region (a pipeline of user `owner`, a uid;
    by default this process's user); netmap:/valeX: registers at once."""
    if is_netmap(uri):
        from bindings.netmap.port import NetmapPort
        p = NetmapPort(uri)
        return p, p.ring_port, p.fd
    name, region = parse_shm_uri(uri)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            reg = Region.attach(region, owner)
            return reg, reg.port(name, ROLE_USER), -1
        except RegionNotReady:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def pin(cpu):
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


class Generator:
    def __init__(self, uri, size=60, flows=1, rate=0, count=0, batch=256,
                 dst_mac=DEFAULT_DST, src_mac=DEFAULT_SRC, wait_s=10.0, owner=None):
        if not 42 <= size <= 2048:
            raise ValueError(f"frame size {size} must be 42..2048 (60 = 64-byte frames with FCS)")
        if not 1 <= flows <= 4_000_000:
            raise ValueError("flows must be 1..4000000")
        self.stride = (size + 63) & ~63
        self._frames = ffi.new("uint8_t[]", flows * self.stride)
        if lib.vp_gen_build(self._frames, self.stride, flows, size, dst_mac, src_mac) != 0:
            raise ValueError("cannot build frames")
        self.region, self.port, fd = attach(uri, wait_s, owner)
        self.g = ffi.new("struct vp_gen *", dict(
            ring=self.port.tx_ring(), fd=fd, frames=self._frames, nframes=flows, stride=self.stride,
            frame_len=size, batch=batch, rate_pps=int(rate), count=int(count)))
        self.sent_end = None                    # when sending stopped (a sink may drain on)
        if size > self.port.c.tx[0].buf_size:
            self.close()
            raise ValueError(f"frame size {size} exceeds the port's buffer size {self.port.c.tx[0].buf_size}")

    def frame(self, i):
        return bytes(ffi.buffer(self._frames + i * self.stride, self.g.frame_len))

    def run(self, duration=None, slice_s=0.1, on_slice=None, sink=None, idle_stop_s=1.0):
        """Send until count/duration. With `sink`, also drain that port in the same C loop
        (pkt-gen's txrx) and stop once sending is over and nothing arrived for idle_stop_s."""
        end = time.monotonic() + duration if duration else None
        sent_done_at = None
        last = (-1, time.monotonic())
        while True:
            if sink is None:
                lib.vp_gen_run(self.g, int(slice_s * 1e9))
            else:
                lib.vp_gen_sink_run(self.g, sink.s, int(slice_s * 1e9))
            now = time.monotonic()
            if on_slice:
                on_slice(self)
            done = (self.g.count and self.g.sent >= self.g.count) or (end and now >= end)
            if done and self.sent_end is None:
                self.sent_end = lib.vp_now_ns()
            if done and sink is None:
                break
            if done:
                if sent_done_at is None:
                    sent_done_at = now
                    self.g.count = max(self.g.sent, 1)          # stop sending, keep draining
                if sink.s.packets != last[0]:
                    last = (sink.s.packets, now)
                if (sink.s.count and sink.s.packets >= sink.s.count) or now - last[1] >= idle_stop_s:
                    break
        return self.result()

    def result(self):
        end = self.sent_end or lib.vp_now_ns()
        el = (end - self.g.start_ns) / 1e9 if self.g.start_ns else 0.0
        return {"sent": self.g.sent, "bytes": self.g.sent * self.g.frame_len, "seconds": round(el, 6),
                "mpps": round(self.g.sent / el / 1e6, 4) if el else 0.0, "ring_full_polls": self.g.ring_full,
                "sync_errors": self.g.sync_errors}

    def close(self):
        self.region.close()


class Sink:
    def __init__(self, uri, count=0, batch=1024, wait_s=10.0, owner=None):
        self.region, self.port, fd = attach(uri, wait_s, owner)
        self.s = ffi.new("struct vp_sink *", dict(ring=self.port.rx_ring(), fd=fd, batch=batch, count=int(count)))

    def run(self, duration=None, slice_s=0.1, idle_stop_s=None, on_slice=None):
        """Count until count/duration is reached or, with idle_stop_s, traffic has stopped."""
        end = time.monotonic() + duration if duration else None
        last_n, last_change = 0, time.monotonic()
        while not (self.s.count and self.s.packets >= self.s.count):
            lib.vp_sink_run(self.s, int(slice_s * 1e9))
            now = time.monotonic()
            if on_slice:
                on_slice(self)
            if self.s.packets != last_n:
                last_n, last_change = self.s.packets, now
            elif idle_stop_s and self.s.packets and now - last_change >= idle_stop_s:
                break
            if end and now >= end:
                break
        return self.result()

    def result(self):
        el = (self.s.last_ns - self.s.first_ns) / 1e9 if self.s.first_ns else 0.0
        return {"received": self.s.packets, "bytes": self.s.bytes, "seconds": round(el, 6),
                "mpps": round(self.s.packets / el / 1e6, 4) if el > 0 else 0.0,
                "errors": self.port.ring_stats()["rx"], "sync_errors": self.s.sync_errors}

    def close(self):
        self.region.close()
