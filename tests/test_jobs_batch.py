"""Issue 9, batch: jobs/batch.py processes real order rows through a real worker — failures collected,
bounded concurrency, idempotent per item (re-runs and a worker killed mid-batch), and a chord fan-out."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from jobs import batch
from jobs.batch import TAX_BPS, batch_process_task, fan_out
from jobs.config import JobsSettings
from jobs.db import get_engine, orders
from jobs.seed import order_is_valid, seed
from tasks_engine import AsyncResult, states
from tasks_engine.runtime.worker import Worker
from tests import jobs_support as support
from tests.conftest import running_worker

USERS = 20


def app_settings(prefix: str, tmp_path: Path, **overrides: object) -> JobsSettings:
    """This module's settings: the shared test settings plus what its jobs need."""
    return support.app_settings(prefix, tmp_path, **{**{"batch_concurrency": 4, "batch_item_delay": 0.01}, **overrides})


@pytest.fixture
async def app(prefix, sync_client, tmp_path) -> AsyncIterator[JobsSettings]:
    async with support.configured(app_settings(prefix, tmp_path), sync_client) as settings:
        yield settings


@pytest.fixture
async def app_worker(app) -> AsyncIterator[Worker]:
    async with running_worker(queues=["default"]) as worker:
        yield worker


def invalid_ids(count: int) -> list[int]:
    return [i for i in range(1, count + 1) if not order_is_valid(i, USERS, 20)]


async def order_rows(settings: JobsSettings) -> dict[int, dict]:
    async with get_engine(settings).connect() as conn:
        rows = (await conn.execute(select(orders))).mappings().all()
    return {r["id"]: dict(r) for r in rows}


async def test_batch_processes_rows_collects_failures_bounded_concurrency(app, app_worker):
    await seed(USERS, 60, settings=app)
    bad = invalid_ids(60)
    assert bad == [10, 20, 30, 40, 50, 60]  # non-positive amounts (every 20th) and the disabled users 10 and 20
    batch.in_flight.peak = 0
    r = await batch_process_task.delay([*range(1, 61), 9999])
    result = await r.get(timeout=30)
    assert result["total"] == 61 and result["success"] == 54 and result["failed"] == 7
    assert result["failed_ids"] == [*bad, 9999]
    assert 1 < batch.in_flight.peak <= 4  # items really overlap, never more than batch_concurrency

    rows = await order_rows(app)
    for order_id, row in rows.items():
        if order_id in bad:
            assert row["status"] == "failed" and row["error"] and row["process_count"] == 0
        else:
            tax = row["amount_cents"] * TAX_BPS[row["currency"]] // 10_000
            assert row["status"] == "processed" and row["process_count"] == 1, row
            assert row["tax_cents"] == tax and row["total_cents"] == row["amount_cents"] + tax
            assert row["processed_by"] == r.id and row["processed_at"] is not None
    assert rows[20]["error"].startswith("invalid amount") and rows[10]["error"] == "customer account is disabled"


async def test_running_the_same_batch_again_redoes_nothing(app, app_worker):
    await seed(USERS, 40, settings=app)
    first = await (await batch_process_task.delay(list(range(1, 41)))).get(timeout=30)
    again = await batch_process_task.delay(list(range(1, 41)))
    second = await again.get(timeout=30)
    assert {k: first[k] for k in ("total", "success", "failed", "failed_ids")} == {
        k: second[k] for k in ("total", "success", "failed", "failed_ids")
    }
    assert first["skipped"] == 0 and second["skipped"] == first["success"] == 36
    rows = await order_rows(app)
    assert all(r["process_count"] == 1 for r in rows.values() if r["status"] == "processed")
    assert {r["processed_by"] for r in rows.values() if r["status"] == "processed"} != {again.id}


async def test_worker_killed_mid_batch_rerun_finishes_without_redoing(app, spawn_worker, tmp_path):
    """kill -9 the worker while the batch runs; its lease expires, another worker gets the same job
    (delivered=2) and finishes it, skipping orders the dead worker had already processed."""
    count = 120
    await seed(USERS, count, settings=app)
    env = {"DATABASE_URL": app.database_url, "TE_BATCH_CONCURRENCY": "4", "TE_BATCH_ITEM_DELAY": "0.03"}
    first = spawn_worker(imports="jobs", env=env)
    r = await batch_process_task.delay(list(range(1, count + 1)))
    deadline = time.monotonic() + 30
    while True:
        done = sum(1 for row in (await order_rows(app)).values() if row["status"] != "pending")
        if done >= 30:
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    rows = await order_rows(app)
    by_first = {i for i, row in rows.items() if row["status"] == "processed"}
    assert 0 < len(by_first) < count - len(invalid_ids(count))  # really mid-way
    second = Worker(queues=["default"], beat=False)  # any worker will do: this one runs in the test process
    await second.start(handle_signals=False)
    try:
        result = await r.get(timeout=60)
    finally:
        await second.stop(grace=1)
    assert result["failed_ids"] == invalid_ids(count) and result["success"] == count - len(invalid_ids(count))
    assert result["skipped"] >= len(by_first)
    info = await r.record()
    assert info["delivered"] == 2 and info["state"] == states.SUCCESS
    rows = await order_rows(app)
    assert all(row["process_count"] == 1 for row in rows.values() if row["status"] == "processed")
    assert {rows[i]["processed_by"] for i in by_first} == {r.id}  # the same job id, processed once


async def test_fan_out_chunks_chord_one_summary(app, app_worker):
    count = 300
    await seed(USERS, count, settings=app)
    summary_result = await fan_out([*range(1, count + 1), 5000, 5001], chunk_size=40)
    assert isinstance(summary_result, AsyncResult)
    summary = await summary_result.get(timeout=60)
    bad = invalid_ids(count)
    assert summary["chunks"] == 8  # 302 ids in chunks of 40
    assert summary["total"] == count + 2 and summary["failed_ids"] == [*bad, 5000, 5001]
    assert summary["success"] == count - len(bad) and summary["failed"] == len(bad) + 2
    async with get_engine(app).connect() as conn:
        processed = (
            await conn.execute(select(func.count()).select_from(orders).where(orders.c.status == "processed"))
        ).scalar_one()
        runs = (await conn.execute(select(func.count(func.distinct(orders.c.processed_by))))).scalar_one()
    assert processed == count - len(bad)
    assert runs == 8  # every chunk was its own job
