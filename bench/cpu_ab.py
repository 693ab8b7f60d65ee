"""Worker CPU per no-op job of two source trees, measured in one run, alternating (A/B).

    .venv/bin/python bench/cpu_ab.py --before /path/to/old/checkout [--rounds 5 --jobs 10000]

Each round runs ``cmp_te.py``'s no-op drain once per tree (order alternates), with ``PYTHONPATH``
pointing at that tree, and prints the medians and the ratio after/before. Used to check that a
refactor keeps the hot path's cost (the layered-core change: within 5 %).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
MARK = "BENCH_RESULT "


def one(tree: Path, jobs: int, db: int) -> float:
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "REDIS_URL": f"redis://127.0.0.1:6379/{db}",
        "TE_KEY_PREFIX": "bench",
        "TE_LOG_LEVEL": "WARNING",
        "TE_BEAT_ENABLED": "false",
        "BENCH_DB": str(db),
    }
    with tempfile.TemporaryDirectory() as logdir:
        argv = [
            sys.executable,
            str(tree / "bench" / "cmp_te.py"),
            "--workload",
            "drain",
            "--task",
            "noop",
            "--jobs",
            str(jobs),
            "--max-jobs",
            "100",
            "--procs",
            "1",
            "--timeout",
            "300",
            "--db",
            str(db),
            "--logdir",
            logdir,
        ]
        out = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True, check=False, timeout=600)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith(MARK)]
    if not lines:
        raise SystemExit(f"no result from {tree}: {out.stderr[-2000:]}")
    return float(json.loads(lines[-1][len(MARK) :])["cpu_us_per_job"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, required=True)
    ap.add_argument("--after", type=Path, default=ROOT)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--db", type=int, default=13)
    a = ap.parse_args()
    results: dict[str, list[float]] = {"before": [], "after": []}
    for r in range(a.rounds):
        order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
        for name in order:
            results[name].append(one(getattr(a, name).resolve(), a.jobs, a.db))
        print(
            f"round {r + 1}: before {results['before'][-1]:.0f} us/job, after {results['after'][-1]:.0f} us/job",
            flush=True,
        )
    before, after = statistics.median(results["before"]), statistics.median(results["after"])
    print(
        f"median worker CPU per no-op job: before {before:.0f} us, after {after:.0f} us, "
        f"after/before {after / before:.3f}"
    )


if __name__ == "__main__":
    main()
