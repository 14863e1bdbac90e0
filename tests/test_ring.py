"""Ring semantics as properties: any interleaving of produce/consume steps by the two
parties keeps every packet, in order; a peer writing garbage cannot crash the other
side or make it touch memory outside the region (regions sit between guard pages)."""
import struct
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline._native import ffi, lib
from ring.region import ROLE_KERNEL, ROLE_USER, Region

SLOTS = 8


def frame(seq, size):
    return struct.pack("<I", seq) + bytes((seq + i) & 0xFF for i in range(size - 4))


class Pair:
    """The two ends of one shm port in one process: kernel (pipeline) and user (peer)."""

    def __init__(self, slots=SLOTS):
        self.name = "t" + uuid.uuid4().hex[:10]
        self.reg = Region.create(self.name, [self.name], slots=slots)
        self.k = self.reg.port(self.name, ROLE_KERNEL)
        self.peer_reg = Region.attach(self.name)
        self.u = self.peer_reg.port(self.name, ROLE_USER)

    def kernel_recv(self, maxn):
        """Pipeline side: consume from the user's TX ring (what receive does)."""
        blob = ffi.new("uint8_t[]", max(maxn, 1) * 2048)
        lens = ffi.new("uint16_t[]", max(maxn, 1))
        n = lib.vp_ring_recv(self.k.tx_ring(), blob, maxn * 2048, lens, maxn)
        out, off = [], 0
        for i in range(n):
            out.append(bytes(ffi.buffer(blob + off, lens[i])))
            off += lens[i]
        return out

    def kernel_send(self, frames):
        if not frames:
            return 0
        lens = ffi.new("uint16_t[]", [len(f) for f in frames])
        return lib.vp_ring_send(self.k.rx_ring(), b"".join(frames), lens, len(frames))

    def close(self):
        self.peer_reg.close()
        self.reg.close()


ops = st.lists(st.tuples(st.sampled_from(["usend", "krecv", "ksend", "urecv"]), st.integers(0, 12)),
               max_size=60)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops, size=st.integers(14, 300))
def test_every_packet_arrives_in_order(ops, size):
    p = Pair()
    try:
        seq_up = seq_down = 0
        sent_up, got_up, sent_down, got_down = [], [], [], []
        for op, n in ops:
            if op == "usend":
                frames = [frame(seq_up + i, size) for i in range(n)]
                k = p.u.send(frames)
                assert k <= n
                sent_up += frames[:k]
                seq_up += k
            elif op == "krecv":
                got_up += p.kernel_recv(n)
            elif op == "ksend":
                frames = [frame(10_000 + seq_down + i, size) for i in range(n)]
                k = p.kernel_send(frames)
                sent_down += frames[:k]
                seq_down += k
            else:
                got_down += p.u.recv(max(n, 1))
            # netmap's bound: never more than num_slots - 1 packets in flight per ring
            assert len(sent_up) - len(got_up) <= SLOTS - 1
            assert len(sent_down) - len(got_down) <= SLOTS - 1
        got_up += p.kernel_recv(SLOTS)
        got_down += p.u.recv(SLOTS)
        assert got_up == sent_up
        assert got_down == sent_down
        for port in (p.k, p.u):
            s = port.ring_stats()
            assert s["tx"]["bad_index"] == s["rx"]["bad_index"] == 0
            assert not s["faulty"]
    finally:
        p.close()


u32 = st.one_of(st.integers(0, 2 ** 32 - 1), st.integers(0, SLOTS + 2), st.sampled_from([0, 1, 2 ** 31, 2 ** 32 - 1]))
garbage = st.lists(st.tuples(
    st.sampled_from(["head", "cur", "tail", "buf_idx", "len", "flags", "num_slots", "buf_ofs"]),
    st.sampled_from(["tx", "rx"]), st.integers(0, SLOTS - 1), u32), min_size=1, max_size=12)


def scribble(port, writes):
    """Write garbage through `port`'s own mapping, as a misbehaving process would."""
    for field, which, slot, value in writes:
        ring = (port.c.tx[0] if which == "tx" else port.c.rx[0]).ring
        if field in ("head", "cur", "tail"):
            setattr(ring, field, value)
        elif field == "buf_idx":
            ring.slot[slot].buf_idx = value
        elif field in ("len", "flags"):
            setattr(ring.slot[slot], field, value & 0xFFFF)
        elif field == "num_slots":
            ffi.cast("uint32_t *", ffi.addressof(ring, "num_slots"))[0] = value
        else:
            ffi.cast("int64_t *", ffi.addressof(ring, "buf_ofs"))[0] = value - 2 ** 31


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(writes=garbage, hostile_user=st.booleans(), rounds=st.integers(1, 4))
def test_garbage_from_a_peer_is_contained(writes, hostile_user, rounds):
    p = Pair()
    try:
        for r in range(rounds):
            p.u.send([frame(r * 100 + i, 60) for i in range(3)])
            p.kernel_send([frame(5000 + r * 100 + i, 60) for i in range(3)])
            scribble(p.u if hostile_user else p.k, writes)
            # the victim keeps working and only ever returns frames within a buffer
            got = p.kernel_recv(SLOTS) if hostile_user else p.u.recv(SLOTS)
            assert all(0 < len(f) <= 2048 for f in got)
            if hostile_user:
                p.kernel_send([frame(9000 + i, 60) for i in range(SLOTS)])
            else:
                p.u.send([frame(9000 + i, 60) for i in range(SLOTS)])
        victim = p.k if hostile_user else p.u
        s = victim.ring_stats()
        bad = sum(s[d][k] for d in ("tx", "rx") for k in ("bad_index", "bad_buf", "bad_len", "bad_flags"))
        # the private geometry copy is never re-read from shared memory
        assert victim.c.tx[0].nslots == SLOTS and victim.c.rx[0].nslots == SLOTS
        if bad:
            assert s["faulty"] or s["tx"]["bad_len"] + s["rx"]["bad_len"] + s["tx"]["bad_flags"] + s["rx"]["bad_flags"]
    finally:
        p.close()


def test_bad_head_is_counted_and_repaired():
    p = Pair()
    try:
        p.u.c.tx[0].ring.head = SLOTS + 5          # past the ring
        assert p.kernel_recv(4) == []
        st_ = p.k.ring_stats()
        assert st_["tx"]["bad_index"] == 1 and st_["faulty"]
        # netmap reinitialises the ring; a well-behaved user can go on
        p.u.c.tx[0].hwcur = p.u.c.tx[0].ring.head
        assert p.u.send([frame(1, 60)]) == 1
        assert p.kernel_recv(4) == [frame(1, 60)]
    finally:
        p.close()


def test_bad_buffer_index_is_dropped_and_counted():
    p = Pair()
    try:
        p.u.send([frame(1, 60), frame(2, 60)])
        p.u.c.tx[0].ring.slot[0].buf_idx = 1       # reserved
        p.u.c.tx[0].ring.slot[1].len = 4000        # longer than a buffer
        assert p.kernel_recv(4) == []
        s = p.k.ring_stats()["tx"]
        assert s["bad_buf"] == 1 and s["bad_len"] == 1
    finally:
        p.close()
