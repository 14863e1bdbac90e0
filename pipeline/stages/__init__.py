"""The fast path's stages, in the order a batch goes through them, and the chain that runs
them (chain.py).

Each stage is one module: a `Stage` subclass naming its C kernel (the `.c` beside it),
which `process_batch(batch)` calls once for the whole batch, and which the chain calls from
C. To add a stage: `x.c`/`x.h`/`x.py` here, its header in pipeline/native_build.py KERNELS,
its counters in batch.h's VP_FOREACH_STAGE, and its class in BY_NAME (and in STAGES if
every pipeline has it; a config names the chain it wants in `[pipeline] stages`) — see the
README's "Extending it".
"""
import importlib
import re

from pipeline.stages.chain import Chain
from pipeline.stages.execute import Execute
from pipeline.stages.extract import Extract
from pipeline.stages.lookup import Lookup
from pipeline.stages.receive import Receive
from pipeline.stages.stage import Stage
from pipeline.stages.transmit import Transmit

STAGES = (Receive, Extract, Lookup, Execute, Transmit)
BY_NAME = {cls.counter: cls for cls in STAGES}
__all__ = ["STAGES", "BY_NAME", "Chain", "Stage", "Receive", "Extract", "Lookup", "Execute", "Transmit",
           "stage_class"]
_PLACE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")


def stage_class(name):
    """A stage class by its name here (receive, extract, ...) or as `package.module:Class`
    (a stage of your own, importable from the worker); ValueError saying why not."""
    if not isinstance(name, str):
        raise ValueError(f"a stage is a name, not {name!r}")
    if name in BY_NAME:
        return BY_NAME[name]
    if not _PLACE.fullmatch(name):
        raise ValueError(f"unknown stage {name!r}: one of {', '.join(BY_NAME)}, or package.module:Class")
    module, _, cls_name = name.partition(":")
    try:
        cls = getattr(importlib.import_module(module), cls_name)
    except ImportError as e:
        raise ValueError(f"stage {name!r}: cannot import {module}: {e}") from None
    except AttributeError:
        raise ValueError(f"stage {name!r}: {module} has no {cls_name}") from None
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise ValueError(f"stage {name!r} is not a pipeline.stages.Stage")
    return cls
