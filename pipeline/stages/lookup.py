"""lookup: exact-match flow table -> hit (action set) or miss.

Misses are handed to the upcall handler, which ships them to the slow path.
"""
from pipeline._native import lib


class Lookup:
    def __init__(self, dp, upcalls):
        self.dp = dp.c
        self.upcalls = upcalls

    def process_batch(self, batch):
        nmiss = lib.vp_lookup(self.dp, batch)
        if nmiss:
            self.upcalls.send_misses(batch)
        return nmiss
