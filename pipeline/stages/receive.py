"""receive: take up to a batch of slots from the ports' rx rings, no copy.

Slots taken by one batch are released to their peer when the batch commits (transmit).
"""
from pipeline._native import lib


class Receive:
    def __init__(self, dp):
        self.dp = dp.c
        self.budget = dp.batch_size

    def process_batch(self, batch):
        return lib.vp_receive(self.dp, batch, self.budget)
