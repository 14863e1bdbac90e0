"""Pipeline configuration: one TOML file, validated up front with messages that name the
offending key, so a bad file never gets as far as the fast path."""
import math
import os
import re
import tomllib
from dataclasses import dataclass, field

from bindings.netmap.names import is_netmap
from pipeline import rundir
from pipeline.slowpath.flowtext import FlowError, parse_flow


LOCAL = 0xFFFE                    # OpenFlow's port number of the switch's own port


class ConfigError(Exception):
    """A config the pipeline cannot run; `errors` lists every problem found, each with its
    place (`valepipe check` prints them all, `run` the first)."""

    def __init__(self, errors):
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        more = len(self.errors) - 1
        super().__init__(self.errors[0] + (f" (and {more} more error{'s' * (more > 1)}: valepipe check "
                                           "lists them)" if more else ""))


@dataclass
class Config:
    name: str = "valepipe"
    batch: int = 256
    flow_limit: int = 200_000
    emc_limit: int = 0                # exact-match entries; 0 = flow_limit
    upcall_rate: int = 10_000         # new flows per second each port may send to the slow path; 0 = no limit
    idle_timeout: float = 10.0
    revalidate_interval: float = 5.0
    idle_poll_us: int = None          # idle: poll the rings this long before sleeping (None: "auto")
    idle_sleep_us: int = 1000         # then sleep in naps of up to this (a shm: port has nothing to wake it)
    stages: list = field(default_factory=lambda: ["receive", "extract", "lookup", "execute", "transmit"])
    run_dir: str = ""
    ports: list = field(default_factory=list)       # [{"uri", "ofport", "slots"}]
    flows: list = field(default_factory=list)       # rule text, one rule per entry
    path: str = ""
    metrics_listen: str = ""                        # [metrics] listen = "HOST:PORT" (Prometheus)
    openflow: dict = None                           # [openflow]: controllers, listener, datapath_id, fail_mode


MAX_CONFIG = 1 << 20          # characters; rules in bulk go through add-flows instead
PIPELINE_KEYS = {"name": str, "batch": int, "flow_limit": int, "emc_limit": int, "upcall_rate": int, "idle_timeout": (int, float), "run_dir": str,
                 "revalidate_interval": (int, float), "idle_poll_us": (int, str), "idle_sleep_us": int,
                 "stages": list}
PORT_KEYS = {"uri": str, "ofport": int, "slots": int, "mirror": str}
SLOWPATH_KEYS = {"flows": list}
METRICS_KEYS = {"listen": str}
OPENFLOW_KEYS = {"controller": list, "listen": str, "datapath_id": (int, str), "fail_mode": str,
                 "inactivity_probe": (int, float), "max_backoff": (int, float)}
SECTIONS = {"pipeline": "[pipeline]", "port": "[[port]]", "slowpath": "[slowpath]", "metrics": "[metrics]",
            "openflow": "[openflow]"}


NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_SECONDS = 365 * 86400     # longest idle_timeout / revalidate_interval: a year (ns fit 64 bits)


def check_name(name, where="name"):
    """A pipeline name becomes a directory name: ASCII letters, digits and '_.-', never
    starting with '.' ('.' or '..' would make the run directory the base or its parent;
    '.pipelines' is the registry of running pipelines)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name.startswith("."):
        raise ConfigError(f"{where} {name!r}: a pipeline name is 1-64 of [A-Za-z0-9_.-], not starting with '.'")
    return name


def _seconds(cfg, key, path, meaning, bad):
    v = getattr(cfg, key)
    if not (math.isfinite(v) and 0 <= v <= MAX_SECONDS):
        bad(f"{path}: [pipeline].{key} must be 0..{MAX_SECONDS} seconds ({meaning}), not {v!r}")
        setattr(cfg, key, 0)


def _check_table(tbl, keys, where, bad):
    """Type-check a table's keys; returns the keys that passed."""
    if not isinstance(tbl, dict):
        bad(f"{where}: expected a table")
        return {}
    ok = {}
    for k, v in tbl.items():
        if k not in keys:
            bad(f"{where}: unknown key {k!r} (known: {', '.join(keys)})")
        elif not isinstance(v, keys[k]) or isinstance(v, bool):
            t = keys[k]
            tn = t.__name__ if isinstance(t, type) else "/".join(x.__name__ for x in t)
            bad(f"{where}.{k}: expected {tn}, got {type(v).__name__} {v!r}")
        elif isinstance(v, str) and "\0" in v:
            bad(f"{where}.{k}: a NUL character in {v!r}")
        else:
            ok[k] = v
    return ok


