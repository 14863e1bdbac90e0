"""The flow hash on any x86-64 CPU: the portable CRC32C gives exactly the values of the
SSE4.2 crc32 instruction, and on a CPU without SSE4.2 (QEMU's qemu64 model, user-mode
emulation) the extension loads, hashes the same, and a whole worker forwards — where a
build with -msse4.2 died of SIGILL."""
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from pipeline import control
from pipeline._native import ffi, lib
from tests.conftest import ROOT, wait_for
from tests.test_e2e import cfg, frame, peers

QEMU = shutil.which("qemu-x86_64")
NO_SSE42 = [QEMU, "-cpu", "qemu64"]
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-x86_64 (Debian qemu-user) is not installed")

HASHES = r'''
import json, sys
from pipeline._native import ffi, lib
k = ffi.new("struct vp_flow_key *")
out = []
for raw in json.load(sys.stdin):
    ffi.buffer(k)[:] = bytes.fromhex(raw)
    out.append(lib.vp_key_hash(k))
print(json.dumps({"cpu": lib.vp_crc32c_cpu(), "hashes": out}))
'''


def _keys(n=3000):
    """Random keys, the all-zero and all-ones key, and keys extracted from real frames."""
    size = ffi.sizeof("struct vp_flow_key")
    keys = [bytes(size), b"\xff" * size] + [os.urandom(size) for _ in range(n)]
    k, perr = ffi.new("struct vp_flow_key *"), ffi.new("uint64_t[11]")
    for f in range(200):
        fr = frame(f, f)
        lib.vp_extract_one(fr, len(fr), f % 7, k, perr)
        keys.append(bytes(ffi.buffer(k)))
    return keys


def _hash(raw, hw=None):
    k = ffi.new("struct vp_flow_key *")
    ffi.buffer(k)[:] = raw
    return lib.vp_key_hash(k) if hw is None else lib.vp_key_hash_path(k, hw)


@pytest.mark.skipif(not lib.vp_crc32c_cpu(), reason="this CPU has no SSE4.2 to compare with")
def test_portable_crc32c_equals_the_instruction():
    keys = _keys()
    assert [_hash(k, 0) for k in keys] == [_hash(k, 1) for k in keys]
    assert lib.vp_crc32c_used() and [_hash(k) for k in keys] == [_hash(k, 1) for k in keys]
    assert len({_hash(k) for k in keys}) > len(keys) * 0.99            # and it is a hash


@needs_qemu
def test_extension_on_a_cpu_without_sse42():
    keys = _keys(1000)
    r = subprocess.run(NO_SSE42 + [sys.executable, "-c", HASHES], cwd=ROOT, input=json.dumps([k.hex() for k in keys]),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])         # -4 was SIGILL
    got = json.loads(r.stdout)
    assert got["cpu"] == 0                                             # the emulated CPU said no
    assert got["hashes"] == [_hash(k, 0) for k in keys]
    if lib.vp_crc32c_cpu():
        assert got["hashes"] == [_hash(k, 1) for k in keys]


@needs_qemu
def test_worker_forwards_on_a_cpu_without_sse42(uniq, tmp_path):
    conf = tmp_path / "p.toml"
    conf.write_text(cfg(uniq, ["in_port=1,actions=output:2"], ports=("a", "b")).replace("@RUN@", str(tmp_path / "run")))
    # the worker (and its supervisor) emulated; the slow path it starts runs natively
    proc = subprocess.Popen(NO_SSE42 + [sys.executable, "-m", "pipeline.cli", "run", str(conf), "-q"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        st = control.wait_ready(str(tmp_path / "run" / "worker.ctl"), proc, timeout=120)
        assert st["flow_hash"] == "crc32c-portable"
        with peers(uniq, "ab") as ps:
            frames = [frame(i % 10, i) for i in range(200)]
            ps["a"].send_all(frames[:10])
            assert wait_for(lambda: ps["b"].drain() >= 10, timeout=60)
            ps["a"].send_all(frames[10:], others=(ps["b"],))
            assert wait_for(lambda: ps["b"].drain() >= 200, timeout=60)
            assert sorted(ps["b"].got) == sorted(frames)
        st = control.request(str(tmp_path / "run" / "worker.ctl"), "stats")
        assert st["hits"] + st["megaflow_hits"] >= 150 and st["worker_restarts"] == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert "died of" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
