"""Results: state, the value, the error, every recorded field."""

from tasks_engine import shared_task, states


@shared_task(name="docs.divide")
async def divide(x: float, y: float) -> float:
    return x / y


async def check_task_status(task_id: str) -> dict[str, object]:
    """The guide's status helper; each attribute of Celery's AsyncResult is awaited here."""
    result = divide.AsyncResult(task_id)
    return {
        "task_id": task_id,
        "status": await result.state(),
        "result": await result.result() if await result.ready() else None,
        "traceback": await result.traceback() if await result.failed() else None,
    }


async def main() -> None:
    ok = await divide.delay(1, 4)
    assert await ok.get(timeout=10) == 0.25
    assert (await check_task_status(ok.id))["status"] == states.SUCCESS

    bad = await divide.delay(1, 0)
    try:
        await bad.get(timeout=10)  # raises the task's own exception type
    except ZeroDivisionError as exc:
        print("failed as expected:", exc)
    status = await check_task_status(bad.id)
    assert status["status"] == states.FAILURE and "ZeroDivisionError" in str(status["traceback"])
    assert await bad.get(timeout=10, propagate=False) is not None  # the exception, returned instead
    record = await bad.record()  # every recorded field: state, exc_type, retries, delivered, dates, ...
    assert record["state"] == states.FAILURE and record["exc_type"] == "ZeroDivisionError"
