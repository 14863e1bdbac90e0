"""`make check-freebsd`: the native build compiled and linked for x86_64-freebsd against
FreeBSD's own libc and headers (zig cc from PyPI's ziglang); nothing is run.

1. every C source the FreeBSD build has, and cffi's module for it, compile with -Werror;
2. the module links, and every symbol it needs is FreeBSD libc's (versioned FBSD_*) or
   CPython's; it needs no library but libc;
3. every netmap struct (size, alignment, each field's offset and size), flag and ioctl
   number valepipe uses equals FreeBSD's <net/netmap.h> (_Static_assert, compile time).

python tools/freebsd_check.py [--root TREE] [--out DIR]: exit 0 when all hold, else 1 with
what failed. TREE (default: this checkout) needs its pipeline/_native built (ioctl.py).
"""
import argparse
import concurrent.futures
import contextlib
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time

TARGET = "x86_64-freebsd"
# valepipe's netmap ABI: structs and constants restated from netmap's headers
NETMAP_HEADERS = ["ring/netmap.h", "bindings/netmap/nmreq.h"]
IOCTLS = ("NIOCCTRL", "NIOCTXSYNC", "NIOCRXSYNC")
# what the compiler itself provides in a FreeBSD build's module
RUNTIME = re.compile(r"^(_?Py|__stack_chk_)")


class CheckFailed(Exception):
    pass


def zig_cc():
    try:
        import ziglang  # noqa: F401  (installed by `make check-freebsd`)
    except ImportError:
        raise CheckFailed("PyPI's ziglang is not installed (make check-freebsd installs it)") from None
    return [sys.executable, "-m", "ziglang", "cc", "-target", TARGET]


def run(cmd, what, cwd=None):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        errors = [ln for ln in (r.stderr + r.stdout).splitlines() if "error" in ln] or (r.stderr + r.stdout).splitlines()
        raise CheckFailed(f"{what}: " + " | ".join(errors[:6]))
    return r.stdout


