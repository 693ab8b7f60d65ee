"""Time limits: the soft limit raises inside the coroutine, the hard one fails the job on time."""

import asyncio

from tasks_engine import SoftTimeLimitExceeded, TimeLimitExceeded, shared_task


@shared_task(name="docs.long_running", soft_time_limit=0.2, time_limit=2)
async def long_running_task() -> str:
    try:
        await asyncio.sleep(10)  # stands for a long computation or network call
        return "done"
    except SoftTimeLimitExceeded:
        await asyncio.sleep(0)  # clean up: close files, release locks
        return "cleaned up"  # returning makes the job SUCCESS; re-raising makes it FAILURE


@shared_task(name="docs.stuck", time_limit=0.3)
async def stuck_task() -> None:
    await asyncio.sleep(10)


async def main() -> None:
    assert await (await long_running_task.delay()).get(timeout=10) == "cleaned up"
    try:
        await (await stuck_task.delay()).get(timeout=10)
    except TimeLimitExceeded as exc:
        print("hard limit:", exc)
    else:
        raise AssertionError("the hard limit should have failed the job")
