"""The slow path's OpenFlow 1.3 side (agent, channel, codec, flows, groups): loaded only when
the pipeline's config has an [openflow] section, so a pipeline without one never imports
os-ken."""


def parse_target(text, passive):
    """"tcp:HOST:PORT" (active) or "ptcp:PORT[:ADDR]" (passive) -> (host, port)."""
    kind, _, rest = text.partition(":")
    if kind != ("ptcp" if passive else "tcp") or not rest:
        raise ValueError(f"{text!r}: expected {'ptcp:PORT[:ADDR]' if passive else 'tcp:HOST:PORT'}")
    if passive:
        port, _, addr = rest.partition(":")
        host = addr or "0.0.0.0"
    else:
        host, _, port = rest.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    low = 0 if passive else 1
    if not host or not port.isascii() or not port.isdigit() or not low <= int(port) <= 65535:
        raise ValueError(f"{text!r}: a port number {low}..65535 is needed")
    return host, int(port)
