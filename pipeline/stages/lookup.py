"""lookup: exact-match flow table, then the megaflows -> hit (action set) or miss (lookup.c).

Misses are handed to the upcall handler, which ships them to the slow path (the kernel
hands the batch over when it has any)."""
from pipeline.stages.stage import Stage


class Lookup(Stage):
    kernel, counter = "vp_lookup", "lookup"

    def __init__(self, dp, upcalls=None):
        super().__init__(dp)
        self.upcalls = upcalls

    def handoff(self, batch):
        if self.upcalls is not None:
            self.upcalls.send_misses(batch)
