"""The guide's task options on tasks_engine: same names, same meaning (see the Options page)."""

from typing import Any

from tasks_engine import shared_task


@shared_task(
    name="docs.custom_task_name",  # the name workers and send_task() know it by
    bind=True,  # the first argument is the task: self.request.id, self.request.retries, self.retry()
    max_retries=3,
    default_retry_delay=60,
    time_limit=300,  # hard limit, seconds: the job fails with TimeLimitExceeded
    soft_time_limit=240,  # SoftTimeLimitExceeded is raised inside the coroutine
    autoretry_for=(ConnectionError,),
    retry_backoff=True,
    retry_backoff_max=600,
    retry_jitter=True,
    rate_limit="10/m",  # one bucket shared by every worker process
    ignore_result=False,
    serializer="json",  # the only serializer: another one is refused
    compression="gzip",
)
async def advanced_task(self: Any, data: dict[str, int]) -> dict[str, Any]:
    return {"task_id": self.request.id, "retries": self.request.retries, "total": sum(data.values())}


@shared_task(name="docs.process_data", queue="admin")  # every call goes to the "admin" queue
async def admin_task(data: dict[str, int]) -> int:
    return len(data)


async def main() -> None:
    result = await advanced_task.delay({"a": 1, "b": 2})
    value = await result.get(timeout=10)
    assert value["total"] == 3 and value["task_id"] == result.id and value["retries"] == 0
    print(value)
