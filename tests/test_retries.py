"""Issue 3, retries: Celery's retry semantics (autoretry, backoff, jitter, self.retry) on a real worker.

Countdowns are read from what the worker actually scheduled: the deferred job's score in
``<prefix>:delayed`` minus the moment the body failed (recorded by the body itself). Long
countdowns are then fast-forwarded by moving that score to now, so Celery's real numbers
(1, 2, 4, 8 s …) are checked without waiting for them.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from tasks_engine import (
    AsyncResult,
    MaxRetriesExceededError,
    Retry,
    chain,
    chord,
    shared_task,
    states,
    worker_settings,
)
from tasks_engine.core.clock import now_ms
from tasks_engine.model.retries import backoff_countdown, backoff_factor
from tasks_engine.store import get_broker
from tests import sample_tasks as t
from tests.conftest import ROOT, not_on_cluster, running_worker, worker_env

# ---------------------------------------------------------------- helpers and tasks


async def note(key: str, *fields: Any) -> None:
    """Append one execution record to a Redis list: counts runs across processes."""
    broker = get_broker()
    await broker.redis.rpush(broker.key("rt-log", key), "|".join(str(f) for f in fields))


async def runs(key: str) -> list[list[str]]:
    broker = get_broker()
    return [e.decode().split("|") for e in await broker.redis.lrange(broker.key("rt-log", key), 0, -1)]


async def wait_until(predicate: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def fast_forward(task_id: str, queue: str = "default") -> None:
    """Make a deferred job due now and wake the worker (instead of waiting out its countdown)."""
    broker = get_broker()
    assert await broker.redis.zadd(broker.key("delayed"), {task_id: now_ms()}, xx=True, ch=True) == 1
    await broker.redis.lpush(broker.key("wake", queue), "1")


async def scheduled_countdowns(r: AsyncResult, key: str, retries: int) -> list[float]:
    """For each of ``retries`` retries: wait for RETRY, read the countdown scheduled, fast-forward."""
    broker = get_broker()
    seen: list[float] = []
    for n in range(1, retries + 1):

        async def deferred(n: int = n) -> float | None:
            info = await r.record()
            score = await broker.redis.zscore(broker.key("delayed"), r.id)
            return score if info["state"] == states.RETRY and info["retries"] == n and score is not None else None

        score = await wait_until(deferred, what=f"retry {n} of {r.id}")
        failed_at = float((await runs(key))[-1][-1])
        seen.append(round(score / 1000 - failed_at, 1))
        await fast_forward(r.id)
    return seen


@shared_task(
    name="rt.backoff1",
    bind=True,
    autoretry_for=(ConnectionError,),
    retry_backoff=True,
    retry_jitter=False,
    max_retries=3,
)
async def backoff1(self: Any, key: str) -> None:
    await note(key, self.request.id, self.request.retries, time.time())
    raise ConnectionError("down")


@shared_task(
    name="rt.backoff2", bind=True, autoretry_for=(ConnectionError,), retry_backoff=2, retry_jitter=False, max_retries=3
)
async def backoff2(self: Any, key: str) -> None:
    await note(key, self.request.id, self.request.retries, time.time())
    raise ConnectionError("down")


@shared_task(name="rt.jittered", bind=True, autoretry_for=(ConnectionError,), retry_backoff=True, max_retries=3)
async def jittered(self: Any, key: str) -> None:
    await note(key, self.request.id, self.request.retries, time.time())
    raise ConnectionError("down")


@shared_task(name="rt.no_backoff", bind=True, autoretry_for=(ConnectionError,), default_retry_delay=7, max_retries=2)
async def no_backoff(self: Any, key: str) -> None:
    await note(key, self.request.id, self.request.retries, time.time())
    raise ConnectionError("down")


@shared_task(name="rt.settings_defaults", bind=True, autoretry_for=(ConnectionError,))
async def settings_defaults(self: Any, key: str) -> None:
    await note(key, self.request.id, self.request.retries, time.time())
    raise ConnectionError("down")


@shared_task(
    name="rt.picky", bind=True, autoretry_for=(Exception,), dont_autoretry_for=(ValueError,), default_retry_delay=0.02
)
async def picky(self: Any, key: str, kind: str) -> None:
    await note(key, self.request.retries)
    if kind == "value":
        raise UnicodeError("a ValueError subclass: never retried")
    raise KeyError("retried")


@shared_task(name="rt.kwargs", bind=True, autoretry_for=(OSError,), retry_kwargs={"max_retries": 2, "countdown": 0.05})
async def with_retry_kwargs(self: Any, key: str) -> None:
    await note(key, self.request.retries)
    raise OSError("disk")


@shared_task(name="rt.manual", bind=True, max_retries=3)
async def manual(self: Any, key: str, fail_times: int, countdown: float = 0.05) -> int:
    """The seed's bound-task pattern: ``raise self.retry(exc=exc, countdown=...)``."""
    await note(key, self.request.id, self.request.retries, time.time())
    try:
        if self.request.retries < fail_times:
            raise KeyError(f"try {self.request.retries}")
    except KeyError as exc:
        raise self.retry(exc=exc, countdown=countdown) from None
    return int(self.request.retries)


