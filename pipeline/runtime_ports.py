"""Ports added, removed, taken down and brought up while a worker forwards (`valepipe
add-port`/`del-port`/`port-mod`, as ovs-vsctl add-port and ovs-ofctl mod-port do).

A port keeps its datapath index for the worker's life (cached action sets name ports by
index), so one that leaves, or goes down, is replaced in the datapath by a placeholder
port with empty rings; the slow path is told the new port list and every cached flow is
revalidated, so outputs to it become drops and floods leave it out at once.
"""
from bindings.adapter import AdapterError
from pipeline import channel
from pipeline._native import lib
from pipeline.ports import Port, PortError, check_uri, close_ports, open_ports
from ring.region import ROLE_KERNEL, Region


class PortOps:
    def __init__(self, worker):
        self.w = worker
        self._idle = {}                              # datapath index -> placeholder (region, RingPort)

    # -- helpers -----------------------------------------------------------------------------
    def find(self, ref):
        """A live port by ofport number or uri."""
        for i, p in enumerate(self.w.ports):
            if p.kind != "removed" and (str(p.ofport) == str(ref) or p.uri == ref):
                return i, p
        raise PortError(f"no port {ref!r} (ports: " + ", ".join(f"{p.ofport}={p.uri}" for p in self.live()) + ")")

    def live(self):
        return [p for p in self.w.ports if p.kind != "removed"]

    def _placeholder(self, i):
        """A port with empty rings that nobody fills: what the datapath polls at index i in
        place of a port that is down or gone."""
        if i not in self._idle:
            reg = Region.private("down", ["down"], slots=64)
            self._idle[i] = (reg, reg.port("down", ROLE_KERNEL))
        return self._idle[i][1]

    def _swap(self, i, ring_port):
        """Put a port (or a placeholder) at datapath index i, between two batches: what the
        last batch took from the old one is released first."""
        dp = self.w.dp
        lib.vp_receive_release(dp.c)
        ring_port.c.index, ring_port.c.ofport = i, self.w.ports[i].ofport
        dp.c.ports[i] = ring_port.c

    def announce(self):
        """The slow path learns the ports that forward now; every cached flow is checked."""
        up = self.w.upcalls
        if up.up:
            up.outq += channel.encode({"v": channel.VERSION, "t": "hello", "worker": up.worker_id,
                                       "ports": [p.describe() for p in self.w.ports]})
            up.flush()
        up.start_revalidation()
        self.w.reregister()

    # -- operations ----------------------------------------------------------------------------
    def add(self, req):
        uri = req.get("uri")
        if not isinstance(uri, str):
            raise PortError("add-port needs a port uri")
        check_uri(uri)
        if "@share=" in uri:
            raise PortError(f"{uri}: a port added at run time has a region of its own (no @share=)")
        ofports = {p.ofport for p in self.live()}
        ofport = req.get("ofport")
        if ofport is None:                           # not given: the next free one (0 is refused below)
            ofport = max(ofports | {0}) + 1
        if not isinstance(ofport, int) or isinstance(ofport, bool) or not 1 <= ofport <= 65279:
            raise PortError(f"ofport must be 1..65279, not {ofport!r}")
        if ofport in ofports or any(p.uri == uri for p in self.live()):
            raise PortError(f"ofport {ofport} or uri {uri!r} is in use")
        slots = req.get("slots")                     # None: the kind's default
        if slots is not None and (not isinstance(slots, int) or not 2 <= slots <= 65536):
            raise PortError("slots must be 2..65536")
        n = len(self.w.ports)
        if n >= lib.VP_MAX_PORTS:
            raise PortError(f"this worker has had {n} ports (at most {lib.VP_MAX_PORTS} over its life)")
        port = open_ports([{"uri": uri, "ofport": ofport, **({"slots": slots} if slots else {})}])[0]
        self.w.ports.append(port)
        dp = self.w.dp
        port.ring_port.c.index, port.ring_port.c.ofport = n, ofport
        dp.c.ports[n] = port.ring_port.c
        dp.ofport_to_index[ofport] = n
        dp.c.nports = n + 1
        self.announce()
        return {"ofport": ofport, "uri": uri}

    def delete(self, req):
        i, port = self.find(req.get("port"))
        if len(self.live()) == 1:
            raise PortError("the last port of a pipeline cannot go (stop the pipeline instead)")
        hole = self._placeholder(i)
        self._swap(i, hole)
        self.w.dp.ofport_to_index.pop(port.ofport, None)
        self.w.ports[i] = Port(f"(removed: {port.uri})", port.ofport, "removed", hole, up=False)
        close_ports([port])
        self.announce()
        return {"ofport": port.ofport, "uri": port.uri}

    def mod(self, req):
        i, port = self.find(req.get("port"))
        up = req.get("up")
        if not isinstance(up, bool):
            raise PortError("port-mod needs up: true or false")
        if port.up != up:
            port.up = up
            self._swap(i, port.ring_port if up else self._placeholder(i))
            self.announce()
        return {"ofport": port.ofport, "uri": port.uri, "up": up}

    def follow_links(self):
        """The links under the ports (the worker calls this ten times a second): a port
        whose interface went is released, and re-opened in place when an interface of its
        name is back (as Open vSwitch re-opens its ports). Returns lines for the log."""
        lines = []
        for p in self.live():
            a = p.adapter
            what = a.follow_link() if a and hasattr(a, "follow_link") else None
            if what == "release":
                # the chain takes the ports' fds afresh each turn (a released port has none)
                a.release()
            elif what == "reopen":
                try:
                    a.reopen()
                except AdapterError as e:
                    if str(e) != getattr(a, "reopen_error", None):     # said once, not ten times a second
                        a.reopen_error = str(e)
                        lines.append(f"port {p.ofport} {p.uri}: its interface is back but cannot be re-opened "
                                     f"yet: {e}")
                else:
                    a.reopen_error = None
                    lines.append(f"port {p.ofport} {p.uri}: its interface is back; re-opened")
        return lines

    def close(self):
        for reg, _ in self._idle.values():
            reg.close()
        self._idle = {}
