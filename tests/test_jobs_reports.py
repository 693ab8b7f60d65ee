"""Issue 9, reports: jobs/reports.py reads a real database (SQLite file and PostgreSQL), streams rows into
CSV/XLSX files through a real worker, reports progress, cleans up on the soft time limit, stays flat in memory."""

from __future__ import annotations

import asyncio
import csv
import glob
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import psutil
import pytest
from openpyxl import load_workbook
from sqlalchemy import select, text

from jobs.config import JobsSettings
from jobs.db import dispose_engines, get_engine, orders, users
from jobs.reports import ReportParamsError, generate_report_task
from jobs.seed import seed
from tasks_engine import SoftTimeLimitExceeded, configure, states
from tasks_engine.runtime.worker import Worker
from tests import jobs_support as support
from tests.conftest import skip_or_fail_in_ci
from tests.jobs_support import close_broker

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
BIG = 100_000


def app_settings(prefix: str, tmp_path: Path, **overrides: object) -> JobsSettings:
    """This module's settings: the shared test settings plus what its jobs need."""
    return support.app_settings(prefix, tmp_path, **{**{"timezone": "Asia/Shanghai"}, **overrides})


@pytest.fixture
async def cleanup(prefix, sync_client) -> AsyncIterator[None]:
    yield
    await dispose_engines()
    await close_broker()
    keys = list(sync_client.scan_iter(match=f"{{{prefix}}}:*", count=1000))
    if keys:
        sync_client.delete(*keys)


async def start_worker() -> Worker:
    w = Worker(queues=["default"], beat=False)
    await w.start(handle_signals=False)
    return w


@pytest.fixture(scope="module")
def big_db(tmp_path_factory) -> str:
    """100,000 orders, made by the seed command itself (``python -m jobs.seed``)."""
    path = tmp_path_factory.mktemp("bigdb") / "big.db"
    url = f"sqlite+aiosqlite:///{path}"
    out = subprocess.run(
        [sys.executable, "-m", "jobs.seed", "--database-url", url, "--users", "1000", "--orders", str(BIG)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert f'"orders": {BIG}' in out.stdout and '"invalid_orders": 10000' in out.stdout
    return url


async def postgres_or_skip(url: str) -> None:
    import asyncpg

    try:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"), timeout=3)
    except (OSError, asyncpg.PostgresError) as exc:
        skip_or_fail_in_ci(f"PostgreSQL not reachable at {url}: {exc}")
    await conn.close()


def read_csv(path: str) -> list[list[str]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.reader(f))


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_reports_from_sqlite_and_postgres(prefix, tmp_path, cleanup, backend):
    overrides: dict[str, object] = {}
    schema = f"t_{uuid.uuid4().hex[:12]}"
    if backend == "postgres":
        await postgres_or_skip(PG_URL)
        overrides = {"database_url": PG_URL, "database_schema": schema}
    settings = configure(app_settings(prefix, tmp_path, **overrides))
    assert isinstance(settings, JobsSettings)
    try:
        info = await seed(users_count=20, orders_count=300, settings=settings)
        assert info["orders"] == 300
        engine = get_engine(settings)
        async with engine.connect() as conn:  # the expected rows, straight from the database
            expected = (
                await conn.execute(
                    select(orders.c.id, users.c.name, orders.c.amount_cents)
                    .join(users, users.c.id == orders.c.user_id)
                    .order_by(orders.c.id)
                )
            ).all()
            if backend == "postgres":  # the tables really live in this test's own schema
                where = (
                    await conn.execute(
                        text(
                            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'orders' "
                            "AND table_schema = :s"
                        ),
                        {"s": schema},
                    )
                ).scalar_one()
                assert where == schema
        w = await start_worker()
        try:
            r_csv = await generate_report_task.delay("orders", {"format": "csv"})
            r_xlsx = await generate_report_task.delay("orders", {"format": "xlsx", "limit": 120})
            r_users = await generate_report_task.delay("users", {"active": False})
            res_csv, res_xlsx, res_users = [await r.get(timeout=60) for r in (r_csv, r_xlsx, r_users)]
        finally:
            await w.stop(grace=1)

        assert set(res_csv) >= {"path", "rows", "bytes", "seconds"}
        assert res_csv["rows"] == 300 and res_csv["bytes"] == os.path.getsize(res_csv["path"]) > 0
        assert Path(res_csv["path"]).parent == tmp_path / "reports" and res_csv["path"].endswith(".csv")
        rows = read_csv(res_csv["path"])
        assert rows[0][:4] == ["订单ID", "用户ID", "用户", "金额"]
        assert [(int(r[0]), r[2], Decimal(r[3])) for r in rows[1:]] == [
            (i, name, Decimal(cents).scaleb(-2)) for i, name, cents in expected
        ]
        assert any("\u4e00" <= ch <= "\u9fff" for ch in rows[1][2])  # Chinese names survive the round trip

        assert res_xlsx["rows"] == 120 and res_xlsx["path"].endswith(".xlsx")
        sheet = load_workbook(res_xlsx["path"], read_only=True).active
        values = list(sheet.iter_rows(values_only=True))
        assert len(values) == 121 and values[0][2] == "用户"
        assert [(v[0], v[2]) for v in values[1:]] == [(i, name) for i, name, _ in expected[:120]]
        assert values[1][7] is not None and values[1][7].year >= 2020  # a real date cell, not text

        assert res_users["rows"] == 2  # users 10 and 20 are inactive
        assert [r[0] for r in read_csv(res_users["path"])[1:]] == ["10", "20"]
        assert list((tmp_path / "reports").glob("*.part")) == []
    finally:
        if backend == "postgres":
            async with get_engine(settings).begin() as conn:
                await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


async def test_invalid_report_request_fails_without_retry(prefix, tmp_path, cleanup):
    configure(app_settings(prefix, tmp_path))
    w = await start_worker()
    try:
        r1 = await generate_report_task.delay("salaries", {})
        r2 = await generate_report_task.delay("orders", {"format": "pdf"})
        with pytest.raises(ReportParamsError, match="unknown report type 'salaries'"):
            await r1.get(timeout=10)
        with pytest.raises(ReportParamsError, match="format"):
            await r2.get(timeout=10)
        assert (await r1.record())["retries"] == 0 and (await r2.record())["retries"] == 0
    finally:
        await w.stop(grace=1)


@pytest.mark.serial  # timing-sensitive: runs alone after the parallel run
@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
async def test_soft_time_limit_removes_partial_file(prefix, tmp_path, cleanup, big_db, fmt):
    """Stopped by its soft time limit mid-way: FAILURE (SoftTimeLimitExceeded), and no partial file is left —
    neither the CSV being written in the reports directory nor openpyxl's temporary sheet file."""
    configure(app_settings(prefix, tmp_path, database_url=big_db, report_fetch_rows=500))
    temp_before = set(glob.glob(os.path.join(tempfile.gettempdir(), "openpyxl.*")))
    w = await start_worker()
    try:
        r = await generate_report_task.apply_async(("orders", {"format": fmt}), soft_time_limit=0.25, time_limit=60)
        saw_part = False
        deadline = time.monotonic() + 60
        while not await r.ready():
            saw_part = saw_part or any((tmp_path / "reports").glob("*.part"))
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        with pytest.raises(SoftTimeLimitExceeded):
            await r.get(timeout=1)
        info = await r.record()
        assert info["state"] == states.FAILURE and info["retries"] == 0
        assert 0 < info["meta"]["done"] < BIG  # it was stopped mid-way
    finally:
        await w.stop(grace=1)
    if fmt == "csv":
        assert saw_part  # the CSV is written in place as <name>.part while it runs …
    assert list((tmp_path / "reports").iterdir()) == []  # … and nothing is left behind
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "openpyxl.*"))) <= temp_before


