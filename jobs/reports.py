"""Reports: ``admin.generate_report(report_type, params)`` streams rows into a CSV or XLSX file.

Following the guide's "pass IDs, not data": the message carries only the report type and small
filter parameters; the job reads the rows itself, from the SQL database (SQLite by default,
PostgreSQL when ``DATABASE_URL`` says so) or, for ``task_summary``, from the result records in
Redis. Rows are streamed (server-side cursor / ``stream()``, ``report_fetch_rows`` at a time) and
written as they arrive — CSV with the csv module, XLSX with openpyxl's write-only mode — so memory
stays flat whatever the row count. Writing happens in a helper thread, chunk by chunk, so the
worker's event loop keeps serving other jobs.

The file is written as ``<name>.part`` and renamed when complete; on any failure, including the
soft time limit, the partial file is removed before the error is reported.
"""

from __future__ import annotations

import asyncio
import csv
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar
from zoneinfo import ZoneInfo

import structlog
from openpyxl import Workbook
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Select, and_, func, select

from jobs.config import JobsSettings, job_settings
from jobs.db import get_engine, orders, users
from tasks_engine import SoftTimeLimitExceeded, Task, shared_task, states
from tasks_engine.store import get_broker

log = structlog.get_logger("jobs.reports")
T = TypeVar("T")
Row = Sequence[Any]

_writer_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="report-writer")


class ReportParamsError(ValueError):
    """Unknown report type or invalid parameters: failing again later would not help."""


# --------------------------------------------------------------------- parameters
class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["csv", "xlsx"] = "csv"
    limit: int | None = Field(default=None, ge=1)


class OrdersParams(_Params):
    status: Literal["pending", "processed", "failed"] | None = None
    since: date | None = None
    until: date | None = None
    user_id: int | None = None


class UsersParams(_Params):
    active: bool | None = None


class SummaryParams(_Params):
    hours: float | None = Field(default=None, gt=0)


# --------------------------------------------------------------------- sources
class Source(Protocol):
    columns: list[str]

    async def count(self) -> int: ...

    def chunks(self) -> AsyncIterator[list[Row]]: ...


def _local(moment: datetime | None, zone: ZoneInfo) -> datetime | None:
    """Naive local time (Excel has no time zones); naive values from SQLite are UTC."""
    if moment is None:
        return None
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.astimezone(zone).replace(tzinfo=None, microsecond=0)


def _yuan(cents: int | None) -> Decimal | None:
    return None if cents is None else Decimal(cents).scaleb(-2)


class SqlSource:
    """Rows of one SELECT, streamed from the database in ``fetch`` sized partitions."""

    def __init__(
        self,
        settings: JobsSettings,
        query: Select[Any],
        columns: list[str],
        convert: Callable[[Row], Row],
        limit: int | None,
    ) -> None:
        self.settings = settings
        self.query = query
        self.columns = columns
        self.convert = convert
        self.limit = limit

    async def count(self) -> int:
        engine = get_engine(self.settings)
        async with engine.connect() as conn:
            total = int((await conn.execute(select(func.count()).select_from(self.query.subquery()))).scalar_one())
        return min(total, self.limit) if self.limit else total

    async def chunks(self) -> AsyncIterator[list[Row]]:
        engine = get_engine(self.settings)
        query = self.query.limit(self.limit) if self.limit else self.query
        size = self.settings.report_fetch_rows
        async with engine.connect() as conn:
            # stream() = a server-side cursor (asyncpg) / incremental fetches (aiosqlite): never all rows at once.
            result = await conn.stream(query.execution_options(yield_per=size))
            async for partition in result.partitions(size):
                yield [self.convert(row) for row in partition]


