"""Time limits on asyncio: the soft limit raised inside the task, the hard limit that stops it.

Soft limit. Celery users write ``except SoftTimeLimitExceeded:`` around their work, but asyncio can
only interrupt a coroutine by cancelling its task, which raises ``CancelledError`` at the ``await``
it is suspended on. So every ``async def`` task runs under :class:`_Interruptible`, a thin driver
that steps the task's coroutine itself and forwards every value and exception unchanged. At the
soft limit the engine cancels the asyncio task; the driver intercepts that one cancellation, takes
it back (``Task.uncancel()``, so nothing above still thinks the task is being cancelled) and throws
``SoftTimeLimitExceeded`` into the coroutine at that very ``await``. The task's own code can then
clean up and return a value (SUCCESS), re-raise (FAILURE, or a retry when the exception is in
``autoretry_for``), or do more awaited work: the soft limit is only a warning. Whatever the task
was awaiting is cancelled (a ``gather`` cancels its children, a ``shield`` does not), exactly as a
plain cancellation would do.

Hard limit. At ``time_limit`` the attempt is reported as FAILURE (``TimeLimitExceeded``) at once,
without waiting for the coroutine, and the coroutine is stopped for good: it gets a
``CancelledError`` at its current ``await`` so ``finally``/``async with`` clean-ups run. If it
swallows that and awaits again, what it awaits is cancelled as ``Task.cancel()`` would cancel it
(so that future's own clean-ups, such as a socket's registration with the event loop, run first)
and it gets another ``CancelledError`` there; after a few of those the driver closes it
(``GeneratorExit``) at an await whose future is already cancelled, and never steps it again. A task
that loops on ``except CancelledError: pass`` therefore cannot outlive its limit. Closing it at a
pending await instead would skip those clean-ups: a connect in flight left the loop's selector
watching a dead descriptor, and the next connection on that descriptor number never completed.
A hard limit is terminal, like Celery's killed child process: never turned into a retry.
``revoke(terminate=True)`` and a cold shutdown stop an attempt the same way.

Blocked loop. A coroutine that runs sync code without awaiting holds the event loop; nothing in
asyncio can interrupt it, so no limit fires until it yields. The driver records which task is
being stepped (:func:`current_steps`), so the worker's watchdog thread can name the culprit.

Sync (``def``) task functions run in a thread pool and never block the loop. The soft limit is
raised inside the thread with ``PyThreadState_SetAsyncExc``: it lands between two bytecodes, so a
function in the middle of a long C call (``time.sleep(60)``, a blocking socket read) only sees it
when that call returns. The hard limit marks the job FAILURE on time regardless, raises
``TimeLimitExceeded`` in the thread the same way, and frees the worker slot; a thread stuck in C
keeps its pool thread until the call returns. Limits count from the start of the attempt, so time
spent waiting for a free pool thread counts too. An interrupt that has not landed when the function
returns is taken back in that thread (:func:`_absorb_interrupt`), never cleared with
``SetAsyncExc(NULL)``: that call leaves the interpreter's "async exception pending" flag set with no
exception to deliver, and under a tracer or profiler (``sys.settrace``: coverage.py, debuggers)
CPython 3.11 then re-checks that flag forever at every function entry: every thread spins and the
process hangs, signal handlers included.
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
import time
from collections.abc import Callable, Coroutine, Generator
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context
from typing import Any, TypeVar

from tasks_engine.exceptions import SoftTimeLimitExceeded, TaskExitError, TaskRevokedError, TimeLimitExceeded

T = TypeVar("T")

# Which attempt each event-loop thread is stepping right now, and since when (monotonic).
# Written by the driver around every step; read by the worker's watchdog thread.
_steps: dict[int, tuple[str, float]] = {}

# How many cancellations a stopped coroutine may swallow before it is closed.
_STOP_ROUNDS = 3


class _Absorbed(BaseException):
    """Sent to a pool thread in place of an interrupt that had not landed yet; caught at once."""


def _absorb_interrupt() -> None:
    """In the pool thread, once its function returned: take back an interrupt sent to it that has not
    landed yet, so it can never hit whatever the thread runs next. It is replaced with ``_Absorbed``,
    which lands in the loop below and is dropped; delivering it is what clears the interpreter's
    pending flag (see the module docstring for why clearing with NULL would hang the process)."""
    ident = ctypes.c_ulong(threading.get_ident())
    try:
        for _ in range(1000):
            # (Re)sent each round: another thread's delivery may have cleared the interpreter's flag.
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ident, ctypes.py_object(_Absorbed))
            for _ in range(100):  # it lands at the first backward jump
                pass
    except BaseException:  # noqa: BLE001 - _Absorbed, or the late interrupt itself landing first
        return


def current_steps() -> list[tuple[str, float]]:
    """``(label, seconds)`` of every task step in progress: the task holding a blocked event loop."""
    now = time.monotonic()
    return [(label, now - since) for label, since in _steps.copy().values()]


class _Interruptible:
    """Steps a coroutine; turns the soft-limit cancellation into ``SoftTimeLimitExceeded`` inside it
    and, once ``kill`` is set, lets it clean up for one step and then drops it."""

    def __init__(self, coro: Coroutine[Any, Any, Any], label: str) -> None:
        self._coro = coro
        self.label = label
        self.inject: BaseException | None = None
        self.kill = False

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self._coro
        thread = threading.get_ident()
        value: Any = None
        error: BaseException | None = None
        stops = 0  # cancellations it has been given since ``kill``
        while True:
            _steps[thread] = (self.label, time.monotonic())
            try:
                yielded = coro.send(value) if error is None else coro.throw(error)
            except StopIteration as stop:
                if self.kill:  # it caught the stop and returned: the supervisor already decided
                    raise asyncio.CancelledError from None
                return stop.value
            except (SystemExit, KeyboardInterrupt) as exit_:
                # asyncio lets these two out of the event loop: the task's sys.exit() would end the worker.
                raise TaskExitError(exit_) from exit_
            finally:
                _steps.pop(thread, None)
            if stops and isinstance(yielded, asyncio.Future):
                # It swallowed the cancellation and awaits again: cancel that await too, through the task.
                yielded.cancel()
            value, error = None, None
            try:
                value = yield yielded
            except asyncio.CancelledError as cancelled:
                if self.kill:
                    error, stops = cancelled, stops + 1
                elif self.inject is not None:
                    error, self.inject = self.inject, None
                    current = asyncio.current_task()
                    if current is not None:
                        current.uncancel()
                else:  # its own ``asyncio.timeout``, or a future it awaited cancelled by someone else
                    error = cancelled
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as other:  # noqa: BLE001 - forwarded into the coroutine as-is
                error = other
            if stops:  # being stopped: one check per step on the normal path
                if error is None:  # a bare ``yield`` (sleep(0)) or an await that finished anyway
                    error, stops = asyncio.CancelledError(), stops + 1
                if stops > _STOP_ROUNDS:
                    # Still swallowing: close it where it stands, its await already cancelled; never step it again.
                    try:
                        coro.close()
                    except RuntimeError:  # it awaited inside its GeneratorExit handling too
                        pass
                    raise asyncio.CancelledError


class LimitedRun:
    """One running attempt: can be soft-interrupted, hard-stopped or terminated from outside."""

    def __init__(self, label: str = "") -> None:
        self.label = label
        self.task: asyncio.Future[Any] | None = None
        self._driver: _Interruptible | None = None
        self._thread_id: int | None = None
        self._thread_lock = threading.Lock()
        self._thread_done = False
        self._interrupted = False  # an interrupt was sent into the thread
        self._soft_due = False  # the soft limit passed before the sync function got a thread
        self.terminated = False
        self.timed_out = False  # the hard limit stopped it

    def _raise_in_thread(self, exc_type: type[BaseException]) -> bool:
        """Raise ``exc_type`` in the thread running the sync function, if it is still running it."""
        with self._thread_lock:
            if self._thread_id is None or self._thread_done:
                return False
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread_id), ctypes.py_object(exc_type))
            self._interrupted = True
            return True

    def soft_interrupt(self) -> None:
        if self.task is None or self.task.done():
            return
        if self._driver is not None:
            self._driver.inject = SoftTimeLimitExceeded("soft time limit exceeded")
            self.task.cancel()
        elif not self._raise_in_thread(SoftTimeLimitExceeded):
            self._soft_due = True

    def _stop(self, exc_type: type[BaseException]) -> None:
        if self.task is None or self.task.done():
            return
        if self._driver is not None:
            self._driver.kill = True
        else:
            self._raise_in_thread(exc_type)
        self.task.cancel()
        self.task.add_done_callback(_consume)

    def terminate(self) -> None:
        """Stop the attempt now (revoke with terminate=True)."""
        self.terminated = True
        self._stop(TaskRevokedError)

    async def run_coroutine(self, coro: Coroutine[Any, Any, T], soft: float | None, hard: float | None) -> T:
        self._driver = _Interruptible(coro, self.label)
        driver = self._driver

        async def drive() -> Any:
            return await driver

        self.task = asyncio.ensure_future(drive())
        return await self._supervise(soft, hard)  # type: ignore[no-any-return]

    async def run_sync(
        self,
        pool: ThreadPoolExecutor,
        fn: Callable[..., T],
        args: list[Any],
        kwargs: dict[str, Any],
        soft: float | None,
        hard: float | None,
    ) -> T:
        context = copy_context()

        def in_thread() -> T:
            with self._thread_lock:
                self._thread_id = threading.get_ident()
                soft_due = self._soft_due
            try:
                if soft_due:
                    raise SoftTimeLimitExceeded("soft time limit exceeded before the function started")
                return context.run(fn, *args, **kwargs)
            except (SystemExit, KeyboardInterrupt) as exit_:  # would escape the event loop when awaited
                raise TaskExitError(exit_) from exit_
            finally:
                with self._thread_lock:
                    self._thread_done = True
                    interrupted = self._interrupted
                if interrupted:
                    _absorb_interrupt()

        self.task = asyncio.get_running_loop().run_in_executor(pool, in_thread)
        return await self._supervise(soft, hard)  # type: ignore[no-any-return]

    async def _supervise(self, soft: float | None, hard: float | None) -> Any:
        assert self.task is not None
        loop = asyncio.get_running_loop()
        soft_handle = loop.call_later(soft, self.soft_interrupt) if soft else None
        try:
            if hard is None:
                return await asyncio.shield(self.task)
            done, _ = await asyncio.wait({self.task}, timeout=hard)
            if not done:
                # Report now; never wait for a task that ignores cancellation.
                self.timed_out = True
                self._stop(TimeLimitExceeded)
                raise TimeLimitExceeded(f"hard time limit ({hard}s) exceeded")
            return self.task.result()
        except asyncio.CancelledError:
            # The worker itself is being cancelled (cold shutdown): take the attempt down too.
            self._stop(TaskRevokedError)
            raise
        finally:
            if soft_handle is not None:
                soft_handle.cancel()


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()
