"""cffi build of valepipe's one native module, `pipeline._native` (API mode).

Every C kernel sits beside the Python that drives it; its header declares what
Python may call between `/* cdef-begin */` and `/* cdef-end */`. To add a kernel,
write `x.c` and `x.h` next to its module and list the header in KERNELS.
"""
import os
import re

from cffi import FFI

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# headers in dependency order; each `x.h` has its `x.c` beside it (netmap.h has none)
KERNELS = [
    "ring/netmap.h",
    "ring/region.h",
    "bindings/adapter.h",
    "bindings/tap/tap.h",
    "bindings/packet/packet.h",
    "bindings/afxdp/afxdp.h",
    "bindings/pcap/pcap.h",
    "bindings/netmap/nmreq.h",
    "bindings/netmap/port.h",
    "pipeline/stages/batch.h",
    "pipeline/stages/receive.h",
    "pipeline/stages/extract.h",
    "pipeline/stages/lookup.h",
    "pipeline/stages/execute.h",
    "pipeline/stages/transmit.h",
    "pipeline/upcall.h",
    "tools/traffic.h",
]


def cdef_of(header_text):
    """The part of a header cffi should read, with the VP_CDEF branch chosen."""
    m = re.search(r"/\* cdef-begin \*/(.*?)/\* cdef-end \*/", header_text, re.S)
    if not m:
        return ""
    out, keep = [], [True]
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


def sources():
    out = []
    for h in KERNELS:
        c = os.path.join(ROOT, h[:-2] + ".c")
        if os.path.exists(c):
            out.append(os.path.relpath(c, ROOT))
    return out


ffibuilder = FFI()
ffibuilder.cdef("\n".join(cdef_of(open(os.path.join(ROOT, h)).read()) for h in KERNELS))
ffibuilder.set_source(
    "pipeline._native",
    "\n".join('#include "%s"' % h for h in KERNELS),
    sources=sources(),
    include_dirs=[ROOT],
    # hidden + no interposition: kernels call each other inside this one .so, and gcc
    # only inlines across them (vp_extract_one, vp_key_hash) when they cannot be interposed
    extra_compile_args=["-O3", "-std=gnu11", "-Wall", "-Wno-unused-function",
                        "-fvisibility=hidden", "-fno-semantic-interposition",
                        # keys are read and written as 64-bit words and as structs
                        "-fno-strict-aliasing"]
    # no -msse4.2 (or any -m flag): the module runs on every x86-64 CPU; the flow hash
    # uses the crc32 instruction only where the CPU reports it (pipeline/stages/keyhash.h)
    + os.environ.get("VP_CFLAGS", "").split(),
    # AF_XDP: libxdp's xsk rings and libbpf's map/program/link calls (bindings/afxdp)
    libraries=["xdp", "bpf"],
    extra_link_args=os.environ.get("VP_LDFLAGS", "").split(),
    py_limited_api=False,  # one file name for both the pip build and the in-place rebuild
)

if __name__ == "__main__":
    os.chdir(ROOT)
    ffibuilder.compile(verbose=False)
