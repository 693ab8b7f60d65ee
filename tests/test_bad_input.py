"""Issue 7, "Bad input": every kind of bad argument, payload, task name, result or queued message
gets a clear error naming the task and the problem; nothing is half-written and the worker carries on.

Run-side checks use one real worker subprocess for the whole module (``-I tests.test_bad_input``,
so the tasks below exist there too); enqueue-side checks need no worker and look at Redis directly.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

import tests.sample_tasks as t
from tasks_engine import (
    AsyncResult,
    EngineSettings,
    NotRegistered,
    Signature,
    chain,
    configure,
    get_settings,
    group,
    send_task,
    shared_task,
    states,
)
from tasks_engine.client.plan import Context
from tasks_engine.exceptions import MessageError
from tasks_engine.model.messages import Message, decode, encode
from tasks_engine.store import Broker, Enqueue, get_broker, loop_broker

ROOT = Path(__file__).resolve().parent.parent
from tests.conftest import REDIS_URL, redis_client  # noqa: E402

PREFIX = f"tbad{uuid.uuid4().hex[:8]}"  # the module worker's prefix
LEASE = 1.5  # short, so "never delivered again" is checked within seconds


# ---------------------------------------------------------------- tasks (also imported by the worker subprocess)
@shared_task(name="bad.strict", autoretry_for=(Exception,), max_retries=3, default_retry_delay=0)
async def strict(count: int, label: str = "x") -> str:
    """Retries on any error, so a run-side argument error that got retried would show."""
    broker = get_broker()
    await broker.redis.rpush(broker.key("ran", "strict"), f"{count}|{label}")
    return label * count


@shared_task(name="bad.nan_result")
async def nan_result() -> float:
    return float("nan")


# ---------------------------------------------------------------- helpers and fixtures
@pytest.fixture(scope="module")
def bad_worker(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen[bytes]]:
    """One real worker process for the module: every bad message below is thrown at the same one."""
    env = dict(os.environ)
    env.pop("TE_SIGNING_KEY", None)
    env.update(
        {
            "TE_KEY_PREFIX": PREFIX,
            "REDIS_URL": REDIS_URL,
            "TE_LEASE_SECONDS": str(LEASE),
            "TE_HEARTBEAT_SECONDS": "0.3",
            "TE_BEAT_ENABLED": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    log = tmp_path_factory.mktemp("bad-input") / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tasks_engine.cli", "worker", "--app", "none", "-I", "tests.test_bad_input"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    client = redis_client()
    deadline = time.monotonic() + 40
    while not list(client.scan_iter(f"{{{PREFIX}}}:worker:*")):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RuntimeError(log.read_text(errors="replace"))
        time.sleep(0.05)
    yield proc
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    keys = list(client.scan_iter(match=f"{{{PREFIX}}}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


async def close_client(broker: Broker) -> None:
    """Close the client (``Broker.close`` stops the result listener first: a listener task left to die on
    the closed connection would be garbage-collected with an unretrieved exception, whose logged traceback can re-enter
    ``ast.parse`` from inside the collector (CPython 3.11: "AST constructor recursion depth mismatch")."""
    await broker.close()


@pytest.fixture
async def client(bad_worker: subprocess.Popen[bytes]) -> AsyncIterator[subprocess.Popen[bytes]]:
    """This test process as a client of the module worker (same prefix)."""
    configure(EngineSettings(key_prefix=PREFIX, beat_enabled=False, lease_seconds=LEASE))
    yield bad_worker
    await close_client(get_broker())


async def _keys(prefix: str) -> list[str]:
    broker = get_broker()
    return sorted([k.decode() async for k in broker.redis.scan_iter(match=f"{{{prefix}}}:*")])


async def _dead_entries() -> list[dict[str, Any]]:
    broker = get_broker()
    return [orjson.loads(e) for e in await broker.redis.lrange(broker.key("dead"), 0, -1)]


async def _place_raw(task_id: str, raw: bytes, priority: int = 5) -> None:
    """Put bytes straight into the queue, bypassing delay(): what a buggy or hostile Redis writer does."""
    broker = get_broker()
    await broker.redis.set(broker.key("msg", task_id), raw)
    await broker.redis.zadd(broker.key("q", "default"), {task_id: priority * 10**12})
    await broker.redis.lpush(broker.key("wake", "default"), "1")


async def _assert_worker_carries_on(proc: subprocess.Popen[bytes]) -> None:
    assert proc.poll() is None, "the worker process died"
    assert await (await t.add.delay(20, 22)).get(timeout=10) == 42


# ---------------------------------------------------------------- enqueue side: nothing reaches Redis
NOT_JSON: list[tuple[str, Any]] = [
    ("object", object()),
    ("bytes", b"raw bytes"),
    ("set", {1, 2}),
    ("complex", 1 + 2j),
    ("nan", float("nan")),
    ("infinity", float("-inf")),
    ("int over 64 bits", 2**70),
    ("lone surrogate", "\ud800"),
    ("nested object", {"a": [1, {"b": object()}]}),
    ("nested nan", [1.0, [2.0, float("nan")]]),
]


@pytest.mark.parametrize(("label", "value"), NOT_JSON, ids=[n for n, _ in NOT_JSON])
async def test_non_json_argument_raises_typeerror_naming_task_and_argument(engine, label, value):
    with pytest.raises(TypeError, match=r"task 'demo\.identity'.*argument 'x'"):
        await t.identity.delay(value)
    with pytest.raises(TypeError, match=r"task 'demo\.identity'.*argument 'x'"):
        await t.identity.apply_async(kwargs={"x": value})
    assert await _keys(engine.key_prefix) == [], "something was written to Redis"


async def test_non_json_argument_in_a_workflow_writes_nothing(engine):
    with pytest.raises(TypeError, match=r"task 'demo\.identity'"):
        await chain(t.add.s(1, 2), t.identity.si(object())).apply_async()
    with pytest.raises(TypeError, match=r"task 'demo\.identity'"):
        await group(t.add.s(1, 2), t.identity.s({1, 2})).apply_async()
    assert await _keys(engine.key_prefix) == []


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (lambda: t.add.delay(1, "two"), r"task 'demo\.add'.*argument 'y'.*valid integer"),
        (lambda: t.add.delay(1, y=[2]), r"task 'demo\.add'.*argument 'y'"),
        (lambda: t.add.delay(1), r"task 'demo\.add'.*missing a required argument: 'y'"),
        (lambda: t.add.delay(1, 2, 3), r"task 'demo\.add'.*too many positional arguments"),
        (lambda: t.add.delay(1, 2, z=3), r"task 'demo\.add'.*unexpected keyword argument 'z'"),
        (lambda: t.tsum.delay([1, "b"]), r"task 'demo\.tsum'.*argument 'values'"),
        (lambda: t.when.delay("not a date"), r"task 'demo\.when'.*argument 'moment'"),
        (lambda: t.tsum.delay([1.0, float("inf")]), r"task 'demo\.tsum'.*argument 'values'"),
    ],
    ids=["wrong-type", "wrong-type-kw", "missing", "too-many", "unexpected-kw", "list-item", "datetime", "inf"],
)
async def test_args_not_matching_type_hints_are_rejected_at_enqueue(engine, call, pattern):
    with pytest.raises(TypeError, match=pattern):
        await call()
    assert await _keys(engine.key_prefix) == []


async def test_oversized_payload_is_a_clear_valueerror_and_nothing_is_written(engine):
    configure(get_settings(), max_payload_bytes=4_000)
    with pytest.raises(ValueError, match=r"task 'demo\.identity'.*bytes, over max_payload_bytes=4000; pass IDs"):
        await t.identity.delay("x" * 5_000)
    # A workflow whose last member is too big writes none of the others (one transaction, planned first).
    with pytest.raises(ValueError, match=r"task 'demo\.identity'.*max_payload_bytes"):
        await group(t.add.s(1, 2), t.add.s(3, 4), t.identity.s("y" * 5_000)).apply_async()
    assert await _keys(engine.key_prefix) == []
    r = await t.identity.delay("x" * 3_000)  # under the limit: accepted
    assert await get_broker().redis.exists(get_broker().key("msg", r.id)) == 1


# ---------------------------------------------------------------- run side: a real worker process
async def test_args_not_matching_type_hints_are_rejected_at_run_without_retry(client):
    """A message that bypassed delay() (old producer, other language, hand-written) is checked again."""
    broker = get_broker()
    cases = {
        "run-wrong-type": ("bad.strict", ["many"], {}, r"task 'bad\.strict'.*argument 'count'.*valid integer"),
        "run-wrong-kw": ("bad.strict", [2], {"label": ["x"]}, r"task 'bad\.strict'.*argument 'label'"),
        "run-missing": ("bad.strict", [], {}, r"task 'bad\.strict'.*missing a required argument: 'count'"),
        "run-extra": ("bad.strict", [1], {"colour": "red"}, r"task 'bad\.strict'.*unexpected keyword argument"),
        "run-add": ("demo.add", [1, "two"], {}, r"task 'demo\.add'.*argument 'y'"),
    }
    ids = {name: f"{name}-{uuid.uuid4().hex[:6]}" for name in cases}
    await broker.enqueue(
        [
            Enqueue(ids[name], encode(Message(id=ids[name], task=task, args=args, kwargs=kwargs)), "default", 5)
            for name, (task, args, kwargs, _) in cases.items()
        ]
    )
    for name, (_, _, _, pattern) in cases.items():
        r = AsyncResult(ids[name])
        with pytest.raises(TypeError, match=pattern):
            await r.get(timeout=10)
        info = await r.record()
        assert info["state"] == states.FAILURE and info["retries"] == 0 and info["delivered"] == 1, (name, info)
        assert info["exc_type"] == "TypeError"
    # autoretry_for=(Exception,) did not retry them, and the body never ran with bad arguments.
    assert await broker.redis.llen(broker.key("ran", "strict")) == 0
    assert await (await strict.delay(2, "ab")).get(timeout=10) == "abab"  # good arguments still run
    await _assert_worker_carries_on(client)


async def test_unknown_task_name_fails_clearly_is_dead_lettered_and_fails_its_chain(client):
    r = await send_task("nobody.knows", args=[1])
    with pytest.raises(NotRegistered, match=r"'nobody\.knows' is not registered"):
        await r.get(timeout=10)
    assert await r.state() == states.FAILURE
    dead = [e for e in await _dead_entries() if e["id"] == r.id]
    assert len(dead) == 1 and "not registered" in dead[0]["reason"]
    # The steps after it cannot run: they fail too, instead of waiting forever.
    second = await chain(Signature("nobody.knows", [1]), t.add.s(1)).apply_async()
    with pytest.raises(NotRegistered):
        await second.get(timeout=10)
    await _assert_worker_carries_on(client)


async def test_result_that_cannot_be_serialized_is_a_clear_failure(client):
    for task, kind in ((t.not_json, "object"), (nan_result, "float")):
        r = await task.delay()
        with pytest.raises(TypeError, match=rf"task '{task.name}' returned a {kind}, which cannot be serialized"):
            await r.get(timeout=10)
        info = await r.record()
        assert info["state"] == states.FAILURE and info["retries"] == 0 and info.get("result") is None
    await _assert_worker_carries_on(client)


async def test_garbage_and_truncated_messages_in_the_queue_fail_are_dead_lettered_once(client):
    good = encode(Message(id="placeholder", task="demo.add", args=[1, 2]))
    copied_id = f"copied-{uuid.uuid4().hex[:6]}"
    cases: dict[str, tuple[bytes, str]] = {
        "garbage": (b"\x00\xff\xfe garbage \x80", "invalid message"),
        "truncated": (good[: len(good) // 2], "invalid message"),
        "empty": (b"", "invalid message"),
        "json-array": (b"[1, 2, 3]", "Input should be an object"),
        "wrong-shape": (b'{"id": "x", "task": 7}', "invalid message (task"),
        "unknown-field": (good[:-1] + b',"evil":true}', "invalid message (evil"),
        # a real message stored under another job's id: its ack would go to the wrong job
        "copied": (encode(Message(id=copied_id, task="demo.add", args=[1, 2])), "does not match the id"),
    }
    ids = {name: f"{name}-{uuid.uuid4().hex[:6]}" for name in cases}
    for name, (raw, _) in cases.items():
        await _place_raw(ids[name], raw)
    for name, (_, reason) in cases.items():
        r = AsyncResult(ids[name])
        with pytest.raises(MessageError, match=re.escape(reason)):
            await r.get(timeout=10)
        assert await r.state() == states.FAILURE, name
    await _assert_worker_carries_on(client)
    # After more than a lease, none of them came back: acknowledged, dead-lettered exactly once.
    await asyncio.sleep(LEASE + 2.0)
    broker = get_broker()
    dead = await _dead_entries()
    for name, (_, reason) in cases.items():
        entries = [e for e in dead if e["id"] == ids[name]]
        assert len(entries) == 1, f"{name}: dead-lettered {len(entries)} times"
        assert reason in entries[0]["reason"]
        assert await AsyncResult(ids[name]).state() == states.FAILURE, name
        assert await broker.redis.zscore(broker.key("active"), ids[name]) is None, name
        assert await broker.redis.exists(broker.key("msg", ids[name])) == 0, name
    assert await broker.redis.exists(broker.key("res", copied_id)) == 0, "the copied message ran"
    assert client.poll() is None


# ---------------------------------------------------------------- property-based
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)


# Strategies use named functions, not lambdas: hypothesis parses a lambda's source to describe it.
def _json_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)


JSON_VALUES = st.recursive(_SCALARS, _json_containers, max_leaves=12)


class _Opaque:
    pass


_BAD_LEAVES = (
    st.builds(object)
    | st.builds(_Opaque)
    | st.binary(min_size=0, max_size=8)
    | st.sets(st.integers(), max_size=3)
    | st.complex_numbers(allow_nan=False, allow_infinity=False)
    | st.sampled_from([float("nan"), float("inf"), float("-inf")])
    | st.integers(min_value=2**64)
    | st.integers(max_value=-(2**63) - 1)
    | st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3)
)


def _insert(good: list[Any], bad: Any, at: int) -> list[Any]:
    return [*good[:at], bad, *good[at:]]


def _with_key(good: dict[str, Any], key: str, bad: Any) -> dict[str, Any]:
    return {**good, key: bad}


def _hiding_places(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A bad value somewhere inside otherwise good JSON."""
    return st.builds(_insert, st.lists(JSON_VALUES, max_size=3), inner, st.integers(0, 3)) | st.builds(
        _with_key, st.dictionaries(st.text(max_size=5), JSON_VALUES, max_size=3), st.text(max_size=5), inner
    )


NOT_JSON_VALUES = st.recursive(_BAD_LEAVES, _hiding_places, max_leaves=4)


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same JSON type (1 vs 1.0 vs True, -0.0 vs 0.0 told apart)."""
    if isinstance(a, float) or isinstance(b, float):
        return type(a) is type(b) and a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, list):
        return type(b) is list and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return type(b) is dict and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def test_property_random_arguments_at_enqueue(bad_worker):
    """JSON values pass delay() and come back unchanged from a real worker; anything else is a TypeError
    naming the task and argument, with nothing written. Never any other outcome."""
    configure(EngineSettings(key_prefix=PREFIX, beat_enabled=False, lease_seconds=LEASE))
    loop = asyncio.new_event_loop()
    sent: list[tuple[Any, AsyncResult]] = []
    rejected: list[str] = []

    @settings(max_examples=80, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(value=JSON_VALUES | NOT_JSON_VALUES, as_kwarg=st.booleans())
    def check(value: Any, as_kwarg: bool) -> None:
        task_id = f"prop-{uuid.uuid4().hex}"
        call = (
            t.identity.apply_async(kwargs={"x": value}, task_id=task_id)
            if as_kwarg
            else t.identity.apply_async([value], task_id=task_id)
        )
        try:
            result = loop.run_until_complete(call)
        except TypeError as exc:
            assert "task 'demo.identity'" in str(exc) and "argument 'x'" in str(exc), str(exc)
            rejected.append(task_id)
            return
        # Accepted: it must have been plain JSON, and encode/decode must give it back unchanged.
        assert not _contains_non_json(value), f"accepted a non-JSON value {value!r}"
        message = decode(t.identity.s(value).to_enqueue([], Context()).raw)
        assert _same(message.args[0], value)
        sent.append((value, result))

    try:
        check()
        assert sent and rejected, "the strategies should produce both kinds"

        async def collect() -> list[Any]:
            return list(await asyncio.gather(*(r.get(timeout=30) for _, r in sent)))

        back = loop.run_until_complete(collect())
        for (value, _), got in zip(sent, back, strict=True):
            assert _same(got, value), f"{value!r} came back as {got!r}"

        async def leftovers() -> int:
            broker = get_broker()
            return sum([await broker.redis.exists(broker.key("msg", i), broker.result_key(i)) for i in rejected])

        assert loop.run_until_complete(leftovers()) == 0, "a rejected call left something in Redis"
        assert bad_worker.poll() is None
    finally:
        broker = loop_broker(loop)
        if broker is not None:
            loop.run_until_complete(close_client(broker))
        loop.close()


def _contains_non_json(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, list):
        return any(_contains_non_json(v) for v in value)
    if isinstance(value, dict):
        return any(not isinstance(k, str) or _contains_non_json(v) for k, v in value.items())
    if isinstance(value, int) and not isinstance(value, bool):
        return not -(2**63) <= value < 2**64
    if isinstance(value, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    return value is not None and not isinstance(value, bool)


def _valid() -> bytes:
    return encode(Message(id="m-1", task="demo.add", args=[1, 2], kwargs={"k": "é✓"}))


def _truncate(raw: bytes, at: int) -> bytes:
    return raw[:at]


def _flip(raw: bytes, at: int, mask: int) -> bytes:
    return raw[:at] + bytes([raw[at] ^ mask]) + raw[at + 1 :]


def _insert_bytes(raw: bytes, at: int, extra: bytes) -> bytes:
    return raw[:at] + extra + raw[at:]


def _mutations(raw: bytes) -> st.SearchStrategy[bytes]:
    """A real message, truncated, with a byte changed, or with bytes inserted."""
    n = len(raw)
    return (
        st.builds(_truncate, st.just(raw), st.integers(0, n - 1))
        | st.builds(_flip, st.just(raw), st.integers(0, n - 1), st.integers(1, 255))
        | st.builds(_insert_bytes, st.just(raw), st.integers(0, n), st.binary(min_size=1, max_size=8))
    )


def _valid_mutations() -> st.SearchStrategy[bytes]:
    return _mutations(_valid())


def _undecodable(data: bytes) -> bool:
    return _decode_only_messageerror(data) is None


def _decode_only_messageerror(data: bytes | str) -> Message | None:
    try:
        return decode(data)
    except MessageError:
        return None


@settings(max_examples=100, deadline=None, database=None)
@given(
    data=st.binary(max_size=300)
    | st.text(max_size=100)
    | st.text(st.characters(categories=["Cs"]) | st.characters(), max_size=20)
    | st.deferred(_valid_mutations)
)
def test_property_decode_raises_only_messageerror(data):
    _decode_only_messageerror(data)  # any other exception fails the test


def test_property_signed_decode_rejects_every_mutation():
    """With signing on, every truncation, flipped byte or insertion of a signed message is refused."""
    previous = get_settings()
    configure(previous, signing_key=SecretStr("property-key"))
    try:
        signed = encode(Message(id="m-2", task="demo.add", args=[1, 2], kwargs={"k": "é✓"}))
        assert decode(signed).args == [1, 2]

        @settings(max_examples=100, deadline=None, database=None)
        @given(data=_mutations(signed))
        def check(data: bytes) -> None:
            assert data != signed
            with pytest.raises(MessageError):
                decode(data)

        check()
    finally:
        configure(previous)


async def test_worker_fed_random_bytes_keeps_running(client):
    payloads: list[bytes] = []

    @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(data=st.binary(max_size=200) | _valid_mutations().filter(_undecodable))
    def collect(data: bytes) -> None:
        payloads.append(data)

    collect()
    ids = [f"rnd-{i}-{uuid.uuid4().hex[:6]}" for i in range(len(payloads))]
    for task_id, raw in zip(ids, payloads, strict=True):
        await _place_raw(task_id, raw)
    for task_id in ids:
        exc = await AsyncResult(task_id).get(timeout=15, propagate=False)
        assert isinstance(exc, MessageError), (task_id, exc)
    dead_ids = {e["id"] for e in await _dead_entries()}
    assert set(ids) <= dead_ids
    await _assert_worker_carries_on(client)
