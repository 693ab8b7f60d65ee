"""Draw the benchmark charts of the documentation site (SVG) from the saved result files.

    .venv/bin/python bench/charts.py [--out docs/charts]

Reads ``bench/results-latest.txt`` (``compare.py --save``) and ``bench/results-cluster-latest.txt``
(``cluster_scale.py --save``), so a new run redraws the figures by running this again (``scripts/docs``
does before every build). Each chart is written next to a Markdown table of the numbers it shows, which
the benchmarks page includes beside it. The SVGs are deterministic (fixed hash salt, no date), so an
unchanged result file leaves them unchanged in git.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parent.parent
COMPARE = ROOT / "bench" / "results-latest.txt"
CLUSTER = ROOT / "bench" / "results-cluster-latest.txt"
OUT = ROOT / "docs" / "charts"
ENGINES = ["tasks_engine", "arq", "arq 0.5s", "celery", "saq", "streaq", "taskiq"]
COLOURS = {"tasks_engine": "#3f51b5", "arq": "#9e9e9e", "arq 0.5s": "#cfcfcf", "celery": "#8bc34a",
           "saq": "#ff9800", "streaq": "#00acc1", "taskiq": "#e91e63"}  # fmt: skip


@dataclass(frozen=True)
class Row:
    workload: str
    unit: str
    better: str
    values: dict[str, float | None]  # engine -> value (None: n/a)


def parse_compare(text: str) -> dict[str, Row]:
    """The median table of a ``compare.py --save`` file, by workload name."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("workload (median of rounds)")), None)
    if start is None:
        raise ValueError("no median table ('workload (median of rounds) ...' header) in the results file")
    header = re.split(r"\s{2,}", lines[start].strip())
    rows: dict[str, Row] = {}
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) != len(header):
            raise ValueError(f"{COMPARE.name}: a row with {len(cells)} cells, header has {len(header)}: {line!r}")
        named = dict(zip(header, cells, strict=True))
        values = {engine: number(named[engine]) for engine in ENGINES}
        rows[cells[0]] = Row(cells[0], named["unit"], named["better"], values)
    if not rows:
        raise ValueError("no rows under the median table's header")
    return rows


def number(cell: str) -> float | None:
    cell = cell.rstrip("*").replace(",", "")
    return None if cell in ("n/a", "-", "") else float(cell)


def parse_cluster(text: str) -> dict[str, tuple[float, float]]:
    """``{"1 prefix": (jobs/s, busiest primary's share of a core), "3 prefixes": ...}``."""
    found = {}
    for m in re.finditer(r"^\s+(\d+ prefix(?:es)?)\s+on .*?:\s+([\d,]+) jobs/s, busiest primary (\d+)%", text, re.M):
        found[m.group(1)] = (float(m.group(2).replace(",", "")), int(m.group(3)) / 100)
    if set(found) != {"1 prefix", "3 prefixes"}:
        raise ValueError(f"cluster results: expected the '1 prefix' and '3 prefixes' lines, found {sorted(found)}")
    return found


def style() -> None:
    plt.rcParams.update({"svg.hashsalt": "tasks-engine-docs", "svg.fonttype": "none", "font.size": 9,
                         "axes.spines.top": False, "axes.spines.right": False})  # fmt: skip


def save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, format="svg", metadata={"Date": None})
    plt.close(fig)


def bars(ax: plt.Axes, row: Row, title: str, log: bool = False) -> None:
    engines = [e for e in ENGINES if row.values[e] is not None]
    values = [row.values[e] or 0.0 for e in engines]
    ax.barh(engines[::-1], values[::-1], color=[COLOURS[e] for e in engines[::-1]])
    for y, v in enumerate(values[::-1]):
        ax.annotate(f"{v:,.0f}" if v >= 100 else f"{v:g}", (v, y), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize=8)  # fmt: skip
    ax.set_title(f"{title}\n({row.unit}, {row.better} is better)")
    if log:
        ax.set_xscale("log")
    ax.margins(x=0.25)


