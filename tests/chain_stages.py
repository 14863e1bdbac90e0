"""Stages written in Python, as a user's experiment puts them in a chain (tests/test_chain.py
names them in `[pipeline] stages`)."""
from pipeline._native import lib
from pipeline.stages import Stage


class PythonExecute(Stage):
    """execute's C kernel called from a process_batch of its own, not through a kernel the
    C chain could call: a chain with it runs batch by batch from Python."""

    def process_batch(self, batch):
        return lib.vp_execute(self.dp.c, batch)


class SlowExecute(PythonExecute):
    """execute, and 3 ms of Python work per batch (a stage of one's own that takes its time)"""

    def process_batch(self, batch):
        import time
        end = time.perf_counter() + 0.003
        while time.perf_counter() < end:
            pass
        return super().process_batch(batch)


class NotAStage:
    pass
