"""The soak's job: 0–200 ms of work, and a log of every start (to count duplicates and recovery)."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from tasks_engine import shared_task
from tasks_engine.store import get_broker


@shared_task(name="soak.work", bind=True)
async def work(self: Any, index: int) -> int:
    broker = get_broker()
    await broker.redis.rpush(broker.key("soak-starts"), f"{index}|{time.time()}|{self.request.delivered}")
    await asyncio.sleep(random.uniform(0, 0.2))
    return index
