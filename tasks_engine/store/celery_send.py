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
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from tasks_engine.store.celery_keys import CeleryKeys
from tasks_engine.store.connection import awaited

log = structlog.get_logger("tasks_engine.store")
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
    """Close the result listeners of ``loop`` and the clients :func:`client_for` made for it."""
    for waiter in _waiters.pop(loop, {}).values():
        await waiter.close()
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
        waiter = channel_waiter(self.backend)
        inbox = await waiter.register(key)
        try:
            raw = await self.result(task_id)  # after subscribing: a record written meanwhile is not missed
            while not done(raw):
                left = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
                if left <= 0:
                    return raw
                try:
                    data = await asyncio.wait_for(inbox.get(), left)
                except TimeoutError:
                    data = None
                if data is None:  # a second passed, or the listener died (subscribe again): read the key
                    if not waiter.listening():
                        waiter.unregister(key, inbox)
                        inbox = await waiter.register(key)
                    raw = await self.result(task_id)
                elif done(data):
                    return data
            return raw
        finally:
            waiter.unregister(key, inbox)


class ChannelWaiter:
    """One pub/sub connection per backend client: each waiting ``get()`` subscribes its result key's
    channel (Celery publishes each record on its key name) and gets what is published there."""

    def __init__(self, client: Redis) -> None:
        self.client = client
        self.pubsub: PubSub | None = None
        self.listener: asyncio.Task[None] | None = None
        self.inboxes: dict[str, set[asyncio.Queue[bytes | None]]] = {}
        self.subscribed: set[str] = set()
        self.unsubscribes: set[asyncio.Future[Any]] = set()  # kept referenced until sent
        self.lock = asyncio.Lock()

    def listening(self) -> bool:
        return self.listener is not None and not self.listener.done()

    async def register(self, channel: str) -> asyncio.Queue[bytes | None]:
        """An inbox for what is published on ``channel`` from now on (subscribed before this returns)."""
        inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.inboxes.setdefault(channel, set()).add(inbox)
        async with self.lock:
            if not self.listening():  # first use, or the last listener died: every channel waited on
                pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(*self.inboxes)
                self.pubsub, self.subscribed = pubsub, set(self.inboxes)
                self.listener = asyncio.create_task(self._listen(pubsub))
            elif channel not in self.subscribed and self.pubsub is not None:
                await self.pubsub.subscribe(channel)
                self.subscribed.add(channel)
        return inbox

    def unregister(self, channel: str, inbox: asyncio.Queue[bytes | None]) -> None:
        inboxes = self.inboxes.get(channel)
        if inboxes is None:
            return
        inboxes.discard(inbox)
        if inboxes:
            return
        del self.inboxes[channel]
        if channel in self.subscribed and self.pubsub is not None and self.listening():
            self.subscribed.discard(channel)
            sent = asyncio.ensure_future(self.pubsub.unsubscribe(channel))
            self.unsubscribes.add(sent)
            sent.add_done_callback(self.unsubscribes.discard)

    async def _listen(self, pubsub: PubSub) -> None:
        try:
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None and message.get("type") == "message":
                    channel = message["channel"]
                    name = channel.decode() if isinstance(channel, bytes) else str(channel)
                    for inbox in self.inboxes.get(name, ()):
                        inbox.put_nowait(bytes(message["data"]))
        except (ConnectionError, OSError, RedisError) as exc:  # the client closed or Redis went away
            log.debug("celery result listener stopped", error=str(exc))  # waiters re-read and subscribe again
        except Exception as exc:  # noqa: BLE001 - never die silently: waiters fall back to re-reading
            log.warning("celery result listener failed", error=repr(exc))
        finally:
            for inboxes in self.inboxes.values():
                for inbox in inboxes:
                    inbox.put_nowait(None)
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        if self.listener is not None and not self.listener.done():
            self.listener.cancel()
            await asyncio.gather(self.listener, return_exceptions=True)


_waiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, ChannelWaiter]] = weakref.WeakKeyDictionary()


def channel_waiter(client: Redis) -> ChannelWaiter:
    """This loop's waiter for ``client`` (made on first use)."""
    per_loop = _waiters.setdefault(asyncio.get_running_loop(), {})
    waiter = per_loop.get(id(client))
    if waiter is None or waiter.client is not client:
        waiter = per_loop[id(client)] = ChannelWaiter(client)
    return waiter
