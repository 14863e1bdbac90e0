"""The other end of a pipeline's port, for applications, tools and tests: attach to a
`shm:` port (or a netmap/VALE port) as its netmap user, send and receive frames, and
notice when the pipeline behind it went away or was restarted.

    from pipeline.peer import PortPeer
    with PortPeer("shm:vm1") as p:       # waits for the pipeline (of this user) to create the port
        p.send([frame])                  # into the port's TX ring: the pipeline receives it
        got = p.recv()                   # what the pipeline sent to this port
"""
import time

from bindings.netmap.names import is_netmap
from ring.region import ROLE_USER, Region, RegionError, RegionNotReady, parse_shm_uri

__all__ = ["PortPeer", "PeerGone", "attach"]


class PeerGone(RegionError):
    """The pipeline that owned the port stopped and no new one came back in time."""


def attach(uri, wait_s=10.0, owner=None, rings="both"):
    """Become the user side of a port: (what to close, its RingPort, netmap fd or -1).
    shm: waits for its pipeline to create the region (a pipeline of user `owner`, a uid;
    by default this process's user) and claims the port's rings this peer uses ("tx" to
    send, "rx" to receive, "both"; refused while another process holds one);
    netmap:/valeX: registers at once."""
    if is_netmap(uri):
        from bindings.netmap.port import NetmapPort
        p = NetmapPort(uri)
        return p, p.ring_port, p.fd
    name, region = parse_shm_uri(uri)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            reg = Region.attach(region, owner)
        except RegionNotReady:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)
            continue
        try:
            return reg, reg.port(name, ROLE_USER, rings), -1
        except RegionError:
            reg.close()
            raise


class PortPeer:
    """One port's user side. `send`/`recv` copy frames in and out of its rings; `port` is
    the bound ring.RingPort (C tools drive its rings directly), `fd` a netmap port's fd."""

    def __init__(self, uri, wait_s=10.0, owner=None, rings="both"):
        self.uri, self.owner, self.rings = uri, owner, rings
        self.region, self.port, self.fd = attach(uri, wait_s, owner, rings)

    def send(self, frames):
        """Queue frames (bytes) for the pipeline; returns how many fitted in the ring.
        ValueError for a frame no slot can hold (empty, or longer than the port's buffers)."""
        cap = self.port.c.tx[0].buf_size
        for i, f in enumerate(frames):
            if not 1 <= len(f) <= cap:
                raise ValueError(f"frame {i}: {len(f)} bytes; a slot of {self.uri} holds 1 to {cap}")
        return self.port.send(frames)

    def recv(self, max_frames=1024):
        """The frames the pipeline sent to this port since the last call (up to max_frames)."""
        return self.port.recv(max_frames)

    def stale(self):
        """True once the pipeline owning this shm: region stopped or died: its rings are
        no longer served (a new run of it creates a new region; see reattach)."""
        if not isinstance(self.region, Region):
            return False
        return self.region.base is None or self.region.hdr.state == 2 or not self.region.owner_alive()

    def reattach(self, wait_s=10.0):
        """Attach to the port's current region (after a restart of its pipeline); PeerGone
        if none appears within wait_s seconds."""
        self.close()
        deadline = time.monotonic() + wait_s
        while True:
            try:
                self.region, self.port, self.fd = attach(self.uri, 0, self.owner, self.rings)
                if not self.stale():
                    return
                self.close()
            except RegionNotReady:
                pass
            if time.monotonic() >= deadline:
                raise PeerGone(f"{self.uri}: its pipeline stopped and did not come back within {wait_s:g} s")
            time.sleep(0.05)

    def close(self):
        if self.region is not None:
            self.region.close()
            self.region = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
