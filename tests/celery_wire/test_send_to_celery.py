"""A tasks_engine sender → a real ``celery worker --pool solo`` process → the tasks_engine result API.

The Celery side is the unmodified app in ``send_app.py``; its tasks return what Celery's worker made
of our message (args, kwargs, retries, eta, expires, priority, queue), so each option is asserted
from inside Celery. Results come from Celery's own Redis result backend, awaited and blocking.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import celery  # noqa: F401 - a test dependency: when missing this module fails (never a silent skip)
import pytest
import redis as sync_redis
from kombu import Connection

from tasks_engine import CeleryTask, SyncResult, TaskError, TaskRevokedError, celery_task, configure
from tasks_engine.client import sync
from tasks_engine.core.config import EngineSettings
from tasks_engine.model.celery_outbound import encode_call
from tests.conftest import REDIS_URL, ROOT, not_on_cluster, redis_client
from tests.test_sync_api import our_redis_connections

pytestmark = not_on_cluster


def start_celery_worker(prefix: str, queue: str, log: Path) -> subprocess.Popen[bytes]:
    """``celery worker --pool solo`` on ``queue``; returns once it has declared its queue in Redis."""
    env = {**os.environ, "CELERY_SEND_PREFIX": prefix, "REDIS_URL": REDIS_URL, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "celery", "-A", "tests.celery_wire.send_app", "worker", "--pool", "solo"]
    command += ["-Q", queue, "-n", f"{queue}@%h", "-l", "warning"]
    command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    client = redis_client()
    deadline = time.monotonic() + 30
    while not client.exists(f"{prefix}_kombu.binding.{queue}"):  # the worker declared its queue
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"celery worker did not start: {log.read_text()}")
        time.sleep(0.05)
    client.close()
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@pytest.fixture(scope="module")
def celery_side(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """One Celery worker for the module: (key prefix of the Celery app, the queue it consumes)."""
    prefix = f"h6send{uuid.uuid4().hex[:8]}:"
    queue = f"legacy{uuid.uuid4().hex[:6]}"
    proc = start_celery_worker(prefix, queue, tmp_path_factory.mktemp("celery") / "worker.log")
    yield prefix, queue
    stop(proc)
    client = redis_client()
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def legacy(celery_side: tuple[str, str], engine: EngineSettings) -> Callable[[str], CeleryTask]:
    prefix, queue = celery_side
    return lambda name: celery_task(name, queue=queue, transport_prefix=prefix, backend_prefix=prefix)


async def test_args_kwargs_retries_priority_and_limits_reach_celery(legacy: Callable[[str], CeleryTask]) -> None:
    task = legacy("legacy.request")
    result = await task.apply_async(
        [1, "two"], {"k": [3]}, retries=2, priority=5, time_limit=30, soft_time_limit=20, expires=60
    )
    out = await result.get(timeout=15)
    assert out["id"] == result.id
    assert (out["args"], out["kwargs"]) == ([1, "two"], {"k": [3]})
    assert out["retries"] == 2
    assert out["priority"] == 5
    assert out["queue"] == task.queue
    assert out["timelimit"] == [30, 20]  # Celery's worker reads [hard, soft]
    assert out["root_id"] == result.id and out["parent_id"] is None
    expires = datetime.fromisoformat(out["expires"])
    assert abs((expires - datetime.now(UTC)).total_seconds() - 60) < 15
    assert await result.state() == "SUCCESS"
    assert await result.ready() and await result.successful() and not await result.failed()
    assert await result.result() == out
    assert (await task.AsyncResult(result.id).get(timeout=1)) == out


async def test_countdown_and_eta_are_honoured_by_celery(legacy: Callable[[str], CeleryTask]) -> None:
    task = legacy("legacy.request")
    sent = time.time()
    later = await task.apply_async(countdown=1.5)
    at = datetime.now(UTC) + timedelta(seconds=1.5)
    scheduled = await task.apply_async(eta=at)
    now = await task.delay("now")
    first = await now.get(timeout=15)
    assert first["eta"] is None and first["started"] - sent < 1.4
    for result in (later, scheduled):
        out = await result.get(timeout=15)
        assert out["started"] - sent >= 1.4, out
        assert out["eta"] is not None
    assert datetime.fromisoformat((await scheduled.get(timeout=1))["eta"]) == at


async def test_an_expired_message_is_revoked_by_celery(legacy: Callable[[str], CeleryTask]) -> None:
    result = await legacy("legacy.request").apply_async(countdown=1.5, expires=0.5)  # expires before it is due
    with pytest.raises(TaskRevokedError):
        await result.get(timeout=15)
    assert await result.state() == "REVOKED"
    assert await result.ready() and not await result.successful()


async def test_failures_raise_with_the_remote_exception_type(legacy: Callable[[str], CeleryTask]) -> None:
    task = legacy("legacy.fail")
    builtin = await task.delay("value", "bad input 7")
    with pytest.raises(ValueError, match="bad input 7"):
        await builtin.get(timeout=15)
    assert await builtin.state() == "FAILURE" and await builtin.failed()
    assert isinstance(await builtin.result(), ValueError)
    assert "ValueError" in (await builtin.traceback() or "")

    custom = await task.delay("custom", "ledger closed")
    with pytest.raises(TaskError) as info:  # a class this process never imported: named, not rebuilt
        await custom.get(timeout=15)
    assert info.value.exc_type == "tests.celery_wire.send_app.LedgerError"
    assert "ledger closed" in str(info.value)
    assert isinstance(await custom.get(timeout=1, propagate=False), TaskError)


async def test_ignore_result_is_honoured_by_celery(legacy: Callable[[str], CeleryTask]) -> None:
    task = legacy("legacy.add")
    ignored = await task.apply_async([1, 1], ignore_result=True)
    after = await task.delay(2, 2)  # one solo worker, one queue: runs after the ignored one
    assert await after.get(timeout=15) == 4
    assert await ignored.state() == "PENDING"  # Celery stored nothing for it


async def test_get_waits_through_celery_retries(legacy: Callable[[str], CeleryTask]) -> None:
    task = legacy("legacy.flaky")
    retried = await task.delay(2)
    assert await retried.get(timeout=15) == 2  # RETRY is not ready: get() waits for the final state
    already = await task.apply_async([2], retries=2)  # the retries header counts: no retry left to make
    assert await already.get(timeout=15) == 2


async def test_pending_and_timeout(legacy: Callable[[str], CeleryTask]) -> None:
    unknown = legacy("legacy.add").AsyncResult(str(uuid.uuid4()))
    assert await unknown.state() == "PENDING" and await unknown.result() is None
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="legacy.add"):
        await unknown.get(timeout=0.3)
    assert time.monotonic() - started < 2


async def test_concurrent_gets_share_one_subscription(
    legacy: Callable[[str], CeleryTask], sync_client: sync_redis.Redis
) -> None:
    task = legacy("legacy.request")
    results = [await task.apply_async([i], countdown=1.5) for i in range(30)]
    waiting = [asyncio.ensure_future(r.get(timeout=15)) for r in results]
    await asyncio.sleep(0.5)
    assert not any(w.done() for w in waiting)
    assert our_redis_connections(sync_client, subscribed=True) == 1
    outs = await asyncio.gather(*waiting)
    assert [o["args"] for o in outs] == [[i] for i in range(30)]


def test_sync_send_and_get(celery_side: tuple[str, str], prefix: str) -> None:
    celery_prefix, queue = celery_side
    configure(EngineSettings(key_prefix=prefix, beat_enabled=False))
    try:
        task = celery_task("legacy.add", queue=queue, transport_prefix=celery_prefix, backend_prefix=celery_prefix)
        results = [task.delay_sync(i, 1) for i in range(10)]
        assert all(isinstance(r, SyncResult) for r in results)
        assert [r.get(timeout=15) for r in results] == [i + 1 for i in range(10)]
        assert results[0].state == "SUCCESS" and results[0].ready() and results[0].successful()
        assert results[0].result == 1
        failing = celery_task("legacy.fail", queue=queue, transport_prefix=celery_prefix, backend_prefix=celery_prefix)
        failed = failing.apply_async_sync(["value", "sync boom"])
        with pytest.raises(ValueError, match="sync boom"):
            failed.get(timeout=15)
        assert failed.state == "FAILURE" and failed.failed()
        assert task.SyncResult(results[3].id).get(timeout=1) == 4
        own_clients = celery_task(
            "legacy.add",
            queue=queue,
            transport_prefix=celery_prefix,
            backend_prefix=celery_prefix,
            broker_url=REDIS_URL,  # Celery's broker and backend named by URL: clients of their own
            backend_url=REDIS_URL,
        )
        assert own_clients.delay_sync(40, 2).get(timeout=15) == 42
    finally:
        sync.shutdown()


async def test_priority_lists_are_consumed_best_first(engine: EngineSettings, tmp_path: Path) -> None:
    """Queued before any worker runs: kombu's worker takes the priority-0 message first."""
    prefix = f"h6prio{uuid.uuid4().hex[:8]}:"
    queue = "prio"
    task = celery_task("legacy.request", queue=queue, transport_prefix=prefix, backend_prefix=prefix)
    low = [await task.apply_async([f"low{i}"], priority=9) for i in range(3)]
    high = await task.apply_async(["high"], priority=0)
    proc = start_celery_worker(prefix, queue, tmp_path / "worker.log")
    try:
        started = {r.id: (await r.get(timeout=15))["started"] for r in [*low, high]}
    finally:
        stop(proc)
        client = redis_client()
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    assert started[high.id] < min(started[r.id] for r in low)
    assert [started[r.id] for r in low] == sorted(started[r.id] for r in low)


