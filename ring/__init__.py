"""ring: netmap rings in shared memory — region layout, ring cursors, hostile-peer checks.

Everything that holds packets is a netmap ring; `shm:` ports live in regions made here.
"""
from ring.region import Region, RegionError, RegionNotReady, RingPort, parse_shm_uri

__all__ = ["Region", "RegionError", "RegionNotReady", "RingPort", "parse_shm_uri"]
