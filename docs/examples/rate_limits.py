"""Rate limits: one bucket per task in Redis, shared by every worker process."""

import asyncio
import time

from tasks_engine import shared_task

started: list[float] = []


@shared_task(name="docs.limited", rate_limit="20/s")  # '10/m', '5/s', '100/h' or a number per second
async def limited(i: int) -> int:
    started.append(time.monotonic())
    return i


async def main() -> None:
    results = await asyncio.gather(*(limited.delay(i) for i in range(10)))
    assert [await r.get(timeout=10) for r in results] == list(range(10))
    span = max(started) - min(started)
    assert span >= 0.35, span  # 10 starts at 20/s take about 0.45 s, whatever the number of workers
    print(f"10 jobs started over {span:.2f} s")
