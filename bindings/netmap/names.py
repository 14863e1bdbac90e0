"""netmap port names as libnetmap's nmport_open reads them (../shared/netmap-abi.md §4.1):
`subsystem:vpname[{|}pipe][mode][/flags][@memid][@option...]` -> what NIOCCTRL/REGISTER
needs (kernel name, nr_mode, nr_ringid, nr_flags, nr_mem_id, ring/slot counts). One option
is valepipe's own: `@netns=NS`, the network namespace whose interface netmap:IF names."""
import re
from dataclasses import dataclass, field

from pipeline._native import lib

IDENT = r"[A-Za-z0-9_]+"
MAX_NAME = 63
FLAGS = {"x": lib.NR_EXCLUSIVE, "z": lib.NR_ZCOPY_MON, "t": lib.NR_MONITOR_TX, "r": lib.NR_MONITOR_RX,
         "R": lib.NR_RX_RINGS_ONLY, "T": lib.NR_TX_RINGS_ONLY}
CONF_KEYS = ("rings", "host_rings", "slots", "tx_rings", "rx_rings", "host_tx_rings", "host_rx_rings",
             "tx_slots", "rx_slots")
OPTIONS = {"share": ("port",), "conf": CONF_KEYS,
           "extmem": ("file", "if_num", "if_size", "ring_num", "ring_size", "buf_num", "buf_size"),
           "netns": ("name",)}
DEFAULT_KEY = {"share": "port", "extmem": "file", "netns": "name"}
MANDATORY = {"share": "port", "extmem": "file", "netns": "name"}


def is_netmap(uri):
    """Whether a port uri names a netmap or VALE port (netmap:IF, valeX:PORT)."""
    return uri.startswith(("netmap:", "vale"))


class NameError_(ValueError):
    """A port name libnetmap would refuse; the message says where."""


@dataclass
class NetmapName:
    text: str
    subsystem: str                # "netmap" or "valeX"
    kernel_name: str              # what goes into nr_name
    mode: int = lib.NR_REG_ALL_NIC
    ringid: int = 0
    flags: int = 0
    mem_id: int = 0
    options: dict = field(default_factory=dict)   # option -> {key: value}

    @property
    def is_vale(self):
        return self.subsystem.startswith("vale")

    def conf(self):
        """Ring and slot counts asked for (specific keys override the generic ones)."""
        c = {k: int(v) for k, v in self.options.get("conf", {}).items()}
        out = {}
        for d in ("tx", "rx"):
            if f"{d}_rings" in c or "rings" in c:
                out[f"nr_{d}_rings"] = c.get(f"{d}_rings", c.get("rings"))
            if f"{d}_slots" in c or "slots" in c:
                out[f"nr_{d}_slots"] = c.get(f"{d}_slots", c.get("slots"))
            if f"host_{d}_rings" in c or "host_rings" in c:
                out[f"nr_host_{d}_rings"] = c.get(f"host_{d}_rings", c.get("host_rings"))
        return out


def parse(text):
    def bad(msg):
        raise NameError_(f"{text!r}: {msg}")
    m = re.match(r"(netmap|vale)([A-Za-z0-9_]*):", text)
    if not m:
        bad("not a netmap port name (netmap:IF or valeX:PORT)" if ":" in text else "missing ':'")
    subsystem, pos = m.group(1) + m.group(2), m.end()
    if m.group(1) == "netmap" and m.group(2):
        bad("the netmap subsystem takes no identifier")
    m = re.compile(IDENT).match(text, pos)
    if not m:
        bad(f"expected a port name at position {pos}")
    pos = m.end()
    if pos < len(text) and text[pos] in "{}":
        p = re.compile(IDENT).match(text, pos + 1)
        if not p:
            bad(f"pipe {text[pos]!r} needs an identifier")
        pos = p.end()
    vpname = text[m.start():pos]
    kernel = vpname if subsystem == "netmap" else text[:pos]
    if len(kernel) > MAX_NAME:
        bad(f"name longer than {MAX_NAME} characters")
    out = NetmapName(text, subsystem, kernel)
    rest = text[pos:]
    # one ring selector
    r = re.match(r"(\^)([0-9]*)|(\*)|(-)([0-9]*)", rest)
    if r:
        if r.group(1):
            out.mode, digits = (lib.NR_REG_ONE_SW, r.group(2)) if r.group(2) else (lib.NR_REG_SW, "")
        elif r.group(3):
            out.mode, digits = lib.NR_REG_NIC_SW, ""
        else:
            if not r.group(5):
                bad("'-' needs a ring number")
            out.mode, digits = lib.NR_REG_ONE_NIC, r.group(5)
        if digits:
            out.ringid = int(digits)
            if out.ringid >= 4095:
                bad(f"ring {out.ringid} out of range (0..4094)")
        rest = rest[r.end():]
    if rest[:1] in ("-", "*", "^"):
        bad("only one ring selector")
    if rest.startswith("/"):
        f = re.match(r"/([A-Za-z]*)", rest)
        for ch in f.group(1):
            if ch not in FLAGS:
                bad(f"unknown flag {ch!r} (flags: {''.join(FLAGS)})")
            out.flags |= FLAGS[ch]
        rest = rest[f.end():]
    mem = re.match(r"@([0-9]+)", rest)
    if mem:
        out.mem_id = int(mem.group(1))
        if not 0 < out.mem_id < 65536:
            bad("memory id must be 1..65535")
        rest = rest[mem.end():]
    while rest:
        o = re.match(r"@([A-Za-z_]+)(?:([=:])([^@]*))?", rest)
        if not o:
            bad(f"unexpected {rest!r}")
        name, sep, body = o.group(1), o.group(2), o.group(3) or ""
        rest = rest[o.end():]
        if name == "offset":
            bad("option 'offset' is disabled (as in libnetmap by default)")
        if name not in OPTIONS:
            bad(f"unknown option {name!r} (options: {', '.join(OPTIONS)})")
        if name in out.options:
            bad(f"option {name!r} given twice")
        keys = {}
        if sep == "=":
            if name not in DEFAULT_KEY:
                bad(f"option {name!r} has no default key; use @{name}:key=value")
            keys[DEFAULT_KEY[name]] = body
        elif sep == ":":
            for kv in body.split(","):
                k, eq, v = kv.partition("=")
                k = k.replace("-", "_")
                if not eq or not k or not v:
                    bad(f"option {name!r}: expected key=value, not {kv!r}")
                if k not in OPTIONS[name]:
                    bad(f"option {name!r} has no key {k!r}")
                if k in keys:
                    bad(f"option {name!r}: key {k!r} set twice")
                keys[k] = v
        if name in MANDATORY and MANDATORY[name] not in keys:
            bad(f"option {name!r} needs {MANDATORY[name]}")
        if name == "conf":
            for k, v in keys.items():
                if not (v.isascii() and v.isdigit()):
                    bad(f"conf {k} must be a number, not {v!r}")
        out.options[name] = keys
    return out
