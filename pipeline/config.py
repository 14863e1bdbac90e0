"""Pipeline configuration: one TOML file, validated up front with messages that name the
offending key, so a bad file never gets as far as the fast path."""
import os
import tomllib
from dataclasses import dataclass, field

from bindings.netmap.names import is_netmap


LOCAL = 0xFFFE                    # OpenFlow's port number of the switch's own port


class ConfigError(Exception):
    pass


@dataclass
class Config:
    name: str = "valepipe"
    batch: int = 256
    flow_limit: int = 200_000
    emc_limit: int = 0                # exact-match entries; 0 = flow_limit
    upcall_rate: int = 10_000         # new flows per second each port may send to the slow path; 0 = no limit
    idle_timeout: float = 10.0
    revalidate_interval: float = 5.0
    run_dir: str = ""
    ports: list = field(default_factory=list)       # [{"uri", "ofport", "slots"}]
    flows: list = field(default_factory=list)       # rule text, one rule per entry
    path: str = ""


MAX_CONFIG = 1 << 20          # characters; rules in bulk go through add-flows instead
PIPELINE_KEYS = {"name": str, "batch": int, "flow_limit": int, "emc_limit": int, "upcall_rate": int, "idle_timeout": (int, float), "run_dir": str,
                 "revalidate_interval": (int, float)}
PORT_KEYS = {"uri": str, "ofport": int, "slots": int, "mirror": str}
SLOWPATH_KEYS = {"flows": list}


def default_run_dir(name):
    base = "/run/valepipe" if os.geteuid() == 0 else f"/tmp/valepipe-{os.getuid()}"
    return os.path.join(base, name)


def _check_table(tbl, keys, where):
    if not isinstance(tbl, dict):
        raise ConfigError(f"{where}: expected a table")
    for k, v in tbl.items():
        if k not in keys:
            raise ConfigError(f"{where}: unknown key {k!r} (known: {', '.join(keys)})")
        if not isinstance(v, keys[k]) or isinstance(v, bool):
            t = keys[k]
            tn = t.__name__ if isinstance(t, type) else "/".join(x.__name__ for x in t)
            raise ConfigError(f"{where}.{k}: expected {tn}, got {type(v).__name__} {v!r}")


def parse(text, path="<config>"):
    if len(text) > MAX_CONFIG:
        raise ConfigError(f"{path}: {len(text)} characters; a config is at most {MAX_CONFIG}")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{path}: arrays or tables nested too deeply") from None
    for k in doc:
        if k not in ("pipeline", "port", "slowpath"):
            raise ConfigError(f"{path}: unknown section [{k}] (known: [pipeline], [[port]], [slowpath])")
    cfg = Config(path=path)
    pl = doc.get("pipeline", {})
    _check_table(pl, PIPELINE_KEYS, f"{path}: [pipeline]")
    for k, v in pl.items():
        setattr(cfg, k, v)
    if not cfg.name or not all(c.isalnum() or c in "_-." for c in cfg.name):
        raise ConfigError(f"{path}: [pipeline].name {cfg.name!r} must be letters, digits, '_-.'")
    if not 1 <= cfg.batch <= 1024:
        raise ConfigError(f"{path}: [pipeline].batch must be 1..1024, not {cfg.batch}")
    if not 1 <= cfg.flow_limit <= 10_000_000:
        raise ConfigError(f"{path}: [pipeline].flow_limit must be 1..10000000")
    if not 0 <= cfg.emc_limit <= cfg.flow_limit:
        raise ConfigError(f"{path}: [pipeline].emc_limit must be 0..flow_limit (0 = flow_limit)")
    if not 0 <= cfg.upcall_rate <= 10_000_000:
        raise ConfigError(f"{path}: [pipeline].upcall_rate must be 0..10000000 new flows/s per port (0 = no limit)")
    if cfg.revalidate_interval < 0:
        raise ConfigError(f"{path}: [pipeline].revalidate_interval must be >= 0 (0 = only when rules change)")
    if cfg.idle_timeout < 0:
        raise ConfigError(f"{path}: [pipeline].idle_timeout must be >= 0 (0 = never)")
    cfg.run_dir = cfg.run_dir or default_run_dir(cfg.name)
    ports = doc.get("port", [])
    if not isinstance(ports, list) or not ports:
        raise ConfigError(f"{path}: at least one [[port]] with a uri is needed")
    seen_of, seen_uri = set(), set()
    for i, p in enumerate(ports):
        where = f"{path}: [[port]] #{i + 1}"
        _check_table(p, PORT_KEYS, where)
        if "uri" not in p:
            raise ConfigError(f"{where}: missing uri (e.g. uri = \"shm:p{i + 1}\")")
        spec = {"uri": p["uri"], "ofport": p.get("ofport", i + 1), "slots": p.get("slots", 1024)}
        if p.get("mirror"):
            spec["mirror"] = p["mirror"]
        if spec["uri"].startswith("internal:"):
            # the switch's own port is OpenFlow's LOCAL, as an Open vSwitch bridge's is
            if "ofport" in p and p["ofport"] != LOCAL:
                raise ConfigError(f"{where}: an internal: port is OpenFlow port LOCAL ({LOCAL}); leave ofport out")
            if any(q["uri"].startswith("internal:") for q in cfg.ports):
                raise ConfigError(f"{where}: a pipeline has one internal: port (OpenFlow's LOCAL)")
            spec["ofport"] = LOCAL
        elif not 1 <= spec["ofport"] <= 65279:
            raise ConfigError(f"{where}: ofport must be 1..65279 (OpenFlow's range)")
        if spec["ofport"] in seen_of or spec["uri"] in seen_uri:
            raise ConfigError(f"{where}: ofport {spec['ofport']} or uri {spec['uri']!r} used twice")
        if not 2 <= spec["slots"] <= 65536:
            raise ConfigError(f"{where}: slots must be 2..65536")
        if "slots" in p and is_netmap(spec["uri"]):
            raise ConfigError(f"{where}: the netmap module sizes {spec['uri']}'s rings; ask for a size in "
                              "its name instead (@conf:slots=N)")
        seen_of.add(spec["ofport"])
        seen_uri.add(spec["uri"])
        cfg.ports.append(spec)
    sp = doc.get("slowpath", {})
    _check_table(sp, SLOWPATH_KEYS, f"{path}: [slowpath]")
    for j, f in enumerate(sp.get("flows", [])):
        if not isinstance(f, str):
            raise ConfigError(f"{path}: [slowpath].flows[{j}] must be a string like \"in_port=1,actions=output:2\"")
    cfg.flows = list(sp.get("flows", []))
    return cfg


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
        hits[0]["mirror"] = path


def load(path):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    return parse(text, path)