async def test_100k_rows_stream_with_flat_memory_and_progress(prefix, tmp_path, cleanup, big_db, spawn_worker):
    """A worker process writes 10,000 then 100,000 rows: its peak RSS barely moves (the rows are streamed,
    never all in memory), and the job's PROGRESS is visible through AsyncResult.record() while it runs."""
    configure(app_settings(prefix, tmp_path, database_url=big_db))
    proc = spawn_worker(
        imports="jobs",
        env={"DATABASE_URL": big_db, "TE_REPORTS_DIR": tmp_path / "reports", "TE_REPORT_FETCH_ROWS": "2000"},
    )
    worker = psutil.Process(proc.pid)

    async def run(limit: int | None) -> tuple[dict, int, list[dict]]:
        r = await generate_report_task.delay("orders", {"format": "csv", "limit": limit})
        peak, progress = worker.memory_info().rss, []
        while not await r.ready():
            peak = max(peak, worker.memory_info().rss)
            info = await r.record()
            if info["state"] == "PROGRESS" and (not progress or progress[-1] != info["meta"]):
                progress.append(info["meta"])
            await asyncio.sleep(0.01)
        return await r.get(timeout=5), peak, progress

    small, peak_small, _ = await run(10_000)
    big, peak_big, progress = await run(None)
    assert small["rows"] == 10_000 and big["rows"] == BIG
    assert len(read_csv(big["path"])) == BIG + 1
    growth = (peak_big - peak_small) / 2**20
    print(f"peak RSS 10k rows: {peak_small / 2**20:.1f} MiB, 100k rows: {peak_big / 2**20:.1f} MiB")
    # Holding 100,000 converted rows would take well over 50 MiB; streaming keeps the difference small.
    assert growth < 12, f"peak RSS grew {growth:.1f} MiB from 10k to 100k rows ({peak_small >> 20} -> {peak_big >> 20})"
    assert len(progress) >= 5 and all(p["total"] == BIG for p in progress)
    done = [p["done"] for p in progress]
    assert done == sorted(done) and 0 < done[len(done) // 2] < BIG