def test_bad_calls_fail_at_the_boundary_naming_the_task() -> None:
    task = celery_task("legacy.add", queue="legacy")
    now = datetime.now(UTC)

    def build(*args: Any, **options: Any) -> Any:
        return encode_call(
            "legacy.add", list(args), {}, {"queue": "legacy", **options}, task_id="x", now=now, origin="o"
        )

    with pytest.raises(TypeError, match=r"'legacy.add'.*JSON"):
        build(object())
    with pytest.raises(ValueError, match=r"'legacy.add'.*priority"):
        build(1, priority=12)
    with pytest.raises(TypeError, match=r"'legacy.add'.*unknown option.*bogus"):
        build(1, bogus=True)
    with pytest.raises(TypeError, match=r"'legacy.add'.*countdown"):
        build(1, countdown="soon")
    with pytest.raises(ValueError, match=r"'legacy.add'.*eta"):
        build(1, eta="tomorrow")
    with pytest.raises(ValueError, match=r"'legacy.add'.*retries"):
        build(1, retries=-1)
    with pytest.raises(ValueError, match="queue"):
        celery_task("legacy.add", queue="")
    with pytest.raises(TypeError, match=r"'legacy.add'.*JSON"):
        task.delay_sync(object())


def test_the_envelope_is_what_kombu_reads(sync_client: sync_redis.Redis) -> None:
    """kombu's own message class decodes what we push (body, headers, properties), before any worker."""
    configure(EngineSettings(beat_enabled=False))
    prefix = f"h6env{uuid.uuid4().hex[:8]}:"
    try:
        result = celery_task("legacy.add", queue="env", transport_prefix=prefix).apply_async_sync([2, 3], priority=4)
        raw = sync_client.lpop(f"{prefix}env\x06\x163")
        assert raw is not None
        assert sync_client.sismember(f"{prefix}_kombu.binding.env", "env\x06\x16\x06\x16env")
    finally:
        sync.shutdown()
        keys = list(sync_client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            sync_client.delete(*keys)
    with Connection("memory://") as conn:  # any kombu channel turns a stored envelope into its Message
        message = conn.default_channel.message_to_python(json.loads(raw))
        assert message.headers["task"] == "legacy.add" and message.headers["id"] == result.id
        assert message.decode() == [[2, 3], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
        assert message.properties["priority"] == 4
        assert message.delivery_info["routing_key"] == "env"
        assert message.headers["eta"] is None and message.headers["timelimit"] == [None, None]
    at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    both = encode_call(
        "legacy.add", [], {}, {"countdown": 0, "eta": at}, task_id="i", now=datetime.now(UTC), origin="o"
    )
    assert json.loads(both.envelope)["headers"]["eta"] == at.isoformat()  # a countdown of 0 is none, as Celery
