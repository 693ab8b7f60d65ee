"""Results: the objects that read the record a worker writes per task id. ``get()`` never sleep-polls:
a finished id is published on ``<prefix>:done`` and wakes exactly its waiters (a slow re-check, once a
second, only guards against a dropped pub/sub connection)."""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable, Iterator
from typing import Any, Generic, TypeVar, cast

import structlog

from tasks_engine.core.clock import ms_to_iso, now_iso
from tasks_engine.core.codec import dumps, loads
from tasks_engine.exceptions import ChordError, TaskRevokedError
from tasks_engine.model import states
from tasks_engine.model.records import parse_record, rebuild_exception
from tasks_engine.model.registry import current_request
from tasks_engine.store import get_broker

log = structlog.get_logger("tasks_engine.results")
T = TypeVar("T")
R = TypeVar("R")  # what the task returns: ``await AsyncResult[R].get()`` is an R


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
class AsyncResult(Generic[R]):
    """A handle on a task's result by id; works from any process using the same Redis and prefix.

    Celery's attributes that read Redis are awaited: ``state()``/``status()``, ``result()``/``info()``,
    ``traceback()``, ``children()``; ``parent`` is an attribute; ``record()`` gives every field."""

    def __init__(
        self,
        id: str,  # noqa: A002 - Celery's name
        parent: AsyncResult[Any] | GroupResult | None = None,
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

    async def record(self) -> dict[str, Any]:
        """Everything recorded: state, result, traceback, retries, date_done, meta, worker, delivered, …"""
        record = await self._record()
        out: dict[str, Any] = {"task_id": self.id, "state": record.get("state", states.PENDING)}
        out.update((k, record.get(k)) for k in ("task", "result", "meta", "exc_type", "exc_message", "traceback"))
        out.update(retries=record.get("retries", 0), delivered=record.get("delivered", 0))
        out["date_started"] = ms_to_iso(record.get("date_started"))
        out.update((k, record.get(k)) for k in ("date_done", "worker", "parent_id", "root_id", "group_id"))
        return out

    async def info(self) -> Any:
        """Celery's ``info``, the same as :meth:`result`; every recorded field is :meth:`record`."""
        return await self.result()

    async def result(self) -> Any:
        """Celery's ``result`` / ``info``: the return value once SUCCESS, the exception instance after
        FAILURE, REVOKED or RETRY, the meta dict of a custom state (``update_state``, e.g. PROGRESS),
        None while PENDING. Never waits and never raises the task's exception."""
        return _value_of(await self._record())

    async def ready(self) -> bool:
        return await self.state() in states.READY_STATES

    async def successful(self) -> bool:
        return await self.state() == states.SUCCESS

    async def failed(self) -> bool:
        return await self.state() == states.FAILURE

    async def traceback(self) -> str | None:
        return await get_broker().record_field(self.id, "traceback")

    async def children(self) -> list[AsyncResult[Any]]:
        """Celery's ``children``: the tasks this one sent, then the callbacks and next step it started."""
        return [AsyncResult(i) for i in loads(await get_broker().record_field(self.id, "children") or "[]")]

    async def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float | None = None,
        follow_parents: bool = True,
    ) -> R:
        """Wait for the result. FAILURE/REVOKED raise the task's exception (or return it with ``propagate=False``).

        With ``propagate`` (and ``follow_parents``), the results this one follows are checked first,
        earliest first, as Celery does: if an earlier step of a chain failed or was revoked, its own
        exception is raised, and a parent finishing wakes this call, so a chain whose first step was
        revoked before it ran raises at once instead of waiting out ``timeout``. A chord whose header
        failed (and every step after it) raises the failed header task's own exception, as Celery
        does; its stored record, like Celery's, holds the :class:`ChordError` (see :meth:`result`).
        """
        del interval  # accepted for Celery compatibility; we are woken, not polling
        _check_not_in_task()
        if self.ignore_result:
            return cast(R, None)
        broker = get_broker()
        deadline = None if timeout is None else time.monotonic() + timeout
        waiter = broker.waiter
        parents = _task_parents(self) if propagate and follow_parents else []
        watched = [self.id, *(p.id for p in parents if not isinstance(p, EagerResult))]

        async def bounded(step: Awaitable[T]) -> T:
            # Whatever Redis does (hangs, drops packets), get(timeout) returns within its timeout.
            left = None if deadline is None else max(0.001, deadline - time.monotonic())
            try:
                return await asyncio.wait_for(step, left)
            except TimeoutError:
                why = " (Redis did not answer)" if left is not None and left > 0.5 else ""
                raise TimeoutError(f"task {self.id} did not finish within {timeout}s{why}") from None

        while True:
            futs = [(task_id, waiter.register(task_id)) for task_id in watched]
            try:
                await bounded(waiter.ensure_listening())
                # Raised out here: a parent's own TimeoutError must not read as Redis not answering.
                parent_error = await bounded(_parent_error(parents)) if parents else None
                if parent_error is not None:
                    raise parent_error
                record = parse_record(await bounded(broker.record(self.id)))
                if record.get("state") in states.READY_STATES:
                    if propagate and record.get("exc_type") == "ChordError":
                        raise await bounded(_chord_cause(record, self))
                    return cast(R, _outcome(record, propagate))
                remaining = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
                if remaining <= 0:
                    raise TimeoutError(f"task {self.id} did not finish within {timeout}s")
                await asyncio.wait([fut for _, fut in futs], timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task_id, fut in futs:
                    waiter.unregister(task_id, fut)

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
        """Delete this result and those of every result it follows (Celery forgets the parents too):
        a chain's result forgets each step; a chord header on the way is forgotten whole (its saved
        group and every member, with a member chain's earlier steps) and the walk goes on past it."""
        task_ids: list[str] = []
        group_ids: list[str] = []
        _lineage([self], task_ids, group_ids)
        await _forget(task_ids, group_ids)


def _task_parents(result: AsyncResult[Any]) -> list[AsyncResult[Any]]:
    """The task results ``result`` follows, nearest first: a chain's earlier steps (chord headers skipped)."""
    out: list[AsyncResult[Any]] = []
    seen: set[int] = set()
    node = result.parent
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if isinstance(node, AsyncResult):
            out.append(node)
        node = node.parent
    return out


async def _parent_error(parents: list[AsyncResult[Any]]) -> BaseException | None:
    """The exception of the earliest parent that failed or was revoked (Celery's order), if any.

    A failed chord body (a parent whose own parent is the header group) gives None: the engine is
    failing the steps after it by a follow-up job, so ``get()`` waits for that instead of returning
    while those steps still read PENDING.
    """
    remote = [p.id for p in parents if not isinstance(p, EagerResult)]
    broker = get_broker()
    found = dict(zip(remote, await broker.record_states(remote), strict=True)) if remote else {}
    for node in reversed(parents):
        if isinstance(node, EagerResult):
            if await node.state() in states.PROPAGATE_STATES:
                error = await node.get(propagate=False)
                if isinstance(error, BaseException):
                    return error
        elif found.get(node.id) in states.PROPAGATE_STATES:
            if found[node.id] == states.FAILURE and isinstance(node.parent, GroupResult):
                return None
            record = parse_record(await broker.record(node.id))
            if record.get("state") in states.PROPAGATE_STATES:  # not forgotten meanwhile
                error = _outcome(record, propagate=False)
                if isinstance(error, BaseException):
                    return error
    return None


async def _chord_cause(record: dict[str, Any], result: AsyncResult[Any]) -> BaseException:
    """What ``get()`` raises for a ChordError record: the failed header task's exception — the one the record
    names (``chord_failed_id``), else the first failed one of the earliest header followed (Celery's walk)."""
    broker = get_broker()
    failed_id = record.get("chord_failed_id")
    nodes: list[AsyncResult[Any] | GroupResult] = []
    node = result.parent
    while not failed_id and node is not None and len(nodes) < 1000 and node not in nodes:
        nodes.append(node)
        node = node.parent
    for node in reversed(nodes):  # earliest first
        ids = [leaf.id for leaf in node.leaves()] if isinstance(node, GroupResult) else [node.id]
        found = await broker.record_states(ids)
        failed_id = next((i for i, st in zip(ids, found, strict=True) if st in states.PROPAGATE_STATES), None)
        if failed_id:
            break
    failed = parse_record(await broker.record(failed_id)) if failed_id else {}
    exc = _outcome(failed if failed.get("state") in states.PROPAGATE_STATES else record, propagate=False)
    return exc if isinstance(exc, BaseException) else ChordError(str(exc))


def _lineage(start: list[AsyncResult[Any] | GroupResult], task_ids: list[str], group_ids: list[str]) -> None:
    """Every task and group id reachable from ``start`` through parents and group members."""
    stack: list[AsyncResult[Any] | GroupResult] = list(start)
    seen: set[tuple[bool, str]] = set()
    while stack:
        node = stack.pop()
        key = (isinstance(node, GroupResult), node.id)
        if key in seen:
            continue
        seen.add(key)
        if isinstance(node, GroupResult):
            group_ids.append(node.id)
            stack.extend(node.results)
        elif not isinstance(node, EagerResult):  # nothing of an eager result is in Redis
            task_ids.append(node.id)
        if node.parent is not None:
            stack.append(node.parent)


async def _forget(task_ids: list[str], group_ids: list[str]) -> None:
    broker = get_broker()
    for group_id in group_ids:
        await broker.forget_group(group_id)
    await broker.forget(task_ids)


def _value_of(record: dict[str, Any]) -> Any:
    """Celery's ``AsyncResult.result`` from a record (see :meth:`AsyncResult.result`)."""
    state = record.get("state") or states.PENDING
    if state == states.SUCCESS:
        return record.get("result")
    if state in states.EXCEPTION_STATES:
        return _outcome(record, propagate=False)
    if state == states.PENDING:
        return None
    return record.get("meta")


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


_eager_results: weakref.WeakValueDictionary[str, EagerResult[Any]] = weakref.WeakValueDictionary()


class EagerResult(AsyncResult[R]):
    """The result of ``apply()``: computed in-process, same async methods as :class:`AsyncResult`."""

    def __init__(self, id: str, parent: AsyncResult[Any] | GroupResult | None = None) -> None:  # noqa: A002
        super().__init__(id, parent)
        self._state = states.PENDING
        self._value: Any = None
        self._exc: BaseException | None = None
        self._traceback: str | None = None
        self._meta: dict[str, Any] | None = None
        self.cause: BaseException | None = None  # what get() raises instead of a chord's ChordError
        self.retries = 0
        self.date_done: str | None = None
        _eager_results[id] = self

    def finish(
        self, state: str, value: Any = None, exc: BaseException | None = None, tb: str | None = None, cause: Any = None
    ) -> None:
        """Record the outcome computed in-process."""
        self._state, self._value, self._exc, self._traceback, self.cause = state, value, exc, tb, cause
        self.date_done = now_iso()

    def set_progress(self, state: str, meta: dict[str, Any] | None) -> None:
        self._state, self._meta = state, meta

    async def state(self) -> str:
        return self._state

    status = state

    async def record(self) -> dict[str, Any]:
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

    async def result(self) -> Any:
        if self._state == states.SUCCESS:
            return self._value
        if self._exc is not None:
            return self._exc
        return None if self._state == states.PENDING else self._meta

    async def traceback(self) -> str | None:
        return self._traceback

    async def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float | None = None,
        follow_parents: bool = True,
    ) -> R:
        if self._state == states.SUCCESS:
            return cast(R, self._value)
        if self._exc is not None:
            if propagate:
                raise self.cause or self._exc
            return cast(R, self._exc)
        return cast(R, self._value)

    wait = get

    async def revoke(self, terminate: bool = False, signal: str | None = None) -> None:
        return None

    async def forget(self) -> None:
        return None


class GroupResult:
    """Results of a group, in declaration order; can be saved and restored by id from any process."""

    def __init__(self, id: str, results: list[Any], parent: AsyncResult[Any] | GroupResult | None = None) -> None:  # noqa: A002
        self.id = id
        self.results: list[AsyncResult[Any] | GroupResult] = results
        self.parent = parent

    def __repr__(self) -> str:
        return f"<GroupResult: {self.id} [{', '.join(r.id for r in self.results)}]>"

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[AsyncResult[Any] | GroupResult]:
        return iter(self.results)

    @property
    def children(self) -> list[AsyncResult[Any] | GroupResult]:
        return self.results

    def leaves(self) -> list[AsyncResult[Any]]:
        """Every task result inside, nested groups flattened, in order."""
        out: list[AsyncResult[Any]] = []
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
        """Delete the saved group and every member's result, with a member chain's earlier steps (as
        Celery forgets each member, which forgets its parents); the group's own parent is kept."""
        task_ids: list[str] = []
        group_ids = [self.id]
        _lineage(list(self.results), task_ids, group_ids)
        await _forget(task_ids, group_ids)

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
