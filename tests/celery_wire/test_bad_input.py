"""Bad input from the Celery side: each message gets a dead letter naming the reason and, when its id
can be read, a FAILURE record Celery's ``AsyncResult`` reads; the worker keeps consuming; pickle is
never deserialised."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis
from celery.exceptions import NotRegistered

from tasks_engine.store import Keys
from tasks_engine.store.celery_keys import CeleryKeys
from tests.celery_wire.conftest import Wire, engine_worker
from tests.celery_wire.test_consume import get


class Planted:
    """Unpickling this creates a file: proof that a pickle was (or was not) deserialised."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (open, (str(self.path), "w"))


def staged(wire: Wire, sync_client: sync_redis.Redis, name: str, *args: Any, **options: Any) -> dict[str, Any]:
    """A real Celery envelope, sent to a scratch queue and taken back from Redis (to be altered)."""
    scratch = f"{wire.queue}-scratch"
    wire.app.send_task(name, args=args, queue=scratch, **options)
    raw = next(filter(None, (sync_client.rpop(k) for k in CeleryKeys(wire.celery_prefix).queues_by_priority(scratch))))
    envelope: dict[str, Any] = json.loads(raw)
    return envelope


def push(wire: Wire, sync_client: sync_redis.Redis, entry: dict[str, Any] | bytes) -> None:
    raw = entry if isinstance(entry, bytes) else json.dumps(entry).encode()
    sync_client.lpush(f"{wire.celery_prefix}{wire.queue}", raw)


def dead_letters(wire: Wire, sync_client: sync_redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(x) for x in sync_client.lrange(Keys(wire.settings.key_prefix).dead, 0, -1)]


async def test_each_bad_message_is_dead_lettered_with_a_failure_record(
    wire: Wire, sync_client: sync_redis.Redis, tmp_path: Path
) -> None:
    planted = tmp_path / "unpickled"
    cases: dict[str, tuple[str | None, str]] = {}  # label -> (task id, words the reason must hold)

    push(wire, sync_client, b"{this is not json")
    cases["not json"] = (None, "not JSON")

    env = staged(wire, sync_client, "cw.add", 1, 2)
    env["body"] = "***not base64***"
    push(wire, sync_client, env)
    cases["base64"] = (env["headers"]["id"], "not valid base64")

    env = staged(wire, sync_client, "cw.add", 1, 2)
    env["body"] = base64.b64encode(b"[[1, 2], {}, not json").decode()
    push(wire, sync_client, env)
    cases["body"] = (env["headers"]["id"], "body is not JSON")

    env = staged(wire, sync_client, "cw.identity", Planted(planted), serializer="pickle")
    assert env["content-type"] == "application/x-python-serialize"
    push(wire, sync_client, env)
    cases["pickle"] = (env["headers"]["id"], "application/x-python-serialize")

    env = staged(wire, sync_client, "cw.add", 1, 2)
    env["content-type"] = "application/x-yaml"
    push(wire, sync_client, env)
    cases["yaml"] = (env["headers"]["id"], "application/x-yaml")

    env = staged(wire, sync_client, "cw.add", 1, 2)
    task_id = env["headers"]["id"]
    env["headers"] = {"lang": "py"}  # protocol 1 carries the task in the body
    env["body"] = base64.b64encode(json.dumps({"task": "cw.add", "id": task_id, "args": [1, 2]}).encode()).decode()
    push(wire, sync_client, env)
    cases["protocol 1"] = (task_id, "protocol 1")

    env = staged(wire, sync_client, "cw.add", 1, 2)
    del env["headers"]["id"]  # the id is still the correlation id
    push(wire, sync_client, env)
    cases["missing id"] = (env["properties"]["correlation_id"], "missing header 'id'")

    env = staged(wire, sync_client, "cw.add", 1, 2)
    env["headers"]["timelimit"] = "soon"
    push(wire, sync_client, env)
    cases["bad header"] = (env["headers"]["id"], "timelimit")

    env = staged(wire, sync_client, "cw.identity", "x" * 2_000_000)  # over max_payload_bytes (1,000,000)
    push(wire, sync_client, env)
    cases["oversized"] = (env["headers"]["id"], "over max_payload_bytes=1000000")

    unknown = wire.send("cw.no_such_task", 1)
    cases["unknown task"] = (unknown.id, "no such task")

    good = wire.send("cw.add", 20, 22)
    async with engine_worker():
        assert await get(good) == 42  # queued after every bad one: the worker kept consuming
        with pytest.raises(NotRegistered):
            await get(unknown)
        for label, (task_id, _) in cases.items():
            if task_id is None:
                continue
            result = wire.app.AsyncResult(task_id)
            with pytest.raises(Exception) as raised:  # noqa: PT011 - each case raises its own kind
                await get(result, timeout=5)
            assert result.state == "FAILURE", label
            assert raised.type.__name__ in {"MessageError", "NotRegistered"}, (label, raised)
    assert not planted.exists(), "a pickle was deserialised"
    letters = dead_letters(wire, sync_client)
    assert len(letters) == len(cases)
    for label, (task_id, words) in cases.items():
        match = [d for d in letters if words in d["reason"] and (task_id is None or d["id"] == task_id)]
        assert match, (label, [d["reason"] for d in letters])


async def test_an_entry_without_a_delivery_tag_is_a_dead_letter_and_does_not_stop_the_worker(
    wire: Wire, sync_client: sync_redis.Redis
) -> None:
    env = staged(wire, sync_client, "cw.add", 1, 2)
    del env["properties"]["delivery_tag"]
    push(wire, sync_client, env)
    good = wire.send("cw.add", 1, 1)
    async with engine_worker():
        assert await get(good) == 2
    deadline = time.monotonic() + 2
    while not dead_letters(wire, sync_client) and time.monotonic() < deadline:
        time.sleep(0.02)
    (letter,) = dead_letters(wire, sync_client)
    assert "delivery tag" in letter["reason"] and letter["celery_queue"] == wire.queue