def parse(text, path="<config>", rules=False, run_dir=None):
    """A Config, or ConfigError listing every problem found. rules=True also parses each
    [slowpath] rule (what `valepipe check` and `run` do before starting anything); run_dir
    (`run --run-dir`) replaces [pipeline].run_dir."""
    if len(text) > MAX_CONFIG:
        raise ConfigError(f"{path}: {len(text)} characters; a config is at most {MAX_CONFIG}")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{path}: arrays or tables nested too deeply") from None
    errors = []
    bad = errors.append
    for k in doc:
        if k not in SECTIONS:
            bad(f"{path}: unknown section [{k}] (known: {', '.join(SECTIONS.values())})")
    cfg = Config(path=path)
    pl = _check_table(doc.get("pipeline", {}), PIPELINE_KEYS, f"{path}: [pipeline]", bad)
    for k, v in pl.items():
        setattr(cfg, k, v)
    try:
        check_name(cfg.name, f"{path}: [pipeline].name")
    except ConfigError as e:
        bad(str(e))
    if not 1 <= cfg.batch <= 1024:
        bad(f"{path}: [pipeline].batch must be 1..1024, not {cfg.batch}")
    if not 1 <= cfg.flow_limit <= 10_000_000:
        bad(f"{path}: [pipeline].flow_limit must be 1..10000000")
    if not 0 <= cfg.emc_limit <= cfg.flow_limit:
        bad(f"{path}: [pipeline].emc_limit must be 0..flow_limit (0 = flow_limit)")
    if not 0 <= cfg.upcall_rate <= 10_000_000:
        bad(f"{path}: [pipeline].upcall_rate must be 0..10000000 new flows/s per port (0 = no limit)")
    if cfg.idle_poll_us == "auto":
        cfg.idle_poll_us = None
    elif isinstance(cfg.idle_poll_us, str) or (cfg.idle_poll_us is not None and not 0 <= cfg.idle_poll_us <= 1_000_000):
        bad(f'{path}: [pipeline].idle_poll_us must be "auto" or 0..1000000 microseconds, not {cfg.idle_poll_us!r}')
        cfg.idle_poll_us = None
    if not 1 <= cfg.idle_sleep_us <= 100_000:
        bad(f"{path}: [pipeline].idle_sleep_us must be 1..100000 microseconds, not {cfg.idle_sleep_us}")
    from pipeline._native import lib
    from pipeline.stages import stage_class
    if not 1 <= len(cfg.stages) <= lib.VP_CHAIN_MAX:
        bad(f"{path}: [pipeline].stages: 1..{lib.VP_CHAIN_MAX} stages, not {len(cfg.stages)}")
    for j, st in enumerate(cfg.stages):
        try:
            stage_class(st)
        except ValueError as e:
            bad(f"{path}: [pipeline].stages[{j}]: {e}")
    _seconds(cfg, "revalidate_interval", path, "0 = only when rules change", bad)
    _seconds(cfg, "idle_timeout", path, "0 = never", bad)
    cfg.run_dir = run_dir or cfg.run_dir or rundir.default(cfg.name)
    longest = len(os.fsencode(os.path.join(os.path.abspath(cfg.run_dir), rundir.LONGEST_SOCKET)))
    if longest > rundir.MAX_SOCKET_PATH:
        bad(f"{path}: [pipeline].run_dir {cfg.run_dir} is too long for its unix sockets ({longest} > "
            f"{rundir.MAX_SOCKET_PATH} bytes); set a shorter one")
    ports = doc.get("port", [])
    if isinstance(ports, dict):
        bad(f"{path}: [port] is one table; ports are an array of tables: write [[port]] (two brackets) "
            "before each port")
        ports = []
    elif not isinstance(ports, list) or not ports:
        bad(f"{path}: at least one [[port]] with a uri is needed")
        ports = []
    seen_of, seen_uri = set(), set()
    for i, p in enumerate(ports):
        where = f"{path}: [[port]] #{i + 1}"
        p = _check_table(p, PORT_KEYS, where, bad)
        if "uri" not in p:
            bad(f"{where}: missing uri (e.g. uri = \"shm:p{i + 1}\")")
            continue
        # slots left out: each kind has its default (1024; 256 of 64 KB for offloading ports)
        spec = {"uri": p["uri"], "ofport": p.get("ofport", i + 1)}
        if "slots" in p:
            spec["slots"] = p["slots"]
        if p.get("mirror"):
            spec["mirror"] = p["mirror"]
        if spec["uri"].startswith("internal:"):
            # the switch's own port is OpenFlow's LOCAL, as an Open vSwitch bridge's is
            if "ofport" in p and p["ofport"] != LOCAL:
                bad(f"{where}: an internal: port is OpenFlow port LOCAL ({LOCAL}); leave ofport out")
            if any(q["uri"].startswith("internal:") for q in cfg.ports):
                bad(f"{where}: a pipeline has one internal: port (OpenFlow's LOCAL)")
            spec["ofport"] = LOCAL
        elif not 1 <= spec["ofport"] <= 65279:
            bad(f"{where}: ofport must be 1..65279 (OpenFlow's range)")
        if spec["ofport"] in seen_of or spec["uri"] in seen_uri:
            bad(f"{where}: ofport {spec['ofport']} or uri {spec['uri']!r} used twice")
        if not 2 <= spec.get("slots", 1024) <= 65536:
            bad(f"{where}: slots must be 2..65536")
        if "slots" in p and is_netmap(spec["uri"]):
            bad(f"{where}: the netmap module sizes {spec['uri']}'s rings; ask for a size in "
                "its name instead (@conf:slots=N)")
        from pipeline.ports import PortError, check_uri
        try:
            check_uri(spec["uri"])
        except PortError as e:
            bad(f"{where}: uri: {e}")
        seen_of.add(spec["ofport"])
        seen_uri.add(spec["uri"])
        cfg.ports.append(spec)
    _check_outputs(cfg.ports, bad, f"{path}: ")
    _check_port_counts(cfg.ports, bad, f"{path}: ")
    sp = _check_table(doc.get("slowpath", {}), SLOWPATH_KEYS, f"{path}: [slowpath]", bad)
    for j, f in enumerate(sp.get("flows", [])):
        if not isinstance(f, str):
            bad(f"{path}: [slowpath].flows[{j}] must be a string like \"in_port=1,actions=output:2\"")
        elif rules:
            try:
                rule = parse_flow(f)       # refused here, in one line, not by a slow path that then exits
            except FlowError as e:
                bad(f"{path}: [slowpath].flows[{j}]: {e}")
                continue
            # groups and meters come over OpenFlow only: with no [openflow], none ever exists
            # (add-flow refuses such a rule; here it would drop what it matched for ever)
            for a in rule.actions if "openflow" not in doc else ():
                if a[0] in ("group", "meter"):
                    bad(f"{path}: [slowpath].flows[{j}]: {a[0]} {a[1]} does not exist (groups and meters "
                        "come over OpenFlow: [openflow])")
    cfg.flows = [f for f in sp.get("flows", []) if isinstance(f, str)]
    mt = _check_table(doc.get("metrics", {}), METRICS_KEYS, f"{path}: [metrics]", bad)
    if "listen" in mt:
        try:
            split_listen(mt["listen"])
            cfg.metrics_listen = mt["listen"]
        except ValueError as e:
            bad(f"{path}: [metrics].listen: {e}")
    if "openflow" in doc:
        cfg.openflow = _openflow(_check_table(doc["openflow"], OPENFLOW_KEYS, f"{path}: [openflow]", bad),
                                 f"{path}: [openflow]", bad)
    if errors:
        raise ConfigError(errors)
    return cfg


