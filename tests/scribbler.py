"""A hostile shm: peer as a process of its own: attached to one port as its user, it
rewrites that port's slots and cursors at random, as fast as it can, for a while.

`python -m tests.scribbler REGION PORT SECONDS SEED` prints "attached", scribbles, then
prints how many rewrites it made. Between its attacks it behaves as a sink (releases what
the pipeline sent), so the pipeline keeps transmitting into the ring it attacks. The attack
the worker must survive most of all: a slot's buf_idx flipped between the valid index and
0xfffffff0 while the pipeline fills that slot (read once, validated, used: the flip must
not reach the use).
"""
import random
import struct
import sys
import time

from pipeline._native import ffi, lib
from ring.region import ROLE_USER, Region

SLOT = struct.Struct("<IHHQ")                       # struct netmap_slot


def _slots(ring, n):
    """The ring's slot array as a writable buffer (one memcpy per rewrite)."""
    return ffi.buffer(ffi.cast("char *", ring.slot), n * SLOT.size)


def _pattern(rng, valid, nbufs, bad_only):
    """A whole slot array: the valid indexes flipped to 0xfffffff0, or random garbage."""
    out = bytearray()
    for v in valid:
        if bad_only:
            out += SLOT.pack(0xFFFFFFF0, 60, 0, 0)
            continue
        idx = rng.choice([v, v, 0xFFFFFFF0, 0, 1, nbufs - 1, nbufs, 0xFFFFFFFF, rng.getrandbits(32)])
        ln = rng.choice([60, 60, 0, 1, 2048, 2049, 0xFFFF, rng.getrandbits(16)])
        fl = rng.choice([0, 0, lib.NS_BUF_CHANGED, lib.NS_MOREFRAG, lib.NS_INDIRECT, rng.getrandbits(16)])
        out += SLOT.pack(idx, ln, fl, rng.getrandbits(64))
    return bytes(out)


def scribble(region, port, seconds, seed):
    rng = random.Random(seed)
    reg = Region.attach(region)
    p = reg.port(port, ROLE_USER)
    rx, tx = p.c.rx[0], p.c.tx[0]              # rx: the pipeline fills it; tx: it reads it
    n = rx.nslots
    rx_valid = [rx.ring.slot[i].buf_idx for i in range(n)]
    tx_valid = [tx.ring.slot[i].buf_idx for i in range(tx.nslots)]
    rx_slots, tx_slots = _slots(rx.ring, n), _slots(tx.ring, tx.nslots)
    rx_ok = b"".join(SLOT.pack(v, 0, 0, 0) for v in rx_valid)
    tx_ok = b"".join(SLOT.pack(v, 60, 0, 0) for v in tx_valid)
    rx_bad = _pattern(rng, rx_valid, rx.nbufs, True)
    garbage = [_pattern(rng, rx_valid, rx.nbufs, False) for _ in range(8)]
    tx_garbage = [_pattern(rng, tx_valid, tx.nbufs, False) for _ in range(8)]
    cursors = [0, n - 1, n, n + 1, 0xFFFFFFFF] + [rng.getrandbits(32) for _ in range(4)]
    print("attached", flush=True)
    end, rewrites = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        for _ in range(200):
            k = rng.random()
            if k < 0.55:                            # flip every buf_idx: valid, bad, valid
                rx_slots[:] = rx_ok
                rx_slots[:] = rx_bad
                rx_slots[:] = rx_ok
                rx.ring.head = rx.ring.cur = rx.ring.tail      # release all: room to transmit
            elif k < 0.65:
                rx_slots[:] = rng.choice(garbage)
            elif k < 0.72:
                rx.ring.head = rng.choice(cursors)
                rx.ring.cur = rng.choice(cursors)
            elif k < 0.82:                          # publish garbage slots towards the pipeline
                tx_slots[:] = rng.choice(tx_garbage)
                tx.ring.head = tx.ring.cur = (tx.ring.head + rng.randrange(1, 64)) % tx.nslots
            elif k < 0.9:
                tx_slots[:] = tx_ok                 # and well-formed ones
                tx.ring.head = tx.ring.cur = (tx.ring.head + rng.randrange(1, 64)) % tx.nslots
            else:
                tx.ring.head = rng.choice(cursors)
                tx.ring.cur = rng.choice(cursors)
            rewrites += 1
    rx_slots[:] = rx_ok
    reg.close()
    print(f"rewrites {rewrites}", flush=True)


if __name__ == "__main__":
    scribble(sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]))
