"""Issue 9, "Done when": the README's main command runs a demo of all four job kinds and prints what happened."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import redis as sync_redis

from jobs.sink import free_port

ROOT = Path(__file__).resolve().parent.parent
EXPECTED = {
    "send_email": "SUCCESS",
    "send_email (invalid address)": "FAILURE",
    "send_batch_email": "SUCCESS",
    "report orders (csv)": "SUCCESS",
    "report users (xlsx)": "SUCCESS",
    "batch_process": "SUCCESS",
    "batch fan-out (chord)": "SUCCESS",
    "cleanup_results": "SUCCESS",
    "cleanup_reports": "SUCCESS",
    "daily_summary → report": "SUCCESS",
    "daily_summary → email admin@example.com": "SUCCESS",
}


def test_tasks_engine_demo_runs_every_job_kind(prefix, tmp_path, sync_client: sync_redis.Redis):
    """``tasks-engine demo`` as a user runs it (settings.py, its own SMTP sink since nothing listens on the
    port, a fresh SQLite file): exit code 0 and a table with each job's final state."""
    env = dict(os.environ)
    env.update(
        {
            "TE_KEY_PREFIX": prefix,
            "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'demo.db'}",
            "TE_REPORTS_DIR": str(tmp_path / "reports"),
            "TE_SMTP_PORT": str(free_port()),
            "TE_SMTP_LOCAL_HOSTNAME": "localhost",
            "COLUMNS": "220",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.pop("TE_LOG_LEVEL", None)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "tasks_engine.cli", "demo"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        keys = list(sync_client.scan_iter(match=f"{{{prefix}}}:*", count=1000))
        if keys:
            sync_client.delete(*keys)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "started a local sink" in out.stdout
    assert "20 users, 200 orders" in out.stdout
    states = {}
    for line in out.stdout.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line)]
        if len(cells) >= 5 and cells[1] in EXPECTED:
            states[cells[1]] = cells[3]
    assert states == EXPECTED, out.stdout
    assert re.search(r"SMTP sink received 4 message\(s\)", out.stdout)
    assert "all 11 jobs ended as expected" in out.stdout
    # The table may wrap a cell over several lines: read the cells' text with the borders taken out.
    flat = " ".join(re.sub(r"[│┃]", " ", out.stdout).split())
    assert "failed_ids=[10, 20, 30, 40, 50, 9999]" in flat  # the batch collected its failures
    files = sorted(p.suffix for p in (tmp_path / "reports").iterdir())
    assert files == [".csv", ".csv", ".xlsx"]  # orders, task summary; users


def test_demo_says_when_it_started_an_embedded_redis_and_how_to_stop_it(prefix, tmp_path):
    """First run on a machine with no Redis: the demo starts one, says where its data is and how to stop it."""
    port = free_port()
    env = dict(os.environ)
    env.update({"REDIS_URL": f"redis://127.0.0.1:{port}/0", "TE_KEY_PREFIX": prefix, "COLUMNS": "300",
                "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'demo.db'}", "TE_REPORTS_DIR": str(tmp_path / "r"),
                "TE_SMTP_PORT": str(free_port()), "TE_SMTP_LOCAL_HOSTNAME": "localhost"})  # fmt: skip
    try:
        out = subprocess.run([sys.executable, "-m", "tasks_engine.cli", "demo"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"data in var/redis/{port}" in out.stdout and f"redis-cli -p {port} shutdown" in out.stdout
    finally:
        try:
            sync_redis.Redis(port=port).shutdown(nosave=True)
        except sync_redis.ConnectionError:
            pass  # it stopped, as a shut-down server does
