"""Rule files as ovs-ofctl reads them: one rule per line, blank lines and '#' comments
skipped, `-` for standard input. Every refused rule is reported with FILE:LINE and its
text, so a user can go straight to it."""
from pipeline.slowpath.flowtext import FlowError, format_rule, parse_flow


MAX_FILE = 64 << 20          # bytes of rules (or flows to trace) read from one file: ~600,000 rules


class RuleFileError(Exception):
    """The file cannot be read, or rules in it are refused; `errors` lists each."""

    def __init__(self, errors):
        self.errors = list(errors)
        more = len(self.errors) - 1
        super().__init__(self.errors[0] + (f" (and {more} more)" if more else ""))


def read(path):
    """[(line number, rule text)] of a rule file (or '-': stdin)."""
    from pipeline import userfiles
    try:
        lines = userfiles.read_bytes(path, "file", MAX_FILE).decode("utf-8").splitlines()
    except userfiles.UserFileError as e:
        raise RuleFileError([str(e).removeprefix("file ")]) from None
    except UnicodeDecodeError as e:
        raise RuleFileError([f"{path}: not UTF-8 text ({e.reason} at byte {e.start})"]) from None
    return [(i, ln.strip()) for i, ln in enumerate(lines, 1) if ln.strip() and not ln.strip().startswith("#")]


def parse(path, mode="add"):
    """[(line number, text, Rule)], or RuleFileError naming every refused line."""
    out, errors = [], []
    for n, text in read(path):
        try:
            out.append((n, text, parse_flow(text, mode=mode)))
        except FlowError as e:
            errors.append(f"{'<stdin>' if path == '-' else path}:{n}: {_without_text(str(e), text)} (line: {text})")
    if errors:
        raise RuleFileError(errors)
    return out


def canonical(path):
    """Each rule of a file in ovs-ofctl's canonical form (what diff-flows compares)."""
    return [format_rule(r) for _, _, r in parse(path)]


def _without_text(msg, text):
    """Flow errors start with the rule's repr; the line is printed once, after."""
    head = repr(text) + ": "
    return msg[len(head):] if msg.startswith(head) else msg
