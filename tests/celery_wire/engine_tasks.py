"""The tasks_engine side of the Celery wire tests: tasks registered under the names a Celery producer
sends (``cw.*``). Counters are plain Redis hashes whose key the test passes, so runs are counted
across processes and engines alike."""

from __future__ import annotations

import asyncio
from typing import Any

from tasks_engine import SoftTimeLimitExceeded, shared_task
from tasks_engine.store import get_broker


@shared_task(name="cw.add")
async def add(x: int, y: int) -> int:
    return x + y


@shared_task(name="cw.collect")
async def collect(values: list[Any], key: str) -> list[Any]:
    await get_broker().redis.hincrby(key, "collect", 1)
    return values


@shared_task(name="cw.identity")
async def identity(x: Any) -> Any:
    return x


@shared_task(name="cw.fail")
async def fail(message: Any) -> None:
    raise ValueError(str(message))


@shared_task(name="cw.echo", bind=True)
async def echo(self: Any) -> dict[str, Any]:
    r = self.request
    return {"id": r.id, "retries": r.retries, "root_id": r.root_id, "parent_id": r.parent_id,
            "time_limit": r.time_limit, "soft_time_limit": r.soft_time_limit}  # fmt: skip


@shared_task(name="cw.sleep")
async def sleep(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


@shared_task(name="cw.retry_once", bind=True, max_retries=3)
async def retry_once(self: Any, countdown: float) -> int:
    if self.request.retries == 0:
        raise self.retry(exc=KeyError("not yet"), countdown=countdown)
    return int(self.request.retries)


@shared_task(name="cw.count", bind=True)
async def count(self: Any, key: str, seconds: float = 0.0) -> str:
    """Counts its runs (``runs``: per task id) and completions (``done``) in hash ``key``."""
    redis = get_broker().redis
    await redis.hincrby(key, self.request.id, 1)
    if seconds:
        await asyncio.sleep(seconds)
    await redis.hincrby(key, "done", 1)
    await redis.hincrby(key, "by-engine", 1)
    return "engine"


@shared_task(name="cw.order", bind=True)
async def order(self: Any, key: str, label: Any) -> None:
    await get_broker().redis.rpush(key, str(label))


@shared_task(name="cw.limited", rate_limit="5/s")
async def limited(key: str) -> None:
    await get_broker().redis.rpush(key, f"{asyncio.get_running_loop().time()}")


@shared_task(name="cw.slow_first", bind=True, time_limit=3600)
async def slow_first(self: Any, key: str) -> int:
    """Counts its runs in hash ``key``; hangs on its first delivery (its worker gets killed)."""
    redis = get_broker().redis
    await redis.hincrby(key, "runs", 1)
    if self.request.delivered == 1:
        await asyncio.sleep(3600)
    await redis.hincrby(key, "done", 1)
    return int(self.request.delivered)


@shared_task(name="cw.quiet", bind=True, ignore_result=True)
async def quiet(self: Any, key: str) -> str:
    await get_broker().redis.hincrby(key, self.request.id, 1)
    return "not kept"


@shared_task(name="cw.soft")
async def soft() -> str:
    try:
        await asyncio.sleep(30)
    except SoftTimeLimitExceeded:
        return "cleaned up"
    return "slept"
