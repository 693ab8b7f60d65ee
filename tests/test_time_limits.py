"""Issue 3, time limits: soft and hard limits with Celery's semantics, on one shared event loop.

Design under test (``tasks_engine/limits.py``): the soft limit is thrown into the task's coroutine
as ``SoftTimeLimitExceeded`` at the ``await`` it is suspended on; the hard limit reports FAILURE
at once and stops the coroutine for good; sync (``def``) tasks run in a thread pool.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from typing import Any

import pytest

from tasks_engine import SoftTimeLimitExceeded, TimeLimitExceeded, shared_task, states
from tasks_engine.core.logs import configure_logging
from tasks_engine.execution.timelimits import LimitedRun, current_steps
from tasks_engine.runtime.worker import Worker
from tasks_engine.store import get_broker
from tests import sample_tasks as t
from tests.conftest import ROOT

SYNC_LOG: dict[str, Any] = {}  # what sync tasks saw, in this process (in-process worker only)


async def note(key: str, *fields: Any) -> None:
    broker = get_broker()
    await broker.redis.rpush(broker.key("tl-log", key), "|".join(str(f) for f in fields))


async def notes(key: str) -> list[str]:
    broker = get_broker()
    return [e.decode() for e in await broker.redis.lrange(broker.key("tl-log", key), 0, -1)]


async def ticks(key: str) -> int:
    broker = get_broker()
    return int(await broker.redis.get(broker.key("tl-ticks", key)) or 0)


async def duration(r: Any) -> float:
    """Seconds from STARTED (claim) to the recorded outcome."""
    info = await r.record()
    started = datetime.fromisoformat(info["date_started"])
    return (datetime.fromisoformat(info["date_done"]) - started).total_seconds()


# ---------------------------------------------------------------- tasks


@shared_task(name="tl.soft_reraise", soft_time_limit=0.3, time_limit=3)
async def soft_reraise(key: str) -> str:
    """The seed's pattern: clean up at the soft limit, then re-raise."""
    try:
        await asyncio.sleep(10)
        return "finished"
    except SoftTimeLimitExceeded:
        await asyncio.sleep(0.05)  # clean-up may await: the soft limit is not a cancellation
        await note(key, "cleaned")
        raise


@shared_task(name="tl.soft_uncaught", soft_time_limit=0.3, time_limit=3)
async def soft_uncaught(key: str) -> str:
    await note(key, "start")
    await asyncio.sleep(10)
    await note(key, "never")
    return "finished"


async def _deep(key: str) -> None:
    async with asyncio.Lock():
        try:
            await asyncio.gather(asyncio.sleep(10), asyncio.sleep(10))
        finally:
            await note(key, "inner finally")


@shared_task(name="tl.soft_deep", soft_time_limit=0.2, time_limit=3)
async def soft_deep(key: str) -> str:
    """The soft limit lands at the innermost await (inside gather, a lock and a helper)."""
    try:
        await _deep(key)
    except SoftTimeLimitExceeded as exc:
        return f"caught {type(exc).__name__} deep inside"
    return "finished"


@shared_task(
    name="tl.soft_retry",
    bind=True,
    soft_time_limit=0.2,
    time_limit=3,
    autoretry_for=(SoftTimeLimitExceeded,),
    max_retries=2,
    default_retry_delay=0.05,
)
async def soft_retry(self: Any, key: str, fast_from: int) -> int:
    await note(key, self.request.retries)
    await asyncio.sleep(0 if self.request.retries >= fast_from else 10)
    return int(self.request.retries)


@shared_task(name="tl.stubborn", time_limit=0.5, autoretry_for=(Exception,), default_retry_delay=0.05)
async def stubborn(key: str) -> str:
    """Swallows every cancellation and keeps going; even autoretry_for=Exception must not retry it."""
    await note(key, "start")
    broker = get_broker()
    try:
        while True:
            try:
                await broker.redis.incr(broker.key("tl-ticks", key))
                await asyncio.sleep(0.02)
            except asyncio.CancelledError:
                pass
    finally:
        SYNC_LOG[f"{key}-finally"] = True


@shared_task(name="tl.on_error")
async def on_error(task_id: str, exc: str, traceback: str, key: str) -> None:
    await note(key, task_id, exc)


@shared_task(name="tl.plain")
async def plain(key: str) -> str:
    """No limits of its own: the settings' defaults apply."""
    try:
        await asyncio.sleep(10)
    except SoftTimeLimitExceeded:
        await note(key, "soft")
        while True:  # ignores the soft limit: the hard limit must still stop it
            try:
                await asyncio.sleep(0.02)
            except asyncio.CancelledError:
                pass
    return "finished"


