"""netmap's ioctl numbers, computed from each platform's encoding (they differ: FreeBSD
marks argument-less ioctls IOC_VOID, Linux leaves them 0), never hard-coded."""
import sys

from pipeline._native import ffi

GROUP = ord("i")


def _ioc(platform, inout, nr, size):
    if platform == "linux":
        # dir << 30 | size << 16 | group << 8 | nr; _IO dir 0, _IOWR dir 3 (read|write)
        return ((3 if inout else 0) << 30) | (size << 16) | (GROUP << 8) | nr
    if platform == "freebsd":
        # IOC_INOUT 0xC0000000 or IOC_VOID 0x20000000; size masked to 13 bits
        return (0xC0000000 if inout else 0x20000000) | ((size & 0x1FFF) << 16) | (GROUP << 8) | nr
    raise ValueError(f"netmap is not available on {platform}")


def numbers(platform=None):
    """{'NIOCCTRL', 'NIOCTXSYNC', 'NIOCRXSYNC'} for `platform` ('linux', 'freebsd'; default: this one)."""
    platform = platform or ("freebsd" if sys.platform.startswith("freebsd") else sys.platform)
    return {"NIOCCTRL": _ioc(platform, True, 151, ffi.sizeof("struct nmreq_header")),
            "NIOCTXSYNC": _ioc(platform, False, 148, 0),
            "NIOCRXSYNC": _ioc(platform, False, 149, 0)}
