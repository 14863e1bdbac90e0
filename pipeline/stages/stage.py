"""A stage: one batch operation, its C kernel called once for the whole batch.

`kernel` names the C function (`uint32_t k(struct vp_dp *, struct vp_batch *)`, returning
the packets it handled), `counter` the VP_STAGE_* counters its cycles and packets go to.
A kernel that leaves the batch work for Python sets `b->handoff`; the stage's `handoff`
does that work (the chain resumes the batch after it). A stage written in Python leaves
`kernel` None and overrides `process_batch`: a chain with one runs from Python.
"""
from pipeline._native import ffi, lib
from pipeline.names import STAGES


class Stage:
    kernel = None
    counter = None

    def __init__(self, dp, upcalls=None):
        self.dp = dp
        self.c = ffi.new("struct vp_stage *")
        if self.kernel:
            self.c.kernel = ffi.addressof(lib, self.kernel)
            self.c.counter = STAGES.index(self.counter)

    def process_batch(self, batch):
        """Run the kernel on the batch (counted as in the chain), then Python's part if it
        left one; returns the packets it handled."""
        n = lib.vp_stage_run(self.dp.c, batch, self.c)
        if batch.handoff:
            self.handoff(batch)
        return n

    def handoff(self, batch):
        """Python's part of a batch the kernel marked (b->handoff)."""
