"""Group commit of ``delay()`` (store/batching.py) against a real Redis: what a user would notice is
that concurrent sends all land, each with its own answer, in few script calls, and that one caller's
bad data fails that caller only."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from redis.exceptions import ResponseError

from tasks_engine import AsyncResult, send_task, states
from tasks_engine.store import Completion, Enqueue, get_broker
from tests import sample_tasks as t
from tests.conftest import running_worker


def count_flushes() -> list[int]:
    """Wrap this loop's batcher so each script call's message count is recorded."""
    batcher = get_broker().batcher
    sizes: list[int] = []
    flush = batcher.flush

    async def counted(items: Sequence[Enqueue]) -> list[int]:
        sizes.append(len(items))
        return await flush(items)

    batcher.flush = counted
    return sizes


async def test_concurrent_sends_share_script_calls_and_all_run(engine) -> None:
    sizes = count_flushes()
    results = await asyncio.gather(*(t.add.delay(i, 1) for i in range(300)))
    assert sum(sizes) == 300 and len(sizes) <= 3, sizes  # the first goes alone, the rest together
    assert len({r.id for r in results}) == 300
    async with running_worker():
        assert [await r.get(timeout=10) for r in results] == [i + 1 for i in range(300)]


async def test_a_lone_send_goes_out_at_once(engine) -> None:
    sizes = count_flushes()
    for i in range(3):
        await t.add.delay(i, i)
    assert sizes == [1, 1, 1]


async def test_one_callers_bad_queue_fails_that_caller_only(engine, sync_client, prefix) -> None:
    sync_client.set(f"{{{prefix}}}:q:broken", "not a sorted set")  # what a stray client could leave
    sizes = count_flushes()
    outcomes = await asyncio.gather(
        t.add.delay(1, 1),
        *(t.add.apply_async((i, 0), queue="broken" if i == 2 else None) for i in range(5)),
        return_exceptions=True,
    )
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(failed) == 1 and isinstance(failed[0], ResponseError), outcomes
    assert "WRONGTYPE" in str(failed[0])
    assert len(sizes) >= 2
    async with running_worker():
        good = [o for o in outcomes if not isinstance(o, BaseException)]
        assert sorted([await r.get(timeout=10) for r in good]) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("concurrent", [1, 50])
async def test_a_cancelled_sender_does_not_strand_the_others(engine, concurrent: int) -> None:
    first = asyncio.ensure_future(t.add.delay(0, 0))
    others = [asyncio.ensure_future(t.add.delay(i, 0)) for i in range(1, concurrent + 1)]
    await asyncio.sleep(0)
    first.cancel()
    results = await asyncio.gather(*others)
    async with running_worker():
        assert sorted([await r.get(timeout=10) for r in results]) == list(range(1, concurrent + 1))


# ---------------------------------------------------------------- result reads (ReadBatcher)
async def test_concurrent_result_reads_share_round_trips_and_a_bad_key_hurts_only_its_reader(
    engine, sync_client, prefix
) -> None:
    async with running_worker():
        handles = [await t.add.delay(i, 1) for i in range(200)]
        for h in handles:
            await h.get(timeout=10)
    sync_client.set(f"{{{prefix}}}:res:stray", "a string, not a hash")  # what a stray client could leave
    reads = get_broker().record_reads
    sizes: list[int] = []
    fetch = reads.fetch

    async def counted(ids: Sequence[str]) -> list[object]:
        sizes.append(len(ids))
        return await fetch(ids)

    reads.fetch = counted
    stray = AsyncResult("stray")
    values = await asyncio.gather(stray.record(), *(h.result() for h in handles))
    assert values[0]["state"] == states.PENDING  # a key of the wrong type reads as no record yet, as alone
    assert list(values[1:]) == [i + 1 for i in range(200)]
    assert sum(sizes) == 201 and len(sizes) <= 3, sizes  # the first goes alone, the rest together


# ---------------------------------------------------------------- completions (one complete.lua call)
async def test_a_completion_that_fails_half_way_is_not_acknowledged_and_the_others_are_written(engine) -> None:
    """One ``complete.lua`` call writes a whole commit batch. An entry that errors returns its error
    and leaves its job in flight (so the worker's fallback completion passes the fence); the other
    entries are written and acknowledged as usual."""
    broker = get_broker()
    keys, redis = broker.keys, broker.redis
    for task_id in ("breaks", "fine"):
        await redis.hset(keys.inflight, task_id, "default|1|w1")
        await redis.zadd(keys.active, {task_id: 10**13})
        await redis.set(keys.message(task_id), "{}")
    await redis.set(keys.dead, "not a list")  # the failing entry's dead letter can't be pushed
    breaks = Completion("breaks", {"state": states.FAILURE}, final=True, dead_letter=b"{}")
    fine = Completion("fine", {"state": states.SUCCESS, "result": "1"}, final=True)
    first, second = await broker.commit([breaks, fine])
    assert isinstance(first, ResponseError) and "WRONGTYPE" in str(first)
    assert second == "ok"
    assert await redis.hexists(keys.inflight, "breaks") and await redis.zscore(keys.active, "breaks")
    assert await redis.exists(keys.message("breaks")) and not await redis.exists(keys.result("breaks"))
    assert not await redis.hexists(keys.inflight, "fine") and await redis.zscore(keys.active, "fine") is None
    assert not await redis.exists(keys.message("fine"))
    assert (await AsyncResult("fine").record())["state"] == states.SUCCESS


async def test_a_worker_whose_completion_write_fails_records_the_job_failed_and_carries_on(
    engine, spawn_worker, tmp_path
) -> None:
    """A real worker process: a message for an unknown task must be dead-lettered, but the dead-letter
    list can't be written (a key of the wrong type), so its ``complete.lua`` entry errors. The job still
    ends FAILURE (the worker's fallback write passes the fence), nothing of it stays leased, and the
    worker goes on running other jobs."""
    broker = get_broker()
    await broker.redis.set(broker.keys.dead, "not a list")
    unknown = await send_task("no.such.task", [1])
    fine = await t.add.delay(1, 2)
    spawn_worker()
    assert await fine.get(timeout=15) == 3
    record = await unknown.record()
    for _ in range(100):
        if record["state"] == states.FAILURE:
            break
        await asyncio.sleep(0.1)
        record = await unknown.record()
    assert record["state"] == states.FAILURE and "no.such.task" in record["exc_message"]
    assert not await broker.redis.hexists(broker.keys.inflight, unknown.id)
    assert await broker.redis.zscore(broker.keys.active, unknown.id) is None
    assert not await broker.redis.exists(broker.keys.message(unknown.id))
    assert "could not write the job's completion" in (tmp_path / "worker-0.log").read_text()
    assert await (await t.add.delay(2, 3)).get(timeout=15) == 5
