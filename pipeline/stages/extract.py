"""extract: parse every packet of the batch into a fixed-layout flow key and hash (extract.c).

Malformed or truncated headers stop at the last whole layer and are counted."""
from pipeline.stages.stage import Stage


class Extract(Stage):
    kernel, counter = "vp_extract", "extract"
