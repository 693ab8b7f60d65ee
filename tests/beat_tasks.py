"""Periodic entries for the beat tests; imported by worker subprocesses (``-I tests.beat_tasks``)."""

from __future__ import annotations

import os
import time
from typing import Any

from tasks_engine import shared_task
from tasks_engine.client.beat import configure_beat, periodic
from tasks_engine.store import get_broker


@shared_task(name="beat.tick", bind=True, ignore_result=True)
async def tick(self: Any, label: str) -> None:
    """Fast, keeps no result: the case where arq's cron runs twice (arq#196)."""
    broker = get_broker()
    await broker.redis.rpush(broker.key("beat-log", label), f"{self.request.id}|{time.time()}|{os.getpid()}")


@periodic(3600.0, name="hourly-decorated", args=["hourly"])
@shared_task(name="beat.hourly", bind=True)
async def hourly(self: Any, label: str) -> str:
    broker = get_broker()
    await broker.redis.rpush(broker.key("beat-log", label), f"{self.request.id}|{time.time()}|{os.getpid()}")
    return label


if os.environ.get("BEAT_TEST_EVERY_SECOND") == "1":
    configure_beat({"every-second": {"task": "beat.tick", "schedule": 1.0, "args": ["second"]}})