@shared_task(name="rt.bare_retry", bind=True, max_retries=2)
async def bare_retry(self: Any, key: str) -> None:
    await note(key, self.request.retries)
    raise self.retry(countdown=0.02)


@shared_task(name="rt.default_max", bind=True)
async def default_max(self: Any, key: str) -> None:
    await note(key, self.request.retries)
    raise self.retry(countdown=0.02)


@shared_task(name="rt.forever", bind=True, max_retries=None)
async def forever(self: Any, key: str, until: int) -> int:
    await note(key, self.request.retries)
    if self.request.retries < until:
        raise self.retry(countdown=0.02)
    return int(self.request.retries)


@shared_task(name="rt.reargs", bind=True, max_retries=5)
async def reargs(self: Any, key: str, n: int, tag: str = "first") -> str:
    await note(key, n, tag)
    if n < 20:
        raise self.retry(args=[key, n + 10], kwargs={"tag": f"after-{n}"}, countdown=0.02, max_retries=1)
    return f"{n}-{tag}"


@shared_task(name="rt.at_eta", bind=True)
async def at_eta(self: Any, key: str) -> str:
    if self.request.retries == 0:
        eta = datetime.now(UTC) + timedelta(seconds=30)
        await note(key, eta.timestamp())
        raise self.retry(eta=eta)
    return "ran"


@shared_task(name="rt.no_throw", bind=True, max_retries=1)
async def no_throw(self: Any, key: str) -> Any:
    if self.request.retries == 0:
        retry = self.retry(exc=KeyError("later"), countdown=0.02, throw=False)
        await note(key, type(retry).__name__)
        return retry  # handing the Retry back asks for the retry, as raising it does
    try:
        self.retry(exc=KeyError("past max"), throw=False)  # past max_retries: raises even with throw=False
    except KeyError:
        await note(key, "raised past max")
    return "done"


@shared_task(name="rt.flaky", bind=True, max_retries=3)
async def flaky(self: Any, key: str, countdown: float = 0.05) -> int:
    """Fails twice (retrying), then returns 7."""
    await note(key, self.request.id, self.request.retries, time.time())
    if self.request.retries < 2:
        raise self.retry(exc=ConnectionError("flaky"), countdown=countdown)
    return 7


@shared_task(name="rt.collect")
async def collect(value: Any, key: str) -> None:
    await note(key, value)


@shared_task(name="rt.later", bind=True)
async def later(self: Any) -> str:
    if self.request.retries == 0:
        raise self.retry(countdown=3 * 86_400)
    return "ran"


@shared_task(name="rt.many", bind=True, max_retries=6)
async def many(self: Any, key: str) -> int:
    await note(key, self.request.retries, os.getpid())
    if self.request.retries < 6:
        raise self.retry(countdown=0.02)
    return int(self.request.retries)


def __getattr__(name: str) -> Any:
    """``arq tests.test_retries.WorkerSettings``: built only when arq asks for it."""
    if name == "WorkerSettings":
        return worker_settings(imports=["tests.test_retries"])
    raise AttributeError(name)