def _openflow(of, where, bad):
    """[openflow]: what the slow path's OpenFlow agent is given (defaults filled in)."""
    from pipeline.slowpath.openflow import parse_target
    out = {"controller": [], "listen": "", "datapath_id": 0, "fail_mode": "secure", "inactivity_probe": 5.0,
           "max_backoff": 8.0}
    for i, t in enumerate(of.get("controller", [])):
        try:
            if not isinstance(t, str):
                raise ValueError(f"{t!r} is not a string")
            parse_target(t, passive=False)
            out["controller"].append(t)
        except ValueError as e:
            bad(f"{where}.controller[{i}]: {e}")
    if "listen" in of:
        try:
            parse_target(of["listen"], passive=True)
            out["listen"] = of["listen"]
        except ValueError as e:
            bad(f"{where}.listen: {e}")
    if not out["controller"] and not out["listen"] and not any(k in of for k in ("controller", "listen")):
        bad(f"{where}: give controller = [\"tcp:HOST:PORT\", ...] or listen = \"ptcp:PORT\" (or both)")
    if "datapath_id" in of:
        v = of["datapath_id"]
        try:
            dpid = v if isinstance(v, int) else int(v[2:], 16) if v[:2].lower() == "0x" and v[2:].isascii() \
                else int(v, 16) if v.isascii() and v else None
        except ValueError:
            dpid = None
        if dpid is None or not 0 < dpid < 1 << 64:
            bad(f"{where}.datapath_id: {v!r} must be 1..2^64-1 (an integer, or hex like \"0x1\")")
        else:
            out["datapath_id"] = dpid
    if "fail_mode" in of:
        if of["fail_mode"] not in ("secure", "standalone"):
            bad(f"{where}.fail_mode: {of['fail_mode']!r} must be \"secure\" or \"standalone\"")
        else:
            out["fail_mode"] = of["fail_mode"]
    for k, lo, hi in (("inactivity_probe", 0.0, 3600.0), ("max_backoff", 1.0, 3600.0)):
        if k in of:
            v = float(of[k])
            if not (math.isfinite(v) and lo <= v <= hi):
                bad(f"{where}.{k}: {of[k]!r} must be {lo:g}..{hi:g} seconds")
            else:
                out[k] = v
    return out


