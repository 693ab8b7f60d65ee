"""Results: the record a worker writes per task id, and the objects that read it.

``get()`` never sleep-polls: a finished job's id is published on ``<prefix>:done`` and every
process keeps one subscription that wakes exactly the waiters of that id. A slow re-check
(once a second) only guards against a dropped pub/sub connection.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Iterator
from typing import Any

import structlog

from tasks_engine import states
from tasks_engine.clock import ms_to_iso, now_iso
from tasks_engine.codec import dumps
from tasks_engine.exceptions import TaskRevokedError
from tasks_engine.records import parse_record, rebuild_exception
from tasks_engine.registry import current_request
from tasks_engine.store import get_broker

log = structlog.get_logger("tasks_engine.results")


async def store_state(task_id: str | None, state: str, meta: dict[str, Any] | None, eager: bool = False) -> None:
    """``update_state``: a custom state with JSON meta (e.g. PROGRESS with counters)."""
    if task_id is None:
        raise RuntimeError("update_state() needs a task_id outside a running task")
    if eager:
        eager_result = _eager_results.get(task_id)
        if eager_result is not None:
            eager_result.set_progress(state, meta)
        return
    await get_broker().store_state(task_id, state, meta)


async def revoke(task_ids: list[str], terminate: bool = False, reason: str = "revoked") -> int:
    """Revoke ids: waiting jobs are removed now (REVOKED); future ones never start; running ones
    are cancelled on whichever worker runs them when ``terminate`` is set. Returns how many were waiting."""
    removed = await get_broker().revoke(task_ids, reason, terminate)
    log.info("revoked", ids=len(task_ids), waiting=removed, terminate=terminate)
    return removed


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
        self,
        id: str,  # noqa: A002 - Celery's name
        parent: AsyncResult | GroupResult | None = None,
        ignore_result: bool = False,
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
        return parse_record(await get_broker().record(self.id))

    async def state(self) -> str:
        return await get_broker().record_field(self.id, "state") or states.PENDING

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
            "date_started": ms_to_iso(record.get("date_started")),
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
        return await get_broker().record_field(self.id, "traceback")

    async def get(self, timeout: float | None = None, propagate: bool = True, interval: float | None = None) -> Any:
        """Wait for the result. FAILURE/REVOKED raise the task's exception (or return it with ``propagate=False``)."""
        del interval  # accepted for Celery compatibility; we are woken, not polling
        _check_not_in_task()
        if self.ignore_result:
            return None
        broker = get_broker()
        deadline = None if timeout is None else time.monotonic() + timeout
        waiter = broker.waiter
        while True:
            fut = waiter.register(self.id)
            try:
                await waiter.ensure_listening()
                record = parse_record(await broker.record(self.id))
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
                waiter.unregister(self.id, fut)

    wait = get

    async def revoke(self, terminate: bool = False, signal: str | None = None) -> None:
        """Stop a queued or deferred job (it never runs); ``terminate=True`` also cancels it if running."""
        del signal
        ids = [self.id]
        parent = self.parent
        while parent is not None:  # a chain's result: the remaining steps must not run either
            if isinstance(parent, GroupResult):  # a chord header inside the chain
                ids.extend(leaf.id for leaf in parent.leaves())
            else:
                ids.append(parent.id)
            parent = parent.parent
        await revoke(ids, terminate=terminate)

    async def forget(self) -> None:
        await get_broker().forget([self.id])


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

    def finish(self, state: str, value: Any = None, exc: BaseException | None = None, tb: str | None = None) -> None:
        """Record the outcome computed in-process."""
        self._state, self._value, self._exc, self._traceback = state, value, exc, tb
        self.date_done = now_iso()

    def set_progress(self, state: str, meta: dict[str, Any] | None) -> None:
        self._state, self._meta = state, meta

    async def state(self) -> str:
        return self._state

    status = state

    async def info(self) -> dict[str, Any]:
        return {
            "task_id": self.id,
            "state": self._state,
            "result": self._value,
            "meta": self._meta,
            "exc_type": type(self._exc).__name__ if self._exc else None,
            "exc_message": str(self._exc) if self._exc else None,
            "traceback": self._traceback,
            "retries": self.retries,
            "date_done": self.date_done,
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

    def leaves(self) -> list[AsyncResult]:
        """Every task result inside, nested groups flattened, in order."""
        out: list[AsyncResult] = []
        for r in self.results:
            out.extend(r.leaves() if isinstance(r, GroupResult) else [r])
        return out

    def tree(self) -> list[Any]:
        """The member ids as stored under ``group:<id>`` (nested groups as ``{"group", "results"}``)."""
        return [{"group": r.id, "results": r.tree()} if isinstance(r, GroupResult) else r.id for r in self.results]

    def tree_json(self) -> bytes:
        return dumps(self.tree())

    @staticmethod
    def from_tree(group_id: str, tree: list[Any]) -> GroupResult:
        return GroupResult(
            group_id,
            [GroupResult.from_tree(t["group"], t["results"]) if isinstance(t, dict) else AsyncResult(t) for t in tree],
        )

    async def save(self) -> None:
        await get_broker().save_group(self.id, self.tree_json())

    @classmethod
    async def restore(cls, group_id: str) -> GroupResult | None:
        tree = await get_broker().restore_group(group_id)
        return None if tree is None else cls.from_tree(group_id, tree)

    async def forget(self) -> None:
        broker = get_broker()
        await broker.forget_group(self.id)
        await broker.forget([leaf.id for leaf in self.leaves()])

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
        leaves = self.leaves()
        if not leaves:
            return []
        if isinstance(leaves[0], EagerResult):
            return [await leaf.state() for leaf in leaves]
        return [s or states.PENDING for s in await get_broker().record_states([leaf.id for leaf in leaves])]

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
        await revoke([leaf.id for leaf in self.leaves()], terminate=terminate)
