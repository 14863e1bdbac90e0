"""The C kernels under AddressSanitizer: the native module is rebuilt with ASan in a copy
of the tree and the ring, hostile-peer, extract and end-to-end tests run against it
(pipelines they start inherit the sanitizer), so a read or write outside any buffer —
not only outside a region's guard pages — fails the run."""
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

SUITES = ["tests/test_ring.py", "tests/test_hostile_peer.py", "tests/test_extract.py", "tests/test_e2e.py"]


def _libasan():
    try:
        path = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return None
    return path if os.path.isabs(path) and os.path.exists(path) else None


@pytest.mark.skipif(not _libasan(), reason="gcc's libasan not installed")
def test_kernels_under_asan(tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.so", "*.o", "_native.c",
                                                              ".hypothesis", ".pytest_cache", "__pycache__"))
    env = dict(os.environ, VP_CFLAGS="-fsanitize=address -fno-omit-frame-pointer -O1", VP_LDFLAGS="-fsanitize=address")
    subprocess.run([sys.executable, "pipeline/native_build.py"], cwd=tree, env=env, check=True,
                   capture_output=True, timeout=300)
    env = dict(os.environ, LD_PRELOAD=_libasan(), ASAN_OPTIONS="detect_leaks=0:abort_on_error=1")
    where = subprocess.run([sys.executable, "-c", "import pipeline._native as n; print(n.__file__)"], cwd=tree, env=env,
                           capture_output=True, text=True, timeout=60).stdout
    assert where.startswith(str(tree)), where              # the instrumented build, not the installed one
    r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *SUITES],
                       cwd=tree, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0 and "AddressSanitizer" not in r.stdout + r.stderr, (r.stdout + r.stderr)[-4000:]
    assert " passed" in r.stdout
