"""cffi build of valepipe's one native module, `pipeline._native` (API mode), for the OS
it is built on (or VP_TARGET_OS=linux|freebsd): each OS gets the portable kernels plus its
own; VP_TARGET_OS=portable builds the portable ones alone (the tests run that on Linux).

Every C kernel sits beside the Python that drives it; its header declares what
Python may call between `/* cdef-begin */` and `/* cdef-end */`. To add a kernel,
write `x.c` and `x.h` next to its module and list the header in KERNELS.
"""
import os
import re
import sys

from cffi import FFI

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OSES = ("linux", "freebsd")
TARGETS = OSES + ("portable",)

# headers in dependency order; each `x.h` has its `x.c` beside it (netmap.h has none).
# (header, os): built only for that OS. Linux's: its packet interfaces (TAP through
# /dev/net/tun, AF_PACKET, AF_XDP) and setns; FreeBSD's: procctl, cpuset, getpeereid.
KERNELS = [
    "ring/netmap.h",
    "ring/clock.h",
    "ring/region.h",
    "bindings/vnet.h",
    "bindings/adapter.h",
    ("bindings/netns.h", "linux"),
    ("bindings/tap/tap.h", "linux"),
    ("bindings/packet/packet.h", "linux"),
    ("bindings/afxdp/afxdp.h", "linux"),
    ("pipeline/hostos.h", "freebsd"),
    "bindings/pcap/pcap.h",
    "bindings/netmap/nmreq.h",
    "bindings/netmap/port.h",
    "pipeline/stages/batch.h",
    "pipeline/stages/receive.h",
    "pipeline/stages/extract.h",
    "pipeline/stages/lookup.h",
    "pipeline/stages/execute.h",
    "pipeline/stages/transmit.h",
    "pipeline/stages/chain.h",
    "pipeline/upcall.h",
    "pipeline/journal.h",
    "tools/traffic.h",
]


def cdef_of(header_text):
    """The part of a header cffi should read, with the VP_CDEF branch chosen, preceded by
    the constants of the header's named lists (named_lists)."""
    out = [f"#define VP_{lst}_{ident} {i}" for lst, items in named_lists(header_text) for i, (ident, _, _) in enumerate(items)]
    out += [f"#define VP_{lst}_N {len(items)}" for lst, items in named_lists(header_text)]
    m = re.search(r"/\* cdef-begin \*/(.*?)/\* cdef-end \*/", header_text, re.S)
    if not m:
        return "\n".join(out)
    keep = [True]
    for line in m.group(1).splitlines():
        s = line.strip()
        if s.startswith("#ifdef VP_CDEF"):
            keep.append(True)
        elif s.startswith("#else"):
            keep[-1] = not keep[-1]
        elif s.startswith("#endif"):
            keep.pop()
        elif all(keep) and not (s.startswith("#") and not s.startswith("#define")):
            out.append(line)
    return "\n".join(out)


# A named list in a header: `#define VP_FOREACH_X(_) _(ID, name) _(ID2, name2, arg) ...` (an
# X-macro, continued over lines). C makes its enum of VP_X_ID itself; the module gets the
# same constants (cdef_of) and vp_x_name(i) / vp_x_arg(i) (list_functions).
_LIST = re.compile(r"^#define VP_FOREACH_(\w+)\(_\)((?:[^\n]*\\\n)*[^\n]*)", re.M)
_ITEM = re.compile(r"\b_\(\s*(\w+)\s*,\s*(\w+)\s*(?:,\s*(\d+)\s*)?\)")


def named_lists(header_text):
    """[(LIST, [(ID, name, arg or None), ...])] of a header, in order."""
    return [(m.group(1), [(i, n, int(a) if a else None) for i, n, a in _ITEM.findall(m.group(2))])
            for m in _LIST.finditer(header_text)]


def list_functions(target):
    """(cdef, C source) of the names (and arguments) of every named list the build has."""
    cdef, src = [], ["#define VP_NAME_OF(id, name, ...) #name,", "#define VP_ARG_OF(id, name, arg) arg,"]
    for h in headers(target):
        for lst, items in named_lists(open(os.path.join(ROOT, h)).read()):
            low = lst.lower()
            cdef.append(f"const char *vp_{low}_name(uint32_t i);")
            src.append(f"const char *vp_{low}_name(uint32_t i) {{ static const char *const n[] = "
                       f"{{ VP_FOREACH_{lst}(VP_NAME_OF) }}; return i < VP_{lst}_N ? n[i] : 0; }}")
            if items and items[0][2] is not None:
                cdef.append(f"int64_t vp_{low}_arg(uint32_t i);")
                src.append(f"int64_t vp_{low}_arg(uint32_t i) {{ static const int64_t a[] = "
                           f"{{ VP_FOREACH_{lst}(VP_ARG_OF) }}; return i < VP_{lst}_N ? a[i] : -1; }}")
    return "\n".join(cdef), "\n".join(src)


def target_os():
    """The OS the module is built for: VP_TARGET_OS, else this one."""
    name = os.environ.get("VP_TARGET_OS") or ("freebsd" if sys.platform.startswith("freebsd") else sys.platform)
    if name not in TARGETS:
        raise SystemExit(f"valepipe builds for {' and '.join(OSES)}, not {name!r} (VP_TARGET_OS: {', '.join(TARGETS)})")
    return name


def headers(target):
    """KERNELS that `target` builds, in order."""
    return [h if isinstance(h, str) else h[0] for h in KERNELS if isinstance(h, str) or h[1] == target]


def sources(target):
    out = []
    for h in headers(target):
        c = os.path.join(ROOT, h[:-2] + ".c")
        if os.path.exists(c):
            out.append(os.path.relpath(c, ROOT))
    return out


# AF_XDP: libxdp's xsk rings and libbpf's map/program/link calls (bindings/afxdp)
LIBRARIES = {"linux": ["xdp", "bpf"]}
# hidden + no interposition: kernels call each other inside this one .so, and gcc only
# inlines across them (vp_extract_one, vp_key_hash) when they cannot be interposed
CFLAGS = ["-O3", "-std=gnu11", "-Wall", "-Wno-unused-function", "-fvisibility=hidden", "-fno-semantic-interposition",
          # keys are read and written as 64-bit words and as structs
          "-fno-strict-aliasing"]
# no -msse4.2 (or any -m flag): the module runs on every x86-64 CPU; the flow hash uses
# the crc32 instruction only where the CPU reports it (pipeline/stages/keyhash.h)
TARGET = target_os()
# the module says what it was built for (pipeline/ports.py offers that OS's port kinds)
BUILD_OS = '\nstatic const char *vp_build_os(void) { return "%s"; }\n' % TARGET

ffibuilder = FFI()
LIST_CDEF, LIST_SRC = list_functions(TARGET)
ffibuilder.cdef("\n".join(cdef_of(open(os.path.join(ROOT, h)).read()) for h in headers(TARGET))
                + "\nconst char *vp_build_os(void);\n" + LIST_CDEF)
ffibuilder.set_source(
    "pipeline._native",
    "\n".join('#include "%s"' % h for h in headers(TARGET)) + BUILD_OS + LIST_SRC + "\n",
    sources=sources(TARGET),
    include_dirs=[ROOT],
    extra_compile_args=CFLAGS + os.environ.get("VP_CFLAGS", "").split(),
    libraries=LIBRARIES.get(TARGET, []),
    extra_link_args=os.environ.get("VP_LDFLAGS", "").split(),
    py_limited_api=False,  # one file name for both the pip build and the in-place rebuild
)

if __name__ == "__main__":
    os.chdir(ROOT)
    ffibuilder.compile(verbose=False)
