"""One pub/sub subscription per client and loop that wakes ``get()`` callers by task id."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = structlog.get_logger("tasks_engine.store")


async def messages(redis: Redis, channel: str, ready: asyncio.Event | None = None) -> AsyncIterator[bytes]:
    """The payloads published on ``channel``, for as long as the connection lives.

    Reads with a short timeout of its own rather than ``listen()``: an idle subscription must not
    trip the client's ``socket_timeout`` (which bounds every other command).
    """
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    try:
        await pubsub.subscribe(channel)
        if ready is not None:
            ready.set()
        while True:
            message = await pubsub.get_message(timeout=1.0)
            if message is not None and message.get("type") == "message":
                yield message["data"]
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


class ResultWaiter:
    """Finished ids arrive on the ``done`` channel (a line each); each wakes exactly the futures registered for it."""

    def __init__(self, source: Callable[[], Redis], channel: str) -> None:
        self.source = source  # a client to subscribe with (on a Cluster, a node: see connection.py)
        self.channel = channel
        self.waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._ready: asyncio.Event | None = None

    async def ensure_listening(self) -> None:
        if self._ready is None:
            self._ready = asyncio.Event()
        if self._listener is None or self._listener.done():
            self._ready.clear()
            self._listener = asyncio.create_task(self._listen(self._ready))
        await self._ready.wait()

    async def _listen(self, ready: asyncio.Event) -> None:
        try:
            async for data in messages(self.source(), self.channel, ready):
                # One announcement may name several ids, a line each (a completion call's, complete.lua).
                for task_id in data.decode(errors="replace").split("\n"):
                    for fut in self.waiters.pop(task_id, ()):
                        if not fut.done():
                            fut.set_result(None)
        except (ConnectionError, OSError, RedisError) as exc:
            # The client closed or Redis went away: waiters are woken below and re-check the record.
            log.debug("result listener stopped", error=str(exc))
        finally:
            ready.set()  # never leave a waiter stuck on a listener that died
            for futs in self.waiters.values():
                for fut in futs:
                    if not fut.done():
                        fut.set_result(None)
            self.waiters.clear()

    def register(self, task_id: str) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(task_id, set()).add(fut)
        return fut

    def unregister(self, task_id: str, fut: asyncio.Future[None]) -> None:
        futs = self.waiters.get(task_id)
        if futs is not None:
            futs.discard(fut)
            if not futs:
                del self.waiters[task_id]

    async def close(self) -> None:
        listener = self._listener
        if listener is not None and not listener.done():
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
