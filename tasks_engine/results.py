"""Results: the record a worker writes per task id, and the objects that read it.

``get()`` never sleep-polls: a finished job's id is published on ``<prefix>:done`` and every
process keeps one subscription that wakes exactly the waiters of that id. A slow re-check
(once a second) only guards against a dropped pub/sub connection.
"""

from __future__ import annotations

import asyncio
import sys
import time
import traceback as tb_module
import weakref
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import structlog
from redis.exceptions import RedisError

from tasks_engine import states
from tasks_engine.broker import Broker, awaited, get_broker
from tasks_engine.config import get_settings
from tasks_engine.exceptions import TaskError, TaskRevokedError
from tasks_engine.messages import dumps, loads
from tasks_engine.task import current_request

log = structlog.get_logger("tasks_engine.results")


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


# ---------------------------------------------------------------- record helpers
def exception_fields(exc: BaseException, traceback: str | None = None) -> dict[str, Any]:
    """How an exception is stored: type, module, message, JSON-able args and the traceback text."""
    try:
        args = dumps(list(exc.args)).decode()
    except TypeError:
        args = dumps([str(exc)]).decode()
    return {
        "exc_type": type(exc).__qualname__,
        "exc_module": type(exc).__module__,
        "exc_message": str(exc),
        "exc_args": args,
        "traceback": traceback if traceback is not None else "".join(tb_module.format_exception(exc)),
    }


def rebuild_exception(record: dict[str, Any]) -> BaseException:
    """The stored exception as its own class when that class is already imported here."""
    name = record.get("exc_type") or "Exception"
    module = record.get("exc_module") or "builtins"
    message = record.get("exc_message") or ""
    cls: Any = sys.modules[module] if module in sys.modules else None
    for part in name.split("."):
        cls = getattr(cls, part, None) if cls is not None else None
    if isinstance(cls, type) and issubclass(cls, BaseException):
        raw_args = record.get("exc_args")
        args = loads(raw_args) if raw_args else [message]
        try:
            return cls(*args) if isinstance(args, list) else cls(message)
        except Exception:  # noqa: BLE001 - a class whose __init__ wants other args
            try:
                return cls(message)
            except Exception as exc:  # noqa: BLE001 - fall back to TaskError below
                log.debug("cannot rebuild exception", exc_type=name, error=str(exc))
    return TaskError(f"{module}.{name}" if module != "builtins" else name, message)


def _ms_to_iso(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return datetime.fromtimestamp(int(value) / 1000, UTC).isoformat()


def parse_record(raw: dict[bytes, bytes]) -> dict[str, Any]:
    record: dict[str, Any] = {k.decode(): v.decode() for k, v in raw.items()}
    for key in ("result", "meta"):
        if key in record:
            record[key] = loads(record[key])
    for key in ("retries", "delivered"):
        if key in record:
            record[key] = int(record[key])
    return record


async def store_state(task_id: str | None, state: str, meta: dict[str, Any] | None, eager: bool = False) -> None:
    """``update_state``: a custom state with JSON meta (e.g. PROGRESS with counters)."""
    if task_id is None:
        raise RuntimeError("update_state() needs a task_id outside a running task")
    if eager:
        eager_result = _eager_results.get(task_id)
        if eager_result is not None:
            eager_result._state, eager_result._meta = state, meta
        return
    broker = get_broker()
    key = broker.result_key(task_id)
    async with broker.redis.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping={"state": state, "meta": dumps(meta).decode()})
        pipe.expire(key, get_settings().result_expires)
        await pipe.execute()


# ---------------------------------------------------------------- waiting
class ResultWaiter:
    """One pub/sub subscription per process and loop; wakes ``get()`` callers by task id."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._ready: asyncio.Event = asyncio.Event()

    async def _ensure(self) -> None:
        if self._listener is None or self._listener.done():
            self._ready.clear()
            self._listener = asyncio.create_task(self._listen())
        await self._ready.wait()

    async def _listen(self) -> None:
        pubsub = self.broker.redis.pubsub()
        try:
            await pubsub.subscribe(self.broker.done_channel)
            self._ready.set()
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                for fut in self.waiters.pop(message["data"].decode(), ()):
                    if not fut.done():
                        fut.set_result(None)
        except (ConnectionError, OSError, RedisError) as exc:
            # The client closed or Redis went away: waiters are woken below and re-check the record.
            log.debug("result listener stopped", error=str(exc))
        finally:
            self._ready.set()  # never leave a waiter stuck on a listener that died
            for futs in self.waiters.values():
                for fut in futs:
                    if not fut.done():
                        fut.set_result(None)
            self.waiters.clear()
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def wait(self, task_ids: Iterable[str], timeout: float) -> None:
        """Return when any of ``task_ids`` is announced, or after ``timeout`` seconds."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        ids = list(task_ids)
        for task_id in ids:
            self.waiters.setdefault(task_id, set()).add(fut)
        try:
            await self._ensure()
            await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            pass
        finally:
            for task_id in ids:
                futs = self.waiters.get(task_id)
                if futs is not None:
                    futs.discard(fut)
                    if not futs:
                        del self.waiters[task_id]

    def register(self, task_id: str) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(task_id, set()).add(fut)
        return fut


