"""Canvas sent from Celery: chains and links continue in Celery's format; a chord of 100 runs its body once."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import pytest
import redis as sync_redis
from celery import chain, chord
from celery.exceptions import ChordError

from tests.celery_wire.conftest import Wire, engine_worker
from tests.celery_wire.test_consume import get


def sig(wire: Wire, name: str, *args: Any, **kwargs: Any) -> Any:
    return wire.app.signature(name, args=args, kwargs=kwargs, queue=wire.queue)


async def test_chain_continues_with_each_result(wire: Wire) -> None:
    async with engine_worker():
        r = chain(sig(wire, "cw.add", 1, 2), sig(wire, "cw.add", 3), sig(wire, "cw.add", 4)).apply_async()
        assert await get(r) == 10
        assert await get(r.parent) == 6  # the middle step's record, written by its own run
        assert r.parent is not None and (await asyncio.to_thread(lambda: r.parent.parent.get(timeout=5))) == 3


async def test_failing_chain_step_fails_the_rest(wire: Wire) -> None:
    async with engine_worker():
        r = chain(sig(wire, "cw.add", 1, 2), sig(wire, "cw.fail"), sig(wire, "cw.add", 4)).apply_async()
        with pytest.raises(ValueError):
            await get(r)


async def test_link_and_link_error_are_sent_as_celery_messages(wire: Wire) -> None:
    link = sig(wire, "cw.add", 10)
    errback = sig(wire, "cw.identity")
    link.freeze()
    errback.freeze()
    async with engine_worker():
        r = wire.send("cw.add", 1, 2, link=link)
        assert await get(r) == 3
        assert await get(wire.app.AsyncResult(link.id)) == 13
        bad = wire.send("cw.fail", "x", link_error=errback)
        with pytest.raises(ValueError):
            await get(bad)
        assert await get(wire.app.AsyncResult(errback.id)) == bad.id  # old-style errback: the failed task's id


async def test_next_step_is_a_celery_message_on_its_queue(wire: Wire, sync_client: sync_redis.Redis) -> None:
    """With no worker on the next step's queue, it waits there in Celery's format, for either engine."""
    other = f"{wire.queue}-other"
    step = wire.app.signature("cw.add", args=(5,), queue=other)
    async with engine_worker():
        r = chain(sig(wire, "cw.add", 1, 1), step).apply_async()
        assert await get(r.parent) == 2
    raw = sync_client.lindex(f"{wire.celery_prefix}{other}", 0)
    assert raw is not None
    envelope = json.loads(raw)
    assert envelope["headers"]["task"] == "cw.add" and envelope["headers"]["id"] == r.id
    assert envelope["headers"]["parent_id"] == r.parent.id and envelope["headers"]["root_id"] == r.parent.id
    assert json.loads(base64.b64decode(envelope["body"]))[0] == [2, 5]


async def test_chord_of_100_runs_its_body_once_with_ordered_results(wire: Wire, sync_client: sync_redis.Redis) -> None:
    key = f"{wire.celery_prefix}chord-runs"
    async with engine_worker():
        started = time.monotonic()
        r = chord([sig(wire, "cw.identity", i) for i in range(100)])(sig(wire, "cw.collect", key=key))
        assert await get(r, timeout=20) == list(range(100))
        await asyncio.sleep(0.3)  # a second body would have been sent by now
    assert sync_client.hget(key, "collect") == b"1"
    assert time.monotonic() - started < 20


async def test_chord_with_a_failed_part_fails_the_body(wire: Wire) -> None:
    async with engine_worker():
        header = [sig(wire, "cw.identity", 1), sig(wire, "cw.fail", "part broke"), sig(wire, "cw.identity", 3)]
        r = chord(header)(sig(wire, "cw.collect", key="unused"))
        with pytest.raises(ValueError, match="part broke"):  # Celery raises the failed part's error first
            await get(r)
        with pytest.raises(ChordError, match="part broke"):  # the body's own record
            await get(wire.app.AsyncResult(r.id))


async def test_an_unsupported_canvas_step_leaves_the_result_and_the_worker_alone(wire: Wire) -> None:
    from celery import group

    async with engine_worker():
        r = wire.send("cw.add", 1, 2, link=group(sig(wire, "cw.add", 1), sig(wire, "cw.add", 2)))
        assert await get(r) == 3  # the group link is not sent (logged); the task's own result stands
        assert await get(wire.send("cw.add", 2, 2)) == 4
