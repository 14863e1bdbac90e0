"""pkt-gen-style traffic on a port's user side (shm:, or netmap:/valeX: on a netmap host):
`Generator` sends prebuilt frames, `Sink` counts what arrives; with latency on, the generator
stamps each frame with its send time and the sink keeps a histogram of each frame's time
in flight. The per-packet loops are C (traffic.c); Python only paces."""
import time

from pipeline import hostos
from pipeline._native import ffi, lib
from pipeline.peer import PeerGone, PortPeer, attach  # noqa: F401  (re-exported: tools and tests use them from here)

DEFAULT_DST = bytes.fromhex("020000000002")
DEFAULT_SRC = bytes.fromhex("020000000001")


def pin(cpu):
    if cpu is not None:
        hostos.set_cpus({cpu})


class _OnPeer:
    """A tool on a port's user side that follows its pipeline through a restart."""

    gone_ns = None                                  # when its pipeline was found gone

    def _follow_pipeline(self):
        if self.peer.stale():
            self.gone_ns = lib.vp_now_ns()          # a summary after PeerGone ends here, not after the wait
            self.peer.reattach(self.wait_s)         # PeerGone if it does not come back
            self.gone_ns = None
            self.port = self.peer.port
            self._bind()
            self.reattached += 1


def percentiles(lat, ps=(50, 99, 99.9)):
    """A struct vp_latency as microseconds: count, min, mean, max and the percentiles ps
    (each the middle of its histogram bucket: within 1.6%)."""
    out = {"frames": lat.count, "unstamped": lat.unstamped}
    if not lat.count:
        return out
    out.update(min_us=lat.min_ns / 1e3, mean_us=round(lat.sum_ns / lat.count / 1e3, 3), max_us=lat.max_ns / 1e3)
    hist = list(lat.hist)
    for p in ps:
        want, seen = p / 100 * lat.count, 0
        for i, n in enumerate(hist):
            seen += n
            if n and seen >= want:
                break
        if i < 64:
            mid = i
        else:
            shift = (i >> 5) - 1
            mid = ((i & 31 | 32) << shift) + (1 << shift) / 2
        out[f"p{p:g}_us".replace(".", "_")] = round(min(max(mid, lat.min_ns), lat.max_ns) / 1e3, 3)
    return out


class Generator(_OnPeer):
    def __init__(self, uri, size=60, flows=1, rate=0, count=0, batch=256,
                 dst_mac=DEFAULT_DST, src_mac=DEFAULT_SRC, wait_s=10.0, owner=None, stamp=False):
        """stamp: each frame carries its send time (for a Sink with latency on)."""
        if not 42 <= size <= 2048:
            raise ValueError(f"frame size {size} must be 42..2048 (60 = 64-byte frames with FCS)")
        if not 1 <= flows <= 4_000_000:
            raise ValueError("flows must be 1..4000000")
        if not 1 <= batch <= 65536:
            raise ValueError(f"batch must be 1..65536 slots, not {batch}")
        if rate < 0 or count < 0:
            raise ValueError(f"{'rate' if rate < 0 else 'count'} must be >= 0 (0 = no limit)")
        if stamp and size < lib.VP_STAMP_AT + 8:
            raise ValueError(f"frames of {size} bytes have no room for a send time (latency needs "
                             f"{lib.VP_STAMP_AT + 8} or more)")
        self.stride = (size + 63) & ~63
        self._frames = ffi.new("uint8_t[]", flows * self.stride)
        if lib.vp_gen_build(self._frames, self.stride, flows, size, dst_mac, src_mac) != 0:
            raise ValueError("cannot build frames")
        self.peer = PortPeer(uri, wait_s, owner, rings="tx")
        self.port, fd = self.peer.port, self.peer.fd
        self.reattached = 0
        self.g = ffi.new("struct vp_gen *", dict(
            ring=self.port.tx_ring(), fd=fd, frames=self._frames, nframes=flows, stride=self.stride,
            frame_len=size, batch=batch, rate_pps=float(rate), count=int(count),
            stamp_at=lib.VP_STAMP_AT if stamp else 0))
        self.sent_end = None                    # when sending stopped (a sink may drain on)
        self.wait_s = wait_s
        if size > self.port.c.tx[0].buf_size:
            self.close()
            raise ValueError(f"frame size {size} exceeds the port's buffer size {self.port.c.tx[0].buf_size}")

    def frame(self, i):
        return bytes(ffi.buffer(self._frames + i * self.stride, self.g.frame_len))

    def run(self, duration=None, slice_s=0.1, on_slice=None, sink=None, idle_stop_s=1.0, stop=lambda: False):
        """Send until count/duration (or `stop()`). With `sink`, also drain that port in the
        same C loop (pkt-gen's txrx) and stop once sending is over and nothing arrived for
        idle_stop_s. A pipeline restarted under the port is attached again; one that went
        away for good raises PeerGone."""
        end = time.monotonic() + duration if duration else None
        if end:
            self.g.end_ns = int(end * 1e9)        # the C side sends nothing from then on
        if self.g.rate_pps and not self.g.pace_ns:
            self.g.pace_ns = lib.vp_now_ns()      # the schedule starts now: rate x duration slots
        last = (-1, time.monotonic())
        while not stop():
            self._follow_pipeline()
            if sink is not None:
                sink._follow_pipeline()
            if sink is None:
                lib.vp_gen_run(self.g, int(slice_s * 1e9))
            else:
                lib.vp_gen_sink_run(self.g, sink.s, int(slice_s * 1e9))
            now = time.monotonic()
            if on_slice:
                on_slice(self)
            counted = self.g.count and self.g.sent >= self.g.count
            done = counted or (end and now >= end)
            if done and self.sent_end is None:
                self.sent_end = lib.vp_now_ns()
                lib.vp_gen_settle(self.g, 0 if counted else self.g.end_ns)       # no more sent
            if done and sink is None:
                break
            if done:
                if sink.s.packets != last[0]:
                    last = (sink.s.packets, now)
                if (sink.s.count and sink.s.packets >= sink.s.count) or now - last[1] >= idle_stop_s:
                    break
        return self.result()

    def _bind(self):
        self.g.ring, self.g.fd = self.port.tx_ring(), self.peer.fd

    def result(self):
        end = self.sent_end or self.gone_ns or lib.vp_now_ns()
        el = (end - self.g.start_ns) / 1e9 if self.g.start_ns else 0.0
        return {"sent": self.g.sent, "bytes": self.g.sent * self.g.frame_len, "seconds": round(el, 6),
                "mpps": round(self.g.sent / el / 1e6, 4) if el else 0.0, "ring_full_polls": self.g.ring_full,
                "pace_skipped": self.g.pace_skipped,
                "sync_errors": self.g.sync_errors, "reattached": self.reattached}

    def close(self):
        self.peer.close()


