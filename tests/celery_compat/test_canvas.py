"""Canvas behaviour ported from Celery's own tests (t/integration/test_canvas.py and
t/unit/tasks/test_canvas.py), run against the real Redis and a real worker.

Each test's docstring names the Celery test it mirrors; where we differ on purpose, it says how.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from tasks_engine import AsyncResult, ChordError, EagerResult, GroupResult, chain, chord, group, signature
from tests.celery_compat import canvas_tasks as ct
from tests.celery_compat.canvas_tasks import (
    ExpectedException,
    add,
    add_to_all,
    collect_ids,
    counted,
    echoed,
    errback_new_style,
    errback_old_style,
    fail,
    identity,
    ids,
    redis_count,
    redis_echo,
    tsum,
)

TIMEOUT = 15


async def eventually(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def await_echo(expected: list[str], redis_key: str) -> None:
    await eventually(lambda: _has(redis_key, len(expected)))
    assert sorted(await echoed(redis_key)) == sorted(expected)


async def _has(redis_key: str, n: int) -> bool:
    return len(await echoed(redis_key)) >= n


async def await_count(n: int, redis_key: str, settle: float = 0.3) -> None:
    """The count reaches ``n``, and stays there a little while (nothing runs twice)."""

    async def reached() -> bool:
        return await counted(redis_key) >= n

    await eventually(reached)
    await asyncio.sleep(settle)
    assert await counted(redis_key) == n


def key() -> str:
    return str(uuid.uuid4())


# ---------------------------------------------------------------- nesting: chords in chords
async def test_nested_chord(worker):
    """mirrors celery t/integration/test_canvas.py::test_chord::test_nested_chord (its three canvases:
    chords as header members, the same as group | task, and groups of one nested four deep)"""
    c1 = chord(
        [chord([add.s(1, 2), add.s(3, 4)], add.s([5])), chord([add.s(6, 7)], add.s([10]))],
        add_to_all.s(["A"]),
    )
    assert await (await c1.delay()).get(timeout=TIMEOUT) == [[3, 7, 5, "A"], [13, 10, "A"]]
    c2 = group([group([add.s(1, 2), add.s(3, 4)]) | add.s([5]), group([add.s(6, 7)]) | add.s([10])]) | add_to_all.s(
        ["A"]
    )
    assert await (await c2.delay()).get(timeout=TIMEOUT) == [[3, 7, 5, "A"], [13, 10, "A"]]
    c3 = group([group([group([group([add.s(1, 2)]) | add.s([3])]) | add.s([4])]) | add.s([5])]) | add.s([6])
    assert await (await c3.delay()).get(timeout=TIMEOUT) == [[[[3, 3], 4], 5], 6]


async def test_group_in_center_of_chain(worker):
    """mirrors celery t/integration/test_canvas.py::test_chain::test_group_in_center_of_chain: a chord
    whose body is a chord whose body is a chain with a group in its middle (both chords must fire)"""
    t1 = chain(tsum.s(), group(add.s(8), add.s(16)), tsum.s() | add.s(32))
    t2 = chord([tsum.s(), tsum.s()], t1)
    t3 = chord([add.s(0, 1)], t2)
    assert await (await t3.apply_async()).get(timeout=TIMEOUT) == 60


async def test_chord_body_is_a_chord(worker):
    """mirrors celery t/integration/test_canvas.py::test_chain::test_chain_of_task_a_group_and_a_chord
    (a group followed by a group followed by a task: a chord whose body is a chord)"""
    c = add.si(1, 0)
    c = c | group(add.s(1), add.s(1))
    c = c | group(tsum.s(), tsum.s())
    c = c | tsum.s()
    assert await (await c.delay()).get(timeout=TIMEOUT) == 8
    direct = chord([add.si(1, 1), add.si(2, 2)], chord([tsum.s(), tsum.s()], tsum.s()))
    assert await (await direct.delay()).get(timeout=TIMEOUT) == 12


async def test_chain_of_chords_as_groups_chained_to_a_task_with_two_tasks(worker):
    """mirrors celery t/integration/test_canvas.py::test_chain::
    test_chain_of_chords_as_groups_chained_to_a_task_with_two_tasks and ::test_chain_of_chords_with_two_tasks"""
    c = add.si(1, 0) | group(add.s(1), add.s(1)) | tsum.s() | add.s(1) | group(add.s(1), add.s(1)) | tsum.s()
    assert await (await c.delay()).get(timeout=TIMEOUT) == 12
    c2 = add.si(1, 0) | group(add.s(1), add.s(1)) | tsum.s() | add.s(1) | chord(group(add.s(1), add.s(1)), tsum.s())
    assert await (await c2.delay()).get(timeout=TIMEOUT) == 12


async def test_chain_of_explicit_chords(worker):
    """mirrors celery t/integration/test_canvas.py::test_chain::test_chain_of_explicit_chords"""
    c1 = chain(
        chord(group(add.si(1, 0), add.si(1, 0)), tsum.s()),
        chord(group(add.s(1), add.s(1)), tsum.s()),
        chord(group(add.s(0), add.s(0)), tsum.s()),
    )
    c2 = chain(
        chord(group(add.s(10), add.s(10)), tsum.s()),
        chord(group(add.s(0), add.s(0)), tsum.s()),
        chord(group(add.s(1), add.s(1)), tsum.s()),
    )
    assert await (await (c1 | c2).delay()).get(timeout=TIMEOUT) == 178


async def test_chain_of_a_chord_and_three_tasks_and_a_group(worker):
    """mirrors celery t/integration/test_canvas.py::test_chain::test_chain_of_a_chord_and_three_tasks_and_a_group
    and ::test_chain_of_a_chord_and_a_group_with_two_tasks"""
    c = group(add.s(1, 1), add.s(1, 1)) | tsum.s() | add.s(1) | add.s(1) | add.s(1) | group(add.s(1), add.s(1))
    assert await (await c.delay()).get(timeout=TIMEOUT) == [8, 8]
    c2 = add.si(1, 0) | group(add.s(1), add.s(1)) | tsum.s() | add.s(1) | group(add.s(1), add.s(1))
    assert await (await c2.delay()).get(timeout=TIMEOUT) == [6, 6]


async def test_upgrade_to_chord_inside_chains(worker):
    """mirrors celery t/integration/test_canvas.py::test_chain::test_upgrade_to_chord_inside_chains (each
    step runs once)"""
    k = key()
    group1 = group(redis_echo.si("a", k), redis_echo.si("a", k))
    group2 = group(redis_echo.si("a", k), redis_echo.si("a", k))
    chain1 = chain(group1 | group2, redis_echo.si("a", k) | redis_echo.si("b", k))
    await (await chain1.apply_async()).get(timeout=TIMEOUT)
    await asyncio.sleep(0.2)
    assert await echoed(k) == ["a"] * 5 + ["b"]


@pytest.mark.parametrize("group_last_task", [False, True])
async def test_chaining_upgraded_chords_mixed_canvas_protocol_2(worker, group_last_task):
    """mirrors celery t/integration/test_canvas.py::test_chain::test_chaining_upgraded_chords_mixed_canvas_protocol_2
    (three groups in a row, then a task or a group of one: every task runs once)"""
    k, done = key(), key()
    last = redis_echo.si("Done", redis_key=done)
    c = chain(
        group([redis_echo.si("1", redis_key=k), redis_echo.si("2", redis_key=k)]),
        group([redis_echo.si(str(i), redis_key=k) for i in (3, 4, 5)]),
        group([redis_echo.si(str(i), redis_key=k) for i in (6, 7, 8, 9)]),
        group(last) if group_last_task else last,
    )
    await (await c.delay()).get(timeout=TIMEOUT)
    await await_echo(["Done"], done)
    await asyncio.sleep(0.2)
    assert sorted(await echoed(k)) == [str(i) for i in range(1, 10)]


async def test_chain_chord_chain_chord(worker):
    """mirrors celery t/integration/test_canvas.py::test_chord::test_chain_chord_chain_chord and
    ::test_chord_in_chords_with_chains"""
    c = chain(
        identity.si(1),
        chord(
            [identity.si(2), chain(identity.si(3), chord([identity.si(4), identity.si(5)], identity.si(6)))],
            identity.si(7),
        ),
    )
    assert await (await c.delay()).get(timeout=TIMEOUT) == 7
    inner = chain(add.si(1, 2), chord(group([add.si(1, 2), add.si(1, 2)]), add.si(1, 2)))
    c2 = chord(group([inner, inner.clone()]), add.si(2, 2))
    assert await (await c2.delay()).get(timeout=TIMEOUT) == 4


# ---------------------------------------------------------------- nesting: groups are flattened
async def test_nested_group(worker):
    """mirrors celery t/integration/test_canvas.py::test_result_set::test_nested_group and
    ::test_nested_group_group (groups inside groups are unrolled, in declaration order)"""
    c = group(add.si(1, 10), group(add.si(1, 100), group(add.si(1, 1000), add.si(1, 2000))))
    res = await c.delay()
    assert await res.get(timeout=TIMEOUT) == [11, 101, 1001, 2001]
    assert [len(c.tasks), len(res.results)] == [4, 4]
    lone = group(group(identity.s(42), identity.s(42)))
    assert await (await lone.delay()).get(timeout=TIMEOUT) == [42, 42]


async def test_nested_chord_group(worker):
    """mirrors celery t/integration/test_canvas.py::test_chord::test_nested_chord_group and
    ::test_error_propagates_to_chord_from_group (a group inside a chord header is unrolled into it)"""
    sig = chord((group(identity.s(42), identity.s(42)),), identity.s())
    assert await (await sig.delay()).get(timeout=TIMEOUT) == [42, 42]
    bad = chord((group(identity.si(42), fail.s()),), identity.s())
    with pytest.raises(ExpectedException):
        await (await bad.delay()).get(timeout=TIMEOUT)


async def test_nested_chord_group_chain_group_tail(worker):
    """mirrors celery t/integration/test_canvas.py::test_chord::test_nested_chord_group_chain_group_tail (a
    chain ending in a group is not unrolled: its slot holds a list) and
    ::test_result_set::test_group_result_not_has_cache"""
    sig = chord(group(chain(identity.s(42), group(identity.s(), identity.s()))), identity.s())
    assert await (await sig.delay()).get(timeout=TIMEOUT) == [[42, 42]]
    ct_ = chain(identity.si(5), group([identity.si(3), identity.si(4)]))
    res = await group(identity.si(1), identity.si(2), ct_).delay()
    assert await res.get(timeout=TIMEOUT) == [1, 2, [3, 4]]


async def test_nested_group_chord_counting_mixed(worker):
    """mirrors celery t/integration/test_canvas.py::test_result_set::test_nested_group_chord_counting_mixed
    and ::test_nested_group_chord_counting_chord"""
    n = 8
    child_chord = chord(
        (
            identity.si(42),
            chain((identity.si(42),) * n),
            group((identity.si(42),) * n),
            chord((identity.si(42),) * n, identity.si(1337)),
        ),
        identity.s(),
    )
    res = await group((child_chord,)).delay()
    assert await res.get(timeout=TIMEOUT) == [[42, 42, *((42,) * n), 1337]]
    inner = chord((identity.si(1337),) * n, identity.si(31337))
    res2 = await group((chord((inner,), identity.s()),)).delay()
    assert await res2.get(timeout=TIMEOUT) == [[31337]]


async def test_nested_chain_group_mid_and_last(worker):
    """mirrors celery t/integration/test_canvas.py::test_chain::test_nested_chain_group_mid and
    ::test_nested_chain_group_last"""
    mid = chain(identity.s(42), group(identity.s(), identity.s()), identity.s())
    assert await (await mid.delay()).get(timeout=TIMEOUT) == [42, 42]
    last = chain(identity.s(42), group(identity.s(), identity.s()))
    assert await (await last.delay()).get(timeout=TIMEOUT) == [42, 42]


async def test_empty_groups_are_skipped_in_chain(worker):
    """mirrors celery t/unit/tasks/test_canvas.py::test_chain::test_empty_groups_are_skipped_in_chain and
    ::test_empty_group_body_is_skipped_when_chain_upgrades_to_chord (we differ on purpose: chain() stays a
    chain, where Celery's can return the group itself; the result is the same GroupResult)"""
    c = chain(group([add.s(2, 2), add.s(4, 4)]), group(), group())
    result = await c.apply_async()
    assert isinstance(result, GroupResult) and len(result.results) == 2
    assert await result.get(timeout=TIMEOUT) == [4, 8]
    c2 = add.s(1, 1) | group([add.s(2), add.s(3)]) | group()  # Celery's add.s(2, 2): our arity check refuses
    result2 = await c2.apply_async()
    assert isinstance(result2, GroupResult) and len(result2.results) == 2
    between = await chain(add.s(1, 1), group(), add.s(10)).delay()  # dropped between two steps
    assert await between.get(timeout=TIMEOUT) == 12


# ---------------------------------------------------------------- signatures
async def test_on_error_returns_the_signature(worker):
    """mirrors celery t/unit/tasks/test_canvas.py::test_Signature::test_signature_on_error_adds_error_callback
    and t/integration/test_canvas.py::test_chain::test_chain_on_error (``on_error`` returns the signature,
    so applying it runs the chain; ``link``/``link_error`` return the callback)"""
    eb = errback_old_style.s()
    sig = signature("celery_canvas.identity").on_error(eb)
    assert sig.task == "celery_canvas.identity" and sig.options["link_error"] == [eb]
    cb = identity.s()
    assert add.s(1, 1).link(cb) is cb and add.s(1, 1).link_error(eb) is eb
    # Celery's last step is add.s(3, 4), which our arity check refuses at apply time (it never runs there)
    c1 = chain(add.s(1, 2), fail.s(), add.s(3)).on_error(errback_old_style.s())
    assert isinstance(c1, type(chain(add.s(1, 2))))
    res = await c1.delay()
    with pytest.raises(ExpectedException):
        await res.get(timeout=TIMEOUT)
    with pytest.raises(ExpectedException):
        await res.parent.get(timeout=TIMEOUT)
    await await_count(1, redis_key=res.parent.id)  # the errback ran, for the failing step


async def test_link_and_link_error_dedupe(worker):
    """mirrors celery t/unit/tasks/test_canvas.py::test_Signature::test_link, ::test_link_error and
    ::test_link_on_scalar (linking an equal signature twice keeps one; the callback runs once)"""
    k = key()
    x = add.s(1, 1)
    x.link(redis_count.si(k))
    x.link(redis_count.si(k))
    x.link_error(errback_old_style.s())
    x.link_error(errback_old_style.s())
    assert len(x.options["link"]) == 1 and len(x.options["link_error"]) == 1
    x.link(redis_count.si(key()))
    assert len(x.options["link"]) == 2
    await (await x.delay()).get(timeout=TIMEOUT)
    await await_count(1, redis_key=k)


def test_freezing_args_set_in_options(engine):
    """mirrors celery t/unit/tasks/test_canvas.py::test_Signature::test_freezing_args_set_in_options (we
    differ on purpose: ``chord`` and ``group_index`` are accepted but not stored, the engine plans those)"""
    sig = add.s(1, 1)
    result = sig.freeze(
        _id="_id", group_id="group_id", chord="chord", root_id="root_id", parent_id="parent_id", group_index=1
    )
    assert result.id == "_id"
    assert [sig.options[k] for k in ("task_id", "group_id", "root_id", "parent_id")] == [
        "_id",
        "group_id",
        "root_id",
        "parent_id",
    ]
    positional = add.s(2, 2)
    assert positional.freeze("my-id").id == "my-id" == positional.id
    assert positional.freeze("other").id == "my-id"  # an id once given is kept


def test_freezing_chain_sets_id_of_last_task(engine):
    """mirrors celery t/integration/test_canvas.py::test_chain::test_freezing_chain_sets_id_of_last_task and
    t/unit/tasks/test_canvas.py::test_chain::test_chain_id_matches_result_after_freeze,
    ::test_chain_id_with_explicit_id_preserved"""
    last_task = add.s(2).set(task_id="42")
    c = add.s(4) | last_task
    assert c.id is None
    c.freeze(last_task.id)
    assert c.id == last_task.id
    c2 = add.s(1, 1) | add.s(2) | add.s(3)
    result = c2.freeze()
    assert c2.id is not None and c2.id == result.id
    c3 = add.s(1, 1) | add.s(2)
    result3 = c3.freeze("my-explicit-id")
    assert c3.id == "my-explicit-id" == result3.id


async def test_chain_id_is_set_after_apply(worker):
    """mirrors celery t/unit/tasks/test_canvas.py::test_chain::test_prepare_steps_set_last_task_id_to_chain
    (applying a chain sets its ``id`` to its last step's; we differ on purpose in one thing: applying it
    again still makes new calls, its ids are not reused)"""
    c = add.s(1, 1) | add.s(2)
    assert c.id is None
    r = await c.delay()
    assert c.id == r.id
    assert await r.get(timeout=TIMEOUT) == 4
    r2 = await c.delay()
    assert r2.id != r.id and c.id == r2.id


async def test_chain_parent_ids(worker):
    """mirrors celery t/integration/test_canvas.py::test_chain::test_parent_ids"""
    num = 10
    c = chain(ids.si(i=i) for i in range(num))
    c.freeze()
    res = await c.delay()
    await res.get(timeout=TIMEOUT)
    root = res
    while root.parent:
        root = root.parent
    node, i = res, num - 1
    while node:
        root_id, parent_id, value = await node.get(timeout=TIMEOUT)
        assert value == i and root_id == root.id
        if node.parent:
            assert parent_id == node.parent.id
        node, i = node.parent, i - 1


@pytest.mark.parametrize("form", ["chain", "or"])
async def test_chord_parent_ids(worker, form):
    """mirrors celery t/integration/test_canvas.py::test_chord::test_parent_ids and ::test_parent_ids__OR
    (the chord body is started by one of the header tasks: that is its parent)"""
    root = ids.si(i=1)
    expected_root_id = root.freeze().id
    if form == "chain":
        g = chain(
            root,
            ids.si(i=2),
            chord(group(ids.si(i=i) for i in range(3, 20)), chain(collect_ids.s(i=50) | ids.si(i=51))),
        )
    else:
        g = root | ids.si(i=2) | group(ids.si(i=i) for i in range(3, 20)) | collect_ids.s(i=50) | ids.si(i=51)
    res = await g.delay()
    assert isinstance(res.parent, AsyncResult) and isinstance(res.parent.parent, GroupResult)
    header, second = res.parent.parent, res.parent.parent.parent
    assert isinstance(second, AsyncResult) and isinstance(second.parent, AsyncResult)
    root_id, parent_id, value = await res.get(timeout=TIMEOUT)
    assert (root_id, parent_id, value) == (expected_root_id, res.parent.id, 51)
    prev, (root_id, parent_id, value) = await res.parent.get(timeout=TIMEOUT)
    assert value == 50 and root_id == expected_root_id
    assert parent_id in [r.id for r in header.results]  # started by one of the chord header tasks
    for p_root, p_parent, _ in prev:
        assert (p_root, p_parent) == (expected_root_id, second.id)
    assert await second.get(timeout=TIMEOUT) == [expected_root_id, second.parent.id, 2]
    assert await second.parent.get(timeout=TIMEOUT) == [expected_root_id, None, 1]


async def test_group_parent_ids(worker):
    """mirrors celery t/integration/test_canvas.py::test_result_set::test_parent_ids"""
    g = ids.si(i=1) | ids.si(i=2) | group(ids.si(i=i) for i in range(2, 12))
    res = await g.delay()
    expected_root_id, expected_parent_id = res.parent.parent.id, res.parent.id
    for i, (root_id, parent_id, value) in enumerate(await res.get(timeout=TIMEOUT)):
        assert (root_id, parent_id, value) == (expected_root_id, expected_parent_id, i + 2)


async def test_apply_sets_root_id_and_parent_id(engine):
    """mirrors celery t/unit/tasks/test_tasks.py::test_apply_task::test_apply_single_task_ids and
    ::test_apply_nested_parent_child_relationship (eager: root_id is the call's own id, or its caller's root)"""
    r = await ids.apply(kwargs={"i": 1})
    assert isinstance(r, EagerResult)
    root_id, parent_id, _ = await r.get()
    assert (root_id, parent_id) == (r.id, None)
    nested = await ct.apply_nested.apply()
    outer_id, (child_id, child_root, child_parent, (grand_root, grand_parent, _)) = await nested.get()
    assert outer_id == nested.id
    assert child_root == nested.id and child_parent == nested.id
    assert grand_root == nested.id and grand_parent == child_id


# ---------------------------------------------------------------- callbacks
async def test_callback_called_by_group(worker):
    """mirrors celery t/integration/test_canvas.py::test_result_set::test_callback_called_by_group and
    t/unit/tasks/test_canvas.py::test_group::test_link (linked to the first member only, as an immutable
    clone: it runs once, with nothing prepended)"""
    k, msg = key(), str(uuid.uuid4())
    callback = redis_echo.s(msg, redis_key=k)
    group_sig = group(identity.si(42), identity.si(1337))
    linked = group_sig.link(callback)
    assert linked.immutable and not callback.immutable
    assert group_sig.tasks[0].options["link"] == [linked] and "link" not in group_sig.tasks[1].options
    res = await group_sig.delay()
    assert await res.get(timeout=TIMEOUT) == [42, 1337]
    await await_echo([msg], k)
    await asyncio.sleep(0.3)
    assert await echoed(k) == [msg]


async def test_cannot_link_on_group_apply_async(engine):
    """mirrors celery t/unit/tasks/test_canvas.py::test_group::test_cannot_link_on_group and
    ::test_cannot_link_error_on_group"""
    x = group([add.s(2, 2), add.s(4, 4)])
    with pytest.raises(TypeError):
        await x.apply_async(link=add.s(2, 2))
    with pytest.raises(TypeError):
        await x.apply_async(link_error=add.s(2, 2))


# ---------------------------------------------------------------- errbacks
@pytest.mark.parametrize("fail_first", [True, False])
async def test_errback_called_by_group(worker, fail_first):
    """mirrors celery t/integration/test_canvas.py::test_result_set::test_errback_called_by_group_fail_first
    and ::test_errback_called_by_group_fail_last"""
    k, msg = key(), str(uuid.uuid4())
    group_sig = group(fail.s(), identity.si(42)) if fail_first else group(identity.si(42), fail.s())
    group_sig.link_error(redis_echo.si(msg, redis_key=k))
    res = await group_sig.delay()
    with pytest.raises(ExpectedException):
        await res.get(timeout=TIMEOUT)
    await await_echo([msg], k)


@pytest.mark.parametrize("errback_task", [errback_old_style, errback_new_style])
async def test_mutable_errback_called_by_group(worker, errback_task):
    """mirrors celery t/integration/test_canvas.py::test_result_set::test_mutable_errback_called_by_group and
    t/unit/tasks/test_canvas.py::test_group::test_link_error_preserves_mutable_errback"""
    fail_sig = fail.s()
    fail_sig_id = fail_sig.freeze().id
    group_sig = group(fail_sig, identity.si(42))
    linked = group_sig.link_error(errback_task.s())
    assert len(linked) == 2 and not any(s.immutable for s in linked)
    res = await group_sig.delay()
    with pytest.raises(ExpectedException):
        await res.get(timeout=TIMEOUT)
    await await_count(1, redis_key=fail_sig_id)


async def test_errback_called_by_group_fail_multiple(worker):
    """mirrors celery t/integration/test_canvas.py::test_result_set::test_errback_called_by_group_fail_multiple
    (once per failing member)"""
    k = key()
    group_sig = group(*(identity.si(42) for _ in range(6)), *(fail.s() for _ in range(7)))
    group_sig.link_error(redis_count.si(redis_key=k))
    res = await group_sig.delay()
    with pytest.raises(ExpectedException):
        await res.get(timeout=TIMEOUT)
    await await_count(7, redis_key=k)


async def test_chord_on_error(worker):
    """mirrors celery t/integration/test_canvas.py::test_chord::test_chord_on_error (get() raises the header
    task's exception; the body's errback runs once, with the body's id, whose record holds a ChordError
    naming the failed header task; the header's successful results are kept)"""
    body = identity.s().on_error(errback_old_style.s())
    c1 = chord(header=[add.s(1, 2), add.s(3, 4), fail.s()], body=body)
    res = await c1.delay()
    with pytest.raises(ExpectedException):
        await res.get(timeout=TIMEOUT)
    await await_count(1, redis_key=res.id)
    stored = await res.result()
    failed_id = res.parent.results[2].id
    assert isinstance(stored, ChordError) and failed_id in str(stored)
    assert [await r.get(timeout=TIMEOUT) for r in res.parent.results[:2]] == [3, 7]
    assert (await AsyncResult(res.id).record())["state"] == "FAILURE"


async def test_errback_called_by_chord_from_simple(worker):
    """mirrors celery t/integration/test_canvas.py::test_chord::test_immutable_errback_called_by_chord_from_simple
    and ::test_mutable_errback_called_by_chord_from_simple (header failure: once, with the body's id; body
    failure: once, with the body's id)"""
    for chord_sig in (chord((fail.s(),), identity.s()), chord((identity.si(42),), fail.s())):
        k, msg = key(), str(uuid.uuid4())
        chord_sig.link_error(redis_echo.si(msg, redis_key=k))
        chord_sig.link_error(errback_old_style.s())
        expected_key = chord_sig.body.freeze().id
        res = await chord_sig.delay()
        with pytest.raises(ExpectedException):
            await res.get(timeout=TIMEOUT)
        await await_echo([msg], k)
        await await_count(1, redis_key=expected_key)


async def test_errback_called_by_chord_from_group_fail_multiple(worker):
    """mirrors celery t/integration/test_canvas.py::test_chord::
    test_immutable_errback_called_by_chord_from_group_fail_multiple (a failing header group: once, the errback
    is on the body; a failing body group: once per failing member)"""
    n_fail = 5
    child_sig = group(*(identity.si(42) for _ in range(4)), *(fail.s() for _ in range(n_fail)))
    k = key()
    chord_sig = chord((child_sig,), identity.s())
    chord_sig.link_error(redis_count.si(redis_key=k))
    with pytest.raises(ExpectedException):
        await (await chord_sig.delay()).get(timeout=TIMEOUT)
    await await_count(1, redis_key=k)
    k2 = key()
    chord_sig = chord((identity.si(42),), child_sig.clone())
    chord_sig.link_error(redis_count.si(redis_key=k2))
    with pytest.raises(ExpectedException):
        await (await chord_sig.delay()).get(timeout=TIMEOUT)
    await await_count(n_fail, redis_key=k2)


async def test_nested_chord_header_link_error(worker):
    """mirrors celery t/integration/test_canvas.py::test_chord::test_nested_chord_header_link_error (the
    inner chord fails: the outer body never runs, the errback runs once)"""
    errback_key, body_key = key(), key()
    chord_inner = chord([identity.si("t1"), fail.si()], identity.si("t2 (body)"))
    chord_outer = chord(group([identity.si("t3"), chord_inner]), redis_echo.si("chord body called", body_key))
    chord_outer.link_error(redis_echo.si("errback called", redis_key=errback_key))
    res = await chord_outer.delay()
    with pytest.raises(ChordError):  # the failed header task is the inner chord: its ChordError, as Celery
        await res.get(timeout=TIMEOUT)
    await await_echo(["errback called"], errback_key)
    await asyncio.sleep(0.5)
    assert await echoed(errback_key) == ["errback called"]
    assert await echoed(body_key) == []


# ---------------------------------------------------------------- error propagation
async def test_error_propagates_to_chord_from_simple_and_chain(worker):
    """mirrors celery t/integration/test_canvas.py::test_chord::test_error_propagates_to_chord_from_simple
    and ::test_error_propagates_to_chord_from_chain (header or body, a task or a chain failing midway)"""
    mid = chain(identity.si(42), fail.s(), identity.si(42))
    for chord_sig in (
        chord((fail.s(),), identity.s()),
        chord((identity.si(42),), fail.s()),
        chord((mid,), identity.s()),
        chord((identity.si(42),), mid.clone()),
    ):
        res = await chord_sig.delay()
        with pytest.raises(ExpectedException):
            await res.get(timeout=TIMEOUT)


async def test_error_propagates_from_chord2(worker):
    """mirrors celery t/integration/test_canvas.py::test_chord::test_error_propagates_from_chord2 and
    ::test_error_propagates_to_chord_from_group (body group)"""
    res = await (add.s(1, 1) | add.s(1) | group(add.s(1), fail.s())).delay()
    with pytest.raises(ExpectedException):
        await res.get(timeout=TIMEOUT)
    res2 = await chord((identity.si(42),), group(identity.si(42), fail.s())).delay()
    with pytest.raises(ExpectedException):
        await res2.get(timeout=TIMEOUT)


@pytest.mark.parametrize("body", ["task", "chain", "chain_of_chain"])
async def test_chord_error_propagation_with_different_body_types(worker, body):
    """mirrors celery t/integration/test_canvas.py::test_chord::test_chord_error_propagation_with_different_body_types
    and ::test_chord_error_in_nested_chain_does_not_crash (every step after the chord raises the header
    task's exception, and keeps the ChordError in its record)"""
    bodies = {
        "task": lambda: identity.s(),
        "chain": lambda: chain(identity.s(), identity.s()),
        "chain_of_chain": lambda: chain(chain(identity.s(), identity.s()), identity.s()),
    }
    failing = chain(group([add.si(15, 7), fail.si()]), bodies[body]())
    result = await failing.apply_async()
    with pytest.raises(ExpectedException):
        await result.get(timeout=TIMEOUT)
    assert isinstance(await result.result(), ChordError)
    nested = chain(chain(group(add.si(1, 1), fail.si()), identity.s()), identity.s())
    with pytest.raises(ExpectedException):
        await (await nested.apply_async()).get(timeout=TIMEOUT)


async def test_chord_error_in_a_chord_body_that_is_a_chord(worker):
    """mirrors celery t/integration/test_canvas.py::test_chord::test_error_propagates_to_chord_from_simple,
    for a chord whose body is a chord: either header failing fails the result with that task's error"""
    outer_fails = chord([add.si(1, 1), fail.si()], chord([tsum.s(), tsum.s()], tsum.s()))
    res = await outer_fails.delay()
    with pytest.raises(ExpectedException):
        await res.get(timeout=TIMEOUT)
    inner_fails = chord([add.si(1, 1)], chord([tsum.s(), fail.s()], tsum.s()))
    res2 = await inner_fails.delay()
    with pytest.raises(ExpectedException):
        await res2.get(timeout=TIMEOUT)
    assert isinstance(await res2.result(), ChordError)


async def test_eager_chord_raises_the_header_error(engine):
    """mirrors celery t/unit/tasks/test_canvas.py::test_chord::test_apply (eager: the header's own error;
    we differ on purpose: apply() returns the failed result, whose get() raises it, where Celery's
    chord.apply() raises at once)"""
    res = await chord([add.s(1, 1), fail.s()], identity.s()).apply()
    with pytest.raises(ExpectedException):
        await res.get()
    assert isinstance(await res.result(), ChordError)
    later = await chain(chord([fail.s()], identity.s()), identity.s()).apply()
    with pytest.raises(ExpectedException):
        await later.get()
    nested = await chord([add.s(1, 1), add.s(2, 2)], chord([tsum.s(), tsum.s()], tsum.s())).apply()
    assert await nested.get() == 12
