"""Tasks for tests/celery_compat/test_tasks.py, modelled on the tasks of Celery's t/unit/tasks/test_tasks.py
(``retry_task``, ``retry_task_max_retries_override``, …) and t/integration/tasks.py.

The worker of those tests runs in the test's own process, so plain module counters see every run.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any

from tasks_engine import shared_task

#: Runs per key, across retries and deliveries (the worker shares this process).
iterations: Counter[str] = Counter()
_lock = threading.Lock()


def count(key: str) -> int:
    with _lock:
        iterations[key] += 1
        return iterations[key]


class MyCustomError(Exception):
    """Celery's ``MyCustomException``."""


@shared_task(name="cc.retry_task", bind=True, max_retries=3, default_retry_delay=0)
async def retry_task(
    self: Any, arg1: int, arg2: int, kwarg: int = 1, max_retries: int | None = None, care: bool = True, key: str = "rt"
) -> int:
    """Celery's ``retry_task``: retries until ``retries`` reaches its limit, then returns ``arg1`` (if it cares)."""
    count(key)
    limit = self.max_retries if max_retries is None else max_retries
    if care and self.request.retries >= limit:
        return arg1
    raise self.retry(countdown=0, max_retries=limit)


@shared_task(name="cc.retry_new_args", bind=True, max_retries=1, default_retry_delay=0)
async def retry_new_args(self: Any, x: int, key: str = "rna") -> int:
    """Retries with new arguments each time; the refused retry names the arguments it would have used."""
    count(key)
    raise self.retry(args=[x + 1], kwargs={"key": key})


@shared_task(
    name="cc.max_retries_override", bind=True, max_retries=10, default_retry_delay=0, autoretry_for=(Exception,)
)
async def max_retries_override(self: Any, key: str) -> None:
    """Celery's ``retry_task_max_retries_override`` (#6436): the third run asks for ``max_retries=0``."""
    if count(key) == 3:
        self.retry(exc=MyCustomError, max_retries=0)  # called, not raised: the limit is reached, exc is raised
    self.retry(exc=MyCustomError)


@shared_task(
    name="cc.override_beats_retry_kwargs",
    bind=True,
    default_retry_delay=0,
    autoretry_for=(MyCustomError,),
    retry_kwargs={"max_retries": 5, "countdown": 0},
)
async def override_beats_retry_kwargs(self: Any, key: str) -> None:
    """The body's own ``retry(max_retries=1)`` wins over ``retry_kwargs={'max_retries': 5}``."""
    count(key)
    try:
        raise MyCustomError("flaky")
    except MyCustomError as exc:
        self.retry(exc=exc, max_retries=1, countdown=0)


@shared_task(name="cc.explicit_exception", bind=True, max_retries=0, autoretry_for=(Exception,))
async def explicit_exception(self: Any, key: str) -> None:
    """Celery's ``retry_task_explicit_exception``: ``max_retries=0`` and an autoretried error: runs once."""
    count(key)
    raise MyCustomError("once")


@shared_task(name="cc.backoff_float", bind=True, autoretry_for=(ZeroDivisionError,), retry_backoff=0.1,
             retry_jitter=False, max_retries=1)  # fmt: skip
async def backoff_float(self: Any, x: int, y: int) -> float:
    return x / y


# ---------------------------------------------------------------- direct calls
@shared_task(name="cc.send_email")
def send_email_task(to_email: str, subject: str, content: str) -> dict[str, Any]:
    """The user guide's task, a plain ``def``: its unit test calls it directly and reads ``result["status"]``."""
    return {"status": "success", "email": to_email, "message": f"{subject}: {content}"}


@shared_task(name="cc.sync_add")
def sync_add(x: int, y: int, z: int = 0) -> int:
    """Celery's integration ``add``."""
    return x + y + z


@shared_task(name="cc.async_add")
async def async_add(x: int, y: int, z: int = 0) -> int:
    await asyncio.sleep(0)
    return x + y + z


@shared_task(name="cc.sync_bound", bind=True)
def sync_bound(self: Any, x: int) -> dict[str, Any]:
    return {"x": x, "name": self.name, "called_directly": self.request.called_directly}


# ---------------------------------------------------------------- options
@shared_task(name="cc.echo_gzip", compression="gzip")
async def echo_gzip(blob: str) -> int:
    return len(blob)


@shared_task(name="cc.echo")
async def echo(value: Any) -> Any:
    return value


@shared_task(name="cc.join_results")
async def join_results(results: list[int], blob: str) -> int:
    return sum(results) + len(blob)


@shared_task(name="cc.retry_once_gzip", bind=True, compression="gzip", default_retry_delay=0)
async def retry_once_gzip(self: Any, blob: str, countdown: float = 0) -> int:
    """Celery's integration ``retry_once``: fails once, then returns how many retries it took."""
    if self.request.retries:
        return int(self.request.retries) + len(blob)
    raise self.retry(countdown=countdown, max_retries=1)


@shared_task(name="cc.untracked", track_started=False)
async def untracked(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "done"


@shared_task(name="cc.early_ack", acks_late=False)
async def early_ack(x: int) -> int:
    return x


@shared_task(name="cc.routed", routing_key="cc-routed")
async def routed() -> str:
    return "routed"
