"""``task.delay(...)`` of a call with no options takes a short path (client/plan.py ``build_plain``,
model/messages.py ``encode_plain``). What a user would notice if it drifted from the general path: a
different message in Redis, a check skipped, or a vaguer error. Each case is compared with the general
path's own result for the same call."""

from __future__ import annotations

import math
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import pytest
from pydantic import SecretStr

from tasks_engine import configure, shared_task
from tasks_engine.client.plan import Context, build_enqueue, build_plain
from tasks_engine.client.signature import Signature
from tasks_engine.core.ids import new_id
from tasks_engine.model.messages import Message, decode
from tests import sample_tasks as t
from tests.conftest import running_worker


@shared_task(name="demo.plain_typed")
async def typed(when: datetime, n: int = 1, **extra: Any) -> str:
    return f"{when.isoformat()}|{n}|{sorted(extra)}"


@shared_task(name="demo.plain_expiring", expires=60)
async def expiring() -> None:
    return None


@shared_task(name="demo.plain_routed", queue="reports", priority=2)
async def routed() -> None:
    return None


def general(task: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Message:
    item = build_enqueue(Signature(task.name, args, kwargs, {}), [], Context())
    return decode(item.raw, expected_id=item.id)


def short(task: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Message:
    item = build_plain(task, args, kwargs)
    assert item is not None
    msg = decode(item.raw, expected_id=item.id)
    assert (item.queue, item.priority, item.eta_ms) == (msg.queue, msg.priority, 0)
    return msg


def same_but_ids_and_time(a: Message, b: Message) -> None:
    skip = {"id", "root_id", "sent_at"}
    assert a.model_dump(exclude=skip) == b.model_dump(exclude=skip)
    assert a.root_id == a.id and b.root_id == b.id
    assert abs(a.sent_at - b.sent_at) < 5


CALLS = [
    (t.add, (1, 2), {}),
    (t.identity, ({"queue": "not-this-one", "s": 'quote " and \\ and ☃'},), {}),
    (typed, (datetime(2026, 12, 7, 12, 0),), {"n": 3, "extra_arg": [1, 2]}),
    (routed, (), {}),
]


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize(("task", "args", "kwargs"), CALLS, ids=[c[0].name for c in CALLS])
def test_the_short_path_writes_the_general_paths_message(engine, task, args, kwargs, signed) -> None:
    if signed:
        configure(engine.model_copy(update={"signing_key": SecretStr("plain-call-test-key")}))
    same_but_ids_and_time(short(task, args, kwargs), general(task, args, kwargs))


def test_calls_the_short_path_cannot_write_take_the_general_one(engine) -> None:
    assert build_plain(expiring, (), {}) is None  # the task's own expiry goes into the message
    assert build_plain(t.identity, (math.nan,), {}) is None  # the general path names the argument
    assert build_plain(t.identity, ("text with NaN inside",), {}) is None  # only a false alarm: general path
    with pytest.raises(TypeError, match="argument 'x'.*NaN"):
        general(t.identity, (math.nan,), {})


async def test_bad_arguments_fail_at_the_call_as_before(engine) -> None:
    with pytest.raises(TypeError, match="demo.add"):
        await t.add.delay(1)  # a missing argument
    with pytest.raises(TypeError, match="demo.identity.*argument 'x'.*NaN"):
        await t.identity.delay(math.inf)
    with pytest.raises(TypeError, match="demo.identity.*JSON"):
        await t.identity.delay(object())
    configure(engine.model_copy(update={"max_payload_bytes": 1000}))
    with pytest.raises(ValueError, match="demo.identity.*max_payload_bytes=1000"):
        await t.identity.delay("x" * 2000)


async def test_plain_calls_run_and_keep_their_handle_options(engine) -> None:
    async with running_worker():
        r = await typed.delay(datetime(2026, 1, 2), extra_arg=1)
        assert await r.get(timeout=10) == "2026-01-02T00:00:00|1|['extra_arg']"
        assert (await t.add.delay(2, 3)).id != (await t.add.delay(2, 3)).id
        assert await (await t.add.delay(2, 3)).get(timeout=10) == 5


def test_new_ids_stay_unique_across_threads_and_a_fork() -> None:
    """Ids come from random bytes read ahead (core/ids.py): no two threads, and no forked child and its
    parent, may hand out the same ones."""
    with ThreadPoolExecutor(8) as pool:
        batches = list(pool.map(lambda _: [new_id() for _ in range(2000)], range(8)))
    seen = [i for batch in batches for i in batch]
    assert len(set(seen)) == len(seen) == 16000
    assert all(uuid.UUID(i).version == 4 for i in seen[:100])
    read, write = os.pipe()
    new_id()  # the pool now holds ids the parent has not used yet
    child = os.fork()
    if child == 0:  # pragma: no cover - the child only reports its ids
        os.write(write, " ".join(new_id() for _ in range(50)).encode())
        os._exit(0)
    os.waitpid(child, 0)
    from_child = set(os.read(read, 1 << 16).decode().split())
    assert len(from_child) == 50 and not from_child & {new_id() for _ in range(300)}
