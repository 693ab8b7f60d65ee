"""Tasks the engine tests run, in worker subprocesses too (``-I tests.sample_tasks``)."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import datetime
from typing import Any

import structlog

from tasks_engine import SoftTimeLimitExceeded, shared_task
from tasks_engine.store import get_broker

log = structlog.get_logger("tests.sample_tasks")


@shared_task(name="demo.add")
async def add(x: int, y: int) -> int:
    return x + y


@shared_task(name="demo.identity")
async def identity(x: Any) -> Any:
    return x


@shared_task(name="demo.tsum")
async def tsum(values: list[int]) -> int:
    return sum(values)


@shared_task(name="demo.add_to_all")
async def add_to_all(values: list[int], n: int) -> list[int]:
    return [v + n for v in values]


@shared_task(name="demo.fail")
async def fail(*args: Any) -> None:
    raise ValueError("boom")


@shared_task(name="demo.sleep")
async def sleep(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


@shared_task(name="demo.when")
async def when(moment: datetime) -> str:
    return moment.isoformat()


@shared_task(name="demo.echo_request", bind=True)
async def echo_request(self: Any, delay: float = 0.0) -> dict[str, Any]:
    await asyncio.sleep(delay)
    log.info("inside task")
    return {"id": self.request.id, "retries": self.request.retries, "delivered": self.request.delivered}


@shared_task(name="demo.progress", bind=True)
async def progress(self: Any, steps: int, pause: float) -> int:
    for done in range(1, steps + 1):
        await self.update_state(state="PROGRESS", meta={"done": done, "total": steps})
        await asyncio.sleep(pause)
    return steps


@shared_task(name="demo.record", bind=True)
async def record(self: Any, key: str, value: Any = None) -> Any:
    """Appends (task id, value, time) to a Redis list: lets tests count executions across processes."""
    broker = get_broker()
    await broker.redis.rpush(broker.key("test-log", key), f"{self.request.id}|{value}|{time.time()}|{os.getpid()}")
    return value


@shared_task(name="demo.soft_cleanup", soft_time_limit=0.3, time_limit=3)
async def soft_cleanup(key: str) -> str:
    broker = get_broker()
    try:
        await asyncio.sleep(10)
        return "finished"
    except SoftTimeLimitExceeded:
        await broker.redis.set(broker.key("test-cleanup", key), "1")
        return "cleaned up"


@shared_task(name="demo.not_json")
async def not_json() -> object:
    return object()


@shared_task(name="demo.slow_first_delivery", bind=True, time_limit=3600)
async def slow_first_delivery(self: Any, key: str) -> int:
    """Hangs on its first delivery (its worker gets killed), returns at once on the next one."""
    broker = get_broker()
    await broker.redis.rpush(broker.key("test-log", key), f"{self.request.delivered}|{time.time()}|{os.getpid()}")
    if self.request.delivered == 1:
        await asyncio.sleep(3600)
    return self.request.delivered


@shared_task(name="demo.charge", bind=True, idempotent=True)
async def charge(self: Any, key: str) -> str:
    """An effect that must happen once per task id (idempotent=True)."""
    broker = get_broker()
    await broker.redis.incr(broker.key("test-charges", key))
    return "charged"


@shared_task(name="demo.effect_once", bind=True)
async def effect_once(self: Any, key: str) -> int:
    """Marks its effect done, then dies on the first delivery; a redelivery must skip the effect."""
    broker = get_broker()
    if not await self.effect_done("sent"):
        await broker.redis.incr(broker.key("test-effects", key))
        await self.mark_effect_done("sent")
    if self.request.delivered == 1:
        await asyncio.sleep(3600)
    return int(await broker.redis.get(broker.key("test-effects", key)) or 0)


# ---- canvas tests (tests/test_canvas.py) ----
@shared_task(name="demo.slow_once", bind=True)
async def slow_once(self: Any, key: str, value: Any, seconds: float) -> Any:
    """Records the run, then sleeps only on the first delivery: a re-delivered copy finishes at once."""
    broker = get_broker()
    await broker.redis.rpush(broker.key("test-log", key), f"{self.request.id}|{value}|{time.time()}|{os.getpid()}")
    if self.request.delivered <= 1:
        await asyncio.sleep(seconds)
    return value


@shared_task(name="demo.flaky", bind=True)
async def flaky(self: Any, x: int, key: str, fails: int) -> int:
    """Retries ``fails`` times (counted in Redis), then returns ``x + 1``."""
    broker = get_broker()
    calls = await broker.redis.incr(broker.key("test-count", key))
    if calls <= fails:
        raise self.retry(exc=RuntimeError(f"flaky {calls}"), countdown=0.01, max_retries=fails + 1)
    return x + 1


@shared_task(name="demo.errback")
async def errback(task_id: str, key: str = "errbacks") -> str:
    """An old-style errback: receives only the failed task's id."""
    broker = get_broker()
    await broker.redis.rpush(broker.key("test-log", key), task_id)
    return task_id


@shared_task(name="demo.errback_full")
async def errback_full(task_id: str, exc: str, traceback: str) -> str:
    """A three-argument errback: failed task id, exception text, traceback."""
    broker = get_broker()
    await broker.redis.rpush(broker.key("test-log", "errbacks_full"), f"{task_id}|{exc}|{len(traceback)}")
    return task_id


@shared_task(name="demo.count_body")
async def count_body(results: Any, key: str) -> Any:
    """A chord body (or link callback) that counts its executions in Redis and returns what it got."""
    broker = get_broker()
    await broker.redis.rpush(broker.key("test-log", key), f"{results}|{time.time()}|{os.getpid()}")
    return results


@shared_task(name="demo.chord_stats", bind=True)
async def chord_stats(self: Any, results: list[Any]) -> list[int]:
    """A chord body reporting how many header results it got and how many its chord's Redis hash holds."""
    broker = get_broker()
    stored = await broker.redis.hlen(broker.key("chord", str(self.request.id), "r"))
    return [len(results), stored, sum(1 for r in results if r is not None)]


# ---- flow control (tests/test_flow_control.py) ----
@shared_task(name="demo.limited", bind=True, rate_limit="20/s")
async def limited(self: Any, key: str, value: Any = None) -> Any:
    """Rate-limited twin of demo.record: 20 starts a second across every worker sharing the Redis
    (50 ms apart: finer than Redis's 100 ms timer tick, so a worker waking on that tick shows)."""
    broker = get_broker()
    await broker.redis.rpush(broker.key("test-log", key), f"{self.request.id}|{value}|{time.time()}|{os.getpid()}")
    return value


@shared_task(name="demo.span")
async def span(key: str, seconds: float, value: Any = None) -> Any:
    """Logs its start, sleeps, logs its end: shows overlap, and whether a job ran to completion."""
    broker = get_broker()
    log_key = broker.key("test-log", key)
    await broker.redis.rpush(log_key, f"start|{value}|{time.time()}|{os.getpid()}")
    await asyncio.sleep(seconds)
    await broker.redis.rpush(log_key, f"end|{value}|{time.time()}|{os.getpid()}")
    return value
