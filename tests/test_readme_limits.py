"""The README's Known limits and "differs on purpose" lines that no other test showed, each shown here
(the README cites these ids next to the lines; tests/test_readme_citations.py checks they exist)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tasks_engine import EngineSettings, configure, group, shared_task, states
from tasks_engine.ops import control
from tasks_engine.store import get_broker
from tests import sample_tasks as t
from tests.conftest import running_worker

STARTS: dict[str, float] = {}


@shared_task(name="readme.retry_once_later", bind=True)
async def retry_once_later(self: Any, countdown: float) -> str:
    if self.request.retries == 0:
        raise self.retry(countdown=countdown)
    return "ran"


RUNS: dict[str, int] = {}


@shared_task(name="readme.override_once", bind=True, max_retries=1)
async def override_once(self: Any, key: str) -> None:
    """Asks for 3 retries on its first run only; later runs retry under the task's own limit (1)."""
    RUNS[key] = RUNS.get(key, 0) + 1
    if self.request.retries == 0:
        raise self.retry(exc=RuntimeError("first"), countdown=0.01, max_retries=3)
    raise self.retry(exc=RuntimeError(f"run {RUNS[key]}"), countdown=0.01)


@shared_task(name="readme.limited", rate_limit="4/s")
async def limited(label: str) -> str:
    STARTS[label] = time.monotonic()
    return label


@pytest.fixture
async def short_results(engine: EngineSettings) -> AsyncIterator[EngineSettings]:
    """The test's engine settings with records kept 1 s."""
    settings = configure(engine.model_copy(update={"result_expires": 1}))
    yield settings
    configure(engine)


# ---------------------------------------------------------------- differs on purpose: canvas construction
def test_group_freeze_uses_its_id_as_the_group_id(engine: EngineSettings) -> None:
    frozen = group(t.add.s(1, 1), t.add.s(2, 2)).freeze("my-group")
    assert frozen.id == "my-group"
    assert all(r.id not in ("my-group", None) for r in frozen.results)


def test_a_nested_group_is_flattened_when_built_and_its_options_go_to_its_members(engine: EngineSettings) -> None:
    g = group(t.add.s(1, 1), group(t.add.s(2, 2), t.add.s(3, 3)).set(queue="inner", priority=2))
    assert [s.args for s in g.tasks] == [(1, 1), (2, 2), (3, 3)]  # three tasks at once, in declaration order
    assert [s.options.get("queue") for s in g.tasks] == [None, "inner", "inner"]
    assert [s.options.get("priority") for s in g.tasks] == [None, 2, 2]


def test_bare_task_objects_are_not_signatures(engine: EngineSettings) -> None:
    from tasks_engine import chain, chord

    with pytest.raises(TypeError, match=r"expected a signature \(e\.g\. task\.s\(\.\.\.\)\), got Task"):
        chain(t.add, t.add.s(1))
    with pytest.raises(TypeError, match="expected a signature"):
        chord([t.add.s(1, 1)], t.tsum)


async def test_retry_max_retries_overrides_the_limit_for_that_attempt_only(engine: EngineSettings) -> None:
    async with running_worker():
        r = await override_once.delay("once")
        with pytest.raises(RuntimeError, match="run 2"):
            await r.get(timeout=5)
    assert RUNS["once"] == 2  # sticking to the task (Celery) would allow a third run
    assert (await r.record())["retries"] == 1


# ---------------------------------------------------------------- known limits
async def test_a_retry_record_expires_with_result_expires_while_its_job_is_kept(short_results: EngineSettings) -> None:
    async with running_worker():
        r = await retry_once_later.delay(2.5)
        deadline = time.monotonic() + 5
        while await r.state() != states.RETRY:
            assert time.monotonic() < deadline, await r.state()
            await asyncio.sleep(0.02)
        await asyncio.sleep(1.3)  # past result_expires, before the countdown is over
        assert await r.state() == states.PENDING
        assert await r.get(timeout=5) == "ran"  # the job itself was kept and runs at its time
        assert (await r.record())["retries"] == 1


async def test_a_later_priority_zero_job_waits_behind_jobs_parked_by_the_rate_limit(engine: EngineSettings) -> None:
    STARTS.clear()
    broker = get_broker()
    async with running_worker():
        parked = [await limited.apply_async(args=[f"p9-{i}"], priority=9) for i in range(4)]
        deadline = time.monotonic() + 5
        while "p9-0" not in STARTS or await broker.redis.zcard(broker.key("delayed")) < 3:
            assert time.monotonic() < deadline, (STARTS, await broker.redis.zcard(broker.key("delayed")))
            await asyncio.sleep(0.01)
        urgent = await limited.apply_async(args=["p0"], priority=0)
        assert await urgent.get(timeout=5) == "p0"
        for r in parked:
            await r.get(timeout=5)
    assert STARTS["p0"] > max(STARTS[f"p9-{i}"] for i in range(4)), STARTS  # reserved slots are kept


async def test_a_queue_whose_jobs_are_all_deferred_is_counted_as_deferred_not_listed(engine: EngineSettings) -> None:
    """What ``tasks-engine status`` prints: the queues of ``queue_stats()`` and the ``totals()`` line."""
    await t.add.apply_async(args=[1, 1], queue="only-later", countdown=60)
    assert "only-later" not in {row["queue"] for row in await control.queue_stats()}
    assert (await control.totals())["deferred"] == 1
    await t.add.apply_async(args=[1, 1], queue="only-later")
    assert "only-later" in {row["queue"] for row in await control.queue_stats()}
