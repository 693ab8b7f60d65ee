"""The benchmark harness must not rot: ``bench/compare.py --smoke`` runs every workload at tiny sizes
against real workers on the real Redis and must print the full table and the goal verdicts.

Which competitors run here, explicitly:
- tasks_engine: always.
- arq: always. arq 0.28 is also a project dependency, so when ``.bench-venv/arq`` has not been
  created yet the harness is pointed at the project's interpreter (same arq version); the test
  never pip-installs anything (``--no-install``).
- Celery: from ``.bench-venv/celery`` when it exists (``bench/compare.py`` creates it on its first
  run with Celery, with Celery 5.7), otherwise from the project's interpreter, whose test extra has
  Celery 5.6 (``--no-install`` picks it): so CI runs it without a bench venv.

The numbers are not asserted (smoke sizes on a shared 2-core machine say nothing); the shape is:
every workload row has a value for each competitor that supports it, ratios are computed, the
goals section has a verdict per goal, ``--save`` writes the same report, and every job's result
was stored (the harness checks that and fails the run otherwise).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARQ_PYTHON = ROOT / ".bench-venv" / "arq" / "bin" / "python"
CELERY_PYTHON = ROOT / ".bench-venv" / "celery" / "bin" / "python"
ROW_PREFIXES = [
    "(1) no-op enqueue",
    "(1) no-op drain",
    "(1) worker CPU",
    "(2) sleep 10 ms enqueue",
    "(2) sleep 10 ms drain",
    "(3) enqueue->start p50",
    "(3) enqueue->start p99",
    "(3) enqueue->result p50",
    "(3) enqueue->result p99",
    "(4) 100 independent",
    "(4) chord of 100",
    "(4) chord / independent, 100",
    "(5) worker RSS before",
    "(5) RSS growth",
    "(6) no-op drain, 1 worker",
    "(6) no-op drain, 2 worker",
    "(6) speed-up",
    "(9) Redis commands per job",
    "(9) Redis CPU per job",
    "(9) Redis commands/s, idle",
    "(10) drain, body = 1 Redis call",
    "(10) worker CPU per job, 1 Redis call",
]
NUMBER = re.compile(r"^[0-9][0-9,]*(\.[0-9]+)?$")


def run_compare(tmp_path: Path, *args: str) -> tuple[str, str]:
    saved = tmp_path / "report.txt"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "compare.py"),
            "--smoke",
            "--no-install",
            "--db-base",
            "10",
            "--logdir",
            str(tmp_path / "logs"),
            "--save",
            str(saved),
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"compare.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert saved.read_text() == proc.stdout
    return proc.stdout, proc.stderr


def table(out: str) -> tuple[list[str], dict[str, list[str]]]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("workload (median of rounds)"))
    header = lines[start].split()
    rows: dict[str, list[str]] = {}
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        label, _, rest = line.partition("  ")
        rows[label.strip()] = rest.split()
    return header, rows


def row(rows: dict[str, list[str]], prefix: str) -> list[str]:
    matches = [cells for label, cells in rows.items() if label.startswith(prefix)]
    assert matches, f"no table row starting with {prefix!r}; rows: {list(rows)}"
    return matches[0]


def check_goals(out: str) -> None:
    section = out.split("goals (tasks_engine", 1)[1].split("every run:", 1)[0]
    verdicts = [line.split()[0] for line in section.splitlines()[1:] if line.strip()]
    assert len(verdicts) == 6, section
    assert all(v in ("PASS", "FAIL", "n/a") for v in verdicts), section


@pytest.mark.extended
def test_smoke_tasks_engine_and_arq(tmp_path: Path) -> None:
    arq_python = ARQ_PYTHON if ARQ_PYTHON.exists() else Path(sys.executable)
    out, _ = run_compare(tmp_path, "--only", "tasks_engine,arq", "--arq-python", str(arq_python))
    assert "command: " in out and "CPU: " in out and "Redis " in out and "Python 3." in out
    header, rows = table(out)
    assert header[-2:] == ["te/arq", "te/celery"]
    assert "tasks_engine" in header and "arq" in header
    for prefix in ROW_PREFIXES:
        cells = row(rows, prefix)
        # cells: unit, better, tasks_engine, arq, arq 0.5s (two words), te/arq, te/celery
        te, arq = cells[2], cells[3]
        assert NUMBER.match(te), (prefix, cells)
        if prefix.startswith("(4)"):
            assert arq == "n/a", (prefix, cells)  # arq has no chord
        else:
            assert NUMBER.match(arq), (prefix, cells)
            assert NUMBER.match(cells[-2]), (prefix, cells)  # te/arq ratio
        assert cells[-1] == "n/a"  # no Celery in this run
    latency = row(rows, "(3) enqueue->start p50")
    assert NUMBER.match(latency[4]), latency  # arq at its default 0.5 s poll_delay, for reference
    assert float(latency[4].replace(",", "")) > 50, "arq polling every 0.5 s cannot start jobs within 50 ms"
    check_goals(out)
    assert '"stored": 300' in out  # every no-op job's result was stored
    check_cost(out, rows)


def check_cost(out: str, rows: dict[str, list[str]]) -> None:
    """(9) and (10): counted on the run's own redis-server, the harness's commands apart, and every
    I/O body made its Redis call."""
    assert "private: started by this run" in out
    for cells in (row(rows, "(9) Redis commands per job"), row(rows, "(9) Redis CPU per job")):
        # enqueue, claim, complete with the result stored and one result read: at least 4 commands
        # per job and some CPU for each engine, and never the harness's polls counted in (< 1 per job)
        assert all(float(v.replace(",", "")) >= 4 for v in cells[2:4]), cells
    harness = row(rows, "(9) harness commands per job")
    assert all(float(v) < 1 for v in harness[2:4]), harness
    assert out.count('"io_calls": 300') == 2, "each of the 300 I/O bodies made its one INCR"
    assert "(9) what Redis ran per job" in out and "evalsha" in out


@pytest.mark.extended
def test_smoke_celery(tmp_path: Path) -> None:
    """Celery's own paths (prefork worker, sync client, pub/sub result observer, chord); tasks_engine's
    are covered above, so it is left out here to keep the test short."""
    out, _ = run_compare(tmp_path, "--only", "celery", "--workloads", "noop,latency,chord")
    used = CELERY_PYTHON if CELERY_PYTHON.exists() else Path(sys.executable)
    machine = next(line for line in out.splitlines() if line.startswith("celery: Python"))
    assert f"({used})" in machine and "celery 5." in machine, machine
    header, rows = table(out)
    assert "celery" in header and "tasks_engine" not in header
    for prefix in [
        "(1) no-op enqueue",
        "(1) no-op drain",
        "(1) worker CPU",
        "(3) enqueue->start p50",
        "(3) enqueue->result p99",
        "(4) 100 independent",
        "(4) chord of 100",
        "(4) chord of 300",
    ]:
        cells = row(rows, prefix)
        assert NUMBER.match(cells[2]), (prefix, cells)  # cells: unit, better, celery, te/arq, te/celery
    check_goals(out)
    assert '"stored": 300' in out


@pytest.mark.extended
def test_smoke_celery_wire(tmp_path: Path) -> None:
    """``bench/celery_wire.py --smoke``: the same Celery-format messages drained by a tasks_engine worker and
    by a Celery prefork worker (the project's Celery 5.6), both rows filled, the ratios and the verdicts."""
    saved = tmp_path / "report.txt"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "celery_wire.py"), "--smoke", "--logdir", str(tmp_path / "logs"),
         "--save", str(saved)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, (
        f"celery_wire.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    out = proc.stdout
    assert saved.read_text() == out
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("metric"))
    assert header.split()[-3:] == ["tasks_engine", "celery", "te/celery"], header
    for prefix in ("drain (first start", "worker CPU per job"):
        cells = next(line for line in lines if line.startswith(prefix)).split()[-3:]
        assert all(NUMBER.match(c) for c in cells), (prefix, cells)  # tasks_engine, celery, te/celery
    goals = out.split("goals (issue 25 point 8, te/celery):", 1)[1].split("every run:", 1)[0]
    assert [line.split()[0] for line in goals.splitlines() if line.strip()] in (
        [a, b] for a in ("PASS", "FAIL") for b in ("PASS", "FAIL")
    ), goals
    runs = [line for line in lines if line.startswith("  round 1 ") and "stored=" in line]
    assert sorted(line.split()[2] for line in runs) == ["celery", "tasks_engine"], runs
    assert all("stored=200" in line for line in runs), runs  # every job's Celery result record was read back
    assert "celery 5." in out and "tasks-engine " in out