def orders_source(settings: JobsSettings, params: OrdersParams) -> SqlSource:
    zone = ZoneInfo(settings.timezone)
    query = (
        select(
            orders.c.id,
            orders.c.user_id,
            users.c.name,
            orders.c.amount_cents,
            orders.c.currency,
            orders.c.status,
            orders.c.total_cents,
            orders.c.created_at,
            orders.c.processed_at,
        )
        .join(users, users.c.id == orders.c.user_id)
        .order_by(orders.c.id)
    )
    conditions = []
    if params.status:
        conditions.append(orders.c.status == params.status)
    if params.user_id is not None:
        conditions.append(orders.c.user_id == params.user_id)
    if params.since:
        conditions.append(orders.c.created_at >= datetime.combine(params.since, dtime(), zone))
    if params.until:
        conditions.append(orders.c.created_at < datetime.combine(params.until + timedelta(days=1), dtime(), zone))
    if conditions:
        query = query.where(and_(*conditions))

    def convert(r: Row) -> Row:
        return (r[0], r[1], r[2], _yuan(r[3]), r[4], r[5], _yuan(r[6]), _local(r[7], zone), _local(r[8], zone))

    columns = ["订单ID", "用户ID", "用户", "金额", "币种", "状态", "含税总额", "创建时间", "处理时间"]
    return SqlSource(settings, query, columns, convert, params.limit)


def users_source(settings: JobsSettings, params: UsersParams) -> SqlSource:
    zone = ZoneInfo(settings.timezone)
    query = select(users.c.id, users.c.name, users.c.email, users.c.active, users.c.created_at).order_by(users.c.id)
    if params.active is not None:
        query = query.where(users.c.active == params.active)

    def convert(r: Row) -> Row:
        return (r[0], r[1], r[2], "是" if r[3] else "否", _local(r[4], zone))

    return SqlSource(settings, query, ["用户ID", "姓名", "邮箱", "启用", "注册时间"], convert, params.limit)


SUMMARY_STATES = [states.SUCCESS, states.FAILURE, states.RETRY, states.REVOKED]


class TaskSummarySource:
    """Per task name: how many jobs ended in each state within the window (from the result records)."""

    def __init__(self, settings: JobsSettings, params: SummaryParams) -> None:
        self.columns = ["任务", "合计", *SUMMARY_STATES, "进行中"]
        self.settings = settings
        self.hours = params.hours or settings.summary_hours
        self.limit = params.limit
        self.rows: list[Row] | None = None

    async def _collect(self) -> list[Row]:
        if self.rows is not None:
            return self.rows
        broker = get_broker()
        since = datetime.now(UTC) - timedelta(hours=self.hours)
        counts: defaultdict[str, Counter[str]] = defaultdict(Counter)
        async for rows in broker.iter_records(["task", "state", "date_done"]):
            for task, state, done in rows:
                if not task:
                    continue
                name, st = task.decode(), (state or b"PENDING").decode()
                if st in states.READY_STATES:
                    if done is None or datetime.fromisoformat(done.decode()) < since:
                        continue
                    counts[name][st] += 1
                else:
                    counts[name][states.RETRY if st == states.RETRY else "active"] += 1
        rows: list[Row] = []
        for name, c in sorted(counts.items(), key=lambda item: (-sum(item[1].values()), item[0])):
            rows.append((name, sum(c.values()), *(c[s] for s in SUMMARY_STATES), c["active"]))
        total = Counter[str]()
        for c in counts.values():
            total.update(c)
        rows.append(("(全部)", sum(total.values()), *(total[s] for s in SUMMARY_STATES), total["active"]))
        self.rows = rows[: self.limit] if self.limit else rows
        return self.rows

    async def count(self) -> int:
        return len(await self._collect())

    async def chunks(self) -> AsyncIterator[list[Row]]:
        yield await self._collect()


def make_source(report_type: str, params: dict[str, Any], settings: JobsSettings) -> tuple[Source, str]:
    kinds: dict[str, tuple[type[_Params], Callable[[JobsSettings, Any], Source]]] = {
        "orders": (OrdersParams, orders_source),
        "users": (UsersParams, users_source),
        "task_summary": (SummaryParams, TaskSummarySource),
    }
    if report_type not in kinds:
        raise ReportParamsError(f"unknown report type {report_type!r}; known: {sorted(kinds)}")
    model, factory = kinds[report_type]
    try:
        parsed = model.model_validate(params)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'params'}: {e['msg']}" for e in exc.errors())
        raise ReportParamsError(f"report {report_type!r}: {problems}") from None
    return factory(settings, parsed), parsed.format


