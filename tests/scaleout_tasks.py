"""The job of the failover tests (``-I tests.scaleout_tasks``): each run appends its id to a file, so
lost and duplicated jobs are counted outside Redis (whose writes are what a failover may lose)."""

from __future__ import annotations

import asyncio
import os

from tasks_engine import shared_task


@shared_task(name="scaleout.mark", bind=True)
async def mark(self: object, pause: float = 0.002) -> str:
    await asyncio.sleep(pause)
    task_id = str(self.request.id)  # type: ignore[attr-defined]
    with open(os.environ["TE_TEST_RUNS_FILE"], "a", encoding="utf-8") as runs:
        runs.write(task_id + "\n")  # one short append per run: whole lines even from two processes
    return task_id


@shared_task(name="scaleout.limited", rate_limit="100/s")
async def limited() -> None:
    """Declared so the workers list a rate-limited task (``rl-tasks``), as most apps have one."""


@shared_task(name="scaleout.fail")
async def fail() -> None:
    raise RuntimeError("fails for good: the failed-jobs index has an entry")
