"""Client-side group commit of ``delay()``: the enqueues of one event loop that arrive while a script
call is being made share the next one (as the worker's completions do).

A ``delay()`` that finds no call in flight goes out at once, from its own coroutine; the ones that
arrive while a call is in flight — a web server handling many requests, a ``gather`` of sends — wait
for it and are then packed into one ``enqueue.lua`` call of up to ``MAX_ITEMS`` messages. Each
message is still placed by one atomic script, and every caller gets its own answer. When a shared call
fails on a script error (a key of the wrong type under one caller's queue, say), each caller's messages
are sent again on their own, so only the caller whose data is at fault gets the error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.exceptions import ResponseError

from tasks_engine.store.writes import Enqueue

MAX_ITEMS = 500
Flush = Callable[[Sequence[Enqueue]], Awaitable[list[int]]]
Fetch = Callable[[Sequence[str]], Awaitable[list[Any]]]


class EnqueueBatcher:
    """Collects ``submit`` calls of one loop; at most one script call in flight at a time."""

    def __init__(self, flush: Flush) -> None:
        self.flush = flush
        self.pending: list[tuple[Sequence[Enqueue], asyncio.Future[int]]] = []
        self.running = False
        self.task: asyncio.Future[None] | None = None

    async def submit(self, items: Sequence[Enqueue]) -> int:
        """Place ``items`` with the next shared call; returns how many of them were new."""
        if not self.running:  # nothing in flight: this caller's call is the shared one, sent now
            self.running = True
            try:
                return sum(await self.flush(items))
            finally:
                self.running = False
                if self.pending:  # callers that arrived meanwhile go together, in the background
                    self._start()
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.pending.append((items, fut))
        return await fut

    def _start(self) -> None:
        self.running = True
        self.task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        try:
            while self.pending:
                batch: list[tuple[Sequence[Enqueue], asyncio.Future[int]]] = []
                size = 0
                while self.pending and (not batch or size + len(self.pending[0][0]) <= MAX_ITEMS):
                    entry = self.pending.pop(0)
                    batch.append(entry)
                    size += len(entry[0])
                await self._send(batch)
        finally:
            self.running = False

    async def _send(self, batch: list[tuple[Sequence[Enqueue], asyncio.Future[int]]]) -> None:
        live = [(items, fut) for items, fut in batch if not fut.cancelled()]
        if not live:
            return
        try:
            flags = await self.flush([item for items, _ in live for item in items])
        except ResponseError as exc:
            if len(live) == 1:
                _settle(live[0][1], exc)
                return
            for items, fut in live:  # find the caller whose data the script refused
                try:
                    _settle(fut, sum(await self.flush(items)))
                except Exception as own:  # noqa: BLE001 - handed to that caller
                    _settle(fut, own)
            return
        except BaseException as exc:
            for _, fut in live:
                _settle(fut, exc)
            if not isinstance(exc, Exception):
                raise
            return
        start = 0
        for items, fut in live:
            _settle(fut, sum(flags[start : start + len(items)]))
            start += len(items)


class ReadBatcher:
    """Reads of one loop by key, coalesced like ``delay()``: one that finds no read in flight goes out at
    once; those that arrive meanwhile share the next ``fetch`` (one pipeline: one round trip, and one
    socket read in Redis instead of one per caller). ``fetch`` answers each key with its value or the
    error for that key alone."""

    def __init__(self, fetch: Fetch) -> None:
        self.fetch = fetch
        self.pending: list[tuple[str, asyncio.Future[Any]]] = []
        self.running = False
        self.task: asyncio.Future[None] | None = None

    async def read(self, key: str) -> Any:
        if not self.running:
            self.running = True
            try:
                return _value((await self.fetch([key]))[0])
            finally:
                self.running = False
                if self.pending:
                    self.running = True
                    self.task = asyncio.ensure_future(self._drain())
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending.append((key, fut))
        return await fut

    async def _drain(self) -> None:
        try:
            while self.pending:
                batch = [(k, f) for k, f in self.pending[:MAX_ITEMS] if not f.cancelled()]
                del self.pending[:MAX_ITEMS]
                if not batch:
                    continue
                try:
                    values = await self.fetch([k for k, _ in batch])
                except BaseException as exc:
                    for _, fut in batch:
                        _settle(fut, exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, fut), value in zip(batch, values, strict=True):
                    _settle(fut, value)
        finally:
            self.running = False


def _value(outcome: Any) -> Any:
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def _settle(fut: asyncio.Future[Any], outcome: Any) -> None:
    if fut.done():
        return
    if isinstance(outcome, BaseException):
        fut.set_exception(outcome)
    else:
        fut.set_result(outcome)
