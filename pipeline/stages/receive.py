"""receive: take up to a batch of slots from the ports' rx rings, no copy (receive.c).

Slots taken by one batch are released to their peer when the batch commits."""
from pipeline.stages.stage import Stage


class Receive(Stage):
    kernel, counter = "vp_receive", "receive"