def _waiter(broker: Broker) -> ResultWaiter:
    waiter: ResultWaiter | None = getattr(broker, "_waiter", None)
    if waiter is None:
        waiter = ResultWaiter(broker)
        broker._waiter = waiter  # type: ignore[attr-defined]
    return waiter


def _check_not_in_task() -> None:
    req = current_request.get()
    if req is not None and not req.is_eager and not req.called_directly:
        raise RuntimeError(
            f"Never call result.get() within a task (task {req.task!r}, id {req.id}): it can deadlock the "
            "worker. Use a chain, chord or link instead."
        )


# ---------------------------------------------------------------- result objects
class AsyncResult:
    """A handle on a task's result by id; works from any process using the same Redis and prefix."""

    def __init__(
        self, id: str, parent: AsyncResult | GroupResult | None = None, ignore_result: bool = False  # noqa: A002
    ) -> None:
        self.id = id
        self.parent = parent
        self.ignore_result = ignore_result

    def __repr__(self) -> str:
        return f"<AsyncResult: {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def task_id(self) -> str:
        return self.id

    async def _record(self) -> dict[str, Any]:
        broker = get_broker()
        return parse_record(await awaited(broker.redis.hgetall(broker.result_key(self.id))))

    async def state(self) -> str:
        broker = get_broker()
        raw: bytes | None = await awaited(broker.redis.hget(broker.result_key(self.id), "state"))  # type: ignore[arg-type]
        return raw.decode() if raw else states.PENDING

    status = state

    async def info(self) -> dict[str, Any]:
        """Everything recorded: state, result, traceback, retries, date_done, meta, worker, delivered, …"""
        record = await self._record()
        state = record.get("state", states.PENDING)
        return {
            "task_id": self.id,
            "state": state,
            "task": record.get("task"),
            "result": record.get("result"),
            "meta": record.get("meta"),
            "exc_type": record.get("exc_type"),
            "exc_message": record.get("exc_message"),
            "traceback": record.get("traceback"),
            "retries": record.get("retries", 0),
            "delivered": record.get("delivered", 0),
            "date_started": _ms_to_iso(record.get("date_started")),
            "date_done": record.get("date_done"),
            "worker": record.get("worker"),
            "parent_id": record.get("parent_id"),
            "root_id": record.get("root_id"),
            "group_id": record.get("group_id"),
        }

    async def ready(self) -> bool:
        return await self.state() in states.READY_STATES

    async def successful(self) -> bool:
        return await self.state() == states.SUCCESS

    async def failed(self) -> bool:
        return await self.state() == states.FAILURE

    async def traceback(self) -> str | None:
        broker = get_broker()
        raw: bytes | None = await awaited(broker.redis.hget(broker.result_key(self.id), "traceback"))  # type: ignore[arg-type]
        return raw.decode() if raw else None

    async def get(self, timeout: float | None = None, propagate: bool = True, interval: float | None = None) -> Any:
        """Wait for the result. FAILURE/REVOKED raise the task's exception (or return it with ``propagate=False``)."""
        del interval  # accepted for Celery compatibility; we are woken, not polling
        _check_not_in_task()
        if self.ignore_result:
            return None
        broker = get_broker()
        deadline = None if timeout is None else time.monotonic() + timeout
        key = broker.result_key(self.id)
        waiter = _waiter(broker)
        while True:
            fut = waiter.register(self.id)
            try:
                await waiter._ensure()
                record = parse_record(await awaited(broker.redis.hgetall(key)))
                if record.get("state") in states.READY_STATES:
                    return _outcome(record, propagate)
                remaining = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
                if remaining <= 0:
                    raise TimeoutError(f"task {self.id} did not finish within {timeout}s")
                try:
                    await asyncio.wait_for(asyncio.shield(fut), remaining)
                except TimeoutError:
                    pass
            finally:
                futs = waiter.waiters.get(self.id)
                if futs is not None:
                    futs.discard(fut)
                    if not futs:
                        del waiter.waiters[self.id]

    wait = get

    async def revoke(self, terminate: bool = False, signal: str | None = None) -> None:
        """Stop a queued or deferred job (it never runs); ``terminate=True`` also cancels it if running."""
        del signal
        from tasks_engine.control import revoke

        ids = [self.id]
        parent = self.parent
        while parent is not None:  # a chain's result: the remaining steps must not run either
            if isinstance(parent, GroupResult):  # a chord header inside the chain
                ids.extend(leaf.id for leaf in parent._leaves())
            else:
                ids.append(parent.id)
            parent = parent.parent
        await revoke(ids, terminate=terminate)

    async def forget(self) -> None:
        broker = get_broker()
        await broker.redis.delete(broker.result_key(self.id))


def _outcome(record: dict[str, Any], propagate: bool) -> Any:
    state = record.get("state")
    if state == states.SUCCESS:
        return record.get("result")
    if state == states.REVOKED:
        exc: BaseException = TaskRevokedError(record.get("exc_message") or "revoked")
    else:
        exc = rebuild_exception(record)
    if propagate:
        raise exc
    return exc


