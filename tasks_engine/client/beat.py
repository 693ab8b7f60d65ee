"""Periodic jobs without a separate beat process, each tick run exactly once across all workers.

Every worker runs this scheduler. Tick times are computed the same way everywhere (crontab in the
configured timezone; intervals aligned to the epoch), and a tick becomes a job only through one
Lua call that claims ``beat:<entry>:<tick>`` with SET NX *and* enqueues the job — so N workers
yield one run, even when the job is so fast it finished before another worker looked (arq#196),
and a crash between claim and enqueue cannot lose the tick. After downtime, only the most recent
missed tick runs (``beat_run_missed``), never a backlog. While Redis is unreachable, due ticks are
retried with the engine's capped exponential backoff, logged once when the outage starts and once,
with the count of failed tries, when Redis answers again.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from tasks_engine.client.plan import Context
from tasks_engine.client.signature import Signature
from tasks_engine.core.clock import Backoff
from tasks_engine.core.config import get_settings
from tasks_engine.exceptions import REDIS_UNAVAILABLE, TaskDefinitionError
from tasks_engine.model.schedules import Schedule, ScheduleError, as_schedule, crontab
from tasks_engine.store import beat_task_id, get_broker

log = structlog.get_logger("tasks_engine.beat")

_ENTRY_KEYS = {"task", "schedule", "args", "kwargs", "options", "relative"}


@dataclass
class Entry:
    name: str
    task: str
    schedule: Schedule
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


entries: dict[str, Entry] = {}


def add_entry(name: str, spec: dict[str, Any]) -> Entry:
    """Validate one Celery-style ``beat_schedule`` entry; errors name the entry."""
    unknown = set(spec) - _ENTRY_KEYS
    if unknown:
        raise TaskDefinitionError(f"beat entry {name!r}: unknown keys {sorted(unknown)}")
    if "task" not in spec or "schedule" not in spec:
        raise TaskDefinitionError(f"beat entry {name!r}: needs 'task' and 'schedule'")
    try:
        raw = spec["schedule"]
        # A cron string is parsed here, so a bad field is reported with the entry's name.
        schedule = crontab.from_string(raw) if isinstance(raw, str) else as_schedule(raw)
    except (ScheduleError, ValueError) as exc:
        raise TaskDefinitionError(f"beat entry {name!r}: {exc}") from None
    options = dict(spec.get("options") or {})
    try:
        Signature(spec["task"], spec.get("args"), spec.get("kwargs"), options)
    except TypeError as exc:
        raise TaskDefinitionError(f"beat entry {name!r}: {exc}") from None
    entry = Entry(name, spec["task"], schedule, list(spec.get("args") or []), dict(spec.get("kwargs") or {}), options)
    entries[name] = entry
    return entry


def configure_beat(schedule: dict[str, dict[str, Any]]) -> None:
    for name, spec in schedule.items():
        add_entry(name, spec)


def periodic(
    schedule: Any,
    name: str | None = None,
    args: list[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    **options: Any,
) -> Any:
    """Decorator form: ``@periodic(crontab(hour=2, minute=0))`` above ``@shared_task``."""

    def decorate(task: Any) -> Any:
        add_entry(
            name or task.name,
            {"task": task.name, "schedule": schedule, "args": args or [], "kwargs": kwargs or {}, "options": options},
        )
        return task

    return decorate


def tz() -> ZoneInfo:
    return ZoneInfo(get_settings().timezone)


def view() -> list[dict[str, Any]]:
    """Entries with their next run time, for the operations CLI."""
    now = datetime.now(tz())
    return [
        {
            "name": e.name,
            "task": e.task,
            "schedule": repr(e.schedule),
            "next_run": e.schedule.next_after(now, tz()).isoformat(),
        }
        for e in sorted(entries.values(), key=lambda e: e.name)
    ]


class Beat:
    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id

    async def fire(self, entry: Entry, tick: datetime) -> bool:
        """Claim ``tick`` of ``entry`` and enqueue its job, atomically; False if another worker had it."""
        broker = get_broker()
        tick_ms = int(tick.timestamp() * 1000)
        task_id = beat_task_id(entry.name, tick_ms)
        sig = Signature(entry.task, entry.args, entry.kwargs, {**entry.options, "task_id": task_id})
        enq = sig.to_enqueue([], Context())
        period = (entry.schedule.next_after(tick, tz()).astimezone(UTC) - tick.astimezone(UTC)).total_seconds()
        ttl = int(max(3600, period * 2))
        won = await broker.beat_tick(entry.name, tick_ms, ttl, enq)
        if won:
            log.info("periodic job sent", entry=entry.name, task=entry.task, tick=tick.isoformat(), task_id=task_id)
        return bool(won)

    async def catch_up(self) -> None:
        """At start-up: the most recent tick missed while no worker ran, once."""
        broker = get_broker()
        now = datetime.now(tz())
        for entry in list(entries.values()):
            last = await broker.beat_last(entry.name)
            if last is None:
                await broker.set_beat_last(entry.name, int(now.timestamp() * 1000), only_if_missing=True)
                continue
            previous = entry.schedule.previous_at_or_before(now, tz())
            if previous is None or int(previous.timestamp() * 1000) <= last:
                continue
            if get_settings().beat_run_missed:
                log.info("running missed periodic tick once", entry=entry.name, tick=previous.isoformat())
                try:
                    await self.fire(entry, previous)
                except REDIS_UNAVAILABLE:
                    raise
                except Exception:  # this entry's problem only: the others still catch up
                    log.exception("missed periodic tick could not be sent", entry=entry.name, task=entry.task)
            else:
                await broker.set_beat_last(entry.name, int(previous.timestamp() * 1000))

    async def run(self, stopping: Any) -> None:
        try:
            await self.catch_up()
        except REDIS_UNAVAILABLE as exc:
            log.error("beat catch-up failed", error=str(exc))
        except Exception:  # one bad entry must not stop the others: logged, the schedule goes on
            log.exception("beat catch-up failed")
        zone = tz()
        # Compare instants in UTC: same-zone aware datetimes compare by wall time, wrong across fall-back.
        start = datetime.now(UTC)
        upcoming = {
            name: e.schedule.next_after(start.astimezone(zone), zone).astimezone(UTC) for name, e in entries.items()
        }
        outage = _Outage()
        while not stopping():
            now = datetime.now(UTC)
            unreachable = False
            for name, tick in list(upcoming.items()):
                if tick <= now:
                    try:
                        await self.fire(entries[name], tick.astimezone(zone))
                    except REDIS_UNAVAILABLE as exc:
                        outage.failed(name, exc)
                        unreachable = True
                        break  # the other due ticks would fail alike: all are retried after the backoff
                    except Exception:  # e.g. its args no longer fit its task: skip this tick, keep the rest
                        log.exception("periodic entry could not be sent; skipping this tick", entry=name,
                                      task=entries[name].task, tick=tick.isoformat())  # fmt: skip
                    else:
                        outage.answered()
                    after = max(tick, now).astimezone(zone)
                    upcoming[name] = entries[name].schedule.next_after(after, zone).astimezone(UTC)
            if unreachable:
                await asyncio.sleep(outage.backoff.next())
                continue
            soonest = min(upcoming.values())
            await asyncio.sleep(max(0.005, min(1.0, (soonest - datetime.now(UTC)).total_seconds())))


class _Outage:
    """Beat's view of a Redis outage: the worker loops' capped exponential :class:`Backoff`, one line
    when it starts and one with the count of failed tries when Redis answers again."""

    def __init__(self) -> None:
        self.backoff = Backoff()
        self.tries = 0
        self.since = 0.0

    def failed(self, entry: str, exc: BaseException) -> None:
        if not self.backoff.failing:
            self.since = time.monotonic()
            log.error("beat cannot reach redis; retrying its due ticks with backoff", entry=entry, error=str(exc))
        self.tries += 1

    def answered(self) -> None:
        if self.backoff.failing:
            log.warning("beat reached redis again; due ticks sent", failed_tries=self.tries,
                        down_seconds=round(time.monotonic() - self.since, 1))  # fmt: skip
            self.backoff.reset()
            self.tries = 0


__all__ = ["Beat", "Entry", "add_entry", "configure_beat", "entries", "periodic", "view"]
