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


@pytest.mark.skipif(not shutil.which("clang"), reason="clang (libFuzzer, ASan) not installed")
def test_extract_under_libfuzzer(seed_dir, tmp_path):
    exe = str(tmp_path / "fuzz_extract")
    subprocess.run(["clang", "-g", "-O1", "-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=undefined",
                    "-I", ROOT, os.path.join(FUZZ, "fuzz_extract.c"),
                    os.path.join(ROOT, "pipeline", "stages", "extract.c"), "-o", exe], check=True, timeout=120)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    r = subprocess.run([exe, f"-max_total_time={SECONDS * 2}", "-max_len=65535", f"-artifact_prefix={tmp_path}/", str(corpus),
                        os.path.join(seed_dir, "extract")], capture_output=True, text=True, timeout=SECONDS * 2 + 120)
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
