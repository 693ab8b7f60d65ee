"""Direct hand-off: a job enqueued while a worker is idle goes straight to it, already leased, so it
starts without a claim round trip (``te_handoff`` in ``store/lua/lib.lua``). What a user would notice
if it were wrong: a job handed to a worker that died, or that is stopping, must still run elsewhere;
a rate limit or a revoke must still apply."""

from __future__ import annotations

import asyncio
import time

import pytest

from tasks_engine import AsyncResult, states
from tasks_engine.store import get_broker
from tests import sample_tasks as t
from tests.conftest import running_worker

pytestmark = pytest.mark.slow


async def idle_registered(worker_id: str) -> bool:
    broker = get_broker()
    return bool(await broker.redis.zscore(broker.key("idle", "default"), worker_id))


async def until(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_an_idle_worker_is_handed_the_job_and_a_busy_one_is_not(engine) -> None:
    async with running_worker() as w:
        await until(lambda: idle_registered(w.id), 5)
        r = await t.sleep.delay(0.5)
        await until(lambda: r.ready(), 5)
        info = await r.record()
        assert info["state"] == states.SUCCESS and info["worker"] == w.id and info["delivered"] == 1
        broker = get_broker()
        # Once it took a job the registration is used up; it comes back when the worker is idle again.
        busy = [await t.sleep.delay(0.3) for _ in range(3)]
        assert [await b.get(timeout=10) for b in busy] == [0.3, 0.3, 0.3]
        await until(lambda: idle_registered(w.id), 5)
        assert not await broker.redis.exists(broker.key("handoff", w.id))


async def test_a_job_handed_to_a_worker_that_died_runs_on_another_after_the_lease(engine, spawn_worker) -> None:
    doomed = spawn_worker()
    broker = get_broker()
    worker_ids = [
        k.decode().rsplit(":", 1)[1] async for k in broker.redis.scan_iter(match=broker.keys.pattern("worker"))
    ]
    await until(lambda: idle_registered(worker_ids[0]), 5)
    doomed.kill()
    doomed.wait()
    r = await t.add.delay(2, 3)  # within 3 s of its last registration: handed to the dead worker
    await asyncio.sleep(0.2)
    assert (await r.record())["worker"] == worker_ids[0]
    spawn_worker()
    assert await r.get(timeout=20) == 5  # its 3 s lease ran out and the reaper gave it back
    info = await r.record()
    assert info["delivered"] == 2 and info["retries"] == 0


async def test_jobs_handed_to_a_stopping_worker_go_back_to_their_queue(engine) -> None:
    broker = get_broker()
    ghost = "ghost-worker"
    now = int((await broker.redis.time())[0]) * 1000
    await broker.redis.hset(broker.key("idle-info"), ghost, "60000|default")
    await broker.redis.zadd(broker.key("idle", "default"), {ghost: now})
    r = await t.add.delay(1, 1)
    assert await broker.redis.llen(broker.key("handoff", ghost)) == 1
    assert await broker.leave_idle(ghost) == [r.id]
    assert await broker.requeue([r.id], ghost) == [r.id]
    assert not await idle_registered(ghost)
    async with running_worker():
        assert await r.get(timeout=10) == 2


async def test_rate_limited_and_revoked_jobs_are_not_handed_off(engine) -> None:
    async with running_worker() as w:
        await until(lambda: idle_registered(w.id), 5)
        broker = get_broker()
        assert await broker.redis.sismember(broker.key("rl-tasks"), "demo.limited")
        jobs = [await t.limited.delay("handoff-rl", i) for i in range(5)]  # 20/s
        assert [await j.get(timeout=10) for j in jobs] == list(range(5))
        log = await broker.redis.lrange(broker.key("test-log", "handoff-rl"), 0, -1)
        starts = sorted(float(e.decode().split("|")[2]) for e in log)
        assert starts[-1] - starts[0] >= 0.15, starts  # 5 starts at 20/s: spaced, not all at once
        await until(lambda: idle_registered(w.id), 5)
        await AsyncResult("handoff-revoked").revoke()
        r = await t.add.apply_async((1, 1), task_id="handoff-revoked")
        await until(lambda: r.ready(), 5)
        assert (await r.record())["state"] == states.REVOKED


async def test_a_later_job_never_overtakes_one_already_waiting_for_the_idle_worker(engine) -> None:
    """An idle worker woken for a queued job must take that job first: a job enqueued before its
    claim lands is queued behind it, not handed over its head (FIFO and priority order hold)."""
    broker = get_broker()
    ghost = "ghost-worker"
    now = int((await broker.redis.time())[0]) * 1000
    await broker.redis.hset(broker.key("idle-info"), ghost, "60000|default\nother")
    for q in ("default", "other"):
        await broker.redis.zadd(broker.key("idle", q), {ghost: now})
    await broker.redis.sadd(broker.key("rl-tasks"), "demo.limited")  # as its idle claim registers them
    await t.limited.delay("order", "waiting")  # rate-limited: queued, never handed off
    later = await t.record.delay("order", "later")
    assert await broker.redis.llen(broker.key("handoff", ghost)) == 0, "the later job jumped the queue"
    await t.record.apply_async(("order", "other"), queue="other")  # the worker's other queue is busy
    assert await broker.redis.llen(broker.key("handoff", ghost)) == 0
    assert await broker.leave_idle(ghost) == []
    async with running_worker(max_jobs=1, queues=["default", "other"]):
        assert await later.get(timeout=5) == "later"
        await asyncio.sleep(0.2)
    log = await broker.redis.lrange(broker.key("test-log", "order"), 0, -1)
    assert [e.decode().split("|")[1] for e in log][:2] == ["waiting", "later"]
