"""Issue 4: canvas — signatures, chain, group, chord, links — durable in Redis and exactly-once.

Every test talks to the real Redis; workers are in-process (on the test loop) or real
``tasks-engine worker`` subprocesses where a crash or a pause must be real.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
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
    signature,
    states,
)
from tasks_engine.runtime.worker import Worker
from tasks_engine.store import Enqueue, get_broker
from tests import sample_tasks as t

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- helpers
async def log_of(key: str) -> list[str]:
    broker = get_broker()
    return [x.decode() for x in await broker.redis.lrange(broker.key("test-log", key), 0, -1)]


async def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)


async def job_gone(task_id: str) -> bool:
    """The job's message is deleted and it is neither queued nor running (its completion was written)."""
    broker = get_broker()
    return (
        not await broker.redis.exists(broker.key("msg", task_id))
        and await broker.redis.zscore(broker.key("active"), task_id) is None
    )


# ---------------------------------------------------------------- signatures
def test_partial_and_immutable_merge() -> None:
    s = t.add.s(2)
    merged = s.clone(args=(4,), kwargs={"bar": 2})
    assert merged.args == (4, 2) and merged.kwargs == {"bar": 2}
    assert s.args == (2,) and s.kwargs == {}  # the original is untouched
    si = t.add.si(2, 2, foo=1)
    kept = si.clone(args=(4,), kwargs={"bar": 2})
    assert kept.args == (2, 2) and kept.kwargs == {"foo": 1} and kept.immutable
    same = si.merged((4,), {"bar": 2})
    assert same.args == (2, 2) and same.kwargs == {"foo": 1}


def test_signature_by_name_set_clone_and_json_round_trip() -> None:
    s = signature("demo.add", args=(1,), kwargs={"y": 2}, countdown=5, queue="q1")
    assert (s.task, s.args, s.kwargs) == ("demo.add", (1,), {"y": 2})
    assert s.options == {"countdown": 5, "queue": "q1"}
    assert s.set(queue="q2", priority=1) is s and s.options["queue"] == "q2"
    c = s.clone(priority=3)
    assert c is not s and c.options["priority"] == 3 and s.options["priority"] == 1
    c.kwargs["y"] = 99
    assert s.kwargs == {"y": 2}
    s.freeze()
    assert "task_id" not in s.clone().options  # a clone is a new call
    data = json.loads(json.dumps(s.to_dict()))
    assert signature(data) == s
    with pytest.raises(TypeError, match="unknown option"):
        t.add.s(1, 1).set(no_such_option=1)


async def test_signature_by_name_set_queue_and_countdown(engine):
    broker = get_broker()
    r = await signature("demo.add", args=(1,), kwargs={"y": 2}).set(queue="canvas-q", countdown=0.6).delay()
    assert await broker.redis.zscore(broker.key("delayed"), r.id) is not None
    w = Worker(queues=["canvas-q"], beat=False)
    await w.start(handle_signals=False)
    try:
        started = time.monotonic()
        assert await r.get(timeout=10) == 3
        assert time.monotonic() - started > 0.3
        assert (await r.record())["worker"] == w.id
    finally:
        await w.stop(grace=1)


async def test_delaying_one_signature_twice_gives_two_calls(worker):
    s = t.add.s(1, 2)
    r1, r2 = await s.delay(), await s.delay()
    assert r1.id != r2.id
    assert [await r1.get(timeout=5), await r2.get(timeout=5)] == [3, 3]
    s.freeze()  # an explicitly frozen signature keeps its id
    assert (await s.delay()).id == s.id


# ---------------------------------------------------------------- chain
async def test_chain_pipe_and_chain_function(worker):
    r = await (t.add.s(4, 4) | t.add.s(8) | t.add.s(16)).delay()
    assert isinstance(r, AsyncResult)
    assert await r.get(timeout=10) == 32
    assert await r.parent.get(timeout=5) == 16
    assert await r.parent.parent.get(timeout=5) == 8
    assert r.parent.parent.parent is None
    r2 = await chain(t.add.s(1, 1), t.add.s(1), t.add.si(10, 10)).apply_async()
    assert await r2.get(timeout=10) == 20 and await r2.parent.get(timeout=5) == 3
    # kwargs merge: the parent result is prepended, kwargs stay keyword
    r3 = await (t.add.s(1, 1) | t.add.s(y=5)).delay()
    assert await r3.get(timeout=10) == 7
    # chain(generator), apply_async with args for the first step
    r4 = await chain(t.add.s(i) for i in (1, 2, 3)).apply_async((10,))
    assert await r4.get(timeout=10) == 16


