"""Task behaviour ported from Celery's own tests (t/unit/tasks/test_tasks.py, t/integration/test_tasks.py,
t/unit/app/test_amqp.py): retries, direct calls, call and task options. Each docstring names the Celery
test it mirrors. A worker runs in the test's process against the real Redis wherever one is involved;
Celery's ``task.apply()`` cases run eagerly here too.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import time
import uuid
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr

from tasks_engine import (
    MaxRetriesExceededError,
    chord,
    configure,
    shared_task,
    states,
)
from tasks_engine.client.plan import INERT_CALL_OPTIONS
from tasks_engine.client.results import AsyncResult
from tasks_engine.exceptions import MessageError, TaskDefinitionError
from tasks_engine.model.messages import Message, decode, encode
from tasks_engine.model.records import exception_fields, rebuild_exception
from tasks_engine.model.registry import INERT_TASK_OPTIONS, TaskOptions
from tasks_engine.store import get_broker
from tests.celery_compat import task_defs as d
from tests.conftest import running_worker

BLOB = "lorem ipsum dolor sit amet " * 4000  # ~108 kB, very compressible
IDLE = "cc-nobody-consumes"


def key() -> str:
    return uuid.uuid4().hex


async def wait_for_state(result: AsyncResult, state: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while await result.state() != state:
        assert time.monotonic() < deadline, f"{result.id} never reached {state}"
        await asyncio.sleep(0.02)


async def raw_message(task_id: str) -> bytes | None:
    broker = get_broker()
    raw: bytes | None = await broker.redis.get(broker.keys.message(task_id))
    return raw


# ================================================================ retries
async def test_retry(worker):
    """mirrors celery t/unit/tasks/test_tasks.py::test_task_retries::test_retry"""
    k = key()
    r = await d.retry_task.delay(0xFF, 0xFFFF, key=k)
    assert await r.get(timeout=10) == 0xFF
    assert d.iterations[k] == 4
    k = key()
    r = await d.retry_task.delay(0xFF, 0xFFFF, max_retries=10, key=k)
    assert await r.get(timeout=20) == 0xFF
    assert d.iterations[k] == 11


async def test_retry_task_max_retries_override(worker):
    """mirrors celery t/unit/tasks/test_tasks.py::test_task_retries::test_retry_task_max_retries_override
    (issue #6436): ``self.retry(max_retries=0)`` in an ``autoretry_for`` task is final, not retried again."""
    k = key()
    r = await d.max_retries_override.delay(k)
    with pytest.raises(d.MyCustomError):
        await r.get(timeout=10)
    assert d.iterations[k] == 3
    info = await r.record()
    assert info["state"] == states.FAILURE and info["retries"] == 2


async def test_retry_task_max_retries_override_eager(engine):
    """mirrors celery t/unit/tasks/test_tasks.py::test_task_retries::test_retry_task_max_retries_override
    (Celery runs it through ``apply()``)"""
    k = key()
    result = await d.max_retries_override.apply(args=(k,))
    with pytest.raises(d.MyCustomError):
        await result.get()
    assert d.iterations[k] == 3
    k2 = key()  # the override belongs to that one call: a new call starts from the task's own limit again
    again = await d.max_retries_override.apply(args=(k2,))
    with pytest.raises(d.MyCustomError):
        await again.get()
    assert d.iterations[k2] == 3


async def test_retry_max_retries_override_beats_retry_kwargs(worker):
    """mirrors celery t/unit/tasks/test_tasks.py::test_task_retries::test_retry_task_max_retries_override
    (the override replaces ``retry_kwargs['max_retries']`` in celery/app/autoretry.py)"""
    k = key()
    r = await d.override_beats_retry_kwargs.delay(k)
    with pytest.raises(d.MyCustomError, match="flaky"):
        await r.get(timeout=10)
    assert d.iterations[k] == 2  # max_retries=1 from the body, not 5 from retry_kwargs


async def test_retry_task_explicit_exception(worker):
    """mirrors celery t/unit/tasks/test_tasks.py::test_task_retries::test_retry_task_explicit_exception"""
    k = key()
    r = await d.explicit_exception.delay(k)
    with pytest.raises(d.MyCustomError, match="once"):
        await r.get(timeout=10)
    assert d.iterations[k] == 1


async def test_max_retries_exceeded_task_args(worker):
    """mirrors celery t/unit/tasks/test_tasks.py::test_task_retries::test_max_retries_exceeded_task_args
    (and ::test_max_retries_exceeded): the error read back from the result record carries them."""
    k = key()
    r = await d.retry_task.delay(0xFF, 0xFFFF, max_retries=2, care=False, key=k)
    with pytest.raises(MaxRetriesExceededError) as caught:
        await r.get(timeout=10)
    assert d.iterations[k] == 3
    assert caught.value.task_args == (0xFF, 0xFFFF)
    assert caught.value.task_kwargs == {"max_retries": 2, "care": False, "key": k}
    assert "max_retries=2" in str(caught.value)
    info = await r.record()
    assert info["exc_type"] == "MaxRetriesExceededError" and info["exc_message"] == str(caught.value)


async def test_max_retries_exceeded_task_args_eager(engine):
    """mirrors celery t/unit/tasks/test_tasks.py::test_task_retries::test_max_retries_exceeded_task_args"""
    k = key()
    result = await d.retry_task.apply(args=(0xFF, 0xFFFF), kwargs={"care": False, "key": k})
    with pytest.raises(MaxRetriesExceededError) as caught:
        await result.get()
    assert d.iterations[k] == 4  # the task's own max_retries=3
    assert caught.value.task_args == (0xFF, 0xFFFF)
    assert caught.value.task_kwargs == {"care": False, "key": k}


async def test_max_retries_exceeded_names_the_retry_arguments(worker):
    """mirrors celery t/unit/tasks/test_tasks.py::test_task_retries::test_max_retries_exceeded_task_args
    (Celery takes them from the retry's signature, so ``retry(args=...)`` shows the new ones)"""
    k = key()
    r = await d.retry_new_args.delay(1, key=k)
    with pytest.raises(MaxRetriesExceededError) as caught:
        await r.get(timeout=10)
    assert caught.value.task_args == (3,) and caught.value.task_kwargs == {"key": k}


def test_max_retries_exceeded_error_attributes_and_rebuild():
    """mirrors celery t/unit/tasks/test_tasks.py::test_task_retries::test_max_retries_exceeded_task_args
    (celery.exceptions.MaxRetriesExceededError takes task_args/task_kwargs keywords, default empty)"""
    plain = MaxRetriesExceededError("no more")
    assert (plain.task_args, plain.task_kwargs, str(plain)) == ((), {}, "no more")
    full = MaxRetriesExceededError("no more", task_args=[1, "a"], task_kwargs={"k": 2})
    assert full.task_args == (1, "a") and full.task_kwargs == {"k": 2} and str(full) == "no more"
    back = rebuild_exception(exception_fields(full))
    assert isinstance(back, MaxRetriesExceededError)
    assert (back.task_args, back.task_kwargs, str(back)) == ((1, "a"), {"k": 2}, "no more")


def _backoff_task(name: str, max_retries: int = 3, **options: Any) -> Any:
    @shared_task(name=name, bind=True, autoretry_for=(ZeroDivisionError,), max_retries=max_retries, **options)
    async def task(self: Any, x: int, y: int) -> float:
        d.count(name)
        return x / y

    return task


async def _asked_countdowns(task: Any, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    asked: list[Any] = []
    real = task.retry

    def spy(*args: Any, **kwargs: Any) -> Any:
        asked.append(kwargs.get("countdown"))
        return real(*args, **kwargs)

    monkeypatch.setattr(task, "retry", spy)
    result = await task.apply(args=(1, 0))
    with pytest.raises(ZeroDivisionError):
        await result.get()
    return asked


_BACKOFFS = [False, 0, 0.0, True, -1, 0.1, 1, 1.9, 2]


@pytest.mark.parametrize(
    ("retry_backoff", "expected"),
    list(zip(_BACKOFFS, [[None] * 4] * 3 + [[1, 2, 4, 8]] * 5 + [[2, 4, 8, 16]], strict=True)),
)
async def test_autoretry_backoff(engine, monkeypatch, retry_backoff, expected):
    """mirrors celery t/unit/tasks/test_tasks.py::test_task_retries::test_autoretry_backoff: a float factor is
    floored after ``max(1, x)`` (0.1 and 1.9 behave as 1), a false one means no backoff."""
    name = f"cc.backoff.{retry_backoff!r}"
    task = _backoff_task(name, retry_backoff=retry_backoff, retry_jitter=False)
    assert await _asked_countdowns(task, monkeypatch) == expected
    assert d.iterations[name] == 4
    d.iterations[name] = 0


@pytest.mark.parametrize(
    ("retry_backoff", "expected"),
    list(zip(_BACKOFFS, [[None] * 4] * 3 + [[0, 1, 3, 7]] * 5 + [[1, 3, 7, 15]], strict=True)),
)
async def test_autoretry_backoff_jitter(engine, monkeypatch, retry_backoff, expected):
    """mirrors celery t/unit/tasks/test_tasks.py::test_task_retries::test_autoretry_backoff_jitter
    (``random.randrange`` patched to ``i - 2``, as there)"""
    monkeypatch.setattr("random.randrange", lambda i: i - 2)
    name = f"cc.jitter.{retry_backoff!r}"
    task = _backoff_task(name, retry_backoff=retry_backoff, retry_jitter=True)
    assert await _asked_countdowns(task, monkeypatch) == expected
    d.iterations[name] = 0


async def test_override_retry_backoff_max(engine, monkeypatch):
    """mirrors celery t/unit/tasks/test_tasks.py::test_task_retries::test_override_retry_backoff_max_from_base
    (a float ``retry_backoff_max`` is truncated as Celery's ``int()`` does)"""
    task = _backoff_task("cc.backoff_max", 5, retry_backoff=True, retry_backoff_max=16.9, retry_jitter=False)
    assert task.options.retry_backoff_max == 16
    assert await _asked_countdowns(task, monkeypatch) == [1, 2, 4, 8, 16, 16]


async def test_float_backoff_on_a_worker(worker):
    """mirrors celery t/unit/tasks/test_tasks.py::test_task_retries::test_autoretry_backoff (0.1 → factor 1),
    on a real worker: the retry is deferred by 1 s."""
    r = await d.backoff_float.delay(1, 0)
    await wait_for_state(r, states.RETRY)
    broker = get_broker()
    due_ms = await broker.redis.zscore(broker.keys.delayed, r.id)
    assert due_ms is not None and 600 <= due_ms - time.time() * 1000 <= 1100
    with pytest.raises(ZeroDivisionError):
        await r.get(timeout=10)
    assert (await r.record())["retries"] == 1


@pytest.mark.parametrize("bad", ["yes", float("nan"), float("inf"), [1]])
def test_retry_backoff_must_be_a_bool_or_number(bad):
    """mirrors celery celery/app/autoretry.py (``float(retry_backoff)``: what float() refuses, or what is not
    finite, cannot be a backoff factor) — refused at definition time here"""
    with pytest.raises(TaskDefinitionError, match="retry_backoff"):
        shared_task(name="cc.bad_backoff", retry_backoff=bad)(lambda: None)


# ================================================================ direct calls
def test_simple_call():
    """mirrors celery t/integration/test_tasks.py::test_tasks::test_simple_call (and the user guide's unit test:
    ``result = send_email_task(...); result["status"]``)"""
    assert d.sync_add(1, 1) == 2
    assert d.sync_add(1, 1, z=1) == 3
    result = d.send_email_task("test@example.com", "测试", "内容")
    assert result["status"] == "success" and result["email"] == "test@example.com"


async def test_simple_call_async_task_returns_its_coroutine():
    """mirrors celery t/integration/test_tasks.py::test_tasks::test_simple_call, for an ``async def`` task:
    the call returns the coroutine the function returns, as calling the function itself would"""
    pending = d.async_add(1, 1, z=1)
    assert inspect.iscoroutine(pending)
    assert await pending == 3


async def test_call_helper_awaits_when_needed():
    """mirrors celery t/unit/tasks/test_tasks.py::test_tasks::test_regular_task (``mytask()`` runs the body);
    ``await task.call(...)`` gives the value for both kinds of task"""
    assert await d.sync_add.call(2, 3) == 5
    assert await d.async_add.call(2, 3) == 5


def test_bound_task_called_directly():
    """mirrors celery t/unit/tasks/test_tasks.py::test_tasks::test_regular_task (a bound task called directly
    gets ``self`` and ``request.called_directly``)"""
    assert d.sync_bound(4) == {"x": 4, "name": "cc.sync_bound", "called_directly": True}


async def test_chunks_and_delay_of_a_sync_task(worker):
    """mirrors celery t/unit/tasks/test_tasks.py::test_canvas_utils::test_chunks (starmap calls the task in the
    worker, through its direct call) and t/integration/test_tasks.py::test_tasks::test_basic_task"""
    assert await (await d.sync_add.delay(2, 3)).get(timeout=10) == 5
    grouped = await d.sync_add.chunks([(1, 2), (3, 4), (5, 6)], 2).delay()
    assert await grouped.get(timeout=10) == [[3, 7], [11]]
    grouped = await d.async_add.chunks([(1, 2), (3, 4)], 1).delay()
    assert await grouped.get(timeout=10) == [[3], [7]]


# ================================================================ compression
async def test_compression_saves_space_in_redis(engine):
    """mirrors celery t/unit/app/test_amqp.py::test_AMQP::test_compression (the task's compression is used
    when the call gives none)"""
    plain = await d.echo.apply_async(args=[BLOB], queue=IDLE)
    packed = await d.echo_gzip.apply_async(args=[BLOB], queue=IDLE)
    plain_raw, packed_raw = await raw_message(plain.id), await raw_message(packed.id)
    assert plain_raw is not None and packed_raw is not None
    assert len(packed_raw) * 20 < len(plain_raw), (len(packed_raw), len(plain_raw))
    envelope = json.loads(packed_raw)  # plain JSON the Lua scripts can read
    assert envelope["compression"] == "gzip" and envelope["id"] == packed.id
    assert (envelope["task"], envelope["queue"], envelope["priority"]) == ("cc.echo_gzip", IDLE, 5)
    assert decode(packed_raw, packed.id).args == [BLOB]
    alone = await d.echo_gzip.apply_async(args=[BLOB], queue=f"{IDLE}-z")  # the queue-wait view reads the
    sent = decode(await raw_message(alone.id) or b"", alone.id).sent_at  # envelope's sent_at as a message's
    assert await get_broker().oldest_ready_ms(f"{IDLE}-z") == int(sent * 1000)


@pytest.mark.parametrize("method", ["gzip", "zlib", "bzip2", "application/x-gzip"])
async def test_compression_override(worker, method):
    """mirrors celery t/unit/app/test_amqp.py::test_AMQP::test_compression_override (the call's compression
    wins; kombu's content-type names are accepted too)"""
    r = await d.echo.apply_async(args=[BLOB], compression=method)
    assert await r.get(timeout=10) == BLOB


async def test_unknown_compression_is_refused(engine):
    """mirrors celery t/unit/app/test_amqp.py::test_AMQP::test_compression_override (kombu refuses a
    compression it does not know; so do we, at the call and at the definition)"""
    with pytest.raises(ValueError, match="compression must be one of"):
        await d.echo.apply_async(args=[1], compression="snappy")
    with pytest.raises(TaskDefinitionError, match="compression"):
        shared_task(name="cc.bad_compression", compression="snappy")(lambda: None)


async def test_compressed_task_runs_on_the_worker(worker):
    """mirrors celery t/integration/test_tasks.py::test_tasks::test_basic_task, with ``compression='gzip'``"""
    r = await d.echo_gzip.delay(BLOB)
    assert await r.get(timeout=10) == len(BLOB)


async def test_compressed_task_retried_once_stays_compressed(worker):
    """mirrors celery t/integration/test_tasks.py::test_tasks::test_task_retried_once"""
    waiting = await d.retry_once_gzip.delay(BLOB, countdown=30)
    await wait_for_state(waiting, states.RETRY)
    raw = await raw_message(waiting.id)
    assert raw is not None and raw.startswith(b'{"compression":"gzip"') and len(raw) < 2000
    await waiting.revoke()
    r = await d.retry_once_gzip.delay(BLOB)
    assert await r.get(timeout=10) == 1 + len(BLOB)


async def test_revoke_queued_compressed_message(engine):
    """mirrors celery t/integration/test_tasks.py::test_tasks::test_revoked (the revoke script reads the queue
    from the compressed message's envelope)"""
    r = await d.echo.apply_async(args=[BLOB], queue=IDLE, compression="zlib")
    broker = get_broker()
    assert await broker.redis.zscore(broker.keys.queue(IDLE), r.id) is not None
    await r.revoke()
    assert await r.state() == states.REVOKED
    assert await broker.redis.zscore(broker.keys.queue(IDLE), r.id) is None
    assert await raw_message(r.id) is None


async def test_expired_compressed_message(worker):
    """mirrors celery t/integration/test_tasks.py::test_tasks::test_expired"""
    r = await d.echo.apply_async(args=[BLOB], compression="gzip", expires=datetime.now(UTC) - timedelta(seconds=1))
    await wait_for_state(r, states.REVOKED)


async def test_chord_body_with_compression(worker):
    """mirrors celery t/integration/test_canvas.py::test_chord::test_simple_chord (a compressed body: the
    header results are written into it by Redis, so it travels uncompressed; the header parts compress)"""
    header = [d.echo.s(1).set(compression="gzip"), d.echo.s(2).set(compression="bzip2")]
    r = await chord(header)(d.join_results.s(BLOB).set(compression="gzip"))
    assert await r.get(timeout=10) == 3 + len(BLOB)


async def test_compression_under_signing(engine):
    """mirrors celery t/unit/security/test_serialization.py::test_secureserializer::test_serialize (signed
    messages, here compressed too): they run, and an altered envelope is refused"""
    await get_broker().close()
    configure(engine, signing_key=SecretStr("cc-signing-key"))
    async with running_worker():
        r = await d.echo_gzip.delay(BLOB)
        assert await r.get(timeout=10) == len(BLOB)
    raw = encode(Message(id="m1", task="cc.echo", args=[BLOB], compression="gzip"))
    assert decode(raw, "m1").args == [BLOB]
    with pytest.raises(MessageError, match="signature"):
        decode(raw.replace(b'"queue":"default"', b'"queue":"other"'), "m1")


def test_envelope_must_match_the_message_inside(engine):
    """mirrors celery t/unit/tasks/test_tasks.py::test_tasks::test_regular_task (the message consumed is the
    task sent): an envelope whose routing fields differ from the message inside is refused"""
    envelope = json.loads(encode(Message(id="m2", task="cc.echo", args=[1], compression="gzip")))
    envelope["task"] = "cc.other"
    with pytest.raises(MessageError, match="envelope does not match"):
        decode(json.dumps(envelope, separators=(",", ":")).encode(), "m2")


def test_decompression_bomb_is_refused(engine):
    """mirrors celery t/unit/app/test_amqp.py::test_AMQP::test_compression (what a worker inflates is bounded
    by max_payload_bytes here; kombu does not bound it)"""
    limit = engine.max_payload_bytes
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    bomb = packer.compress(b" " * (limit * 20)) + packer.flush()
    assert len(bomb) < limit // 10
    envelope = {"compression": "gzip", "id": "m3", "task": "cc.echo", "queue": "default", "priority": 5,
                "expires": None, "body": base64.b64encode(bomb).decode(), "sent_at": 1.0}  # fmt: skip
    with pytest.raises(MessageError, match="max_payload_bytes"):
        decode(json.dumps(envelope, separators=(",", ":")).encode(), "m3")
    envelope["body"] = base64.b64encode(b"not gzip at all").decode()
    with pytest.raises(MessageError, match="corrupt"):
        decode(json.dumps(envelope, separators=(",", ":")).encode(), "m3")


async def test_max_payload_bytes_counts_the_uncompressed_message(engine):
    """mirrors celery t/unit/app/test_amqp.py::test_AMQP::test_compression (compression saves Redis memory;
    the size limit still bounds the message a worker must hold)"""
    configure(engine, max_payload_bytes=50_000)
    with pytest.raises(ValueError, match="max_payload_bytes"):
        await d.echo_gzip.apply_async(args=[BLOB], queue=IDLE)


# ================================================================ other options
async def test_track_started_false_is_a_documented_no_op(worker):
    """mirrors celery t/integration/test_tasks.py::test_tasks::test_task_accepted (inverted on purpose: STARTED
    is always recorded, ``track_started=False`` included; Celery would show PENDING)"""
    assert "track_started" in INERT_TASK_OPTIONS
    assert TaskOptions.model_fields["track_started"].description == INERT_TASK_OPTIONS["track_started"]
    r = await d.untracked.delay(0.5)
    await wait_for_state(r, states.STARTED)
    assert await r.get(timeout=10) == "done"


async def test_acks_late_false_is_a_documented_no_op(worker):
    """mirrors celery t/unit/worker/test_request.py::test_Request::test_on_success__acks_late_disabled (here a
    job is always acknowledged when it finishes)"""
    assert "acks_late" in INERT_TASK_OPTIONS and "acknowledged only when it finishes" in INERT_TASK_OPTIONS["acks_late"]
    assert await (await d.early_ack.delay(7)).get(timeout=10) == 7


async def test_task_routing_key_routes_to_its_queue(engine):
    """mirrors celery t/unit/tasks/test_tasks.py::test_task_routing_attribute_deprecation (a task's routing_key
    is honoured: every queue is bound by its own name, so it names the queue)"""
    r = await d.routed.delay()
    broker = get_broker()
    assert await broker.redis.zscore(broker.keys.queue("cc-routed"), r.id) is not None
    other = await d.routed.apply_async(queue=IDLE)  # the call's own queue still wins
    assert await broker.redis.zscore(broker.keys.queue(IDLE), other.id) is not None


async def test_serializer_option(worker):
    """mirrors celery t/unit/tasks/test_tasks.py::test_apply_task::test_always_eager_with_task_serializer_option
    (JSON is the one serializer: asking for it works, asking for another is refused at the call)"""
    assert await (await d.echo.apply_async(args=[1], serializer="json")).get(timeout=10) == 1
    with pytest.raises(ValueError, match="serializer 'pickle'"):
        await d.echo.apply_async(args=[1], serializer="pickle")


async def test_inert_call_options_are_accepted_and_checked(worker):
    """mirrors celery t/unit/tasks/test_tasks.py::test_tasks::test_shadow_name and
    t/unit/app/test_amqp.py::test_AMQP::test_send_event_exchange_string (accepted; documented as changing
    nothing here)"""
    assert set(INERT_CALL_OPTIONS) == {"exchange", "shadow", "retry", "retry_policy"}
    r = await d.echo.apply_async(
        args=[5], exchange="tasks", shadow="other.name", retry=False, retry_policy={"max_retries": 3}
    )
    assert await r.get(timeout=10) == 5
    assert (await r.record())["task"] == "cc.echo"  # the shadow name is not stored
    with pytest.raises(TypeError, match="retry must be"):
        await d.echo.apply_async(args=[5], retry="yes")
    with pytest.raises(ValueError, match="retry_policy"):
        await d.echo.apply_async(args=[5], retry_policy={"bogus": 1})
    with pytest.raises(TypeError, match="shadow must be"):
        await d.echo.apply_async(args=[5], shadow=3)
