"""execute: run each hit's datapath actions (output to one or more ports, drop, header
rewrites), grouping the packets per output port for transmit (execute.c)."""
from pipeline.stages.stage import Stage


class Execute(Stage):
    kernel, counter = "vp_execute", "execute"
