"""execute: run each hit's datapath actions (output to one or more ports, drop),
grouping the packets per output port for transmit."""
from pipeline._native import lib


class Execute:
    def __init__(self, dp):
        self.dp = dp.c

    def process_batch(self, batch):
        lib.vp_execute(self.dp, batch)
        return batch.n
