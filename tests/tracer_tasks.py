"""Sync tasks for the worker-under-a-tracer test: one that returns, one its soft limit interrupts."""

from __future__ import annotations

import time

from tasks_engine import SoftTimeLimitExceeded, shared_task


@shared_task(name="tracer.sync_add")
def sync_add(x: int, y: int) -> int:
    return x + y


@shared_task(name="tracer.sync_soft", soft_time_limit=0.2, time_limit=10)
def sync_soft() -> str:
    try:
        while True:
            time.sleep(0.01)
    except SoftTimeLimitExceeded:
        return "interrupted"
