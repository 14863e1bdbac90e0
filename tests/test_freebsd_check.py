"""The FreeBSD cross-check (tools/freebsd_check.py) passes on this tree and fails, saying
why, on copies broken the ways a Linux-only build would be: a Linux header or kernel in
the portable build, a Linux-only call (setns, epoll, prctl), a netmap constant, field or
ioctl number that is not FreeBSD's.

Needs PyPI's ziglang (`make check-freebsd` installs it and runs this file); skipped
without it, so `make test` downloads nothing."""
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT, copy_checkout

pytestmark = pytest.mark.skipif(shutil.which("nm") is None or subprocess.run(
    [sys.executable, "-c", "import ziglang"], capture_output=True).returncode != 0,
    reason="needs PyPI's ziglang (make check-freebsd installs it) and binutils")

def check(root, tmp_path):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools/freebsd_check.py"), "--root", str(root),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=600)


def broken(tmp_path, path, old, new):
    """A copy of this tree with `old` replaced by `new` in `path` ("": put at its start)."""
    tree = copy_checkout(tmp_path / "tree")          # with the built module: ioctl.py imports it
    f = tree / path
    text = f.read_text()
    assert old in text, (path, old)
    f.write_text(text.replace(old, new, 1))
    return tree


def failed(r, *words):
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAILED" in r.stderr and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert re.search(w, r.stderr), (w, r.stderr)


def test_this_tree_passes(tmp_path):
    r = check(ROOT, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cross-check passed" in r.stdout
    # and it did compare the netmap ABI: every struct field and constant there is
    n = re.search(r"(\d+) struct fields, (\d+) constants", r.stdout)
    assert n and int(n.group(1)) >= 80 and int(n.group(2)) >= 35, r.stdout


@pytest.mark.parametrize("path,old,new,words", [
    # a Linux header in a portable kernel
    ("pipeline/stages/extract.c", "#include <arpa/inet.h>\n", "#include <arpa/inet.h>\n#include <linux/if_ether.h>\n",
     [r"extract\.c does not compile for FreeBSD", r"linux/if_ether\.h"]),
    # a Linux-only binding moved into the portable build
    ("pipeline/native_build.py", '("bindings/tap/tap.h", "linux")', '"bindings/tap/tap.h"',
     [r"tap\.c does not compile for FreeBSD", r"linux/if\.h"]),
], ids=["linux-header", "linux-kernel"])
def test_a_linux_header_fails_to_compile(tmp_path, path, old, new, words):
    failed(check(broken(tmp_path, path, old, new), tmp_path), *words)


@pytest.mark.parametrize("path,old,new,symbol", [
    # setns declared for cffi in a portable header, as the build did before FreeBSD
    ("bindings/adapter.h", "void vp_io_rxsync(struct vp_io *io);",
     "int setns(int fd, int nstype);\nvoid vp_io_rxsync(struct vp_io *io);", "setns"),
    # epoll and prctl called from portable C (declared by hand, so it compiles)
    ("pipeline/upcall.c", "", "int epoll_create1(int);\nint vp_idle_fd(void) { return epoll_create1(0); }\n",
     "epoll_create1"),
    ("ring/region.c", "", "int prctl(int, ...);\nint vp_die(void) { return prctl(1, 15); }\n", "prctl"),
], ids=["setns", "epoll", "prctl"])
def test_a_linux_call_fails_to_link(tmp_path, path, old, new, symbol):
    failed(check(broken(tmp_path, path, old, new), tmp_path), "would not load on FreeBSD", rf"undefined .*\b{symbol}\b")


@pytest.mark.parametrize("path,old,new,words", [
    ("ring/netmap.h", "#define NS_FORWARD 4", "#define NS_FORWARD 8", [r"NS_FORWARD: valepipe has 0x8"]),
    ("bindings/netmap/nmreq.h", "    uint32_t nr_tx_slots;\n    uint32_t nr_rx_slots;\n    uint16_t nr_tx_rings;",
     "    uint32_t nr_rx_slots;\n    uint32_t nr_tx_slots;\n    uint16_t nr_tx_rings;",
     [r"nmreq_register\.nr_tx_slots: offset differs"]),
    ("bindings/netmap/nmreq.h", "    uint64_t nr_flags;", "    uint32_t nr_flags;",
     [r"nmreq_register\.nr_flags: size differs", r"struct nmreq_register: size differs"]),
    # Linux's encoding of argument-less ioctls, taken for FreeBSD's
    ("bindings/netmap/ioctl.py", "(0xC0000000 if inout else 0x20000000)", "(0xC0000000 if inout else 0)",
     [r"NIOCTXSYNC: bindings/netmap/port\.h's macro is not ioctl\.py's 0x6994"]),
], ids=["flag", "field-order", "field-size", "ioctl"])
def test_a_netmap_abi_difference_fails(tmp_path, path, old, new, words):
    failed(check(broken(tmp_path, path, old, new), tmp_path), "netmap ABI is not FreeBSD's", *words)
