"""Operations on a running cluster: revoke, rate limits at runtime, queue and worker views, purge."""

from __future__ import annotations

import fnmatch
from typing import Any

import structlog

from tasks_engine.codec import dumps
from tasks_engine.config import get_settings
from tasks_engine.ratelimit import parse_rate_limit
from tasks_engine.results import revoke
from tasks_engine.store import get_broker

log = structlog.get_logger("tasks_engine.control")

__all__ = [
    "known_queues",
    "purge",
    "queue_stats",
    "queued_messages",
    "revoke",
    "revoke_matching",
    "set_rate_limit",
    "totals",
    "workers",
]


async def queued_messages(queues: list[str] | None = None) -> list[tuple[str, str, str]]:
    """(queue or 'delayed', task id, task name) of every waiting job."""
    names = queues if queues is not None else await known_queues()
    return await get_broker().queued_messages(names)


async def revoke_matching(pattern: str, queues: list[str] | None = None) -> int:
    """Drop every queued or deferred job whose task name matches a glob, e.g. ``report.*``."""
    ids = [tid for _, tid, name in await queued_messages(queues) if fnmatch.fnmatchcase(name, pattern)]
    return await revoke(ids, reason=f"revoked by pattern {pattern!r}") if ids else 0


async def set_rate_limit(task_name: str, rate: str | float | None, burst: int = 1) -> int:
    """Change a task's rate limit for the whole cluster, at once (Celery's ``control rate_limit``).

    ``rate`` uses the task option's grammar (``"0"`` = unlimited); None restores the declared limit.
    Running workers apply it on their next claim; jobs already parked under the old limit are put
    back and re-planned (the old reservations are dropped, so a change takes effect at once both
    ways). Returns how many parked jobs were released.
    """
    value = ""
    if rate is not None:
        try:
            parsed = parse_rate_limit(rate, burst)
        except ValueError as exc:
            raise ValueError(f"task {task_name!r}: {exc}") from None
        value = dumps(parsed.lua_value() if parsed else [0, 0]).decode()
    released = await get_broker().replan_rate_limit(task_name, value)
    log.info("rate limit changed", task=task_name, rate=rate, burst=burst, released=released)
    return released


async def known_queues() -> list[str]:
    names = await get_broker().queue_names()
    for worker in await workers():
        names.update(worker.get("queues", []))
    return sorted(names | {get_settings().default_queue})


async def workers() -> list[dict[str, Any]]:
    """Live workers (heartbeat within the lease): id, queues, running jobs, pid, host."""
    return await get_broker().workers()


async def queue_stats() -> list[dict[str, Any]]:
    """Per queue: ready jobs, consumers."""
    broker = get_broker()
    live = await workers()
    stats = []
    for queue in await known_queues():
        consumers = [w["id"] for w in live if queue in w.get("queues", [])]
        stats.append({"queue": queue, "ready": await broker.ready_count(queue), "consumers": consumers})
    return stats


async def totals() -> dict[str, int]:
    """Deferred, running and dead-lettered job counts."""
    return await get_broker().totals()


async def purge(queue: str) -> int:
    """Delete every ready job of a queue (not deferred or running ones), atomically."""
    return await get_broker().purge(queue)