# ---------------------------------------------------------------- backoff numbers


def test_backoff_formula_cap_before_jitter_and_factor() -> None:
    assert [backoff_countdown(1, r, 600, False) for r in range(12)] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600]
    assert [backoff_countdown(1, r, 3, False) for r in range(5)] == [1, 2, 3, 3, 3]
    assert (backoff_factor(True), backoff_factor(2), backoff_factor(0.5)) == (1, 2, 1)
    samples = {backoff_countdown(1, 3, 600, True) for _ in range(2000)}
    assert samples == set(range(9))  # full jitter: every integer 0..8, nothing above the capped value
    assert {backoff_countdown(1, 20, 5, True) for _ in range(500)} == set(range(6))


@pytest.mark.parametrize(
    ("task", "asked", "scheduled"),
    [
        (backoff1, [1, 2, 4, 8], [1, 2, 4]),
        (backoff2, [2, 4, 8, 16], [2, 4, 8]),
    ],
)
async def test_autoretry_backoff_countdowns_match_celery(worker, monkeypatch, task, asked, scheduled):
    calls: list[Any] = []
    real_retry = task.retry

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("countdown"))
        return real_retry(*args, **kwargs)

    monkeypatch.setattr(task, "retry", spy)
    r = await task.delay("k")
    assert await scheduled_countdowns(r, "k", 3) == scheduled
    with pytest.raises(ConnectionError, match="down"):
        await r.get(timeout=10)
    # Celery computes the next countdown before retry() refuses it: retry() saw [1, 2, 4, 8].
    assert calls == asked
    log = await runs("k")
    assert [e[1] for e in log] == ["0", "1", "2", "3"]  # max_retries=3: the body ran 4 times
    assert {e[0] for e in log} == {r.id}
    info = await r.record()
    assert info["state"] == states.FAILURE and info["retries"] == 3 and info["exc_type"] == "ConnectionError"


