"""Rate-limit grammar and time limits on asyncio.

Soft limit, and why it needs care on asyncio: cancellation only raises ``CancelledError``, and only
at an ``await``. Celery users write ``except SoftTimeLimitExceeded:``, so the engine runs the task's
coroutine through :class:`_Interruptible`, a thin driver that forwards every ``send``/``throw``
unchanged. At the soft limit the engine cancels the asyncio task, the driver catches that one
cancellation, takes it back (``Task.uncancel()``) and throws ``SoftTimeLimitExceeded`` into the
coroutine at the very ``await`` it is suspended on. The task may catch it, clean up and return, or
re-raise. The hard limit is a real cancellation: the job is recorded as FAILURE
(``TimeLimitExceeded``) at the limit whether or not the coroutine ever yields again.

Sync task functions run in a thread pool; there the soft limit is raised in the thread with
``PyThreadState_SetAsyncExc`` (it lands between bytecodes), and the hard limit marks the job
failed on time even if the thread keeps running.
"""

from __future__ import annotations

import asyncio
import ctypes
import re
import threading
from collections.abc import Callable, Coroutine, Generator
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context
from typing import Any, NamedTuple, TypeVar

from tasks_engine.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

T = TypeVar("T")

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*([smh]))?\s*$")
_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}


class RateLimit(NamedTuple):
    """``count`` starts per ``period`` seconds across the whole cluster, ``burst`` at once."""

    count: float
    period: float
    burst: int = 1

    @property
    def emission_ms(self) -> int:
        return max(1, round(self.period * 1000 / self.count))

    def lua_value(self) -> list[int]:
        """(emission interval, burst tolerance) in ms, as the claim script expects."""
        return [self.emission_ms, self.emission_ms * max(0, self.burst - 1)]


def parse_rate_limit(value: str | float | None, burst: int = 1) -> RateLimit | None:
    """Celery's grammar: ``"10/m"``, ``"100/s"``, ``"1000/h"``, a plain number = per second, 0/None = off."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"invalid rate limit {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"invalid rate limit {value!r}: must not be negative")
        return RateLimit(float(value), 1.0, burst) if value else None
    match = _RATE.match(value)
    if not match:
        raise ValueError(f"invalid rate limit {value!r}: expected N, 'N/s', 'N/m' or 'N/h'")
    count = float(match.group(1))
    if count == 0:
        return None
    return RateLimit(count, _PERIODS[match.group(2) or "s"], burst)


def check_time_limits(soft: float | None, hard: float | None) -> None:
    for label, value in (("soft_time_limit", soft), ("time_limit", hard)):
        if value is not None and value <= 0:
            raise ValueError(f"{label} must be positive, got {value}")
    if soft is not None and hard is not None and soft > hard:
        raise ValueError(f"soft_time_limit ({soft}) must not exceed time_limit ({hard})")


class _Interruptible:
    """Drives a coroutine; turns the soft-limit cancellation into ``SoftTimeLimitExceeded`` inside it."""

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._coro = coro
        self.inject: BaseException | None = None

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self._coro
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                yielded = coro.send(value) if error is None else coro.throw(error)
            except StopIteration as stop:
                return stop.value
            value, error = None, None
            try:
                value = yield yielded
            except asyncio.CancelledError as cancelled:
                if self.inject is not None:
                    error, self.inject = self.inject, None
                    current = asyncio.current_task()
                    if current is not None:
                        current.uncancel()
                else:
                    error = cancelled
            except BaseException as other:  # noqa: BLE001 - forwarded into the coroutine as-is
                error = other


class LimitedRun:
    """One running attempt: can be soft-interrupted, hard-stopped or terminated from outside."""

    def __init__(self) -> None:
        self.task: asyncio.Future[Any] | None = None
        self._driver: _Interruptible | None = None
        self._thread_id: int | None = None
        self.terminated = False

    def _raise_in_thread(self, exc_type: type[BaseException]) -> None:
        if self._thread_id is not None:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread_id), ctypes.py_object(exc_type))

    def soft_interrupt(self) -> None:
        if self.task is None or self.task.done():
            return
        if self._driver is not None:
            self._driver.inject = SoftTimeLimitExceeded("soft time limit exceeded")
            self.task.cancel()
        else:
            self._raise_in_thread(SoftTimeLimitExceeded)

    def terminate(self) -> None:
        """Stop the attempt now (revoke with terminate=True)."""
        self.terminated = True
        if self.task is not None and not self.task.done():
            self.task.cancel()
            if self._driver is None:
                self._raise_in_thread(TimeLimitExceeded)

    async def run_coroutine(self, coro: Coroutine[Any, Any, T], soft: float | None, hard: float | None) -> T:
        self._driver = _Interruptible(coro)
        driver = self._driver

        async def drive() -> Any:
            return await driver

        self.task = asyncio.ensure_future(drive())
        return await self._supervise(soft, hard)

    async def run_sync(
        self, pool: ThreadPoolExecutor, fn: Callable[..., T], args: list[Any], kwargs: dict[str, Any],
        soft: float | None, hard: float | None,
    ) -> T:
        context = copy_context()

        def in_thread() -> T:
            self._thread_id = threading.get_ident()
            try:
                return context.run(fn, *args, **kwargs)
            finally:
                self._thread_id = None

        self.task = asyncio.get_running_loop().run_in_executor(pool, in_thread)
        return await self._supervise(soft, hard)

    async def _supervise(self, soft: float | None, hard: float | None) -> Any:
        assert self.task is not None
        loop = asyncio.get_running_loop()
        soft_handle = loop.call_later(soft, self.soft_interrupt) if soft else None
        try:
            if hard is None:
                return await asyncio.shield(self.task)
            done, _ = await asyncio.wait({self.task}, timeout=hard)
            if not done:
                # Hard limit: stop it and report now; never wait for a task that ignores cancellation.
                self.task.cancel()
                if self._driver is None:
                    self._raise_in_thread(TimeLimitExceeded)
                self.task.add_done_callback(_consume)
                raise TimeLimitExceeded(f"hard time limit ({hard}s) exceeded")
            return self.task.result()
        except asyncio.CancelledError:
            # The worker itself is being cancelled (cold shutdown): take the attempt down too.
            if not self.task.done():
                self.task.cancel()
                self.task.add_done_callback(_consume)
            raise
        finally:
            if soft_handle is not None:
                soft_handle.cancel()


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()
