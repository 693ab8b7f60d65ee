"""Tasks with Celery-style handler methods and signal receivers (``-I tests.hooks_tasks``): each writes
what it saw to a Redis list the tests read."""

from __future__ import annotations

from typing import Any

import orjson
import redis

from tasks_engine import Task, shared_task, signals
from tasks_engine.core.config import get_settings


def note(kind: str, **data: Any) -> None:
    client = redis.Redis.from_url(get_settings().redis_url.get_secret_value())
    client.rpush(f"{{{get_settings().key_prefix}}}:hook-log", orjson.dumps({"kind": kind, **data}, default=str))
    client.close()


class AuditedTask(Task):
    """The guide's ``class BaseTask(Task)``: handlers mixing sync and async."""

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        note("on_success", task=self.name, retval=retval, task_id=task_id, args=args)

    async def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        note("on_failure", task=self.name, exc=repr(exc), task_id=task_id, has_einfo=bool(einfo))

    def on_retry(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        note("on_retry", task=self.name, exc=repr(exc))

    def after_return(self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        note("after_return", task=self.name, status=status)
        if args and args[0] == "explode-in-handler":
            raise RuntimeError("a handler bug must not change the outcome")


@shared_task(name="hooks.ok", base=AuditedTask)
async def ok(value: str) -> str:
    return value.upper()


@shared_task(name="hooks.fails", base=AuditedTask)
async def fails() -> None:
    raise ValueError("boom")


@shared_task(name="hooks.retries_once", base=AuditedTask, bind=True)
async def retries_once(self: Any) -> str:
    if self.request.retries == 0:
        raise self.retry(exc=KeyError("again"), countdown=0)
    return "done"


@signals.task_prerun.connect
def prerun(sender: Any = None, task_id: str | None = None, **kwargs: Any) -> None:
    note("task_prerun", task=getattr(sender, "name", None), task_id=task_id)


@signals.task_postrun.connect
async def postrun(sender: Any = None, state: str | None = None, retval: Any = None, **kwargs: Any) -> None:
    note("task_postrun", task=getattr(sender, "name", None), state=state)


@signals.task_failure.connect(sender="hooks.fails")
def failure(sender: Any = None, exception: BaseException | None = None, **kwargs: Any) -> None:
    note("task_failure", task=sender.name, exception=repr(exception))
    raise RuntimeError("a receiver bug is logged, never the task's failure")


@signals.task_success.connect
def success(sender: Any = None, result: Any = None, **kwargs: Any) -> None:
    note("task_success", task=sender.name, result=result)


@signals.task_retry.connect
def retried(sender: Any = None, reason: Any = None, request: Any = None, **kwargs: Any) -> None:
    note("task_retry", task=sender.name, reason=repr(reason), retries=request.retries)


@signals.worker_ready.connect
def ready(sender: Any = None, **kwargs: Any) -> None:
    note("worker_ready", worker=sender.id)


@signals.worker_shutdown.connect
def shutdown(sender: Any = None, **kwargs: Any) -> None:
    note("worker_shutdown", worker=sender.id)
