"""Fuzzing in the test suite: the inputs that once broke a parser (tests/fuzz/regressions)
and the generated seeds go through every target, then each coverage-guided fuzzer runs
briefly — the extract kernel under libFuzzer with AddressSanitizer and UBSan, the Python
parsers under atheris. `make fuzz` runs the same fuzzers for longer."""
import glob
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.fuzz import fuzz_parsers, seeds

FUZZ = os.path.join(ROOT, "tests", "fuzz")
TARGETS = ["flowtext", "config", "slowpath_message", "worker_message"]
SECONDS = int(os.environ.get("VP_FUZZ_SECONDS", "5"))


@pytest.fixture(scope="module")
def seed_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("seeds")
    seeds.write(str(d))
    return str(d)


def _inputs(seed_dir, target):
    return sorted(glob.glob(os.path.join(seed_dir, target, "*")) + glob.glob(os.path.join(FUZZ, "regressions", target, "*")))


@pytest.mark.parametrize("target", TARGETS)
def test_stored_inputs(seed_dir, target):
    """Every seed and every past finding passes through its target without an exception
    other than the parser's own refusal."""
    run = fuzz_parsers.TARGETS[target]
    inputs = _inputs(seed_dir, target)
    assert inputs
    for path in inputs:
        with open(path, "rb") as f:
            run(f.read())


# libFuzzer targets: (entry, the C kernel it drives, its seeds)
C_TARGETS = {"extract": ("fuzz_extract.c", "pipeline/stages/extract.c"), "vnet": ("fuzz_vnet.c", "bindings/vnet.c")}


@pytest.mark.skipif(not shutil.which("clang"), reason="clang (libFuzzer, ASan) not installed")
@pytest.mark.parametrize("target", sorted(C_TARGETS))
def test_c_kernel_under_libfuzzer(seed_dir, tmp_path, target):
    entry, kernel = C_TARGETS[target]
    exe = str(tmp_path / f"fuzz_{target}")
    subprocess.run(["clang", "-g", "-O1", "-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=undefined",
                    "-I", ROOT, os.path.join(FUZZ, entry), os.path.join(ROOT, kernel), "-o", exe], check=True, timeout=120)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    r = subprocess.run([exe, f"-max_total_time={SECONDS * 2}", "-max_len=65545", f"-artifact_prefix={tmp_path}/", str(corpus),
                        os.path.join(seed_dir, target)], capture_output=True, text=True, timeout=SECONDS * 2 + 120)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = [ln for ln in r.stderr.splitlines() if ln.startswith("Done ")]
    assert runs and int(runs[0].split()[1]) > 10_000, r.stderr[-500:]


@pytest.mark.parametrize("target", TARGETS)
def test_parsers_under_atheris(seed_dir, tmp_path, target, uniq):
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    r = subprocess.run([sys.executable, os.path.join(FUZZ, "fuzz_parsers.py"), target, f"-max_total_time={SECONDS}",
                        f"-artifact_prefix={tmp_path}/", str(corpus), os.path.join(seed_dir, target)],
                       cwd=ROOT, capture_output=True, text=True, timeout=SECONDS + 120,
                       env=dict(os.environ, VP_FUZZ_TAG=uniq))       # its regions: removed by `uniq`
    assert r.returncode == 0, r.stderr[-3000:]
