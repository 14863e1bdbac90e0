"""The lists the C side names (stages, parse errors, drop reasons, datapath actions, set
fields), read from the built module: each is written once, as a VP_FOREACH_* list in
pipeline/stages/batch.h, and Python gets the same names and numbers from it."""
from pipeline._native import ffi, lib


def names(lst):
    """The names of C list VP_FOREACH_<LST>, in the order of their numbers (VP_<LST>_*)."""
    name = getattr(lib, f"vp_{lst}_name")
    return tuple(ffi.string(name(i)).decode() for i in range(getattr(lib, f"VP_{lst.upper()}_N")))


STAGES = names("stage")
PARSE_ERRORS = names("perr")
DROPS = names("drop")
OPS = names("op")
# set-field actions: name -> (VP_F_* number, width in bytes); 0 is none
SET_FIELDS = {n: (i, lib.vp_f_arg(i)) for i, n in enumerate(names("f")) if i}