def split_listen(text):
    """`HOST:PORT` (`[v6]:PORT`) -> (host, port); port 0 lets the system pick one."""
    host, colon, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not colon or not host or not port.isascii() or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} must be HOST:PORT, e.g. \"127.0.0.1:9477\"")
    return host, int(port)


def _check_outputs(specs, bad, where=""):
    """Two ports writing one file (a mirror, a pcap:FILE@write) would interleave and lose
    frames: refused."""
    writers = {}
    for s in specs:
        files = [s["mirror"]] if s.get("mirror") else []
        if s["uri"].startswith("pcap:") and "@" in s["uri"] and "write" in s["uri"].split("@", 1)[1].split(","):
            files.append(s["uri"][5:].split("@", 1)[0])
        for f in files:
            real = os.path.realpath(f)
            if real in writers:
                bad(f"{where}port {s['ofport']} ({s['uri']}) writes {f} twice (as its pcap and its mirror)"
                    if writers[real] == s["ofport"] else f"{where}ports {writers[real]} and {s['ofport']} "
                    f"({s['uri']}) both write {f}: give each its own file")
            writers[real] = s["ofport"]


def _check_port_counts(specs, bad, where=""):
    """What opening the ports would refuse later: more ports than a worker has, a shm:
    name used twice, `@share=` naming no shm: port of this config (a typo would make a
    region of its own that no peer finds), more ports in one region than it holds."""
    from pipeline._native import lib
    from ring.region import RegionError, parse_shm_uri
    if len(specs) > lib.VP_MAX_PORTS:
        bad(f"{where}{len(specs)} ports; a pipeline has at most {lib.VP_MAX_PORTS}")
    shm = []
    for s in specs:
        try:
            shm.append((s, *parse_shm_uri(s["uri"])))
        except RegionError:
            pass                                   # not shm:, or already refused
    names, regions = {}, {}
    for s, name, region in shm:
        if name in names:
            bad(f"{where}ports {names[name]} and {s['ofport']} are both named {name!r} (shm: names are unique: "
                "peers find a port by its name)")
        names.setdefault(name, s["ofport"])
        regions.setdefault(region, []).append(s["ofport"])
    for s, name, region in shm:
        if region != name and not any(n == region == r for _, n, r in shm):
            bad(f"{where}port {s['ofport']} ({s['uri']}): @share={region} names no port of this config (give "
                f"a shm:{region} port, or share the region of one that is: @share=NAME)")
    for region, ofports in regions.items():
        if len(ofports) > lib.VP_REGION_MAXPORTS:
            bad(f"{where}region {region} has {len(ofports)} ports (ofports {ofports[0]}..{ofports[-1]}); a shared "
                f"region holds at most {lib.VP_REGION_MAXPORTS}")


def add_mirrors(cfg, mirrors):
    """`PORT=FILE` items (PORT an ofport or a uri): capture what PORT sends into FILE."""
    for m in mirrors:
        port, eq, path = m.partition("=")
        if not eq or not path:
            raise ConfigError(f"--mirror {m!r}: expected PORT=FILE (PORT an ofport or a port uri)")
        hits = [s for s in cfg.ports if str(s["ofport"]) == port or s["uri"] == port]
        if not hits:
            raise ConfigError(f"--mirror {m!r}: no port {port!r} (ports: "
                              + ", ".join(f"{s['ofport']}={s['uri']}" for s in cfg.ports) + ")")
        if hits[0].get("mirror") and hits[0].get("_mirror_given"):
            raise ConfigError(f"--mirror {m!r}: port {port} is mirrored twice (one file per port)")
        hits[0]["mirror"], hits[0]["_mirror_given"] = path, True
    for s in cfg.ports:
        s.pop("_mirror_given", None)
    errors = []
    _check_outputs(cfg.ports, errors.append, "--mirror: ")
    if errors:
        raise ConfigError(errors)


def load(path, rules=False, run_dir=None):
    from pipeline import userfiles
    try:
        text = userfiles.read_bytes(path, "config", 4 * MAX_CONFIG).decode("utf-8")   # read with a bound: /dev/zero
    except userfiles.UserFileError as e:
        raise ConfigError(str(e).removeprefix("config ")) from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return parse(text, path, rules=rules, run_dir=run_dir)
