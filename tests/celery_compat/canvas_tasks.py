"""Tasks for tests/celery_compat/test_canvas.py, modelled on Celery's t/integration/tasks.py.

Untyped like Celery's (``add`` adds lists too), registered under ``celery_canvas.*``. The echo and
count tasks write to Redis under the test's key prefix, so every worker process sees them.
"""

from __future__ import annotations

from typing import Any

from tasks_engine import shared_task
from tasks_engine.store import get_broker


class ExpectedException(Exception):  # noqa: N818 - Celery's name
    """What ``fail`` raises (Celery's ``ExpectedException``)."""


@shared_task(name="celery_canvas.add")
async def add(x: Any, y: Any) -> Any:
    return x + y


@shared_task(name="celery_canvas.tsum")
async def tsum(nums: list[Any]) -> Any:
    return sum(nums)


@shared_task(name="celery_canvas.add_to_all")
async def add_to_all(nums: list[Any], val: Any) -> list[Any]:
    return [num + val for num in nums]


@shared_task(name="celery_canvas.identity")
async def identity(x: Any) -> Any:
    return x


@shared_task(name="celery_canvas.fail")
async def fail(*args: Any) -> None:
    raise ExpectedException("Task expected to fail", args)


@shared_task(name="celery_canvas.ids", bind=True)
async def ids(self: Any, i: int) -> list[Any]:
    """Celery's ``ids``: this call's root id, parent id and ``i``."""
    return [self.request.root_id, self.request.parent_id, i]


@shared_task(name="celery_canvas.collect_ids", bind=True)
async def collect_ids(self: Any, res: Any, i: int) -> list[Any]:
    """Celery's ``collect_ids``: what it got (a chord's header results), then its own ids."""
    return [res, [self.request.root_id, self.request.parent_id, i]]


@shared_task(name="celery_canvas.redis_echo")
async def redis_echo(message: str, redis_key: str = "redis-echo") -> None:
    broker = get_broker()
    await broker.redis.rpush(broker.key("echo", redis_key), message)


async def _incr(redis_key: str) -> None:
    broker = get_broker()
    await broker.redis.incr(broker.key("count", redis_key))


@shared_task(name="celery_canvas.redis_count")
async def redis_count(redis_key: str = "redis-count") -> None:
    await _incr(redis_key)


@shared_task(name="celery_canvas.errback_old_style")
async def errback_old_style(request_id: str) -> str:
    """An errback taking the failed task's id: counts its calls under that id."""
    await _incr(request_id)
    return request_id


@shared_task(name="celery_canvas.errback_new_style")
async def errback_new_style(request_id: str, exc: str, traceback: str) -> str:
    """A three-argument errback (failed id, exception, traceback): counts its calls under that id."""
    await _incr(request_id)
    return request_id


async def echoed(redis_key: str) -> list[str]:
    broker = get_broker()
    return [m.decode() for m in await broker.redis.lrange(broker.key("echo", redis_key), 0, -1)]


async def counted(redis_key: str) -> int:
    broker = get_broker()
    return int(await broker.redis.get(broker.key("count", redis_key)) or 0)


@shared_task(name="celery_canvas.apply_child", bind=True)
async def apply_child(self: Any) -> list[Any]:
    """Applies ``ids`` eagerly from inside itself (Celery's test_apply_nested_parent_child_relationship)."""
    grandchild = await (await ids.apply(kwargs={"i": 3})).get()
    return [self.request.id, self.request.root_id, self.request.parent_id, grandchild]


@shared_task(name="celery_canvas.apply_nested", bind=True)
async def apply_nested(self: Any) -> list[Any]:
    child = await (await apply_child.apply()).get()
    return [self.request.id, child]
