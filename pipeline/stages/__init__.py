"""The fast path's stages, in the order a batch goes through them.

Each stage is one module: a class whose `process_batch(batch)` calls its C kernel
(the `.c` beside it) once for the whole batch. To add a stage, add `x.py`, `x.c`,
`x.h` here, list the header in pipeline/native_build.py and the class in STAGES.
"""
from pipeline.stages.execute import Execute
from pipeline.stages.extract import Extract
from pipeline.stages.lookup import Lookup
from pipeline.stages.receive import Receive
from pipeline.stages.transmit import Transmit

STAGES = (Receive, Extract, Lookup, Execute, Transmit)
