"""The fast path's stages, in the order a batch goes through them, and the chain that runs
them (chain.py).

Each stage is one module: a `Stage` subclass naming its C kernel (the `.c` beside it),
which `process_batch(batch)` calls once for the whole batch, and which the chain calls from
C. To add a stage: `x.c`/`x.h`/`x.py` here, its header in pipeline/native_build.py KERNELS,
its counters in batch.h's VP_FOREACH_STAGE, and its class in STAGES (or in the list given
to the worker) — see the README's "Extending it".
"""
from pipeline.stages.chain import Chain
from pipeline.stages.execute import Execute
from pipeline.stages.extract import Extract
from pipeline.stages.lookup import Lookup
from pipeline.stages.receive import Receive
from pipeline.stages.stage import Stage
from pipeline.stages.transmit import Transmit

STAGES = (Receive, Extract, Lookup, Execute, Transmit)
__all__ = ["STAGES", "Chain", "Stage", "Receive", "Extract", "Lookup", "Execute", "Transmit"]
