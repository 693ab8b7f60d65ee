"""Periodic housekeeping (scheduled in ``settings.BEAT_SCHEDULE``).

* ``maintenance.cleanup_results``: result records already expire by TTL, so this sweeps what TTLs
  do not cover — dead letters past their retention, result records left without a TTL by jobs
  that can never finish (their message is gone), chord bookkeeping keys whose chord is gone, and
  messages no queue refers to any more (moved to the dead letters, not silently dropped).
* ``maintenance.cleanup_reports``: report files older than ``report_retention_days`` and
  ``.part`` files left by crashed report jobs.
* ``maintenance.daily_summary``: the task summary report mailed to the admin (a chain:
  ``admin.generate_report`` → ``admin.send_report_email``).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from jobs.config import job_settings
from jobs.email import send_report_email
from jobs.reports import generate_report_task
from tasks_engine import Task, chain, shared_task
from tasks_engine.store import get_broker

log = structlog.get_logger("jobs.maintenance")


@shared_task(name="maintenance.cleanup_results")
async def cleanup_results() -> dict[str, int]:
    """定时清理: sweep what result TTLs leave behind (see the module docstring)."""
    settings = job_settings()
    cutoff = datetime.now(UTC) - timedelta(days=settings.dead_letter_retention_days)
    # The engine's sweep: dead letters past retention, orphaned messages (moved to the dead letters,
    # checked atomically per id), result records without a TTL, chord bookkeeping without its chord.
    result = await get_broker().sweep(dead_letters_before=cutoff)
    log.info("results cleanup done", **result)
    return result


@shared_task(name="maintenance.cleanup_reports")
async def cleanup_reports() -> dict[str, int]:
    """定时清理: report files past ``report_retention_days``; ``.part`` leftovers of crashed jobs."""
    settings = job_settings()
    directory = settings.reports_dir
    now = time.time()
    keep_after = now - settings.report_retention_days * 86_400
    part_keep_after = now - settings.report_stale_part_hours * 3600
    deleted = kept = freed = 0
    if directory.is_dir():
        for path in directory.iterdir():
            if not path.is_file() or path.is_symlink():
                continue
            stat = path.stat()
            limit = part_keep_after if path.name.endswith(".part") else keep_after
            if stat.st_mtime < limit:
                path.unlink(missing_ok=True)
                deleted += 1
                freed += stat.st_size
            else:
                kept += 1
    result = {"deleted": deleted, "bytes_freed": freed, "kept": kept}
    log.info("reports cleanup done", directory=str(directory), **result)
    return result


@shared_task(name="maintenance.daily_summary", bind=True)
async def daily_summary(self: Task, to_email: str | None = None, hours: float | None = None) -> dict[str, Any]:
    """Start the chain task-summary report → email to the admin; returns the ids to follow it."""
    settings = job_settings()
    to_email = to_email or settings.admin_email
    hours = hours or settings.summary_hours
    day = datetime.now(ZoneInfo(settings.timezone)).strftime("%Y-%m-%d")
    workflow = chain(
        generate_report_task.si("task_summary", {"hours": hours, "format": "csv"}),
        send_report_email.s(to_email, f"每日任务汇总 {day}（最近 {hours:g} 小时）"),
    )
    result = await workflow.apply_async()
    log.info("daily summary started", report_id=result.parent.id, email_id=result.id, to=to_email)
    return {"report_id": result.parent.id, "email_id": result.id, "to": to_email}
