"""Enqueue and wait from code that cannot ``await``: Django/Flask views, FastAPI ``def`` endpoints,
scripts, threads.

Every blocking call is run on one event loop per process, on a daemon thread of its own, which owns
the process's asyncio Redis client. So threads share one connection pool instead of opening a loop
and a connection per call, and concurrent ``delay_sync()`` calls from many threads are packed into
the same enqueue script call (the client's group commit). The loop is started on first use; a
forked child (gunicorn, prefork) starts its own on first use; it is closed at interpreter exit.

A blocking call made where an event loop is running in the calling thread would stall that loop,
so it raises instead and says to ``await`` the async method.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import os
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any, Generic, NoReturn, Protocol, TypeVar

import structlog

from tasks_engine.client.results import GroupResult
from tasks_engine.store import loop_broker
from tasks_engine.store.celery_send import close_clients

log = structlog.get_logger("tasks_engine.sync")

T = TypeVar("T")
R = TypeVar("R")
_GRACE = 5.0  # beyond get(timeout): the loop thread's own answer should always come first


class ResultLike(Protocol):
    """What a blocking handle needs of an async result (native :class:`AsyncResult`, or a Celery one)."""

    id: str

    async def get(self, timeout: float | None = None, propagate: bool = True) -> Any: ...
    async def state(self) -> str: ...
    async def result(self) -> Any: ...
    async def ready(self) -> bool: ...
    async def successful(self) -> bool: ...
    async def failed(self) -> bool: ...
    async def traceback(self) -> str | None: ...


class LoopClosedError(RuntimeError):
    """A call reached a loop thread that :func:`shutdown` is closing (the caller moves to a new one)."""


class LoopThread:
    """An event loop running forever on a daemon thread, for one process."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.lock = threading.Lock()
        self.calls: set[concurrent.futures.Future[Any]] = set()
        self.closing = False
        self.thread = threading.Thread(target=self._run, name="tasks_engine-sync-loop", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        # The caller's context variables (a task's request, always_eager) travel with the coroutine.
        with self.lock:
            if self.closing:
                raise LoopClosedError("the sync client's loop thread is closing")
            future = asyncio.run_coroutine_threadsafe(coro, self.loop)
            self.calls.add(future)
        future.add_done_callback(self._done)
        return future

    def _done(self, future: concurrent.futures.Future[Any]) -> None:
        with self.lock:
            self.calls.discard(future)

    def close(self, timeout: float) -> None:
        """Close the loop's Redis client, then stop the loop and its thread — unless another thread is
        still waiting on a call (a daemon thread in ``get()`` at exit): that one is not failed under it,
        the loop ends with the process."""
        with self.lock:
            busy = len(self.calls)
            self.closing = not busy
        if busy:
            log.debug("sync calls still running; the loop thread is left to end with the process", calls=busy)
            return
        if self.loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(_close_client(), self.loop).result(timeout)
            except Exception as exc:  # noqa: BLE001 - shutting down: report, never raise at exit
                log.warning("sync client did not close cleanly", error=repr(exc))
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout)
        if not self.thread.is_alive():
            self.loop.close()


