"""Tasks the engine tests run, in worker subprocesses too (``-I tests.sample_tasks``)."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import datetime
from typing import Any

import structlog

from tasks_engine import SoftTimeLimitExceeded, shared_task
from tasks_engine.broker import get_broker

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
