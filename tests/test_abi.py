"""The cffi view of netmap's structures has exactly the sizes and offsets of
../shared/netmap-abi.md, and a formatted region follows netmap's layout rules."""
import pytest

from pipeline._native import ffi, lib
from ring.region import ROLE_USER, Region

SLOT = {"buf_idx": 0, "len": 4, "flags": 6, "ptr": 8}
RING = {"buf_ofs": 0, "num_slots": 8, "nr_buf_size": 12, "ringid": 16, "dir": 18, "head": 20, "cur": 24,
        "tail": 28, "flags": 32, "ts": 40, "offset_mask": 56, "buf_align": 64, "sem": 128, "slot": 256}
NIF = {"ni_name": 0, "ni_version": 16, "ni_flags": 20, "ni_tx_rings": 24, "ni_rx_rings": 28,
       "ni_bufs_head": 32, "ni_host_tx_rings": 36, "ni_host_rx_rings": 40, "ni_spare1": 44, "ring_ofs": 56}
POOLS = {"nr_memsize": 0, "nr_mem_id": 8, "nr_if_pool_offset": 16, "nr_if_pool_objtotal": 24,
         "nr_if_pool_objsize": 28, "nr_ring_pool_offset": 32, "nr_ring_pool_objtotal": 40,
         "nr_ring_pool_objsize": 44, "nr_buf_pool_offset": 48, "nr_buf_pool_objtotal": 56,
         "nr_buf_pool_objsize": 60}


@pytest.mark.parametrize("struct,size,fields", [
    ("struct netmap_slot", 16, SLOT), ("struct netmap_ring", 256, RING),
    ("struct netmap_if", 56, NIF), ("struct nmreq_pools_info", 64, POOLS)])
def test_layout_matches_fact_sheet(struct, size, fields):
    assert ffi.sizeof(struct) == size
    for name, off in fields.items():
        assert ffi.offsetof(struct, name) == off, name


def test_ring_alignment_is_128():
    assert ffi.alignof("struct netmap_ring") == 128


def test_slot_flags():
    assert (lib.NS_BUF_CHANGED, lib.NS_REPORT, lib.NS_FORWARD, lib.NS_NO_LEARN, lib.NS_INDIRECT,
            lib.NS_MOREFRAG) == (1, 2, 4, 8, 16, 32)


def test_region_layout_as_netmap(uniq):
    with Region.create(uniq, [uniq + "a", uniq + "b"], slots=64) as reg:
        pools = reg.hdr.pools
        assert pools.nr_if_pool_offset == 0
        assert pools.nr_if_pool_offset < pools.nr_ring_pool_offset < pools.nr_buf_pool_offset
        assert pools.nr_memsize == reg.size - lib.VP_REGION_HDR_SIZE
        for i in range(2):
            nifp = ffi.cast("struct netmap_if *", reg.nm_base + reg.hdr.port[i].nr_offset)
            assert (nifp.ni_tx_rings, nifp.ni_rx_rings, nifp.ni_host_tx_rings, nifp.ni_host_rx_rings) == (1, 1, 1, 1)
            assert nifp.ni_flags & lib.NI_PRIV_MEM
            ofs = [nifp.ring_ofs[k] for k in range(4)]
            assert ofs[1] == 0 and ofs[3] == 0            # host rings exist but are not bound
            tx = ffi.cast("struct netmap_ring *", ffi.cast("char *", nifp) + ofs[0])
            rx = ffi.cast("struct netmap_ring *", ffi.cast("char *", nifp) + ofs[2])
            assert (tx.dir, rx.dir) == (1, 0)              # as the real kernel writes it
            assert (tx.head, tx.cur, tx.tail) == (0, 0, 63)
            assert (rx.head, rx.cur, rx.tail) == (0, 0, 0)
            for ring in (tx, rx):
                # NETMAP_BUF arithmetic: every ring of a region finds the same buffer pool
                ring_off = ffi.cast("char *", ring) - reg.nm_base
                assert ring_off + ring.buf_ofs == pools.nr_buf_pool_offset
                idxs = [ring.slot[s].buf_idx for s in range(64)]
                assert min(idxs) >= 2 and max(idxs) < pools.nr_buf_pool_objtotal
                assert ring.nr_buf_size == 2048


def test_attach_checks_header(uniq):
    with Region.create(uniq, [uniq], slots=8) as reg:
        peer = Region.attach(uniq)
        assert peer.port_names() == [uniq]
        p = peer.port(uniq, ROLE_USER)
        assert p.c.ntx == 1 and p.c.nrx == 1
        peer.close()
