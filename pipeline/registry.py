"""The index of running pipelines: each worker records its name, pid and run directory in
an owner-only folder beside the default run directories, so `--name` finds a pipeline
whatever its run_dir, and `valepipe list` shows every one."""
import json
import os
import time

from pipeline import rundir

INDEX = ".pipelines"          # not a valid pipeline name's directory: names cannot start with '.'


def index_dir():
    return os.path.join(rundir.base(), INDEX)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def register(name, run_dir, pid=None, **info):
    """Record (or update) a running pipeline; returns the entry's path."""
    d = index_dir()
    rundir.make(d)                  # owner-only, on a path no other user can change
    path = os.path.join(d, name + ".json")
    entry = dict(info, name=name, pid=pid or os.getpid(), run_dir=os.path.abspath(run_dir),
                 started=info.get("started") or time.time())
    rundir.write_files({path: json.dumps(entry).encode()})
    return path


def unregister(name, pid=None):
    """Remove a pipeline's entry if it is still this process's (a restarted worker may
    have replaced it)."""
    path = os.path.join(index_dir(), name + ".json")
    e = _read(path)
    if e is not None and e.get("pid") in (pid or os.getpid(), None):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _read(path):
    try:
        rundir.check(os.path.dirname(path))        # entries another user could have written are not read
        e = json.loads(rundir.read_own(path, 1 << 16) or b"null")
    except (OSError, ValueError, rundir.RunDirError):
        return None
    return e if isinstance(e, dict) and isinstance(e.get("pid"), int) and isinstance(e.get("run_dir"), str) else None


def entries():
    """Entries of pipelines whose worker is alive, by name."""
    out = []
    try:
        names = sorted(os.listdir(index_dir()))
    except OSError:
        return out
    for f in names:
        if not f.endswith(".json"):
            continue
        path = os.path.join(index_dir(), f)
        e = _read(path)
        if e is not None and _alive(e["pid"]):
            out.append(e)
        elif e is not None:
            try:                    # left by a worker that was killed: tidied by whoever reads
                os.unlink(path)
            except OSError:
                pass
    return out


def find(name):
    """The entry of running pipeline `name`, or None."""
    e = _read(os.path.join(index_dir(), name + ".json"))
    return e if e is not None and _alive(e["pid"]) else None


def run_dir_of(name):
    """Where pipeline `name`'s sockets are: its registered run directory, else the default."""
    e = find(name)
    return e["run_dir"] if e else rundir.default(name)
