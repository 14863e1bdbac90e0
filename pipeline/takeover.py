"""What a restarted worker takes over from the one before it. The supervisor (`valepipe
run`) creates the shm: regions and the journal (pipeline/journal.c) before its first
worker and keeps them: a worker crash loses neither the packets waiting in the rings nor
a count, and peers keep their rings (they never see the port go away)."""
import mmap
import os

from pipeline import rundir
from pipeline._native import ffi, lib
from pipeline.ports import close_ports, kind_of, open_ports, open_shm


class Takeover:
    def __init__(self, cfg):
        self.run_dir = cfg.run_dir
        # the run directory first: a pipeline of this name that is running is refused
        # before anything of it is touched
        self.created_dirs = rundir.make_for_config(cfg.run_dir)
        try:
            rundir.claim(cfg.run_dir)
            shm = [s for s in cfg.ports if kind_of(s["uri"]) == "shm"]
            self.ports = {p.uri: p for p in open_shm(shm)} if shm else {}
        except Exception:
            rundir.remove_dirs(self.created_dirs)
            raise
        # shared (not copied) with every worker the supervisor forks
        self._mem = mmap.mmap(-1, lib.vp_journal_size(), flags=mmap.MAP_SHARED)
        self.journal = ffi.cast("struct vp_journal *", ffi.from_buffer(self._mem))
        # the interface ports' binding counters, kept over a worker's crash like the journal
        others = [s["uri"] for s in cfg.ports if kind_of(s["uri"]) != "shm"]
        size = ffi.sizeof("struct vp_io_keep")
        self._keep_mem = mmap.mmap(-1, max(1, len(others)) * size, flags=mmap.MAP_SHARED)
        base = ffi.cast("struct vp_io_keep *", ffi.from_buffer(self._keep_mem))
        self.keep = {uri: base + i for i, uri in enumerate(others)}

    def owns(self, port):
        return self.ports.get(port.uri) is port

    def open_ports(self, specs):
        """The config's ports in its order: the shm: ones from here, the others opened now."""
        from bindings import adapter
        adapter.KEEP.update(self.keep)
        opened = iter(open_ports([s for s in specs if s["uri"] not in self.ports]))
        return [self.ports[s["uri"]] if s["uri"] in self.ports else next(opened) for s in specs]

    def close(self):
        """The supervisor is done: regions, and what a worker that died left in the run directory."""
        close_ports(self.ports.values())
        self.ports = {}
        if os.path.isdir(self.run_dir):
            try:
                rundir.claim(self.run_dir)
            except RuntimeError:
                return                  # a pipeline answers there now: not ours to clear
        rundir.remove_dirs([d for d in self.created_dirs if os.path.isdir(d)])
