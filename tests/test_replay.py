"""Issue 24, points 2 and 5: replayed, re-sent and oversized messages, against a real Redis and a real worker.

A message whose job already has a final record (SUCCESS, FAILURE, REVOKED) never runs again, whether it
is pushed straight into a queue, handed to an idle worker by an enqueue, or comes back when a lease runs
out: it is settled as a duplicate (logged, counted in the worker's metrics), its record left as it was.
A signed message carries how long it is valid; a replay after that is a dead letter naming the reason.
Every message a worker decodes is held to ``max_payload_bytes``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
import structlog
from pydantic import SecretStr

import tests.sample_tasks as t
from tasks_engine import AsyncResult, EngineSettings, configure, states
from tasks_engine.exceptions import MessageError
from tasks_engine.model.messages import Message, decode, encode
from tasks_engine.ops import control
from tasks_engine.store import Enqueue, get_broker
from tests.conftest import running_worker

KEY = SecretStr("replay-signing-key")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _signed(engine: EngineSettings, **more: Any) -> EngineSettings:
    """This test's settings with signing on (client and in-process worker alike) and a metrics port."""
    await get_broker().close()
    return configure(engine, signing_key=KEY, metrics_port=_free_port(), metrics_host="127.0.0.1", **more)


async def until(predicate: Callable[[], Awaitable[Any]], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def scrape(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data.decode()


def duplicates_counted(metrics: str, task: str, state: str) -> float:
    """The worker's ``tasks_engine_duplicate_deliveries_total`` for (task, state), as scraped."""
    for line in metrics.splitlines():
        name, _, rest = line.partition("{")
        labels, _, value = rest.partition("} ")
        if name == "tasks_engine_duplicate_deliveries_total" and sorted(labels.split(",")) == sorted(
            [f'task="{task}"', f'state="{state}"']
        ):
            return float(value)
    return 0.0


async def push_raw(task_id: str, raw: bytes, queue: str = "default") -> None:
    """Put bytes straight into a queue, as someone who can write to Redis would (no enqueue script)."""
    broker = get_broker()
    await broker.redis.set(broker.key("msg", task_id), raw)
    await broker.redis.zadd(broker.key("q", queue), {task_id: 5 * 10**12})
    await broker.redis.lpush(broker.key("wake", queue), "1")


async def ran(key: str) -> int:
    broker = get_broker()
    return int(await broker.redis.llen(broker.key("test-log", key)))


async def logged_for(logs: list[dict[str, Any]], task_id: str) -> bool:
    return any(e.get("task_id") == task_id for e in logs)


async def settled_unrun(task_id: str) -> bool:
    """Nothing of the job is left to deliver: no message, not queued, not leased."""
    broker = get_broker()
    return (
        not await broker.redis.exists(broker.key("msg", task_id))
        and await broker.redis.zscore(broker.key("q", "default"), task_id) is None
        and await broker.redis.zscore(broker.key("active"), task_id) is None
        and not await broker.redis.hexists(broker.key("inflight"), task_id)
    )


async def idle(worker_id: str) -> bool:
    broker = get_broker()
    return bool(await broker.redis.zscore(broker.key("idle", "default"), worker_id))


async def captured(call: Awaitable[AsyncResult]) -> tuple[AsyncResult, bytes]:
    """Send a job while no worker runs, and keep the bytes of its stored message (what an attacker copies)."""
    result = await call
    raw = await get_broker().redis.get(get_broker().key("msg", result.id))
    assert raw is not None and raw.startswith(b"te-sig")
    return result, raw


# ---------------------------------------------------------------- final records
@pytest.mark.parametrize("final", [states.SUCCESS, states.FAILURE, states.REVOKED])
async def test_replays_of_a_finished_job_never_run_it_again(engine, final):
    """The captured message pushed back three times (and once through the enqueue script, which hands a job
    straight to an idle worker): the body ran once, the record is byte for byte the same, nothing is left
    queued, and the worker's metrics count 4 duplicates."""
    settings = await _signed(engine)
    key = f"replay-{uuid.uuid4().hex[:6]}"
    task = t.fail if final == states.FAILURE else t.record
    result, raw = await captured(task.delay(key) if final == states.FAILURE else t.record.delay(key, "once"))
    broker = get_broker()
    if final == states.REVOKED:
        await result.revoke()
    async with running_worker() as worker:
        if final != states.REVOKED:
            await result.get(timeout=10, propagate=False)
        await until(lambda: settled_unrun(result.id))
        record = await broker.redis.hgetall(broker.result_key(result.id))
        assert record[b"state"].decode() == final
        for _ in range(3):
            await push_raw(result.id, raw)
            await until(lambda: settled_unrun(result.id))
        await until(lambda: idle(worker.id))  # the next enqueue would hand the job straight to it
        await broker.enqueue([Enqueue(result.id, raw, "default", 5)])
        await until(lambda: settled_unrun(result.id))
        await asyncio.sleep(0.3)  # time to run, had it been started
        assert await broker.redis.hgetall(broker.result_key(result.id)) == record  # delivered, date_done, ...
        if task is t.record:
            assert await ran(key) == (1 if final == states.SUCCESS else 0)
        assert await settled_unrun(result.id)
        assert duplicates_counted(await scrape(settings.metrics_port or 0), task.name, final) == 4
        assert await (await t.add.delay(1, 2)).get(timeout=10) == 3  # and the worker carries on


async def test_unsigned_replay_of_a_finished_job_never_runs_it_again(engine):
    """Signing off: the same holds, since the check is the record's, not the signature's; the duplicate is
    logged (a warning naming the job and its state); and a call that reuses the finished job's id gets its
    first result, unrun."""
    key = f"plain-{uuid.uuid4().hex[:6]}"
    result = await t.record.delay(key, "once")
    raw = await get_broker().redis.get(get_broker().key("msg", result.id))
    async with running_worker():
        assert await result.get(timeout=10) == "once"
        before = await result.record()
        with structlog.testing.capture_logs() as logs:
            await push_raw(result.id, raw)
            await until(lambda: settled_unrun(result.id))
            await until(lambda: logged_for(logs, result.id))
        (logged,) = [e for e in logs if e.get("task_id") == result.id]
        assert logged["log_level"] == "warning" and "duplicate delivery" in logged["event"]
        assert logged["task_name"] == t.record.name and logged["state"] == states.SUCCESS
        again = await t.record.apply_async((key, "twice"), task_id=result.id)  # a call reusing the id
        assert await again.get(timeout=10) == "once"
        await until(lambda: settled_unrun(result.id))
        await asyncio.sleep(0.3)
        assert await ran(key) == 1
        assert await result.record() == before


async def test_a_copy_of_a_running_job_is_dropped_and_the_job_runs_once(engine):
    settings = await _signed(engine)
    result, raw = await captured(t.sleep.delay(1.5))
    broker = get_broker()
    async with running_worker():
        await until(lambda: _state_is(result, states.STARTED))
        await push_raw(result.id, raw)  # while it runs
        assert await result.get(timeout=10) == 1.5
        info = await result.record()
        assert info["delivered"] == 1  # never leased a second time
        await until(lambda: settled_unrun(result.id))
        assert await broker.redis.zcard(broker.key("q", "default")) == 0
        assert duplicates_counted(await scrape(settings.metrics_port or 0), t.sleep.name, "RUNNING") == 1


async def _state_is(result: AsyncResult, state: str) -> bool:
    return await result.state() == state


async def test_an_expired_lease_of_a_job_that_finished_does_not_run_it_again(engine):
    """A job left leased (its message still there) although its record is final: the reaper takes it off the
    books instead of putting it back (it used to reset the record to PENDING, and the job ran again)."""
    settings = await _signed(engine)
    key = f"lease-{uuid.uuid4().hex[:6]}"
    result, raw = await captured(t.record.delay(key, "once"))
    broker = get_broker()
    async with running_worker():
        assert await result.get(timeout=10) == "once"
        record = await broker.redis.hgetall(broker.result_key(result.id))
        await broker.redis.set(broker.key("msg", result.id), raw)
        await broker.redis.zadd(broker.key("active"), {result.id: 1})  # a lease long expired
        await broker.redis.hset(broker.key("inflight"), result.id, f"default|{5 * 10**12}|a-dead-worker")
        await until(lambda: settled_unrun(result.id))
        await asyncio.sleep(0.3)
        assert await ran(key) == 1
        assert await broker.redis.hgetall(broker.result_key(result.id)) == record
        assert duplicates_counted(await scrape(settings.metrics_port or 0), t.record.name, states.SUCCESS) == 1


# ---------------------------------------------------------------- signed validity
async def test_a_signed_message_replayed_after_its_validity_is_a_dead_letter(engine):
    """Past ``signing_max_age`` (and once the record that stops a replay is gone), the captured message is
    refused: a dead letter naming the reason, a FAILURE record, the body not run again."""
    await _signed(engine, signing_max_age=1)
    key = f"stale-{uuid.uuid4().hex[:6]}"
    result, raw = await captured(t.record.delay(key, "once"))
    broker = get_broker()
    async with running_worker():
        assert await result.get(timeout=10) == "once"
        await broker.redis.delete(broker.result_key(result.id))  # as if the record had expired
        await asyncio.sleep(2.2)
        await push_raw(result.id, raw)
        exc = await result.get(timeout=10, propagate=False)
        assert isinstance(exc, MessageError) and "signed message expired" in str(exc), exc
        assert await result.state() == states.FAILURE
        dead = [orjson.loads(e) for e in await broker.redis.lrange(broker.key("dead"), 0, -1)]
        assert [d["reason"] for d in dead if d["id"] == result.id] == [str(exc)]
        assert await ran(key) == 1
        assert await settled_unrun(result.id)
        requeued, problems = await control.requeue_dead([result.id])  # nor can an operator send it again
        assert requeued == 0 and len(problems) == 1 and "signed message expired" in problems[0], problems


def test_validity_is_signed_and_old_signed_messages_are_read_within_it(engine):
    configure(engine, signing_key=KEY, signing_max_age=60)
    raw = encode(Message(id="v2", task="demo.add", args=[1, 2]))
    until = int(raw.split(b":")[1])
    assert time.time() + 55 < until <= time.time() + 62
    assert decode(raw, "v2").args == [1, 2]
    longer = raw.replace(b":%d:" % until, b":%d:" % (until + 10**6), 1)  # pushing the expiry out breaks the HMAC
    with pytest.raises(MessageError, match="signature does not match"):
        decode(longer, "v2")
    # The older form (te-sig1, HMAC of the body alone) is still read, valid from its signed sent_at / eta.

    def v1(message: Message) -> bytes:
        body = message.model_dump_json(exclude={"compression"}).encode()
        return (
            b"te-sig1:"
            + hmac.new(KEY.get_secret_value().encode(), body, hashlib.sha256).hexdigest().encode()
            + (b":" + body)
        )

    assert decode(v1(Message(id="old", task="demo.add", args=[1, 2]))).args == [1, 2]
    assert decode(v1(Message(id="due", task="demo.add", sent_at=time.time() - 600, eta=time.time() + 5))).id == "due"
    with pytest.raises(MessageError, match="signed message expired"):
        decode(v1(Message(id="stale", task="demo.add", sent_at=time.time() - 120)))
    configure(engine)


# ---------------------------------------------------------------- max_payload_bytes on every decode
async def test_oversized_message_pushed_into_a_queue_is_refused_by_the_worker(engine):
    """2 MB under the default 1 MB limit, pushed with raw Redis commands (claim path) and through the enqueue
    script to an idle worker (hand-off path): neither runs; each is a FAILURE naming the limit and the size,
    and a dead letter saying the same."""
    key = f"big-{uuid.uuid4().hex[:6]}"
    big = [encode(Message(id=f"big-{i}-{key}", task="demo.record", args=[key, "x" * 2_000_000])) for i in range(2)]
    broker = get_broker()
    async with running_worker() as worker:
        await push_raw(f"big-0-{key}", big[0])
        await until(lambda: idle(worker.id))
        await broker.enqueue([Enqueue(f"big-1-{key}", big[1], "default", 5)])
        dead = []
        for i, raw in enumerate(big):
            task_id = f"big-{i}-{key}"
            exc = await AsyncResult(task_id).get(timeout=15, propagate=False)
            reason = f"message is {len(raw)} bytes, over max_payload_bytes=1000000"
            assert isinstance(exc, MessageError) and reason in str(exc), exc
            info = await AsyncResult(task_id).record()
            assert info["state"] == states.FAILURE and info["exc_type"] == "MessageError"
            assert await broker.redis.hget(broker.result_key(task_id), "result") is None  # nothing ran, nothing kept
            entries = [orjson.loads(e) for e in await broker.redis.lrange(broker.key("dead"), 0, -1)]
            dead += [e for e in entries if e["id"] == task_id and reason in e["reason"]]
            assert await settled_unrun(task_id)
        assert len(dead) == 2
        assert await ran(key) == 0
    with pytest.raises(MessageError, match=r"over max_payload_bytes=1000000; refused unread"):
        decode(big[0])  # and every other reader (dead requeue, inspect) decodes the same way
        assert await (await t.add.delay(1, 2)).get(timeout=10) == 3