def load_build(root):
    """The tree's pipeline/native_build.py, as it builds for FreeBSD."""
    old = os.environ.get("VP_TARGET_OS")
    os.environ["VP_TARGET_OS"] = "freebsd"
    try:
        spec = importlib.util.spec_from_file_location("vp_native_build_freebsd", os.path.join(root, "pipeline/native_build.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        if old is None:
            del os.environ["VP_TARGET_OS"]
        else:
            os.environ["VP_TARGET_OS"] = old
    return mod


def compile_all(root, out, build, cc):
    """Step 1: each source and cffi's module, -Werror (side by side); returns the objects."""
    flags = build.CFLAGS + ["-Werror", "-fPIC", "-fno-sanitize=all", "-I", root]
    module_c = os.path.join(out, "_native.c")
    with contextlib.redirect_stdout(io.StringIO()):        # cffi says "generating ..."
        build.ffibuilder.emit_c_code(module_c)

    def one(src):
        obj = os.path.join(out, os.path.basename(src)[:-2] + ".o")
        inc = ["-I", sysconfig.get_paths()["include"]] if src == module_c else []
        run(cc + flags + inc + ["-c", os.path.join(root, src), "-o", obj],
            f"{src if src != module_c else 'the cffi module'} does not compile for FreeBSD")
        return obj
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        return list(pool.map(one, build.sources(build.TARGET) + [module_c]))


def link(out, build, objs, cc):
    """Step 2: link the module; every undefined symbol must be FreeBSD libc's or CPython's."""
    so = os.path.join(out, "_native.so")
    run(cc + ["-shared", "-o", so] + objs + ["-l" + lib for lib in build.LIBRARIES.get(build.TARGET, [])],
        "the module does not link for FreeBSD")
    import ctypes
    bad = []
    for line in run(["nm", "-D", "--undefined-only", so], "nm").splitlines():
        sym = line.split()[-1]
        name, _, version = sym.partition("@")
        if version.startswith("FBSD_"):
            continue                        # in FreeBSD's libc, at that version
        if RUNTIME.match(name) and hasattr(ctypes.pythonapi, name):
            continue                        # CPython's (this Python's own symbols)
        bad.append(name)
    if bad:
        raise CheckFailed("the module would not load on FreeBSD: undefined " + ", ".join(sorted(bad))
                          + " (neither in FreeBSD's libc nor CPython)")
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", run(["readelf", "-d", so], "readelf"))
    if set(needed) - {"libc.so.7"}:
        raise CheckFailed(f"the module needs {', '.join(sorted(set(needed) - {'libc.so.7'}))}: "
                          "FreeBSD's build links nothing but libc")
    return so


def _our_text(root, header):
    """A header as C sees it: comments and cffi's VP_CDEF branches gone."""
    text = re.sub(r"/\*.*?\*/|//[^\n]*", "", open(os.path.join(root, header)).read(), flags=re.S)
    out, keep = [], [True]
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("#ifdef VP_CDEF"):
            keep.append(False)
        elif s.startswith("#else") and len(keep) > 1:
            keep[-1] = not keep[-1]
        elif s.startswith("#endif") and len(keep) > 1:
            keep.pop()
        elif all(keep):
            out.append(line)
    return "\n".join(out)


def netmap_abi(root):
    """(structs {name: [fields]}, constants {name: value}, defined macro names) of the
    netmap headers, as valepipe compiles them."""
    structs, consts, macros = {}, {}, set()
    for h in NETMAP_HEADERS:
        text = _our_text(root, h)
        for name, body in re.findall(r"struct\s+(\w+)\s*\{(.*?)\};", text, re.S):
            fields = []
            for decl in body.split(";"):
                decl = re.sub(r"__attribute__\s*\(\(.*?\)\)\)?", "", decl).strip()
                m = re.search(r"(\w+)\s*(\[[^\]]*\])?\s*$", decl)
                if m:
                    fields.append(m.group(1))
            structs[name] = fields
        for name, rest in re.findall(r"^\s*#define\s+(\w+)(.*)$", text, re.M):
            macros.add(name)
            value = rest.strip()
            if not value or value.startswith("(") or name.startswith("VP_"):
                continue                    # a guard, a function-like macro, our own name
            if not re.fullmatch(r"0x[0-9a-fA-F]+|\d+", value):
                raise CheckFailed(f"{h}: cannot read {name}'s value {value!r} (not a number)")
            consts[name] = int(value, 0)
    return structs, consts, macros


def ioctl_numbers(root):
    """bindings/netmap/ioctl.py's numbers for FreeBSD, from the tree itself."""
    code = "from bindings.netmap import ioctl; n = ioctl.numbers('freebsd'); print(*[n[k] for k in %r])" % (IOCTLS,)
    out = run([sys.executable, "-c", code], "bindings/netmap/ioctl.py", cwd=root)
    return dict(zip(IOCTLS, map(int, out.split())))


def abi_source(root):
    """Step 3's translation unit: ours (structs renamed vp_ours_*) and FreeBSD's side by side."""
    structs, consts, macros = netmap_abi(root)
    ioctls = ioctl_numbers(root)
    out = [f"/* generated by tools/freebsd_check.py: {', '.join(NETMAP_HEADERS)} and ioctl.py against FreeBSD */",
           "#include <stddef.h>"]
    out += [f"#define {s} vp_ours_{s}" for s in structs]
    out += ['#include "bindings/netmap/port.h"']
    for k, v in ioctls.items():
        out.append(f'_Static_assert(VP_{k} == {v:#x}ul, "{k}: bindings/netmap/port.h\'s macro is not ioctl.py\'s {v:#x} '
                   'on FreeBSD");')
    out += [f"#undef {m}" for m in sorted(macros) if not m.startswith("VP_")]
    out += [f"#undef {s}" for s in structs]
    out += ["#include <sys/socket.h>", "#include <net/if.h>", "#include <net/netmap.h>"]     # as netmap_user.h has it
    for k, v in ioctls.items():
        out.append(f'_Static_assert({k} == {v:#x}ul, "{k}: ioctl.py has {v:#x}, FreeBSD\'s <net/netmap.h> another");')
    for k, v in sorted(consts.items()):
        out.append(f'_Static_assert({k} == {v:#x}, "{k}: valepipe has {v:#x}, FreeBSD\'s <net/netmap.h> another");')
    for s, fields in structs.items():
        ours, theirs = f"struct vp_ours_{s}", f"struct {s}"
        out.append(f'_Static_assert(sizeof({ours}) == sizeof({theirs}), "struct {s}: size differs from FreeBSD\'s");')
        out.append(f'_Static_assert(_Alignof({ours}) == _Alignof({theirs}), "struct {s}: alignment differs from FreeBSD\'s");')
        for f in fields:
            out.append(f'_Static_assert(offsetof({ours}, {f}) == offsetof({theirs}, {f}), '
                       f'"{s}.{f}: offset differs from FreeBSD\'s");')
            out.append(f'_Static_assert(sizeof((({ours} *)0)->{f}) == sizeof((({theirs} *)0)->{f}), '
                       f'"{s}.{f}: size differs from FreeBSD\'s");')
    return "\n".join(out) + "\n", sum(len(f) for f in structs.values()), len(consts) + len(ioctls)


def check_abi(root, out, cc):
    src, nfields, nconsts = abi_source(root)
    path = os.path.join(out, "netmap_abi.c")
    with open(path, "w") as f:
        f.write(src)
    run(cc + ["-std=gnu11", "-Wall", "-Werror", "-I", root, "-c", path, "-o", path[:-2] + ".o"],
        "valepipe's netmap ABI is not FreeBSD's")
    return nfields, nconsts


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap.add_argument("--out", default=None, help="where objects go (default: ROOT/build/freebsd)")
    a = ap.parse_args(argv)
    root = os.path.abspath(a.root)
    out = a.out or os.path.join(root, "build", "freebsd")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    t0 = time.monotonic()
    try:
        cc = zig_cc()
        build = load_build(root)
        objs = compile_all(root, out, build, cc)
        print(f"freebsd: {len(objs) - 1} sources and the cffi module compile for {TARGET} with -Werror")
        link(out, build, objs, cc)
        print("freebsd: the module links; every symbol it needs is FreeBSD libc's or CPython's, and it needs only libc")
        nfields, nconsts = check_abi(root, out, cc)
        print(f"freebsd: netmap ABI equals FreeBSD's <net/netmap.h>: {nfields} struct fields, {nconsts} constants")
    except CheckFailed as e:
        print(f"freebsd: FAILED: {e}", file=sys.stderr)
        return 1
    print(f"freebsd: cross-check passed in {time.monotonic() - t0:.1f} s (compiled and linked, not run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
