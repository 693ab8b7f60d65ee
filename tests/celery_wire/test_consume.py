"""A real Celery producer → a tasks_engine worker → Celery's own ``AsyncResult``: values, errors, states,
and the message options Celery sends (eta/countdown, expires, timelimit, priority, ignore_result)."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis as sync_redis
from celery.exceptions import TaskRevokedError, TimeLimitExceeded
from celery.result import AsyncResult

from tests.celery_wire.conftest import Wire, engine_worker


async def get(result: AsyncResult, timeout: float = 10.0, propagate: bool = True) -> Any:
    return await asyncio.to_thread(result.get, timeout=timeout, propagate=propagate)


async def states_seen(result: AsyncResult, until: str, timeout: float = 10.0) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = await asyncio.to_thread(lambda: AsyncResult(result.id, app=result.app).state)
        if not seen or seen[-1] != state:
            seen.append(state)
        if state == until:
            return seen
        await asyncio.sleep(0.02)
    raise AssertionError(f"never reached {until}: {seen}")


async def test_values_and_ids_reach_celery_async_result(wire: Wire) -> None:
    async with engine_worker():
        assert await get(wire.send("cw.add", 2, 3)) == 5
        r = wire.send("cw.echo", time_limit=20, soft_time_limit=10)
        echoed = await get(r)
    assert echoed["id"] == r.id and echoed["root_id"] == r.id and echoed["parent_id"] is None
    assert (echoed["time_limit"], echoed["soft_time_limit"]) == (20, 10)  # timelimit = [hard, soft]
    assert AsyncResult(r.id, app=wire.app).state == "SUCCESS"


async def test_failure_is_raised_by_get_with_the_tasks_exception(wire: Wire) -> None:
    async with engine_worker():
        r = wire.send("cw.fail", "boom")
        with pytest.raises(ValueError, match="boom"):
            await get(r)
    fresh = AsyncResult(r.id, app=wire.app)
    assert fresh.state == "FAILURE" and "ValueError" in (fresh.traceback or "")


async def test_pending_started_success(wire: Wire) -> None:
    r = wire.send("cw.sleep", 0.6)
    assert AsyncResult(r.id, app=wire.app).state == "PENDING"
    async with engine_worker():
        seen = await states_seen(r, "SUCCESS")
    assert seen[-2:] == ["STARTED", "SUCCESS"], seen


async def test_retry_is_visible_then_success(wire: Wire) -> None:
    async with engine_worker():
        r = wire.send("cw.retry_once", 1.0)
        seen = await states_seen(r, "SUCCESS")
        assert await get(r) == 1  # request.retries on the second run
    assert "RETRY" in seen, seen


async def test_countdown_and_eta_defer_the_run(wire: Wire) -> None:
    async with engine_worker():
        sent = time.monotonic()
        r = wire.send("cw.add", 1, 1, countdown=1.5)
        assert await get(r) == 2
        assert time.monotonic() - sent >= 1.4
        sent = time.monotonic()
        r = wire.send("cw.add", 2, 2, eta=datetime.now(UTC) + timedelta(seconds=1))
        assert await get(r) == 4
        assert time.monotonic() - sent >= 0.9


async def test_expired_message_is_revoked(wire: Wire) -> None:
    r = wire.send("cw.add", 1, 1, expires=datetime.now(UTC) + timedelta(seconds=0.3))
    await asyncio.sleep(0.5)
    async with engine_worker():
        with pytest.raises(TaskRevokedError):
            await get(r)
    assert AsyncResult(r.id, app=wire.app).state == "REVOKED"


async def test_hard_and_soft_time_limits_from_the_message(wire: Wire) -> None:
    async with engine_worker():
        r = wire.send("cw.sleep", 30, time_limit=0.5)
        soft = wire.send("cw.soft", time_limit=10, soft_time_limit=0.3)
        with pytest.raises(TimeLimitExceeded):
            await get(r)
        assert await get(soft) == "cleaned up"


async def test_priorities_lower_number_first(wire: Wire, sync_client: sync_redis.Redis) -> None:
    key = f"{wire.celery_prefix}order"
    for label, priority in [("p9", 9), ("p6", 6), ("p3", 3), ("p0", 0), ("p9b", 9), ("p0b", 0)]:
        wire.send("cw.order", key, label, priority=priority)
    async with engine_worker(max_jobs=1):
        deadline = time.monotonic() + 10
        while sync_client.llen(key) < 6 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    assert [x.decode() for x in sync_client.lrange(key, 0, -1)] == ["p0", "p0b", "p3", "p6", "p9", "p9b"]


async def test_ignore_result_stores_nothing(wire: Wire, sync_client: sync_redis.Redis) -> None:
    key = f"{wire.celery_prefix}runs"
    async with engine_worker():
        r = wire.send("cw.count", key, ignore_result=True)
        quiet = wire.send("cw.quiet", key)  # the engine task's own ignore_result
        kept = wire.send("cw.add", 1, 2)
        assert await get(kept) == 3
        deadline = time.monotonic() + 5
        while None in sync_client.hmget(key, ["done", quiet.id]) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    assert sync_client.hget(key, r.id) == b"1" and sync_client.hget(key, quiet.id) == b"1"
    assert not sync_client.exists(wire.app.backend.get_key_for_task(r.id))
    assert not sync_client.exists(wire.app.backend.get_key_for_task(quiet.id))
    assert sync_client.exists(wire.app.backend.get_key_for_task(kept.id))


async def test_rate_limit_of_the_engine_task_applies(wire: Wire, sync_client: sync_redis.Redis) -> None:
    key = f"{wire.celery_prefix}rl-{uuid.uuid4().hex[:6]}"
    async with engine_worker():
        results = [wire.send("cw.limited", key) for _ in range(6)]
        for r in results:
            await get(r)
    times = sorted(float(t) for t in sync_client.lrange(key, 0, -1))
    assert times[-1] - times[0] >= 0.8  # 6 starts at 5/s: at least one second between first and last (less slack)


async def test_revoke_through_the_engine_reaches_celery_async_result(wire: Wire) -> None:
    from tasks_engine.client.results import revoke

    early = wire.send("cw.add", 1, 1)
    await revoke([early.id])  # before any worker took it over from Celery's queue
    async with engine_worker():
        waiting = wire.send("cw.add", 1, 1, countdown=30)
        running = wire.send("cw.sleep", 30)
        await states_seen(running, "STARTED")
        await revoke([waiting.id])
        await revoke([running.id], terminate=True)
        for r in (early, waiting, running):
            with pytest.raises(TaskRevokedError):
                await get(r, timeout=5)


async def test_a_stored_success_is_not_overwritten(wire: Wire) -> None:
    task_id = str(uuid.uuid4())
    wire.app.backend.store_result(task_id, 7, "SUCCESS")
    async with engine_worker(max_jobs=1):
        again = wire.send("cw.fail", "late duplicate", task_id=task_id)
        probe = wire.send("cw.add", 0, 0)  # queued after it: once this is done, the duplicate has run
        await get(probe)
    assert AsyncResult(again.id, app=wire.app).state == "SUCCESS"
    assert await get(AsyncResult(again.id, app=wire.app)) == 7