async def test_bad_later_steps_and_callbacks_fail_at_apply_not_in_a_worker(engine):
    """Steps enqueued later by a worker are checked when the workflow is applied; nothing is enqueued."""
    broker = get_broker()
    with pytest.raises(TypeError, match=r"demo.add.*too many positional arguments"):
        await (t.add.s(1, 1) | t.add.s(1, 2)).delay()  # add(parent, 1, 2)
    with pytest.raises(TypeError, match=r"demo.add.*argument 'y'"):
        await (t.add.s(1, 1) | t.add.s("x")).delay()
    with pytest.raises(TypeError, match=r"demo.add_to_all.*missing a required argument: 'n'"):
        await (t.add.s(1, 1) | chord([t.add.s(1)], t.add_to_all.s())).delay()
    with pytest.raises(TypeError, match=r"demo.add_to_all.*chord body.*missing a required argument: 'n'"):
        await chord([t.add.s(1, 1)], t.add_to_all.s()).delay()
    with pytest.raises(TypeError, match=r"demo.add.*too many positional arguments"):
        await t.add.apply_async((1, 1), link=t.add.s(1, 2))
    assert await broker.redis.zcard(broker.key("q", "default")) == 0


async def test_chain_failure_stops_and_fails_every_later_step(worker):
    r = await chain(t.add.s(1, 2), t.fail.s(), t.add.s(3), t.add.s(4)).delay()
    with pytest.raises(ValueError, match="boom"):
        await r.get(timeout=10)
    failed = r.parent.parent
    assert await failed.state() == states.FAILURE
    assert await r.parent.state() == states.FAILURE and await r.state() == states.FAILURE
    for later in (r, r.parent):
        info = await later.record()
        assert (info["exc_type"], info["exc_message"]) == ("ValueError", "boom")
    assert await failed.parent.get(timeout=5) == 3
    await asyncio.sleep(0.2)
    broker = get_broker()
    assert await broker.redis.zcard(broker.key("q", "default")) == 0  # nothing left to run


async def test_chain_with_retrying_step_keeps_going(worker):
    r = await (t.add.s(1, 1) | t.flaky.s("chain-flaky", 2) | t.add.s(10)).delay()
    assert await r.get(timeout=10) == 13
    assert (await r.parent.record())["retries"] == 2


async def test_revoke_chain_result_revokes_the_remaining_steps(worker):
    r = await chain(t.sleep.si(0.4), t.add.si(1, 1), t.add.s(2)).delay()
    await wait_until(lambda: _started(r.parent.parent.id))
    await r.revoke()
    with pytest.raises(TaskRevokedError):
        await r.get(timeout=5)
    assert await r.parent.parent.get(timeout=5) == 0.4  # already running: not terminated
    assert await r.parent.state() == states.REVOKED


async def test_revoke_chain_result_through_a_chord(worker):
    r = await (t.sleep.si(0.4) | chord([t.add.si(1, 1), t.add.si(2, 2)], t.tsum.s()) | t.add.s(1)).delay()
    header = r.parent.parent
    assert isinstance(header, GroupResult)
    first = header.parent
    assert isinstance(first, AsyncResult), "the chord header's GroupResult leads back to the first step"
    await wait_until(lambda: _started(first.id))
    await r.revoke()
    with pytest.raises(TaskRevokedError):
        await r.get(timeout=5)
    assert await first.get(timeout=5) == 0.4  # already running: not terminated
    await asyncio.sleep(0.3)
    assert [await h.state() for h in header.results] == [states.REVOKED, states.REVOKED]
    assert await r.parent.state() == states.REVOKED


async def _started(task_id: str) -> bool:
    return await AsyncResult(task_id).state() == states.STARTED


