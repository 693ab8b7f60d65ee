"""``tasks-engine demo``: every job kind once, through a real worker, Redis, SMTP server and database.

Starts a local SMTP sink when nothing listens at ``smtp_host:smtp_port``, seeds the demo database,
runs a worker in this process, enqueues emails (one deliberately invalid), a batch email with
partial failures, two reports, a batch job and a fan-out chord, the maintenance jobs and the daily
summary chain, then prints each job's final state and result. Exits 1 if any job ends in a state
other than the one expected.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from rich.console import Console
from rich.table import Table
from sqlalchemy import inspect, select

from jobs.batch import batch_process_task, fan_out
from jobs.config import JobsSettings, job_settings
from jobs.db import dispose_engines, get_engine, is_sqlite, orders
from jobs.email import send_batch_email, send_email_task
from jobs.maintenance import cleanup_reports, cleanup_results, daily_summary
from jobs.reports import generate_report_task
from jobs.seed import seed
from tasks_engine import AsyncResult, states
from tasks_engine.config import redacted_url
from tasks_engine.embedded import started_here
from tasks_engine.logs import configure_logging
from tasks_engine.store import get_broker
from tasks_engine.worker import Worker

if TYPE_CHECKING:
    from jobs.sink import SmtpSink

WELCOME = (
    "<h2>欢迎使用 Py Small Admin</h2><p>您好！这是一封来自任务引擎演示的 <b>HTML</b> 邮件。</p>"
    "<p>Hello! This message was sent by the <code>admin.send_email</code> job.</p>"
)


@dataclass
class Job:
    label: str
    start: Callable[[], Awaitable[AsyncResult]]
    expected: str = states.SUCCESS


def describe(value: Any) -> str:
    """A short, readable result (no big payloads)."""
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    if isinstance(value, dict):
        shown = {k: v for k, v in value.items() if k not in ("columns", "summary", "message_id", "server")}
        if "path" in shown and str(shown["path"]).startswith(os.getcwd() + os.sep):
            shown["path"] = os.path.relpath(str(shown["path"]))
        return ", ".join(f"{k}={v}" for k, v in shown.items())
    return repr(value)


async def main() -> None:
    settings = job_settings()
    configure_logging(settings.model_copy(update={"log_level": os.environ.get("TE_LOG_LEVEL", "ERROR")}))
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.rule("[bold]tasks_engine demo: email, reports, batch, maintenance")
    console.print(f"Redis {redacted_url()} (key prefix [bold]{settings.key_prefix}[/bold])")
    port = urlparse(settings.redis_url.get_secret_value()).port or 6379
    embedded = started_here(port)
    if embedded is not None:
        console.print(f"  an embedded Redis started by this project serves it: data in {os.path.relpath(embedded)}, "
                      f"stop it with: redis-cli -p {port} shutdown")  # fmt: skip

    sink: SmtpSink | None = None
    if _listening(settings.smtp_host, settings.smtp_port):
        console.print(f"SMTP: using the server at {settings.smtp_host}:{settings.smtp_port}")
    else:
        try:
            from jobs.sink import SinkHandler, SmtpSink
        except ImportError as exc:  # aiosmtpd is installed with the test extras
            raise SystemExit(
                f"no SMTP server at {settings.smtp_host}:{settings.smtp_port} and the local sink needs "
                f"aiosmtpd ({exc}); pip install -e '.[test]' or set TE_SMTP_HOST/TE_SMTP_PORT"
            ) from None
        handler = SinkHandler(reject={"bounce@example.com": "550 5.1.1 <bounce@example.com>: mailbox unavailable"})
        sink = SmtpSink(settings.smtp_host, settings.smtp_port, handler=handler).start()
        where = f"{settings.smtp_host}:{settings.smtp_port}"
        console.print(f"SMTP: nothing listened at {where}; started a local sink there")

    worker: Worker | None = None
    try:
        if not is_sqlite(settings) and await _has_orders(settings):
            raise SystemExit(
                "the demo resets and processes the users/orders tables; it only does that to a SQLite "
                "database or an empty one: point DATABASE_URL elsewhere"
            )
        seeded = await seed(users_count=20, orders_count=200, settings=settings)
        console.print(
            f"Database {seeded['database']}: {seeded['users']} users, {seeded['orders']} orders "
            f"({seeded['invalid_orders']} invalid on purpose)"
        )
        worker = Worker(queues=[settings.default_queue, "email"], beat=False, max_jobs=20)
        await worker.start(handle_signals=False)
        await run_jobs(console, settings.admin_email, sink)
    finally:
        if worker is not None:
            await worker.stop(grace=10)
        if sink is not None:
            sink.stop()
        await dispose_engines()
        await _close_broker()


async def run_jobs(console: Console, admin: str, sink: SmtpSink | None) -> None:
    jobs = [
        Job("send_email", lambda: send_email_task.delay("user1@example.com", "欢迎使用 Py Small Admin", WELCOME)),
        Job(
            "send_email (invalid address)",
            lambda: send_email_task.delay("not-an-email", "测试", WELCOME),
            states.FAILURE,
        ),
        Job(
            "send_batch_email",
            lambda: send_batch_email.delay(
                ["user2@example.com", "user3@example.com", "bounce@example.com", "oops"], "批量通知", WELCOME
            ),
        ),
        Job("report orders (csv)", lambda: generate_report_task.delay("orders", {"format": "csv"})),
        Job("report users (xlsx)", lambda: generate_report_task.delay("users", {"format": "xlsx"})),
        Job("batch_process", lambda: batch_process_task.delay([*range(1, 51), 9999])),
        Job("batch fan-out (chord)", lambda: fan_out(list(range(51, 201)), chunk_size=50)),
        Job("cleanup_results", lambda: cleanup_results.delay()),
        Job("cleanup_reports", lambda: cleanup_reports.delay()),
    ]
    started = time.monotonic()
    handles = [(job, await job.start()) for job in jobs]
    rows: list[tuple[str, str, str, str, str]] = []
    failures = 0
    for job, handle in handles:
        rows.append(await _row(job.label, job.expected, handle))

    # The daily summary runs last, so its report counts the jobs above; it starts a chain report → email.
    chain_info = await (await daily_summary.delay(admin)).get(timeout=60)
    rows.append(await _row("daily_summary", states.SUCCESS, AsyncResult(chain_info["report_id"]), "→ report"))
    rows.append(await _row("daily_summary", states.SUCCESS, AsyncResult(chain_info["email_id"]), f"→ email {admin}"))

    table = Table(title=f"demo jobs ({time.monotonic() - started:.1f} s)", show_lines=False)
    table.add_column("job", no_wrap=True)
    table.add_column("task", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("expected", no_wrap=True)
    table.add_column("result")
    for label, task, state, expected, text in rows:
        ok = state == expected
        failures += not ok
        colour = "green" if state == states.SUCCESS else ("yellow" if ok else "red")
        table.add_row(label, task, f"[{colour}]{state}[/{colour}]", expected if ok else f"[red]{expected}[/red]", text)
    console.print(table)
    if sink is not None:
        subjects = sorted({m.message["Subject"] for m in sink.handler.messages})
        console.print(f"SMTP sink received {len(sink.handler.messages)} message(s): {', '.join(subjects)}")
    if failures:
        console.print(f"[red]{failures} job(s) did not end as expected[/red]")
        raise SystemExit(1)
    console.print(f"[green]all {len(rows)} jobs ended as expected[/green]")


async def _row(label: str, expected: str, handle: AsyncResult, note: str = "") -> tuple[str, str, str, str, str]:
    value = await handle.get(timeout=120, propagate=False)
    info = await handle.record()
    text = describe(value)
    if info.get("retries"):
        text += f" (after {info['retries']} retries)"
    return (f"{label} {note}".strip(), info.get("task") or "?", info["state"], expected, text)


async def _has_orders(settings: JobsSettings) -> bool:
    async with get_engine(settings).connect() as conn:
        if not await conn.run_sync(lambda sync: inspect(sync).has_table("orders", schema=settings.database_schema)):
            return False
        return (await conn.execute(select(orders.c.id).limit(1))).first() is not None


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


async def _close_broker() -> None:
    broker = get_broker()
    await broker.close()


if __name__ == "__main__":
    asyncio.run(main())
