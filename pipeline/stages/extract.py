"""extract: parse every packet of the batch into a fixed-layout flow key and hash.

Malformed or truncated headers stop at the last whole layer and are counted.
"""
from pipeline._native import lib


class Extract:
    def __init__(self, dp):
        self.dp = dp.c

    def process_batch(self, batch):
        lib.vp_extract(self.dp, batch)
        return batch.n
