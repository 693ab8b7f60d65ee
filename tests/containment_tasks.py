"""Tasks that misbehave on purpose, for the failure-containment tests (``-I tests.containment_tasks``)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from typing import Any

import tests.sample_tasks  # noqa: F401 - the ordinary tasks too
from tasks_engine import shared_task
from tasks_engine.client.beat import configure_beat
from tasks_engine.store import get_broker


async def note(key: str, value: str) -> None:
    broker = get_broker()
    await broker.redis.rpush(broker.key("log", key), value)


@shared_task(name="bad.retry_unserializable", bind=True)
async def retry_unserializable(self: Any) -> None:
    raise self.retry(args=[object()])


@shared_task(name="bad.retry_exception_class", bind=True, max_retries=2)
async def retry_exception_class(self: Any) -> str:
    if self.request.retries == 0:
        raise self.retry(exc=ValueError, countdown=0)
    return "retried"


@shared_task(name="bad.retry_forever", bind=True)
async def retry_forever(self: Any) -> None:
    raise self.retry(countdown=float("inf"))


@shared_task(name="bad.raise_cancelled")
async def raise_cancelled() -> None:
    raise asyncio.CancelledError


@shared_task(name="bad.sys_exit")
async def sys_exit(code: int) -> None:
    sys.exit(code)


@shared_task(name="bad.sync_exit")
def sync_exit(code: int) -> None:
    sys.exit(code)


@shared_task(name="bad.keyboard")
async def keyboard() -> None:
    raise KeyboardInterrupt


@shared_task(name="bad.pid")
async def pid() -> int:
    return os.getpid()


@shared_task(name="bad.kill_my_worker", bind=True)
async def kill_my_worker(self: Any, key: str) -> None:
    """Dies with its worker process (as an out-of-memory kill would) on every delivery."""
    await note(key, f"{self.request.delivered}")
    os.kill(os.getpid(), signal.SIGKILL)


@shared_task(name="bad.slow_step", bind=True)
async def slow_step(self: Any, key: str, seconds: float) -> str:
    """Records each delivery (pid and delivery number), then takes ``seconds``."""
    await note(key, f"{os.getpid()}|{self.request.delivered}|start")
    await asyncio.sleep(seconds)
    await note(key, f"{os.getpid()}|{self.request.delivered}|end")
    return f"done by {os.getpid()}"


@shared_task(name="bad.tick", bind=True, ignore_result=True)
async def tick(self: Any, key: str) -> None:
    await note(key, str(time.time()))


if os.environ.get("CONTAINMENT_BEAT") == "1":
    configure_beat(
        {
            "args-do-not-fit": {"task": "demo.add", "schedule": 1.0, "args": [1]},  # add(x, y): one missing
            "healthy": {"task": "bad.tick", "schedule": 1.0, "args": ["healthy-ticks"]},
        }
    )


@shared_task(name="bad.fail_once")
async def fail_once(key: str, value: int) -> int:
    """Fails the first time it runs under ``key`` (no retry), succeeds afterwards."""
    broker = get_broker()
    if await broker.redis.incr(broker.key("count", key)) == 1:
        raise RuntimeError("first run fails")
    return value