def table(rows: list[Row], engines: list[str]) -> str:
    out = ["| workload | unit | " + " | ".join(engines) + " |", "|---|---|" + "---:|" * len(engines)]
    for row in rows:
        cells = ["n/a" if row.values[e] is None else f"{row.values[e]:,.2f}".rstrip("0").rstrip(".") for e in engines]
        out.append(f"| {row.workload} | {row.unit} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


THROUGHPUT = [
    ("(1) no-op enqueue", "enqueue, no-op jobs"),
    ("(1) no-op drain, results stored", "drain, 1 worker process"),
    ("(6) no-op drain, 2 worker processes", "drain, 2 worker processes"),
    ("(1) worker CPU per no-op job", "worker CPU per no-op job"),
]
LATENCY = [
    "(3) enqueue->start p50 @50/s",
    "(3) enqueue->start p99 @50/s",
    "(3) enqueue->start p50 @1000/s",
    "(3) enqueue->start p99 @1000/s",
]


def draw(compare: Path = COMPARE, cluster: Path = CLUSTER, out: Path = OUT) -> list[Path]:
    """Write every chart and its table into ``out``; returns the files written."""
    style()
    out.mkdir(parents=True, exist_ok=True)
    rows = parse_compare(compare.read_text())
    written = []

    fig, axes = plt.subplots(1, len(THROUGHPUT), figsize=(12, 3.4), sharey=True)
    for ax, (name, title) in zip(axes, THROUGHPUT, strict=True):
        bars(ax, rows[name], title)
    written.append(out / "peers.svg")
    save(fig, written[-1])
    (out / "peers.md").write_text(table([rows[name] for name, _ in THROUGHPUT], ENGINES))
    written.append(out / "peers.md")

    fig, ax = plt.subplots(figsize=(10, 3.8))
    engines = [e for e in ENGINES if all(rows[name].values[e] is not None for name in LATENCY)]
    width = 0.8 / len(engines)
    for i, engine in enumerate(engines):
        xs = [j + (i - (len(engines) - 1) / 2) * width for j in range(len(LATENCY))]
        ax.bar(xs, [rows[name].values[engine] or 0.0 for name in LATENCY], width, label=engine, color=COLOURS[engine])
    ax.set_xticks(range(len(LATENCY)), [name.removeprefix("(3) enqueue->start ") for name in LATENCY])
    ax.set_yscale("log")
    ax.set_ylabel("enqueue → start, ms (log scale; lower is better)")
    ax.legend(ncol=len(engines), fontsize=8, loc="upper left", frameon=False)
    ax.set_ylim(top=ax.get_ylim()[1] * 8)
    written.append(out / "latency.svg")
    save(fig, written[-1])
    latency_rows = [rows[n] for n in LATENCY] + [rows[n.replace("start", "result")] for n in LATENCY]
    (out / "latency.md").write_text(table(latency_rows, ENGINES))
    written.append(out / "latency.md")

    scale = parse_cluster(cluster.read_text())
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 2.8))
    labels = ["1 prefix\n(1 primary)", "3 prefixes\n(3 primaries)"]
    rates = [scale["1 prefix"][0], scale["3 prefixes"][0]]
    cpus = [scale["1 prefix"][1] * 100, scale["3 prefixes"][1] * 100]
    left.bar(labels, rates, color=[COLOURS["arq"], COLOURS["tasks_engine"]])
    left.set_title("drain, 3 workers (jobs/s, higher is better)")
    right.bar(labels, cpus, color=[COLOURS["arq"], COLOURS["tasks_engine"]])
    right.set_title("busiest primary (% of a core, lower is better)")
    for ax, values, fmt in ((left, rates, "{:,.0f}"), (right, cpus, "{:.0f}%")):
        for x, v in enumerate(values):
            ax.annotate(fmt.format(v), (x, v), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=8)
        ax.margins(y=0.2)
    written.append(out / "cluster.svg")
    save(fig, written[-1])
    (out / "cluster.md").write_text(
        "| case | jobs/s | busiest primary |\n|---|---:|---:|\n"
        + "".join(f"| {k} | {v[0]:,.0f} | {v[1]:.0%} of a core |\n" for k, v in scale.items())
    )
    written.append(out / "cluster.md")
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compare", type=Path, default=COMPARE)
    ap.add_argument("--cluster", type=Path, default=CLUSTER)
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    for path in draw(a.compare, a.cluster, a.out):
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


if __name__ == "__main__":
    main()