# --------------------------------------------------------------------- writers
class CsvWriter:
    def __init__(self, path: Path, columns: list[str]) -> None:
        # utf-8-sig: Excel opens Chinese text correctly only with the BOM.
        self.file = path.open("w", newline="", encoding="utf-8-sig")
        self.out = csv.writer(self.file)
        self.out.writerow(columns)

    def write(self, rows: list[Row]) -> None:
        self.out.writerows(rows)

    def close(self) -> None:
        self.file.close()

    discard = close


class XlsxWriter:
    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path = path
        self.book = Workbook(write_only=True)  # rows go to a temp file as appended, not kept in memory
        self.sheet = self.book.create_sheet(title="report")
        self.sheet.append(columns)

    def write(self, rows: list[Row]) -> None:
        for row in rows:
            self.sheet.append(list(row))

    def close(self) -> None:
        self.book.save(self.path)

    def discard(self) -> None:
        """Drop an unfinished workbook without zipping it: end the sheet stream, delete openpyxl's temp file."""
        self.sheet.close()
        temp = getattr(getattr(self.sheet, "_writer", None), "out", None)
        if isinstance(temp, str):
            Path(temp).unlink(missing_ok=True)


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run blocking file work off the loop; if interrupted (soft limit), wait for the thread to let go
    of the file before the caller deletes it."""
    future: Future[T] = _writer_pool.submit(fn, *args)
    try:
        return await asyncio.wrap_future(future)
    except BaseException:
        while not future.done():
            await asyncio.sleep(0.01)
        raise


# --------------------------------------------------------------------- the task
@shared_task(name="admin.generate_report", bind=True)
async def generate_report_task(self: Task, report_type: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """生成报表: stream the rows of ``report_type`` (orders, users, task_summary) into a file.

    Progress is published as state PROGRESS with ``{"done": n, "total": m}``.
    """
    settings = job_settings()
    started = time.monotonic()
    source, fmt = make_source(report_type, params or {}, settings)
    total = await source.count()
    directory = settings.reports_dir
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(ZoneInfo(settings.timezone)).strftime("%Y%m%d-%H%M%S")
    final = directory / f"{report_type}-{stamp}-{(self.request.id or 'direct')[:8]}.{fmt}"
    part = final.with_name(final.name + ".part")
    log.info("report started", report_type=report_type, rows=total, file=str(final))
    writer: CsvWriter | XlsxWriter | None = None
    done = 0

    async def progress(n: int) -> None:
        if not self.request.called_directly:  # a direct call has no result record to update
            await self.update_state(state="PROGRESS", meta={"done": n, "total": total})

    summary: list[Row] = []
    try:
        opened: CsvWriter | XlsxWriter = await _in_thread(
            CsvWriter if fmt == "csv" else XlsxWriter, part, source.columns
        )
        writer = opened
        await progress(0)
        async for rows in source.chunks():
            await _in_thread(opened.write, rows)
            done += len(rows)
            if report_type == "task_summary":
                summary.extend(rows)
            await progress(done)
        await _in_thread(opened.close)
        writer = None
        part.replace(final)
    except BaseException as exc:
        if writer is not None:
            try:
                await _in_thread(writer.discard)
            except Exception:
                log.warning("could not release the partial report file", exc_info=True)
        part.unlink(missing_ok=True)
        if isinstance(exc, SoftTimeLimitExceeded):
            log.warning("report stopped by its soft time limit; partial file removed", done=done, total=total)
        raise
    seconds = round(time.monotonic() - started, 3)
    size = final.stat().st_size
    log.info("report finished", report_type=report_type, rows=done, bytes=size, seconds=seconds)
    result: dict[str, Any] = {
        "path": str(final),
        "rows": done,
        "bytes": size,
        "seconds": seconds,
        "report_type": report_type,
        "format": fmt,
        "columns": source.columns,
    }
    if summary:
        result["summary"] = [list(r) for r in summary]
    return result
