"""Redis side of sending to Celery: kombu's queue layout (publish) and Celery's Redis result backend
(read, wait). Key names come from :mod:`tasks_engine.store.celery_keys`; the message and record formats
are the model's (:mod:`tasks_engine.model.celery_outbound`): here they are bytes.

Celery's broker and result backend are the engine's Redis client unless other URLs are given; clients
for other URLs are made once per event loop and URL, like the engine's own.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable

from redis.asyncio import Redis

from tasks_engine.store.celery_keys import CeleryKeys
from tasks_engine.store.connection import awaited

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Redis]] = weakref.WeakKeyDictionary()


def client_for(url: str, socket_timeout: float) -> Redis:
    """This loop's client for a Celery broker or backend URL other than the engine's."""
    per_loop = _clients.setdefault(asyncio.get_running_loop(), {})
    client = per_loop.get(url)
    if client is None:
        client = per_loop[url] = Redis.from_url(
            url, socket_connect_timeout=5, socket_timeout=socket_timeout, health_check_interval=30
        )
    return client


async def close_clients(loop: asyncio.AbstractEventLoop) -> None:
    """Close the clients :func:`client_for` made for ``loop`` (before the loop closes)."""
    for client in _clients.pop(loop, {}).values():
        await client.aclose()


class CelerySender:
    """Publish task envelopes where Celery workers consume them; read and await their result records."""

    def __init__(self, broker: Redis, backend: Redis, keys: CeleryKeys) -> None:
        self.broker = broker
        self.backend = backend
        self.keys = keys

    async def publish(self, queue: str, priority: int, envelope: bytes) -> None:
        """kombu's publish on the default exchange: the queue's binding (as declaring it leaves), then
        ``LPUSH`` onto the list of the message's priority step."""
        async with self.broker.pipeline(transaction=False) as pipe:
            pipe.sadd(self.keys.binding(queue), self.keys.binding_member(queue, queue))
            pipe.lpush(self.keys.queue(queue, priority), envelope)
            await pipe.execute()

    async def result(self, task_id: str) -> bytes | None:
        raw = await awaited(self.backend.get(self.keys.result(task_id)))
        return raw if isinstance(raw, bytes) or raw is None else str(raw).encode()

    async def forget(self, task_id: str) -> None:
        await awaited(self.backend.delete(self.keys.result(task_id)))

    async def wait(self, task_id: str, done: Callable[[bytes | None], bool], timeout: float | None) -> bytes | None:
        """The record once ``done(record)``, woken by the backend's ``PUBLISH`` on the key's own channel
        (re-read each second in case a publish was missed); the last one read when ``timeout`` passes."""
        key = self.keys.result(task_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        pubsub = self.backend.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(key)
            raw = await self.result(task_id)  # after subscribing: a record written meanwhile is not missed
            while not done(raw):
                left = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
                if left <= 0:
                    return raw
                message = await pubsub.get_message(timeout=left)
                if message is not None and message.get("type") == "message" and done(message["data"]):
                    return bytes(message["data"])
                if message is None:
                    raw = await self.result(task_id)
            return raw
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
