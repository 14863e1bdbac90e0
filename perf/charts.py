#!/usr/bin/env python3
"""PNG charts of the benchmarks (matplotlib): Mpps by flows and batch on shm: ports,
ns/packet by stage, switches side by side on veth, VALE paths. The bench scripts call
these beside their tables; run alone, it redraws every chart from the tables recorded
in perf/RESULTS.md (no benchmark runs): `python perf/charts.py [--out perf/charts]`."""
import argparse
import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
STAGES = ("receive", "extract", "lookup", "execute", "transmit")


def _plt():
    import matplotlib
    matplotlib.use("Agg")                 # files only, no display
    import matplotlib.pyplot as plt
    return plt


def draw(make):
    """Draw one chart beside a bench script's table; without matplotlib, say so instead."""
    try:
        print(f"chart: {make()}")
    except ImportError as e:
        print(f"chart: not drawn ({e}; pip install matplotlib, or '.[perf]')")


def _save(fig, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def shm_mpps(rows, path, title="valepipe on shm: ports, 64-byte frames"):
    """rows: (flows, batch, Mpps, {stage: ns}) -> two panels: Mpps by case, ns/packet by stage."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    labels = [f"{f:,} flow{'s' * (f != 1)}\nbatch {bt}" for f, bt, _, _ in rows]
    a.bar(labels, [m for _, _, m, _ in rows], color="#3b75af")
    a.set_ylabel("Mpps delivered (median)")
    a.set_title(title)
    bottom = [0.0] * len(rows)
    for s in STAGES:
        vals = [ns.get(s, 0) for _, _, _, ns in rows]
        b.bar(labels, vals, bottom=bottom, label=s)
        bottom = [x + y for x, y in zip(bottom, vals)]
    b.set_ylabel("ns/packet")
    b.set_title("time per packet by stage")
    b.legend(fontsize=8)
    for ax in (a, b):
        ax.tick_params(axis="x", labelsize=8)
    return _save(fig, path)


def side_by_side(columns, series, path, title, ylabel="Mpps delivered (median)"):
    """series: {name: [value per column]} as grouped bars."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(11, 5))
    n = len(series)
    width = 0.8 / max(n, 1)
    for i, (name, vals) in enumerate(series.items()):
        xs = [c + (i - (n - 1) / 2) * width for c in range(len(columns))]
        ax.bar(xs, vals, width, label=name)
    ax.set_xticks(range(len(columns)), columns)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    return _save(fig, path)


# -- the tables already recorded in RESULTS.md ---------------------------------------------------
def _tables(text):
    """Markdown tables of a document as (heading above them, [[cells]])."""
    out, heading, rows = [], "", []
    for line in text.splitlines() + [""]:
        if line.startswith("#"):
            heading = line.strip("# ").strip()
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                rows.append(cells)
        elif rows:
            out.append((heading, rows))
            rows = []
    return out


def _num(cell):
    m = re.search(r"[\d.]+", cell.replace(",", ""))
    return float(m.group()) if m else 0.0


def from_results(results, out):
    """Every chart that RESULTS.md's recorded tables allow; returns the files written."""
    with open(results, encoding="utf-8") as f:
        tables = _tables(f.read())
    made = []
    for heading, rows in tables:
        head = [c.lower() for c in rows[0]]
        if head[:3] == ["flows", "batch", "mpps (median)"] and "shm" in heading.lower():
            data = [(int(_num(r[0])), int(_num(r[1])), _num(r[2]), dict(zip(STAGES, map(_num, r[4:9]))))
                    for r in rows[1:]]
            made.append(shm_mpps(data, os.path.join(out, "shm_mpps.png")))
        elif head[0] == "switch" and len(head) == 4:
            cols = rows[0][1:]
            series = {r[0].replace("`", ""): [_num(c.split("(")[0]) for c in r[1:]] for r in rows[1:]}
            made.append(side_by_side(cols, series, os.path.join(out, "veth_switches.png"),
                                     "64-byte frames on veth: valepipe, Open vSwitch 3.1, the Linux bridge"))
        elif head[:2] == ["path", "size"]:
            cases = sorted({(r[1], r[2]) for r in rows[1:]}, key=lambda c: (int(c[0]), int(c[1])))
            cols = [f"{s} B, batch {b}" for s, b in cases]
            series = {}
            for r in rows[1:]:
                series.setdefault(r[0], [0.0] * len(cases))[cases.index((r[1], r[2]))] = _num(r[3])
            made.append(side_by_side(cols, series, os.path.join(out, "vale_guest.png"),
                                     "VALE -> valepipe -> VALE in a TCG guest (software CPU)"))
        elif head[:2] == ["case", "mpps (median)"]:
            made.append(side_by_side([r[0][:40] for r in rows[1:]], {"Mpps": [_num(r[1]) for r in rows[1:]]},
                                     os.path.join(out, "megaflows.png"), "100,000 megaflows over 10 masks"))
    return made


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--results", default=os.path.join(HERE, "RESULTS.md"))
    ap.add_argument("--out", default=os.path.join(HERE, "charts"))
    a = ap.parse_args()
    for path in from_results(a.results, a.out):
        print(os.path.relpath(path))


if __name__ == "__main__":
    main()