async def _close_client() -> None:
    loop = asyncio.get_running_loop()
    broker = loop_broker(loop)
    if broker is not None:
        await broker.close()
    await close_clients(loop)
    others = [t for t in asyncio.all_tasks(loop) if t is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


_lock = threading.Lock()
_runner: LoopThread | None = None
_inherited: list[LoopThread] = []
_exiting = False


def _loop_thread() -> LoopThread:
    global _runner
    runner = _runner
    if runner is not None and runner.pid == os.getpid():
        return runner
    with _lock:
        if _runner is None or _runner.pid != os.getpid():
            _runner = LoopThread()
        return _runner


def _after_fork_in_child() -> None:
    """The parent's loop thread does not exist in a forked child: drop it (untouched, its sockets are
    the parent's) so the child's first call starts its own."""
    global _runner, _lock
    if _runner is not None:
        _inherited.append(_runner)  # never collected here: closing its loop would touch the parent's fds
    _runner = None
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _park() -> NoReturn:
    while True:
        time.sleep(3600)


def _at_exit() -> None:
    global _exiting
    _exiting = True
    shutdown()


def shutdown(timeout: float = _GRACE) -> None:
    """Close this process's sync client and its loop thread (run at exit; the next call starts anew)."""
    global _runner
    with _lock:
        runner, _runner = _runner, None
    if runner is not None and runner.pid == os.getpid():
        runner.close(timeout)


atexit.register(_at_exit)


def check_blocking_allowed(what: str) -> None:
    """Refuse a blocking call on a thread whose event loop is running: it would freeze that loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        f"{what} blocks, but it was called from a running event loop; in async code await the async "
        f"method instead (e.g. `await task.delay(...)`, `await result.get()`)"
    )


def run(coro: Coroutine[Any, Any, T], what: str, timeout: float | None = None) -> T:
    """Run ``coro`` on this process's loop thread and block until it is done (``timeout``: give up after)."""
    try:
        check_blocking_allowed(what)
    except RuntimeError:
        coro.close()
        raise
    try:
        future = _loop_thread().submit(coro)
    except LoopClosedError:
        if _exiting:  # a daemon thread calling at interpreter exit: it ends with the process, quietly
            coro.close()
            _park()
        future = _loop_thread().submit(coro)  # shutdown() swapped in a new loop thread meanwhile
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise TimeoutError(f"{what} did not finish within {timeout}s") from None
    except BaseException:
        future.cancel()  # KeyboardInterrupt in the waiting thread: don't leave the call running
        raise


class SyncResult(Generic[R]):
    """A blocking handle on a task's result: ``get(timeout)`` waits; ``state``, ``result`` read Redis now.

    Wraps an async result (``.aio``) and runs each read on the process's loop thread."""

    def __init__(self, result: Any) -> None:
        self.aio: ResultLike = result

    def __repr__(self) -> str:
        return f"<SyncResult: {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SyncResult) and other.aio == self.aio

    def __hash__(self) -> int:
        return hash(self.aio)

    @property
    def id(self) -> str:
        return self.aio.id

    @property
    def task_id(self) -> str:
        return self.aio.id

    def get(self, timeout: float | None = None, propagate: bool = True) -> R:
        """Wait for the result; FAILURE/REVOKED raise the task's exception unless ``propagate=False``."""
        limit = None if timeout is None else timeout + _GRACE
        value: R = run(self.aio.get(timeout=timeout, propagate=propagate), "result.get()", limit)
        return value

    wait = get

    @property
    def state(self) -> str:
        return run(self.aio.state(), "result.state")

    status = state

    @property
    def result(self) -> Any:
        """The return value once SUCCESS, the exception after FAILURE, the meta of a custom state, else None."""
        return run(self.aio.result(), "result.result")

    info = result

    @property
    def traceback(self) -> str | None:
        return run(self.aio.traceback(), "result.traceback")

    def ready(self) -> bool:
        return run(self.aio.ready(), "result.ready()")

    def successful(self) -> bool:
        return run(self.aio.successful(), "result.successful()")

    def failed(self) -> bool:
        return run(self.aio.failed(), "result.failed()")

    def revoke(self, terminate: bool = False) -> None:
        revoke = getattr(self.aio, "revoke", None)
        if revoke is None:
            raise NotImplementedError(f"{type(self.aio).__name__} cannot be revoked from here")
        run(revoke(terminate=terminate), "result.revoke()")

    def forget(self) -> None:
        forget = getattr(self.aio, "forget", None)
        if forget is None:
            raise NotImplementedError(f"{type(self.aio).__name__} cannot be forgotten from here")
        run(forget(), "result.forget()")


class SyncGroupResult:
    """A blocking handle on a group's results (a group or chord header applied with ``*_sync``)."""

    def __init__(self, result: GroupResult) -> None:
        self.aio = result

    def __repr__(self) -> str:
        return f"<SyncGroupResult: {self.id}>"

    @property
    def id(self) -> str:
        return self.aio.id

    @property
    def results(self) -> list[SyncResult[Any] | SyncGroupResult]:
        return [wrap(r) for r in self.aio.results]

    def __len__(self) -> int:
        return len(self.aio)

    def __iter__(self) -> Iterator[SyncResult[Any] | SyncGroupResult]:
        return iter(self.results)

    def get(self, timeout: float | None = None, propagate: bool = True) -> list[Any]:
        limit = None if timeout is None else timeout + _GRACE
        return run(self.aio.get(timeout=timeout, propagate=propagate), "group_result.get()", limit)

    join = get

    def ready(self) -> bool:
        return run(self.aio.ready(), "group_result.ready()")

    def successful(self) -> bool:
        return run(self.aio.successful(), "group_result.successful()")

    def failed(self) -> bool:
        return run(self.aio.failed(), "group_result.failed()")

    def completed_count(self) -> int:
        return run(self.aio.completed_count(), "group_result.completed_count()")

    def revoke(self, terminate: bool = False) -> None:
        run(self.aio.revoke(terminate=terminate), "group_result.revoke()")


def wrap(result: Any) -> Any:
    """The blocking handle for what an async apply returned."""
    return SyncGroupResult(result) if isinstance(result, GroupResult) else SyncResult(result)


def apply_sync(coro: Coroutine[Any, Any, Any], what: str) -> Any:
    """Run an async apply (``delay``, ``apply_async``, ``send_task``) to completion; its blocking handle."""
    return wrap(run(coro, what))
