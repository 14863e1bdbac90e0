"""transmit: move queued packets into their output rings — buffer swap when both rings
share a region, one copy otherwise (transmit.c). The chain then commits the batch
(pipeline/journal.c): its counters are recorded, its rings published and its slots released."""
from pipeline.stages.stage import Stage


class Transmit(Stage):
    kernel, counter = "vp_transmit", "transmit"