@shared_task(name="tl.short", time_limit=0.2)
async def short(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


@shared_task(name="tl.sync_soft", bind=True, soft_time_limit=0.3, time_limit=3)
def sync_soft(self: Any, key: str) -> str:
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline:
            time.sleep(0.005)
        return "finished"
    except SoftTimeLimitExceeded:
        SYNC_LOG[key] = (threading.current_thread().name, self.request.id)
        return "cleaned in thread"


@shared_task(name="tl.sync_hard", time_limit=0.4)
def sync_hard(key: str) -> str:
    SYNC_LOG[key] = 0
    try:
        while True:
            SYNC_LOG[key] += 1
            time.sleep(0.005)
    finally:
        SYNC_LOG[f"{key}-stopped"] = time.monotonic()


@shared_task(name="tl.sync_stuck", time_limit=0.3)
def sync_stuck(seconds: float) -> str:
    time.sleep(seconds)  # one C call: nothing can interrupt it, yet the job is FAILED on time
    return "late"


@shared_task(name="tl.hog")
async def hog(seconds: float) -> str:
    time.sleep(seconds)  # sync code in a coroutine: holds the event loop
    return "done"


@shared_task(name="tl.mixed", bind=True)
async def mixed(self: Any, mode: str, n: int) -> int:
    if mode == "normal":
        await asyncio.sleep(0.2)
        return n
    if mode == "stubborn":
        while True:
            try:
                await asyncio.sleep(0.02)
            except asyncio.CancelledError:
                pass
    try:
        await asyncio.sleep(10)
    except SoftTimeLimitExceeded:
        await asyncio.sleep(0.01)
        if mode == "catch":
            return -n
        raise
    return 0


@shared_task(name="tl.sync_mixed")
def sync_mixed(n: int) -> int:
    try:
        while True:
            time.sleep(0.005)
    except SoftTimeLimitExceeded:
        return 1000 + n


# Without a hard limit the body runs in its delivery's own task (no task of its own): the soft limit,
# terminate and a cold shutdown must still reach it, and its own cancellations stay its own.
@shared_task(name="tl.unbounded_soft", soft_time_limit=0.3)
async def unbounded_soft(key: str) -> str:
    try:
        await asyncio.sleep(10)
        return "finished"
    except SoftTimeLimitExceeded:
        await asyncio.sleep(0.05)
        await note(key, "cleaned")
        return "cleaned"


@shared_task(name="tl.unbounded_stubborn")
async def unbounded_stubborn(key: str) -> str:
    """No limit at all, and swallows every cancellation."""
    await note(key, "start")
    broker = get_broker()
    try:
        while True:
            try:
                await broker.redis.incr(broker.key("tl-ticks", key))
                await asyncio.sleep(0.02)
            except asyncio.CancelledError:
                pass
    finally:
        SYNC_LOG[f"{key}-finally"] = True


@shared_task(name="tl.own_timeout")
async def own_timeout() -> str:
    """Its own ``asyncio.timeout`` and a future someone else cancels: both are the body's business."""
    try:
        async with asyncio.timeout(0.05):
            await asyncio.sleep(5)
    except TimeoutError:
        pass
    other = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(0.02, other.cancel)
    try:
        await other
    except asyncio.CancelledError:
        return "both handled"
    return "not cancelled"


# ---------------------------------------------------------------- soft limit


async def test_soft_limit_caught_cleans_up_and_returns_success(worker):
    r = await t.soft_cleanup.delay("sc")  # the sample task: except SoftTimeLimitExceeded: clean up, return
    assert await r.get(timeout=5) == "cleaned up"
    broker = get_broker()
    assert await broker.redis.get(broker.key("test-cleanup", "sc")) == b"1"
    assert 0.25 < await duration(r) < 2.5  # at the soft limit, not after the task's 10 s sleep
    deep = await soft_deep.delay("deep")
    assert await deep.get(timeout=5) == "caught SoftTimeLimitExceeded deep inside"
    assert await notes("deep") == ["inner finally"]


async def test_soft_limit_cleanup_then_reraise_is_failure(worker):
    r = await soft_reraise.delay("sr")
    with pytest.raises(SoftTimeLimitExceeded):
        await r.get(timeout=5)
    assert await notes("sr") == ["cleaned"]
    info = await r.record()
    assert info["state"] == states.FAILURE and info["exc_type"] == "SoftTimeLimitExceeded"
    assert "asyncio.sleep(10)" in info["traceback"]  # raised inside the task's own code, at its await


async def test_soft_limit_uncaught_is_failure(worker):
    r = await soft_uncaught.delay("su")
    with pytest.raises(SoftTimeLimitExceeded):
        await r.get(timeout=5)
    assert await notes("su") == ["start"]
    assert 0.25 < await duration(r) < 2.5


async def test_soft_limit_in_autoretry_for_retries(worker):
    r = await soft_retry.delay("ok", 1)
    assert await r.get(timeout=5) == 1
    assert await notes("ok") == ["0", "1"]
    r = await soft_retry.delay("never", 99)
    with pytest.raises(SoftTimeLimitExceeded):
        await r.get(timeout=5)
    assert await notes("never") == ["0", "1", "2"]
    assert (await r.record())["retries"] == 2


# ---------------------------------------------------------------- hard limit


async def test_hard_limit_stops_a_job_that_swallows_cancellation_and_never_reruns_it(engine):
    broker = get_broker()
    engine.lease_seconds, engine.heartbeat_seconds = 1.5, 0.3  # a short lease, to wait past it
    w = Worker(beat=False)
    await w.start(handle_signals=False)
    try:
        r = await stubborn.apply_async(("hard",), link_error=on_error.s("eb"))
        other = await t.sleep.delay(1.0)  # runs alongside on the same loop
        with pytest.raises(TimeLimitExceeded):
            await r.get(timeout=5)
        info = await r.record()
        assert info["state"] == states.FAILURE and info["exc_type"] == "TimeLimitExceeded"
        assert 0.45 < await duration(r) < 2.5  # on time
        assert info["retries"] == 0  # hard limit is terminal even with autoretry_for=(Exception,)
        assert await other.get(timeout=5) == 1.0  # the worker kept serving
        assert await (await t.add.delay(2, 2)).get(timeout=5) == 4
        # Errbacks ran, with the exception.
        deadline = time.monotonic() + 5
        while not await notes("eb"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        [entry] = await notes("eb")
        assert entry.startswith(f"{r.id}|TimeLimitExceeded(")
        # The coroutine is really gone: its finally ran and it makes no progress any more.
        assert SYNC_LOG.get("hard-finally") is True
        frozen = await ticks("hard")
        assert frozen > 5
        # Past the lease and a reaper pass: nobody runs it again.
        await asyncio.sleep(engine.lease_seconds + 1.2)
        assert await ticks("hard") == frozen
        assert await notes("hard") == ["start"]
        assert await r.state() == states.FAILURE and (await r.record())["delivered"] == 1
        assert not await broker.redis.exists(broker.key("msg", r.id))
        assert await broker.redis.zscore(broker.key("active"), r.id) is None
    finally:
        await w.stop(grace=1)


async def test_hard_limit_in_a_real_worker_process(engine, spawn_worker):
    spawn_worker(imports="tests.test_time_limits")  # the CLI worker (uvloop when installed)
    r = await stubborn.delay("proc")
    soft = await soft_reraise.delay("proc-soft")
    with pytest.raises(TimeLimitExceeded):
        await r.get(timeout=10)
    with pytest.raises(SoftTimeLimitExceeded):
        await soft.get(timeout=10)
    assert await notes("proc-soft") == ["cleaned"]
    frozen = await ticks("proc")
    await asyncio.sleep(0.5)
    assert await ticks("proc") == frozen and await notes("proc") == ["start"]


async def test_revoke_terminate_stops_a_cancellation_swallower(worker):
    r = await stubborn.apply_async(("term",), time_limit=30)
    deadline = time.monotonic() + 5
    while await ticks("term") < 3:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    await r.revoke(terminate=True)
    with pytest.raises(Exception, match="revoked|terminated"):
        await r.get(timeout=5)
    assert await r.state() == states.REVOKED
    frozen = await ticks("term")
    await asyncio.sleep(0.3)
    assert await ticks("term") == frozen


async def test_a_task_without_a_hard_limit_still_gets_its_soft_limit_and_its_own_cancellations(worker):
    r = await unbounded_soft.delay("us")
    assert await r.get(timeout=5) == "cleaned"
    assert await notes("us") == ["cleaned"]
    assert 0.25 < await duration(r) < 2.5
    assert await (await own_timeout.delay()).get(timeout=5) == "both handled"
    assert await (await t.add.delay(1, 2)).get(timeout=5) == 3  # the worker is untouched


async def test_revoke_terminate_stops_a_swallower_without_any_limit(worker):
    r = await unbounded_stubborn.delay("ut")
    deadline = time.monotonic() + 5
    while await ticks("ut") < 3:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    await r.revoke(terminate=True)
    with pytest.raises(Exception, match="revoked|terminated"):
        await r.get(timeout=5)
    assert await r.state() == states.REVOKED
    assert SYNC_LOG.get("ut-finally") is True
    frozen = await ticks("ut")
    await asyncio.sleep(0.3)
    assert await ticks("ut") == frozen
    assert await (await t.add.delay(2, 2)).get(timeout=5) == 4


async def test_cold_shutdown_stops_a_swallower_without_any_limit_and_requeues_it(engine):
    broker = get_broker()
    w = Worker(beat=False)
    await w.start(handle_signals=False)
    r = await unbounded_stubborn.delay("uc")
    deadline = time.monotonic() + 5
    while await ticks("uc") < 3:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    started = time.monotonic()
    await asyncio.wait_for(w.stop(grace=0), timeout=10)
    assert time.monotonic() - started < 5  # the swallowed cancellation did not hold the shutdown up
    assert SYNC_LOG.get("uc-finally") is True
    frozen = await ticks("uc")
    await asyncio.sleep(0.3)
    assert await ticks("uc") == frozen
    # Requeued without counting a retry, not failed: the next worker runs it again.
    assert await r.state() != states.FAILURE
    assert await broker.redis.exists(broker.key("msg", r.id))
    assert await broker.redis.zscore(broker.key("active"), r.id) is None


# ---------------------------------------------------------------- sync tasks in the thread pool


async def test_sync_task_soft_limit_is_raised_in_its_thread(worker):
    r = await sync_soft.delay("ss")
    assert await r.get(timeout=5) == "cleaned in thread"
    thread_name, request_id = SYNC_LOG["ss"]
    assert thread_name.startswith("tasks-engine-sync") and request_id == r.id
    assert 0.25 < await duration(r) < 2.5


async def test_sync_task_hard_limit_fails_on_time_and_stops_the_thread(worker):
    r = await sync_hard.delay("sh")
    with pytest.raises(TimeLimitExceeded):
        await r.get(timeout=5)
    assert 0.35 < await duration(r) < 2.5
    await asyncio.sleep(0.1)
    assert "sh-stopped" in SYNC_LOG  # TimeLimitExceeded landed in the thread too
    count = SYNC_LOG["sh"]
    await asyncio.sleep(0.1)
    assert SYNC_LOG["sh"] == count
    stuck = await sync_stuck.delay(3.0)  # blocked in one C call: still FAILED at its limit
    with pytest.raises(TimeLimitExceeded):
        await stuck.get(timeout=5)
    assert await duration(stuck) < 2.0


# ---------------------------------------------------------------- blocked loop


async def test_blocked_loop_is_reported_with_the_culprit_task_id(engine, worker, capsys):
    engine.blocked_loop_seconds = 0.4  # read live by the watchdog thread
    configure_logging()
    try:
        bystanders = [await t.sleep.delay(1.3) for _ in range(2)]
        await asyncio.sleep(0.1)
        sampled: list[list[tuple[str, float]]] = []
        sampler = threading.Timer(0.6, lambda: sampled.append(current_steps()))
        sampler.start()  # before sending: an idle worker may start the hog before delay() returns
        r = await hog.delay(1.0)
        assert await r.get(timeout=10) == "done"
        for b in bystanders:
            await b.get(timeout=5)
        # The engine knows which task holds the loop ...
        assert [label for label, _ in sampled[0]] == [r.id] and sampled[0][0][1] > 0.3
        # ... and the worker's watchdog says so, loudly, in its log.
        captured = capsys.readouterr()
        line = next(line for line in (captured.out + captured.err).splitlines() if "event loop blocked" in line)
        assert "error" in line and f"task_id={r.id}" in line
    finally:
        logging.getLogger().handlers.clear()


# ---------------------------------------------------------------- options and defaults


async def test_per_call_limits_override_the_task_and_soft_above_hard_is_an_error(worker):
    broker = get_broker()
    slow = await t.sleep.apply_async((5,), time_limit=0.3)  # no limit of its own
    with pytest.raises(TimeLimitExceeded):
        await slow.get(timeout=5)
    later = await soft_uncaught.apply_async(("later",), soft_time_limit=0.6)  # its own soft limit is 0.3 s
    with pytest.raises(SoftTimeLimitExceeded):
        await later.get(timeout=5)
    assert await duration(later) > 0.55
    relaxed = await short.apply_async((0.4,), time_limit=2)  # its own hard limit is 0.2 s
    assert await relaxed.get(timeout=5) == 0.4
    both = await plain.apply_async(("both",), soft_time_limit=0.05, time_limit=0.5)
    with pytest.raises(TimeLimitExceeded):
        await both.get(timeout=5)
    assert await notes("both") == ["soft"] and await duration(both) > 0.45
    with pytest.raises(ValueError, match="soft_time_limit"):
        await t.sleep.apply_async((1,), soft_time_limit=2, time_limit=1)
    with pytest.raises(ValueError, match="soft_time_limit"):
        await soft_uncaught.apply_async(("x",), time_limit=0.1)  # below the task's soft limit of 0.3
    assert await broker.redis.zcard(broker.key("q", "default")) == 0


async def test_limits_default_from_settings(engine, worker):
    engine.task_soft_time_limit = 0.3
    engine.task_time_limit = 0.8
    r = await plain.delay("p")
    with pytest.raises(TimeLimitExceeded):
        await r.get(timeout=5)
    assert await notes("p") == ["soft"]
    assert 0.75 < await duration(r) < 3


def test_seed_app_settings_are_the_task_defaults():
    code = (
        "import settings\n"
        "from tasks_engine import shared_task\n"
        "t = shared_task(name='probe.defaults')(lambda: None)\n"
        "print(t.time_limit, t.soft_time_limit, t.max_retries, t.default_retry_delay)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["3600.0", "3000.0", "3", "60.0"]


# ---------------------------------------------------------------- many at once


async def test_50_concurrent_jobs_with_limits_do_not_disturb_each_other(worker):
    modes = ["normal", "catch", "raise", "stubborn", "sync"]
    calls = []
    started = time.monotonic()
    for n in range(50):
        mode = modes[n % len(modes)]
        if mode == "sync":
            r = await sync_mixed.apply_async((n,), soft_time_limit=0.3, time_limit=2)
        elif mode == "stubborn":
            r = await mixed.apply_async((mode, n), time_limit=0.6)
        elif mode == "normal":
            r = await mixed.apply_async((mode, n), soft_time_limit=1.5, time_limit=2)
        else:
            r = await mixed.apply_async((mode, n), soft_time_limit=0.3, time_limit=2)
        calls.append((mode, n, r))
    for mode, n, r in calls:
        value = await r.get(timeout=10, propagate=False)
        took = await duration(r)
        if mode == "normal":
            assert value == n, (mode, n, value)
        elif mode == "catch":
            assert value == -n and 0.25 < took < 2.5, (mode, n, took)
        elif mode == "raise":
            assert isinstance(value, SoftTimeLimitExceeded) and 0.25 < took < 2.5, (mode, n, took)
        elif mode == "stubborn":
            assert isinstance(value, TimeLimitExceeded) and 0.55 < took < 3, (mode, n, took)
        else:
            assert value == 1000 + n and 0.25 < took < 2.5, (mode, n, value, took)
    assert time.monotonic() - started < 8


async def test_a_body_stopped_mid_connect_leaves_the_event_loop_able_to_connect(engine):
    """A swallower stopped while its TCP connect is in flight: the next connection still completes.

    Closing the coroutine at that pending await skipped the connect's clean-up, so the event loop kept
    watching a closed descriptor and a new socket that reused its number never finished connecting
    (a cold shutdown's put-back then timed out). The broker's own client must also still answer."""
    # A loopback listener in another thread, as Redis is to the worker: it accepts and hangs up.
    server = socket.create_server(("127.0.0.1", 0), backlog=128)
    host, port = server.getsockname()[:2]

    def hang_up() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    connects = 0

    async def swallower() -> None:
        nonlocal connects
        while True:
            try:
                _, writer = await asyncio.open_connection(host, port)
                connects += 1
                writer.close()
            except asyncio.CancelledError:
                pass

    try:
        for round_ in range(40):
            run = LimitedRun(f"mid-connect-{round_}")
            body = asyncio.ensure_future(run.run_coroutine(swallower(), None, 30))
            await asyncio.sleep(0.002 + (round_ % 5) * 0.0013)
            run.terminate()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(body, timeout=2)
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=2)
            writer.close()
            assert await asyncio.wait_for(get_broker().redis.ping(), timeout=2)
    finally:
        server.close()
    assert connects > 40  # the bodies really were connecting when they were stopped
