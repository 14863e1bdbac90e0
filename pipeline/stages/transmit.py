"""transmit: move queued packets into their output rings — buffer swap when both
rings share a region, one copy otherwise — then commit the batch (pipeline/journal.c):
its counters are recorded, its rings published and its taken slots released."""
from pipeline._native import lib


class Transmit:
    def __init__(self, dp):
        self.dp = dp.c

    def process_batch(self, batch):
        sent = lib.vp_transmit(self.dp, batch)
        lib.vp_commit(self.dp)
        return sent
