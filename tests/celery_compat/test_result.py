"""AsyncResult behaviour ported from Celery's own tests (t/unit/tasks/test_result.py and friends),
run against the real Redis and a real worker.

Celery's backend-reading properties are awaitable methods here: ``result`` becomes
``await r.result()``, ``state``/``status`` become ``await r.state()``/``await r.status()``.
``await r.record()`` keeps returning the whole record (a dict), so Celery's ``info`` is ``result()``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tasks_engine import (
    AsyncResult,
    ChordError,
    EagerResult,
    GroupResult,
    TaskRevokedError,
    chain,
    chord,
    group,
    shared_task,
    states,
)
from tasks_engine.core.ids import new_id
from tests import sample_tasks as t


@shared_task(name="celery_compat.retry_later", bind=True)
async def retry_later(self: Any) -> None:
    """Fails with KeyError('red') and asks to run again only in a minute: it stays in RETRY meanwhile."""
    raise self.retry(exc=KeyError("red"), countdown=60, max_retries=1)


@shared_task(name="celery_compat.frobulate", bind=True)
async def frobulate(self: Any, seconds: float) -> str:
    await self.update_state(state="FROBULATING", meta={"fooz": "baaz"})
    await asyncio.sleep(seconds)
    return "done"


@shared_task(name="celery_compat.upstream_timeout")
async def upstream_timeout() -> None:
    raise TimeoutError("upstream did not answer")


async def wait_for_state(result: AsyncResult, state: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while await result.state() != state:
        assert time.monotonic() < deadline, f"{result.id} never reached {state}"
        await asyncio.sleep(0.02)


def steps_of(result: AsyncResult) -> list[AsyncResult | GroupResult]:
    """The result and everything it follows, last step first."""
    out: list[AsyncResult | GroupResult] = []
    node: AsyncResult | GroupResult | None = result
    while node is not None:
        out.append(node)
        node = node.parent
    return out


# ---------------------------------------------------------------- result / info / state
async def test_result_is_value_exception_or_none(worker):
    """mirrors celery t/unit/tasks/test_result.py::test_AsyncResult::test_get (``ok_res.info == 'the'``,
    ``none_res``) and ::test_pending_AsyncResult::test_result"""
    ok = await t.add.delay(2, 3)
    assert await ok.get(timeout=10) == 5
    assert await ok.result() == 5
    none = await t.identity.delay(None)
    assert await none.get(timeout=10) is None
    assert await none.result() is None and await none.state() == states.SUCCESS
    failed = await t.fail.delay()
    with pytest.raises(ValueError, match="boom"):
        await failed.get(timeout=10)
    exc = await failed.result()  # the exception instance, returned, never raised
    assert isinstance(exc, ValueError) and exc.args == ("boom",)
    pending = AsyncResult(new_id())
    assert await pending.result() is None and await pending.state() == states.PENDING
    # info() means what it means in Celery (the same as result); record() is every recorded field.
    assert await ok.info() == 5 and isinstance(await failed.info(), ValueError) and await pending.info() is None
    record = await ok.record()
    assert record["state"] == states.SUCCESS and record["result"] == 5 and record["task"] == "demo.add"


async def test_retry_state_result_is_the_exception(worker):
    """mirrors celery t/unit/tasks/test_result.py::test_AsyncResult::test_get (``isinstance(nok2_res.result,
    KeyError)`` for a RETRY result) and ::test_get_traceback (a retrying result has a traceback)"""
    r = await retry_later.delay()
    await wait_for_state(r, states.RETRY)
    exc = await r.result()
    assert isinstance(exc, KeyError) and exc.args == ("red",)
    assert "KeyError" in (await r.traceback() or "")
    assert not await r.ready()


async def test_custom_state_result_is_its_meta(worker):
    """mirrors celery t/unit/tasks/test_tasks.py::test_tasks::test_update_state
    (``AsyncResult(tid).status == 'FROBULATING'`` and ``.result == {'fooz': 'baaz'}``)"""
    r = await frobulate.delay(0.5)
    await wait_for_state(r, "FROBULATING")
    assert await r.status() == "FROBULATING"
    assert await r.result() == {"fooz": "baaz"}
    assert await r.get(timeout=10) == "done"
    assert await r.result() == "done"


async def test_compat_properties(engine):
    """mirrors celery t/unit/tasks/test_result.py::test_AsyncResult::test_compat_properties
    (and ``status = state``)"""
    r = await t.add.delay(1, 1)  # no worker: it stays queued
    assert r.task_id == r.id
    assert await r.status() == await r.state() == states.PENDING
    assert await r.result() is None


# ---------------------------------------------------------------- parent
async def test_chain_parents_lead_back_to_the_first_step(worker):
    """mirrors celery t/unit/tasks/test_canvas.py::test_chain::test_apply (``res.parent.get() == 16`` …) and
    ::test_chain::test_chord_sets_result_parent"""
    r = await (t.add.s(4, 4) | t.add.s(8) | t.add.s(10)).delay()
    assert await r.get(timeout=10) == 26
    assert await r.parent.get(timeout=5) == 16
    assert await r.parent.parent.get(timeout=5) == 8
    assert await r.parent.parent.result() == 8
    assert r.parent.parent.parent is None

    r2 = await (t.add.s(0, 0) | group(t.add.s(i) for i in range(1, 4)) | t.tsum.s() | t.add.s(4)).delay()
    assert await r2.get(timeout=10) == 10
    assert isinstance(r2.parent, AsyncResult) and not isinstance(r2.parent, GroupResult)
    assert isinstance(r2.parent.parent, GroupResult)
    assert isinstance(r2.parent.parent.parent, AsyncResult)
    assert r2.parent.parent.parent.parent is None
    assert await r2.parent.parent.get(timeout=5) == [1, 2, 3]
    assert await r2.parent.parent.parent.result() == 0
    ids = [node.id for node in steps_of(r2)]
    assert len(ids) == len(set(ids))


# ---------------------------------------------------------------- forget
async def test_forget_forgets_every_chain_step(worker):
    """mirrors celery t/unit/tasks/test_result.py::test_AsyncResult::test_forget
    (forgetting the last result forgets its parents)"""
    r = await (t.add.s(1, 1) | t.add.s(1) | t.add.s(1)).delay()
    assert await r.get(timeout=10) == 4
    steps = steps_of(r)
    assert len(steps) == 3
    assert [await AsyncResult(s.id).state() for s in steps] == [states.SUCCESS] * 3
    await r.forget()
    fresh = [AsyncResult(s.id) for s in steps]  # as any other process would see them
    assert [await f.state() for f in fresh] == [states.PENDING] * 3
    assert [await f.result() for f in fresh] == [None] * 3


async def test_forget_goes_through_a_chord_header(worker):
    """mirrors celery t/unit/tasks/test_result.py::test_AsyncResult::test_forget and
    ::test_GroupResult::test_forget (a group parent forgets its members)"""
    r = await (t.add.s(1, 1) | chord([t.add.s(1), t.add.s(2)], t.tsum.s()) | t.add.s(10)).delay()
    assert await r.get(timeout=10) == 17
    body = r.parent
    header = body.parent
    assert isinstance(header, GroupResult)
    first = header.parent
    assert isinstance(first, AsyncResult)
    everything = [r.id, body.id, *(leaf.id for leaf in header.leaves()), first.id]
    assert [await AsyncResult(i).state() for i in everything] == [states.SUCCESS] * 5
    assert await GroupResult.restore(header.id) is not None
    await r.forget()
    assert [await AsyncResult(i).state() for i in everything] == [states.PENDING] * 5
    assert await GroupResult.restore(header.id) is None


async def test_group_forget_forgets_member_chains(worker):
    """mirrors celery t/unit/tasks/test_result.py::test_GroupResult::test_forget
    (each member is forgotten, and a member that is a chain forgets its earlier steps)"""
    g = await group(t.add.s(1, 1) | t.add.s(1), t.add.s(5, 5)).delay()
    assert isinstance(g, GroupResult)
    assert await g.get(timeout=10) == [3, 10]
    chained = g.results[0]
    assert isinstance(chained, AsyncResult) and chained.parent is not None
    everything = [chained.id, chained.parent.id, g.results[1].id]
    assert [await AsyncResult(i).state() for i in everything] == [states.SUCCESS] * 3
    await g.forget()
    assert [await AsyncResult(i).state() for i in everything] == [states.PENDING] * 3
    assert await GroupResult.restore(g.id) is None


# ---------------------------------------------------------------- get(): the parents' errors first
async def test_get_raises_the_first_steps_own_exception(worker):
    """mirrors celery t/unit/tasks/test_result.py::test_AsyncResult::test_propagates_for_parent"""
    r = await chain(t.fail.s(), t.add.s(1), t.add.s(2)).delay()
    with pytest.raises(ValueError, match="boom"):
        await r.get(timeout=10)
    first = r.parent.parent
    assert await first.state() == states.FAILURE and first.parent is None
    # Without propagate nothing is raised: the exception comes back as the value.
    exc = await r.get(timeout=5, propagate=False)
    assert isinstance(exc, ValueError) and str(exc) == "boom"


async def test_get_reports_a_failed_parent_even_without_its_own_record(worker):
    """mirrors celery t/unit/tasks/test_result.py::test_AsyncResult::test_propagates_for_parent
    (the parent's failure is raised before this result is waited for)"""
    r = await chain(t.fail.s(), t.add.s(1)).delay()
    with pytest.raises(ValueError):
        await r.get(timeout=10)
    await AsyncResult(r.id).forget()  # only the last step's record goes (say it expired first)
    assert await r.state() == states.PENDING
    started = time.monotonic()
    with pytest.raises(ValueError, match="boom"):
        await r.get(timeout=5)
    assert time.monotonic() - started < 1
    # Not following the parents (or not propagating) waits for this step alone, which never finishes.
    with pytest.raises(TimeoutError):
        await r.get(timeout=0.3, follow_parents=False)
    with pytest.raises(TimeoutError):
        await r.get(timeout=0.3, propagate=False)


async def test_parent_timeout_error_is_raised_as_the_tasks_own(worker):
    """mirrors celery t/unit/tasks/test_result.py::test_AsyncResult::test_raising (the parent's exception
    arrives with its own type and message): a first step that failed with TimeoutError is not
    mistaken for get() timing out or for Redis not answering"""
    r = await chain(upstream_timeout.s(), t.add.s(1)).delay()
    with pytest.raises(TimeoutError, match="upstream did not answer"):
        await r.get(timeout=10)
    await AsyncResult(r.id).forget()  # the parent alone can now say what happened
    with pytest.raises(TimeoutError, match="^upstream did not answer$"):
        await r.get(timeout=5)


async def test_get_raises_at_once_when_the_first_step_was_revoked(engine):
    """mirrors celery t/unit/tasks/test_result.py::test_AsyncResult::test_propagates_for_parent
    (REVOKED propagates like FAILURE): revoking a chain's queued first step means the later steps
    never run, and ``get()`` on the chain says so instead of waiting out its timeout"""
    r = await (t.add.s(1, 1) | t.add.s(1)).delay()  # no worker: the first step stays queued
    await r.parent.revoke()  # this step alone (it has no parent)
    assert await r.parent.state() == states.REVOKED and await r.state() == states.PENDING
    started = time.monotonic()
    with pytest.raises(TaskRevokedError):
        await r.get(timeout=5)
    assert time.monotonic() - started < 1


async def test_waiting_get_is_woken_by_a_parent_finishing(engine):
    """mirrors celery t/unit/tasks/test_result.py::test_AsyncResult::test_propagates_for_parent
    (Celery re-checks the parents on every poll; here a parent's completion wakes the waiter)"""
    r = await (t.add.s(1, 1) | t.add.s(1)).delay()
    waiting = asyncio.create_task(r.get(timeout=5))
    await asyncio.sleep(0.3)  # get() is now inside its one-second wait
    assert not waiting.done()
    revoked_at = time.monotonic()
    await r.parent.revoke()
    with pytest.raises(TaskRevokedError):
        await waiting
    # Well before the once-a-second re-check (due 0.7 s after the revoke): woken by the parent's id.
    assert time.monotonic() - revoked_at < 0.3


async def test_eager_parent_failure_propagates(worker):
    """mirrors celery t/unit/tasks/test_result.py::test_AsyncResult::test_propagates_for_parent
    (a failed EagerResult parent raises at once; a successful one lets get() wait as usual)"""
    failed_parent = await t.fail.apply()
    assert isinstance(failed_parent, EagerResult)
    orphan = AsyncResult(new_id(), parent=failed_parent)  # no such task: waiting would time out
    started = time.monotonic()
    with pytest.raises(ValueError, match="boom"):
        await orphan.get(timeout=5)
    assert time.monotonic() - started < 1
    real = await t.add.delay(40, 44)
    child = AsyncResult(real.id, parent=await t.add.apply(args=(1, 1)))
    assert await child.get(timeout=10) == 84


async def test_earliest_failed_parent_wins(worker):
    """mirrors celery t/unit/tasks/test_result.py::test_AsyncResult::test_propagates_for_parent
    (Celery walks the parents from the first one: the earliest failure is the one raised)"""
    earliest = await t.fail.delay()  # ValueError
    later = await t.not_json.delay()  # TypeError: its value is not JSON
    for done in (earliest, later):
        await done.get(timeout=10, propagate=False)
    assert isinstance(await later.result(), TypeError)
    last = await t.add.delay(1, 1)
    lineage = AsyncResult(last.id, parent=AsyncResult(later.id, parent=AsyncResult(earliest.id)))
    with pytest.raises(ValueError, match="boom"):
        await lineage.get(timeout=10)
    assert await lineage.get(timeout=10, follow_parents=False) == 2


async def test_chord_result_raises_the_failed_header_tasks_error(worker):
    """mirrors celery t/integration/test_canvas.py::test_chord::test_chord_on_error: a chord's result
    raises the failed header task's own exception; the body's record still holds the ChordError."""
    r = await chord([t.add.s(1, 2), t.fail.s()], t.tsum.s()).delay()
    with pytest.raises(ValueError, match="boom"):
        await r.get(timeout=10)
    chord_error = await r.result()
    assert isinstance(chord_error, ChordError) and "raised ValueError('boom')" in str(chord_error)
    assert isinstance(r.parent, GroupResult)
    assert isinstance(await r.parent.results[1].result(), ValueError)


@shared_task(name="compat.spawner", bind=True)
async def spawner(self: Any, n: int) -> list[str]:
    """Sends ``n`` tasks from inside itself (Celery records them as its children)."""
    return [(await t.add.delay(i, i)).id for i in range(n)]


async def test_children_are_the_tasks_a_task_sent_and_its_callbacks(worker):
    """mirrors celery t/unit/tasks/test_result.py::test_AsyncResult::test_children and
    t/integration/test_tasks.py::test_task_accepted/test_parent_ids (a subtask's parent_id is its sender)"""
    r = await spawner.delay(2)
    sent = await r.get(timeout=10)
    children = await r.children()
    assert [c.id for c in children] == sent
    assert [await c.get(timeout=10) for c in children] == [0, 2]
    first = await children[0].record()
    assert first["parent_id"] == r.id and first["root_id"] == r.id
    linked = t.add.s(1, 1)
    linked.link(t.add.s(10))
    lr = await linked.delay()
    assert await lr.get(timeout=10) == 2
    (callback,) = await lr.children()
    assert await callback.get(timeout=10) == 12
    assert await AsyncResult(new_id()).children() == []