_eager_results: weakref.WeakValueDictionary[str, EagerResult] = weakref.WeakValueDictionary()


class EagerResult(AsyncResult):
    """The result of ``apply()``: computed in-process, same async methods as :class:`AsyncResult`."""

    def __init__(self, id: str, parent: AsyncResult | GroupResult | None = None) -> None:  # noqa: A002
        super().__init__(id, parent)
        self._state = states.PENDING
        self._value: Any = None
        self._exc: BaseException | None = None
        self._traceback: str | None = None
        self._meta: dict[str, Any] | None = None
        self.retries = 0
        self.date_done: str | None = None
        _eager_results[id] = self

    def _finish(self, state: str, value: Any = None, exc: BaseException | None = None, tb: str | None = None) -> None:
        self._state, self._value, self._exc, self._traceback = state, value, exc, tb
        self.date_done = now_iso()

    async def state(self) -> str:
        return self._state

    status = state

    async def info(self) -> dict[str, Any]:
        return {
            "task_id": self.id, "state": self._state, "result": self._value, "meta": self._meta,
            "exc_type": type(self._exc).__name__ if self._exc else None,
            "exc_message": str(self._exc) if self._exc else None, "traceback": self._traceback,
            "retries": self.retries, "date_done": self.date_done,
        }

    async def traceback(self) -> str | None:
        return self._traceback

    async def get(self, timeout: float | None = None, propagate: bool = True, interval: float | None = None) -> Any:
        if self._state == states.SUCCESS:
            return self._value
        if self._exc is not None:
            if propagate:
                raise self._exc
            return self._exc
        return self._value

    wait = get

    async def revoke(self, terminate: bool = False, signal: str | None = None) -> None:
        return None

    async def forget(self) -> None:
        return None


class GroupResult:
    """Results of a group, in declaration order; can be saved and restored by id from any process."""

    def __init__(self, id: str, results: list[Any], parent: AsyncResult | GroupResult | None = None) -> None:  # noqa: A002
        self.id = id
        self.results: list[AsyncResult | GroupResult] = results
        self.parent = parent

    def __repr__(self) -> str:
        return f"<GroupResult: {self.id} [{', '.join(r.id for r in self.results)}]>"

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[AsyncResult | GroupResult]:
        return iter(self.results)

    @property
    def children(self) -> list[AsyncResult | GroupResult]:
        return self.results

    def _leaves(self) -> list[AsyncResult]:
        out: list[AsyncResult] = []
        for r in self.results:
            out.extend(r._leaves() if isinstance(r, GroupResult) else [r])
        return out

    def _tree(self) -> list[Any]:
        return [{"group": r.id, "results": r._tree()} if isinstance(r, GroupResult) else r.id for r in self.results]

    @staticmethod
    def _from_tree(group_id: str, tree: list[Any]) -> GroupResult:
        return GroupResult(
            group_id,
            [GroupResult._from_tree(t["group"], t["results"]) if isinstance(t, dict) else AsyncResult(t) for t in tree],
        )

    async def save(self) -> None:
        broker = get_broker()
        await broker.redis.set(broker.key("group", self.id), dumps(self._tree()), ex=get_settings().result_expires)

    @classmethod
    async def restore(cls, group_id: str) -> GroupResult | None:
        broker = get_broker()
        raw = await broker.redis.get(broker.key("group", group_id))
        return None if raw is None else cls._from_tree(group_id, loads(raw))

    async def forget(self) -> None:
        broker = get_broker()
        await broker.redis.delete(broker.key("group", self.id))
        for leaf in self._leaves():
            await leaf.forget()

    async def get(
        self, timeout: float | None = None, propagate: bool = True, interval: float | None = None
    ) -> list[Any]:
        """All results in declaration order (nested groups give nested lists)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        out: list[Any] = []
        for r in self.results:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            out.append(await r.get(timeout=remaining, propagate=propagate))
        return out

    join = get

    async def _states(self) -> list[str]:
        leaves = self._leaves()
        if not leaves:
            return []
        if isinstance(leaves[0], EagerResult):
            return [await leaf.state() for leaf in leaves]
        broker = get_broker()
        async with broker.redis.pipeline(transaction=False) as pipe:
            for leaf in leaves:
                pipe.hget(broker.result_key(leaf.id), "state")
            raw = await pipe.execute()
        return [r.decode() if r else states.PENDING for r in raw]

    async def completed_count(self) -> int:
        return sum(s == states.SUCCESS for s in await self._states())

    async def ready(self) -> bool:
        return all(s in states.READY_STATES for s in await self._states())

    async def successful(self) -> bool:
        return all(s == states.SUCCESS for s in await self._states())

    async def failed(self) -> bool:
        return any(s == states.FAILURE for s in await self._states())

    async def waiting(self) -> bool:
        return not await self.ready()

    async def revoke(self, terminate: bool = False, signal: str | None = None) -> None:
        from tasks_engine.control import revoke

        await revoke([leaf.id for leaf in self._leaves()], terminate=terminate)
