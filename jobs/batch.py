"""Batch processing of orders: the guide's ``batch_process_task`` on real rows.

Processing an order = validate it (positive amount, active customer, known currency), compute its
tax and total, and mark it ``processed``. A failing order is marked ``failed`` with the reason and
collected in ``failed_ids``; it never fails the batch.

Idempotent per item: the order's status row is the done marker. The final UPDATE only applies
to an order still ``pending``/``failed`` and writes the result and the marker in one statement,
so a batch that runs again (a worker killed mid-way, the job redelivered) skips orders already
processed instead of processing them twice (``process_count`` stays 1).

Bounded concurrency: at most ``batch_concurrency`` orders are in flight within one job.
``fan_out`` splits a big list into chunk jobs joined by a chord into one summary.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import select, update

from jobs.config import JobsSettings, job_settings
from jobs.db import get_engine, orders, users
from tasks_engine import AsyncResult, Task, chord, group, shared_task

log = structlog.get_logger("jobs.batch")

#: Tax rate per currency (basis points); an order in any other currency is refused.
TAX_BPS = {"CNY": 600, "USD": 0, "EUR": 1900}


class ItemError(Exception):
    """This one item cannot be processed (bad data); the batch carries on."""


@dataclass
class Gauge:
    """Items in flight in this process (and the peak), to observe the concurrency bound."""

    current: int = 0
    peak: int = 0

    def enter(self) -> None:
        self.current += 1
        self.peak = max(self.peak, self.current)

    def leave(self) -> None:
        self.current -= 1


in_flight = Gauge()


async def process_order(order_id: int, task_id: str, settings: JobsSettings) -> str:
    """Process one order; returns "processed" or "skipped" (already done), raises :class:`ItemError`."""
    engine = get_engine(settings)
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(orders.c.status, orders.c.amount_cents, orders.c.currency, users.c.active)
                .join(users, users.c.id == orders.c.user_id)
                .where(orders.c.id == order_id)
            )
        ).first()
    if row is None:
        raise ItemError("order not found")
    status, amount, currency, active = row
    if status == "processed":
        return "skipped"
    reason = None
    if amount <= 0:
        reason = f"invalid amount {amount}"
    elif not active:
        reason = "customer account is disabled"
    elif currency not in TAX_BPS:
        reason = f"unsupported currency {currency}"
    open_states = orders.c.status.in_(("pending", "failed"))
    now = datetime.now(UTC)
    if reason is not None:
        async with engine.begin() as conn:
            await conn.execute(
                update(orders)
                .where(orders.c.id == order_id, open_states)
                .values(status="failed", error=reason, processed_by=task_id, processed_at=now)
            )
        raise ItemError(reason)
    async with engine.begin() as conn:
        tax = amount * TAX_BPS[currency] // 10_000
        changed = await conn.execute(
            update(orders)
            .where(orders.c.id == order_id, open_states, orders.c.amount_cents == amount)
            .values(
                status="processed",
                tax_cents=tax,
                total_cents=amount + tax,
                error=None,
                process_count=orders.c.process_count + 1,
                processed_by=task_id,
                processed_at=now,
            )
        )
    # rowcount 0: another run finished it between our read and our write — done either way.
    return "processed" if changed.rowcount == 1 else "skipped"


@shared_task(name="admin.batch_process", bind=True)
async def batch_process_task(self: Task, item_ids: list[int]) -> dict[str, Any]:
    """批量处理任务: process each order id; per-item failures are collected, not fatal."""
    settings = job_settings()
    task_id = self.request.id or "direct"
    limit = asyncio.Semaphore(settings.batch_concurrency)
    failed: list[int] = []
    skipped = 0

    async def one(order_id: int) -> None:
        nonlocal skipped
        async with limit:
            in_flight.enter()
            try:
                outcome = await process_order(order_id, task_id, settings)
                skipped += outcome == "skipped"
            except ItemError as exc:
                log.warning("item failed", item_id=order_id, error=str(exc))
                failed.append(order_id)
            except Exception as exc:  # noqa: BLE001 - one item's unexpected error must not sink the batch
                log.error("item failed unexpectedly", item_id=order_id, error=repr(exc))
                failed.append(order_id)
            finally:
                in_flight.leave()
            if settings.batch_item_delay:
                await asyncio.sleep(settings.batch_item_delay)

    ids = list(dict.fromkeys(item_ids))
    await asyncio.gather(*(one(i) for i in ids))
    failed.sort()
    result = {
        "total": len(ids),
        "success": len(ids) - len(failed),
        "failed": len(failed),
        "failed_ids": failed,
        "skipped": skipped,
    }
    log.info("batch finished", **{k: v for k, v in result.items() if k != "failed_ids"})
    return result


@shared_task(name="admin.batch_summary")
async def batch_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Chord body: add up the chunk results into one summary."""
    failed_ids = sorted(i for r in results for i in r["failed_ids"])
    return {
        "total": sum(r["total"] for r in results),
        "success": sum(r["success"] for r in results),
        "failed": len(failed_ids),
        "failed_ids": failed_ids,
        "skipped": sum(r.get("skipped", 0) for r in results),
        "chunks": len(results),
    }


async def fan_out(item_ids: list[int], chunk_size: int | None = None) -> AsyncResult:
    """Big lists: one ``admin.batch_process`` job per chunk, run in parallel by any workers, joined by
    a chord into one ``admin.batch_summary``; returns the summary's result handle."""
    size = chunk_size or job_settings().batch_chunk_size
    ids = list(dict.fromkeys(item_ids))
    header = group(batch_process_task.s(ids[i : i + size]) for i in range(0, len(ids), size))
    result: AsyncResult = await chord(header, batch_summary.s()).apply_async()
    return result