class Sink(_OnPeer):
    def __init__(self, uri, count=0, batch=1024, wait_s=10.0, owner=None, latency=False):
        """latency: keep each frame's time since its generator stamped it (stamp=True)."""
        if count < 0:
            raise ValueError(f"count must be >= 0 (0 = no limit), not {count}")
        self.peer = PortPeer(uri, wait_s, owner, rings="rx")
        self.port, self.wait_s, self.reattached = self.peer.port, wait_s, 0
        self.lat = ffi.new("struct vp_latency *") if latency else None
        self.s = ffi.new("struct vp_sink *", dict(ring=self.port.rx_ring(), fd=self.peer.fd, batch=batch,
                                                  count=int(count), lat=self.lat or ffi.NULL,
                                                  stamp_at=lib.VP_STAMP_AT))
        self.discarded = self._discard_waiting()

    def _discard_waiting(self):
        """Drop what a shm: port's RX ring already holds (left by an earlier peer, or sent
        before this one attached): a sink counts only what arrives while it runs."""
        if self.peer.fd >= 0:
            return 0
        r = self.port.rx_ring()
        n = lib.vp_ring_avail(r)
        if n:
            r.cons = (r.cons + n) % r.nslots
            lib.vp_ring_release(r)
        return n

    def _bind(self):
        self.s.ring, self.s.fd = self.port.rx_ring(), self.peer.fd

    def run(self, duration=None, slice_s=0.1, idle_stop_s=None, on_slice=None, stop=lambda: False):
        """Count until count/duration is reached, `stop()`, or, with idle_stop_s, nothing
        arrived for that long (from the start, or from the last packet)."""
        end = time.monotonic() + duration if duration else None
        last_n, last_change = 0, time.monotonic()
        while not (self.s.count and self.s.packets >= self.s.count) and not stop():
            self._follow_pipeline()
            lib.vp_sink_run(self.s, int(slice_s * 1e9))
            now = time.monotonic()
            if on_slice:
                on_slice(self)
            if self.s.packets != last_n:
                last_n, last_change = self.s.packets, now
            elif idle_stop_s and now - last_change >= idle_stop_s:
                break
            if end and now >= end:
                break
        return self.result()

    def result(self):
        el = (self.s.last_ns - self.s.first_ns) / 1e9 if self.s.first_ns else 0.0
        return {"received": self.s.packets, "bytes": self.s.bytes, "seconds": round(el, 6),
                "mpps": round(self.s.packets / el / 1e6, 4) if el > 0 else 0.0,
                "errors": self.port.ring_stats()["rx"], "sync_errors": self.s.sync_errors,
                "reattached": self.reattached, "discarded_at_start": self.discarded,
                **({"latency": percentiles(self.lat)} if self.lat else {})}

    def close(self):
        self.peer.close()