@pytest.mark.serial  # timing-sensitive: runs alone after the parallel run
async def test_jitter_draws_uniformly_up_to_the_capped_countdown(worker, monkeypatch):
    drawn: list[int] = []

    def fake_randrange(stop: int) -> int:
        drawn.append(stop)
        return max(1, stop // 2)

    monkeypatch.setattr(random, "randrange", fake_randrange)
    r = await jittered.delay("j")
    assert await scheduled_countdowns(r, "j", 3) == [1, 1, 2]
    with pytest.raises(ConnectionError):
        await r.get(timeout=10)
    assert drawn == [2, 3, 5, 9]  # randrange(countdown + 1) over 1, 2, 4, 8


async def test_backoff_off_uses_default_retry_delay(worker):
    r = await no_backoff.delay("d")
    assert await scheduled_countdowns(r, "d", 2) == [7, 7]
    with pytest.raises(ConnectionError):
        await r.get(timeout=10)
    assert len(await runs("d")) == 3


async def test_max_retries_and_retry_delay_default_from_settings(engine, worker):
    assert settings_defaults.max_retries == 3 and settings_defaults.default_retry_delay == 180
    engine.task_max_retries = 1
    engine.task_default_retry_delay = 5
    r = await settings_defaults.delay("s")
    assert await scheduled_countdowns(r, "s", 1) == [5]
    with pytest.raises(ConnectionError):
        await r.get(timeout=10)
    assert len(await runs("s")) == 2


async def test_dont_autoretry_for_is_checked_first(worker):
    r = await picky.delay("v", "value")
    with pytest.raises(UnicodeError):
        await r.get(timeout=5)
    assert len(await runs("v")) == 1 and (await r.record())["retries"] == 0
    r = await picky.delay("k", "key")
    with pytest.raises(KeyError):
        await r.get(timeout=5)
    assert [e[0] for e in await runs("k")] == ["0", "1", "2", "3"]


async def test_retry_kwargs_set_max_retries_and_countdown(worker):
    started = time.monotonic()
    r = await with_retry_kwargs.delay("rk")
    with pytest.raises(OSError, match="disk"):
        await r.get(timeout=5)
    assert len(await runs("rk")) == 3
    assert time.monotonic() - started < 3  # 0.05 s countdowns, not the 180 s default


# ---------------------------------------------------------------- self.retry()


async def test_self_retry_same_id_counter_and_retry_state_between_tries(worker):
    r = await manual.delay("m", 2, 0.4)

    async def in_retry() -> dict[str, Any] | None:
        info = await r.record()
        return info if info["state"] == states.RETRY else None

    info = await wait_until(in_retry, what="RETRY state")
    assert info["retries"] == 1 and info["exc_type"] == "KeyError" and "try 0" in info["exc_message"]
    assert "KeyError" in info["traceback"]
    assert await r.state() == states.RETRY and not await r.ready()
    assert await r.get(timeout=10) == 2
    log = await runs("m")
    assert [e[0] for e in log] == [r.id] * 3 and [e[1] for e in log] == ["0", "1", "2"]
    gaps = [float(b[2]) - float(a[2]) for a, b in zip(log, log[1:])]
    assert all(gap >= 0.39 for gap in gaps), gaps  # each retry waited its countdown
    info = await r.record()
    assert info["state"] == states.SUCCESS and info["retries"] == 2 and info["exc_type"] is None


async def test_past_max_retries_raises_the_original_exception(worker):
    r = await manual.delay("x", 99)
    with pytest.raises(KeyError, match="try 3"):
        await r.get(timeout=10)
    assert len(await runs("x")) == 4  # max_retries + 1
    info = await r.record()
    assert info["state"] == states.FAILURE and info["retries"] == 3


async def test_past_max_retries_without_exc_is_max_retries_exceeded(worker):
    r = await bare_retry.delay("b")
    with pytest.raises(MaxRetriesExceededError):
        await r.get(timeout=10)
    assert [e[0] for e in await runs("b")] == ["0", "1", "2"]
    assert await r.state() == states.FAILURE


async def test_max_retries_default_3_and_none_is_forever(engine, worker):
    r = await default_max.delay("d3")
    with pytest.raises(MaxRetriesExceededError):
        await r.get(timeout=10)
    assert len(await runs("d3")) == 4
    r = await forever.delay("f", 6)
    assert await r.get(timeout=10) == 6  # past arq's max_tries (5) and the default of 3
    assert len(await runs("f")) == 7


async def test_retry_with_new_args_kwargs_and_max_retries_override(worker):
    r = await reargs.delay("a", 0)
    with pytest.raises(MaxRetriesExceededError, match="max_retries=1"):
        await r.get(timeout=10)
    assert await runs("a") == [["0", "first"], ["10", "after-0"]]


async def test_retry_with_eta(worker):
    r = await at_eta.delay("e")
    score = await wait_until(lambda: get_broker().redis.zscore(get_broker().key("delayed"), r.id), what="deferred")
    eta = float((await runs("e"))[0][0])
    assert abs(score / 1000 - eta) < 0.01
    await fast_forward(r.id)
    assert await r.get(timeout=5) == "ran"


async def test_throw_false_returns_the_retry(worker):
    r = await no_throw.delay("n")
    assert await r.get(timeout=5) == "done"
    assert await runs("n") == [["Retry"], ["raised past max"]]
    assert (await r.record())["retries"] == 1


async def test_direct_call_outside_a_worker_raises_exc(engine):
    with pytest.raises(KeyError, match="try 0"):
        await manual("direct", 1)
    with pytest.raises(Retry):  # no exc given: Celery raises Retry itself
        await bare_retry("direct")
    with pytest.raises(ValueError, match="plain"):
        manual.retry(exc=ValueError("plain"))


async def test_apply_runs_retries_eagerly_without_sleeping(engine):
    started = time.monotonic()
    e = await manual.apply(args=("eager", 2, 60))
    assert await e.get() == 2 and e.retries == 2 and await e.state() == states.SUCCESS
    failing = await backoff1.apply(args=("eager2",))  # backoff countdowns 1, 2, 4 are not slept either
    with pytest.raises(ConnectionError):
        await failing.get()
    assert failing.retries == 3 and len(await runs("eager2")) == 4
    assert time.monotonic() - started < 1.5


# ---------------------------------------------------------------- what a retry keeps


async def test_retry_keeps_queue_priority_expires_and_links(engine):
    broker = get_broker()
    async with running_worker(queues=["rq"]):
        r = await flaky.apply_async(
            ("q", 0.5),
            queue="rq",
            priority=2,
            expires=60,
            link=collect.s("linked").set(queue="rq"),
            link_error=collect.si("err", "errback").set(queue="rq"),
        )
        await wait_until(lambda: broker.redis.zscore(broker.key("delayed"), r.id), what="first retry")
        msg = orjson.loads(await broker.redis.get(broker.key("msg", r.id)))
        assert (msg["queue"], msg["priority"], msg["retries"]) == ("rq", 2, 1)
        assert msg["expires"] == pytest.approx(msg["sent_at"] + 60, abs=1)
        assert [link["task"] for link in msg["links"]] == ["rt.collect"]
        assert [e["task"] for e in msg["link_errors"]] == ["rt.collect"]
        assert (await broker.redis.hget(broker.key("dq"), r.id)).decode().startswith("rq|2")
        assert await r.get(timeout=10) == 7
        await wait_until(lambda: runs("linked"), what="link")
    assert await runs("linked") == [["7"]]  # the link ran once, with the final result
    assert await runs("err") == []  # no errback for a retry


async def test_retry_keeps_expires_a_retry_after_it_is_revoked(worker):
    r = await flaky.apply_async(("ex", 1.0), expires=0.5)
    with pytest.raises(Exception, match="expired"):
        await r.get(timeout=5)
    assert await r.state() == states.REVOKED
    assert len(await runs("ex")) == 1


async def test_retrying_step_keeps_its_place_in_chain_and_chord(worker):
    r = await chain(flaky.s("c"), t.add.s(10), t.add.s(100)).delay()
    assert await r.get(timeout=10) == 117
    assert len(await runs("c")) == 3
    assert await r.parent.parent.get(timeout=1) == 7
    c = await chord([flaky.s("h"), t.add.si(1, 1)], t.tsum.s()).delay()
    assert await c.get(timeout=10) == 9
    assert len(await runs("h")) == 3


async def test_countdown_of_days_is_kept_without_expiry(worker):
    broker = get_broker()
    r = await later.delay()
    score = await wait_until(lambda: broker.redis.zscore(broker.key("delayed"), r.id), what="deferred")
    assert score / 1000 == pytest.approx(time.time() + 3 * 86_400, abs=5)
    assert await broker.redis.ttl(broker.key("msg", r.id)) == -1  # no TTL on the message
    assert await broker.redis.ttl(broker.key("delayed")) == -1 and await broker.redis.ttl(broker.key("dq")) == -1
    msg = orjson.loads(await broker.redis.get(broker.key("msg", r.id)))
    assert msg["eta"] == pytest.approx(score / 1000, abs=0.01) and msg["retries"] == 1
    assert not await broker.redis.exists(f"arq:job:{r.id}", f"arq:retry:{r.id}", f"arq:in-progress:{r.id}")
    assert await r.state() == states.RETRY
    await fast_forward(r.id)
    assert await r.get(timeout=5) == "ran"
    assert (await r.record())["retries"] == 1


@not_on_cluster
async def test_retries_not_eaten_by_arq_max_tries(engine, sync_client, prefix, tmp_path):
    log_path = tmp_path / "arq.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "arq", "tests.test_retries.WorkerSettings"],
            cwd=ROOT,
            env=worker_env(prefix),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while not list(sync_client.scan_iter(f"{{{prefix}}}:worker:*")):
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            await asyncio.sleep(0.05)
        r = await many.delay("arq")
        assert await r.get(timeout=15) == 6
        log = await runs("arq")
        assert len(log) == 7  # arq's default max_tries is 5; every retry still ran
        assert {e[1] for e in log} == {str(proc.pid)}  # run by the arq-hosted worker
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