# ---------------------------------------------------------------- group
async def test_group_results_in_declaration_order_and_helpers(worker):
    g = group(t.sleep.s(0.3), t.sleep.s(0.01), t.add.s(2, 2))
    gr = await g.delay()
    assert isinstance(gr, GroupResult) and len(gr) == 3
    assert await gr.get(timeout=10) == [0.3, 0.01, 4]
    assert await gr.join(timeout=1) == [0.3, 0.01, 4]
    assert await gr.completed_count() == 3
    assert await gr.ready() and await gr.successful() and not await gr.failed()
    # one iterable, a generator too
    gr2 = await group(t.add.s(i, i) for i in range(5)).delay()
    assert await gr2.get(timeout=10) == [0, 2, 4, 6, 8]
    gr3 = await group([t.add.s(1, 1), t.add.s(2, 2)]).apply_async()
    assert await gr3.get(timeout=10) == [2, 4]


async def test_group_failure_and_completed_count(worker):
    gr = await group(t.add.s(1, 1), t.fail.s(), t.add.s(2, 2)).delay()
    with pytest.raises(ValueError, match="boom"):
        await gr.get(timeout=10)
    await wait_until(gr.ready)
    assert await gr.failed() and not await gr.successful()
    assert await gr.completed_count() == 2
    values = await gr.get(timeout=5, propagate=False)
    assert values[0] == 2 and isinstance(values[1], ValueError) and values[2] == 4


async def test_group_revoke_and_empty_group(engine):
    gr = await group(t.add.s(1, 1), t.add.s(2, 2)).delay()  # no worker: both wait in the queue
    await gr.revoke()
    assert await gr.ready() and not await gr.successful()
    with pytest.raises(TaskRevokedError):
        await gr.get(timeout=1)
    empty = await group().delay()
    assert await empty.get(timeout=1) == []
    assert await (await group([]).apply()).get() == []


