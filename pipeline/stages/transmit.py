"""transmit: move queued packets into their output rings — buffer swap when both
rings share a region, one copy otherwise — and publish the rings."""
from pipeline._native import lib


class Transmit:
    def __init__(self, dp):
        self.dp = dp.c

    def process_batch(self, batch):
        return lib.vp_transmit(self.dp, batch)