async def test_group_restore_across_processes(worker, prefix):
    mine = await group(t.add.s(i, 1) for i in range(3)).delay()
    assert await mine.get(timeout=10) == [1, 2, 3]
    script = (
        "import asyncio, sys, json\n"
        "from tasks_engine import configure, group, GroupResult\n"
        "from tasks_engine.core.config import EngineSettings\n"
        "import tests.sample_tasks as t\n"
        "async def main():\n"
        "    configure(EngineSettings(key_prefix=sys.argv[1], beat_enabled=False))\n"
        "    theirs = await GroupResult.restore(sys.argv[2])\n"
        "    got = await theirs.get(timeout=10)\n"
        "    new = await group(t.add.s(i, 10) for i in range(4)).delay()\n"
        "    print(json.dumps({'got': got, 'ids': [r.id for r in theirs], 'new': new.id}))\n"
        "asyncio.run(main())\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        prefix,
        mine.id,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    data = json.loads(out.decode().strip().splitlines()[-1])
    assert data["got"] == [1, 2, 3] and data["ids"] == [r.id for r in mine]
    restored = await GroupResult.restore(data["new"])
    assert restored is not None
    assert await restored.get(timeout=10) == [10, 11, 12, 13]
    assert await GroupResult.restore("no-such-group") is None


# ---------------------------------------------------------------- chord
async def test_chord_both_forms_and_header_order(worker):
    r = await chord(t.sleep.s(x) for x in (0.3, 0.01, 0.1))(t.identity.s())
    assert await r.get(timeout=10) == [0.3, 0.01, 0.1]  # header order, not finishing order
    r2 = await chord([t.add.s(1, 1), t.sleep.s(0.2), t.add.s(3, 3)], t.identity.s()).delay()
    assert await r2.get(timeout=10) == [2, 0.2, 6]
    assert isinstance(r2.parent, GroupResult) and await r2.parent.get(timeout=1) == [2, 0.2, 6]
    r3 = await chord(t.identity.si(i) for i in range(10))(t.identity.s())
    assert await r3.get(timeout=10) == list(range(10))
    r4 = await chord([t.add.s(2, 5)], t.add_to_all.s(9)).delay()
    assert await r4.get(timeout=10) == [16]


async def test_chord_empty_header_calls_body_with_empty_list(worker):
    r = await chord([], t.identity.s()).delay()
    assert await r.get(timeout=10) == []
    r2 = await chord([])(t.tsum.s())
    assert await r2.get(timeout=10) == 0


async def test_chord_header_failure_body_never_runs(worker):
    header = [t.add.s(1, 1), t.fail.s(), t.add.s(2, 2)]
    body = t.count_body.s("body")
    body.link_error(t.errback.s())
    body.link_error(t.errback_full.s())
    r = await chord(header, body).delay()
    with pytest.raises(ValueError, match="boom"):  # the failed header task's own exception, as Celery
        await r.get(timeout=10)
    failed_id = r.parent.results[1].id
    stored = await r.result()  # the body's record still holds the ChordError
    assert isinstance(stored, ChordError) and str(stored) == f"Dependency {failed_id} raised ValueError('boom')"
    assert await r.state() == states.FAILURE
    await wait_until(lambda: _len_log("errbacks_full", 1))
    await wait_until(lambda: _len_log("errbacks", 1))
    assert await log_of("errbacks") == [r.id]
    full = (await log_of("errbacks_full"))[0].split("|")
    assert full[0] == r.id and "ChordError" in full[1] and f"Dependency {failed_id}" in full[1]
    await asyncio.sleep(0.3)
    assert await log_of("body") == []


async def _len_log(key: str, n: int) -> bool:
    return len(await log_of(key)) >= n


async def deliver_again(task_id: str, raw: bytes) -> None:
    """Run a finished job a second time, as at-least-once delivery can (its first record lost in a failover).
    Its record is set back first: a plain replay of a finished job is dropped unrun (tests/test_replay.py)."""
    broker = get_broker()
    await broker.redis.hset(broker.result_key(task_id), "state", states.STARTED)
    await broker.enqueue([Enqueue(task_id, raw, "default", 5)])


async def test_group_pipe_task_and_group_then_task_in_chain_are_chords(worker):
    r = await (group(t.add.s(i, i) for i in range(4)) | t.tsum.s()).delay()
    assert await r.get(timeout=10) == 12
    r2 = await chain(t.add.s(1, 1), group(t.add.s(1), t.add.s(2)), t.tsum.s(), t.add.s(100)).delay()
    assert await r2.get(timeout=10) == 107  # 2 → [3, 4] → 7 → 107
    assert await r2.parent.get(timeout=1) == 7


async def test_group_pipe_group(worker):
    r = await (group(t.add.s(1, 1), t.add.s(2, 2)) | group(t.tsum.s(), t.add_to_all.s(10))).delay()
    assert isinstance(r, GroupResult)
    assert await r.get(timeout=10) == [6, [12, 14]]


async def test_nested_workflows(worker):
    r = await (t.add.s(5, 6) | group(t.add.s(1) | t.add.s(2), t.add.s(3))).delay()
    assert await r.get(timeout=10) == [14, 14]
    # a chord inside a chain, followed by more steps; chains inside the chord header
    wf = t.add.s(1, 1) | chord([t.add.s(1) | t.add.s(1), t.add.s(10)], t.tsum.s()) | t.add.s(1000)
    r2 = await wf.delay()
    assert await r2.get(timeout=10) == 1016  # 2 → [4, 12] → 16 → 1016
    # a group inside a group (flattened, as Celery), a chord inside a group
    gr = await group(group(t.add.s(1, 1), t.add.s(2, 2)), chord([t.add.s(3, 3)], t.tsum.s())).delay()
    assert await gr.get(timeout=10) == [2, 4, 6]
    # a chord whose body is a chain, and a chord piped into a task
    r3 = await (chord([t.add.s(1, 1), t.add.s(2, 2)], t.tsum.s() | t.add.s(1)) | t.add.s(10)).delay()
    assert await r3.get(timeout=10) == 17


async def test_chord_in_chain_header_failure_fails_the_rest_of_the_chain(worker):
    errback = t.errback.s(key="chain-errbacks")
    wf = chain(t.add.s(1, 1), chord([t.add.s(1), t.fail.s()], t.tsum.s()), t.add.s(5), t.add.s(6))
    wf.link_error(errback)
    r = await wf.delay()
    with pytest.raises(ValueError, match="boom"):  # the failed header task's exception, as Celery
        await r.get(timeout=10)
    assert isinstance(await r.result(), ChordError)
    assert await r.parent.state() == states.FAILURE
    assert await r.parent.parent.state() == states.FAILURE  # the body
    await wait_until(lambda: _len_log("chain-errbacks", 1))
    await asyncio.sleep(0.3)
    assert await log_of("chain-errbacks") == [r.parent.parent.id]  # once, for the body


async def test_groups_inside_a_chord_header(worker):
    """A group as a header member is flattened into the header (Celery); a header chain ending in a group
    fills its slot with a list."""
    r = await chord(
        [group(t.add.s(1, 1), t.add.s(2, 2)), t.add.s(1, 1) | group(t.add.s(1), t.add.s(2)), t.add.s(5, 5)],
        t.identity.s(),
    ).delay()
    assert await r.get(timeout=10) == [2, 4, [3, 4], 10]
    bad = await chord([group(t.add.s(1, 1), t.fail.s()), t.add.s(1, 1)], t.identity.s()).delay()
    with pytest.raises(ValueError, match="boom"):
        await bad.get(timeout=10)
    nested = await chord([t.add.s(1, 1) | group(t.add.s(1), t.fail.s())], t.identity.s()).delay()
    with pytest.raises(ChordError, match=r"Dependency .* raised ValueError"):  # the collecting step's own error
        await nested.get(timeout=10)


# ---------------------------------------------------------------- links
async def test_link_and_link_error_on_task_and_signature(worker):
    r = await t.add.apply_async((2, 3), link=t.add.s(10))
    assert await r.get(timeout=10) == 5
    s = t.fail.s()
    s.link_error(t.errback.s())
    s.link_error(t.errback_full.s())
    s.link(t.errback.s(key="never"))
    rf = await s.delay()
    with pytest.raises(ValueError):
        await rf.get(timeout=10)
    await wait_until(lambda: _len_log("errbacks_full", 1))
    await wait_until(lambda: _len_log("errbacks", 1))
    assert await log_of("errbacks") == [rf.id]
    failed_id, exc, tb_len = (await log_of("errbacks_full"))[0].split("|")
    assert failed_id == rf.id and exc == "ValueError('boom')" and int(tb_len) > 0
    ok = t.add.s(1, 1)
    ok.link(t.count_body.s("linked"))
    ok.link_error(t.errback.s(key="not-called"))
    await (await ok.delay()).get(timeout=10)
    await wait_until(lambda: _len_log("linked", 1))
    await asyncio.sleep(0.2)
    assert (await log_of("linked"))[0].startswith("2|")
    assert await log_of("not-called") == [] and await log_of("never") == []


async def test_chain_link_error_runs_once_for_the_failing_step_only(worker):
    first = t.add.s(1, 1)
    first.link_error(t.errback.s(key="step1-errors"))  # a step's own errback must not leak to later steps
    wf = chain(first, t.fail.s(), t.add.s(1))
    wf.link_error(t.errback.s(key="chain-errors"))
    wf.link(t.errback.s(key="chain-links"))
    r = await wf.delay()
    with pytest.raises(ValueError):
        await r.get(timeout=10)
    await wait_until(lambda: _len_log("chain-errors", 1))
    await asyncio.sleep(0.3)
    assert await log_of("chain-errors") == [r.parent.id]
    assert await log_of("step1-errors") == [] and await log_of("chain-links") == []
    ok = chain(t.add.s(1, 1), t.add.s(1))
    ok.link(t.count_body.s("chain-link-ok"))
    r2 = await ok.delay()
    assert await r2.get(timeout=10) == 3
    await wait_until(lambda: _len_log("chain-link-ok", 1))
    await asyncio.sleep(0.2)
    assert len(await log_of("chain-link-ok")) == 1 and (await log_of("chain-link-ok"))[0].startswith("3|")


async def test_group_and_chord_link_error(worker):
    g = group(t.add.s(1, 1), t.fail.s(), t.fail.s())
    g.link_error(t.errback.s(key="group-errors"))
    gr = await g.delay()
    await wait_until(gr.ready)
    await wait_until(lambda: _len_log("group-errors", 2))
    assert sorted(await log_of("group-errors")) == sorted(r.id for r in gr.results[1:])
    g2 = group(t.add.s(1, 1), t.add.s(2, 2))
    g2.link(t.count_body.s("linked", "group-links"))  # Celery: once, on the first member, immutable
    await (await g2.delay()).get(timeout=10)
    await wait_until(lambda: _len_log("group-links", 1))
    await asyncio.sleep(0.2)
    assert [e.split("|")[0] for e in await log_of("group-links")] == ["linked"]
    c = chord([t.fail.s()], t.tsum.s())
    c.link_error(t.errback.s(key="chord-errors"))
    r = await c.delay()
    with pytest.raises(ValueError):
        await r.get(timeout=10)
    await wait_until(lambda: _len_log("chord-errors", 1))
    assert await log_of("chord-errors") == [r.id]


# ---------------------------------------------------------------- map / starmap / chunks
async def test_map_starmap_chunks(worker):
    assert await (await t.identity.map([1, "a", None]).delay()).get(timeout=10) == [1, "a", None]
    assert await (await t.add.starmap([(1, 2), (3, 4)]).delay()).get(timeout=10) == [3, 7]
    res = await (await t.add.chunks(zip(range(10), range(10), strict=True), 3).delay()).get(timeout=10)
    assert res == [[0, 2, 4], [6, 8, 10], [12, 14, 16], [18]]


# ---------------------------------------------------------------- eager
async def test_canvas_eagerly_with_apply(engine):
    r = await (t.add.s(4, 4) | t.add.s(8) | t.add.s(16)).apply()
    assert isinstance(r, EagerResult) and await r.get() == 32 and await r.parent.get() == 16
    assert await (await group(t.add.s(i, i) for i in range(3)).apply()).get() == [0, 2, 4]
    assert await (await chord([t.identity.si(i) for i in range(5)], t.identity.s()).apply()).get() == [0, 1, 2, 3, 4]
    assert await (await (t.add.s(5, 6) | group(t.add.s(1) | t.add.s(2), t.add.s(3))).apply()).get() == [14, 14]
    assert await (await chord([], t.identity.s()).apply()).get() == []
    failing = await chain(t.add.s(1, 2), t.fail.s(), t.add.s(3)).apply()
    with pytest.raises(ValueError, match="boom"):
        await failing.get()
    assert await failing.state() == states.FAILURE
    retried = await (t.add.s(1, 1) | t.flaky.s("eager-flaky", 2) | t.add.s(10)).apply()
    assert await retried.get() == 13
    body = t.identity.s()
    body.link_error(t.errback.s(key="eager-errbacks"))
    bad = await chord([t.fail.s()], body).apply()
    with pytest.raises(ValueError, match="boom"):
        await bad.get()
    assert isinstance(await bad.result(), ChordError)
    assert await log_of("eager-errbacks") == [bad.id]
    res = await t.add.chunks(zip(range(4), range(4), strict=True), 3).apply()
    assert await res.get() == [[0, 2, 4], [6]]
    nested = chord([group(t.add.s(1, 1), t.add.s(2, 2)), t.add.s(3, 3)], t.identity.s())
    assert await (await nested.apply()).get() == [2, 4, 6]
    with pytest.raises(ValueError, match="boom"):
        await (await chord([group(t.add.s(1, 1), t.fail.s())], t.identity.s()).apply()).get()


# ---------------------------------------------------------------- beyond Celery: durability
FAST_LEASE = {"TE_LEASE_SECONDS": "1", "TE_HEARTBEAT_SECONDS": "0.2"}  # a lost job comes back within ~2 s


def _spawn(spawn_worker: Any) -> subprocess.Popen[bytes]:
    """A worker subprocess with a 1 s lease, so a lost job comes back quickly (not waited for)."""
    return spawn_worker("-j", "4", wait=False, env=FAST_LEASE)


async def _signal_worker_of(task_id: str, procs: list[subprocess.Popen[bytes]], signum: int) -> subprocess.Popen[bytes]:
    """Send ``signum`` to whichever of our worker subprocesses ran (or runs) ``task_id``."""
    worker = (await AsyncResult(task_id).record())["worker"] or ""
    proc = next(p for p in procs if f"-{p.pid}-" in worker)
    os.kill(proc.pid, signum)
    if signum == signal.SIGKILL:
        proc.wait()
    return proc


@pytest.mark.slow
async def test_chain_survives_worker_sigkill_between_steps(engine, spawn_worker, prefix):
    procs = [_spawn(spawn_worker), _spawn(spawn_worker)]
    await wait_until(lambda: _workers_up(prefix, procs), timeout=20)
    wf = chain(t.record.si("steps", 1), t.slow_once.si("steps", 2, 10.0), t.record.si("steps", 3).set(countdown=2))
    r = await wf.delay()
    step2 = r.parent
    await wait_until(lambda: _len_log("steps", 2))  # step 1 done, step 2 running
    await wait_until(lambda: _started(step2.id))
    await _signal_worker_of(step2.id, procs, signal.SIGKILL)  # the worker dies mid step 2
    assert await step2.state() in (states.STARTED, states.PENDING) and not await r.ready()
    assert await step2.get(timeout=15) == 2  # its lease ran out; the other worker ran step 2 again
    assert (await step2.record())["delivered"] == 2
    # Kill the worker that just finished step 2: step 3 waits in Redis (countdown), not in its memory.
    await _signal_worker_of(step2.id, procs, signal.SIGKILL)
    assert all(p.poll() is not None for p in procs)  # no worker left
    assert await r.state() == states.PENDING
    fresh = Worker(beat=False)  # a new worker (in this process: it starts at once)
    await fresh.start(handle_signals=False)
    try:
        assert await r.get(timeout=15) == 3
        assert (await r.record())["worker"] == fresh.id
    finally:
        await fresh.stop(grace=1)
    values = [e.split("|")[1] for e in await log_of("steps")]
    assert values == ["1", "2", "2", "3"]  # step 1 and step 3 ran once; step 2 twice (killed once)


# ---------------------------------------------------------------- beyond Celery: exactly-once body
async def test_chord_body_once_when_a_header_task_runs_again(engine):
    broker = get_broker()
    body = t.count_body.s("body")
    r = await chord([t.record.si("header", "a"), t.record.si("header", "b").set(countdown=1.0)], body).delay()
    a_id = r.parent.results[0].id
    raw = await broker.redis.get(broker.key("msg", a_id))  # capture the header message before it runs
    w = Worker(beat=False)
    await w.start(handle_signals=False)
    try:
        await r.parent.results[0].get(timeout=5)
        # re-deliver header "a" while "b" is still deferred: its part must count once, not fire the body early
        await deliver_again(a_id, raw)
        await wait_until(lambda: _len_log("header", 2))
        await wait_until(lambda: job_gone(a_id))
        assert int(await broker.redis.hget(broker.key("chord", r.id), "count")) == 1
        assert await r.state() == states.PENDING and await log_of("body") == []
        assert await r.get(timeout=10) == ["a", "b"]
        # re-deliver it again after the body fired: the body is not dispatched again
        await deliver_again(a_id, raw)
        await wait_until(lambda: _len_log("header", 4))
        await wait_until(lambda: job_gone(a_id))
        await asyncio.sleep(0.3)
        assert [e.split("|")[1] for e in await log_of("header")] == ["a", "a", "b", "a"]
        assert len(await log_of("body")) == 1
    finally:
        await w.stop(grace=1)


async def test_redelivered_parent_step_plans_its_chord_and_link_once(engine):
    """A chain step that runs twice (at-least-once delivery) plans the chord after it twice: the chord's
    count must not be reset, the header tasks, the link and the body must not be enqueued again."""
    broker = get_broker()
    parent = t.record.si("parent", "p")
    parent.link(t.count_body.s("linked"))
    wf = parent | chord(
        [t.record.si("header", "a"), t.record.si("header", "b").set(countdown=1.0)], t.count_body.s("body")
    )
    r = await wf.delay()
    first = await broker.redis.zrange(broker.key("q", "default"), 0, -1)
    assert len(first) == 1
    p_id = first[0].decode()
    raw = await broker.redis.get(broker.key("msg", p_id))
    w = Worker(beat=False)
    await w.start(handle_signals=False)
    try:
        await wait_until(lambda: _len_log("header", 1))  # "a" done, "b" deferred: the chord counts 1 of 2
        await deliver_again(p_id, raw)  # the parent step runs a second time
        await wait_until(lambda: _len_log("parent", 2))
        await wait_until(lambda: job_gone(p_id))
        assert int(await broker.redis.hget(broker.key("chord", r.id), "count")) == 1
        assert await r.get(timeout=10) == ["a", "b"]
        await asyncio.sleep(0.3)
        assert [e.split("|")[1] for e in await log_of("header")] == ["a", "b"]
        assert len(await log_of("body")) == 1 and len(await log_of("linked")) == 1
    finally:
        await w.stop(grace=1)


@pytest.mark.slow
async def test_chord_body_once_when_a_paused_worker_finishes_a_redelivered_header(
    engine, spawn_worker, prefix, tmp_path
):
    """The worker running header "a" is paused (SIGSTOP); its lease runs out, another worker runs "a" again
    and the body fires; then the paused worker resumes and finishes its copy too. The body runs once, and
    the stale copy's completion is dropped: the record still names the worker that ran "a" again."""
    slow = spawn_worker("-j", "4", "-Q", "slow", wait=False, env=FAST_LEASE)
    await wait_until(lambda: _workers_up(prefix, [slow]), timeout=20)
    header = [t.slow_once.si("hdr", "a", 2.0).set(queue="slow"), t.record.si("hdr", "b").set(queue="slow")]
    r = await chord(header, t.count_body.s("body")).delay()
    a = r.parent.results[0]
    await wait_until(lambda: _len_log("hdr", 2))
    await wait_until(lambda: _started(a.id))
    os.kill(slow.pid, signal.SIGSTOP)
    other = Worker(queues=["slow", "default"], beat=False)  # the other worker (in this process)
    await other.start(handle_signals=False)
    try:
        assert await r.get(timeout=15) == ["a", "b"]  # fired by the other worker's run of "a"
        assert (await a.record())["delivered"] == 2
        assert (await r.record())["worker"] == other.id
    finally:
        os.kill(slow.pid, signal.SIGCONT)
    try:
        # The paused one finishes its copy and tries to complete it: fenced off, it writes nothing.
        await wait_until(lambda: _logged(tmp_path, "result dropped: this worker no longer holds the job"), timeout=10)
        await asyncio.sleep(0.5)
    finally:
        await other.stop(grace=1)
    assert [e.split("|")[1] for e in await log_of("hdr")].count("a") == 2
    assert len(await log_of("body")) == 1
    assert (await a.record())["worker"] == other.id and not await _worker_is(a.id, slow.pid)


async def _logged(directory: Any, text: str) -> bool:
    return any(text in path.read_text(errors="replace") for path in directory.glob("worker-*.log"))


async def _worker_is(task_id: str, pid: int) -> bool:
    worker = (await AsyncResult(task_id).record())["worker"] or ""
    return f"-{pid}-" in worker


# ---------------------------------------------------------------- beyond Celery: large fan-out
@pytest.mark.slow
async def test_chord_of_10000_headers(engine, spawn_worker, prefix):
    """10,000 no-op header tasks on two worker processes (100 concurrent jobs each): the body gets all
    10,000 results in order, and they sit in the chord's Redis hash, not in any worker."""
    broker = get_broker()
    n = 10_000
    procs = [spawn_worker("-j", "100", wait=False) for _ in range(2)]  # they start while we plan
    started = time.monotonic()
    r = await chord((t.identity.si(i) for i in range(n)), t.chord_stats.s()).delay()
    planned = time.monotonic() - started
    await wait_until(lambda: _workers_up(prefix, procs), timeout=20)
    got = await r.get(timeout=90)
    elapsed = time.monotonic() - started
    # chord_stats (the body) counted the results it received and, at that moment, the entries of
    # <prefix>:chord:<id>:r: a worker only hands each part to the CHORD_PART Lua script, none keeps them.
    assert got == [n, n, n]
    assert await broker.redis.hlen(broker.key("chord", r.id, "r")) == n
    assert await broker.redis.scard(broker.key("chord", r.id, "done")) == n
    order = await broker.redis.hmget(broker.key("chord", r.id, "r"), ["0", "1", str(n - 1)])
    assert [int(v) for v in order] == [0, 1, n - 1]  # slot i holds header i's result
    print(f"chord of {n}: planned and enqueued in {planned:.1f}s, done in {elapsed:.1f}s")


async def _workers_up(prefix: str, procs: list[subprocess.Popen[bytes]]) -> bool:
    broker = get_broker()
    keys = [k.decode() async for k in broker.redis.scan_iter(match=f"{{{prefix}}}:worker:*", count=10_000)]
    return all(any(f"-{p.pid}-" in k for k in keys) for p in procs)
