"""Calling tasks that still live on Celery workers, by name: ``celery_task("proj.add", queue="celery")``.

The message is Celery's own (protocol 2, in kombu's Redis envelope and layout), so an unmodified
Celery 5 worker consuming that queue runs it; its result is read from Celery's Redis result backend
with the same API as a native result (``get``/``state``/``result``/``ready``…), awaited or blocking.
"""

from __future__ import annotations

import asyncio
import os
import socket
from datetime import UTC, datetime
from typing import Any

from tasks_engine.client.sync import SyncResult, apply_sync
from tasks_engine.core.config import get_settings
from tasks_engine.core.ids import new_id
from tasks_engine.model import celery_outbound as wire
from tasks_engine.model.registry import current_request
from tasks_engine.store import get_broker
from tasks_engine.store.celery_keys import CeleryKeys
from tasks_engine.store.celery_send import CelerySender, client_for

_ORIGIN = f"gen{os.getpid()}@{socket.gethostname()}"


def check_not_in_task() -> None:
    """As for native results: waiting inside a task can deadlock the worker."""
    req = current_request.get()
    if req is not None and not req.is_eager and not req.called_directly:
        raise RuntimeError(f"Never call result.get() within a task (task {req.task!r}): use a chain or callback")


class CeleryResult:
    """A Celery task's result, read from Celery's Redis result backend (``celery-task-meta-<id>``)."""

    def __init__(self, id: str, target: CeleryTask) -> None:  # noqa: A002 - Celery's name
        self.id = id
        self.target = target

    def __repr__(self) -> str:
        return f"<CeleryResult: {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CeleryResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def task_id(self) -> str:
        return self.id

    async def record(self) -> dict[str, Any]:
        """The record as Celery stored it (``status``, ``result``, ``traceback``, ``date_done``, …)."""
        return wire.parse_result(await self.target.sender().result(self.id))

    async def state(self) -> str:
        return str((await self.record())["status"])

    status = state

    async def result(self) -> Any:
        """The return value once SUCCESS, the exception after FAILURE/RETRY/REVOKED, a custom state's meta."""
        return wire.value_of(await self.record())

    info = result

    async def traceback(self) -> str | None:
        tb = (await self.record()).get("traceback")
        return str(tb) if tb else None

    async def ready(self) -> bool:
        return await self.state() in wire.READY

    async def successful(self) -> bool:
        return await self.state() == "SUCCESS"

    async def failed(self) -> bool:
        return await self.state() == "FAILURE"

    async def get(self, timeout: float | None = None, propagate: bool = True) -> Any:
        """Wait for the result (woken by the backend's publish). FAILURE raises the remote exception —
        its own class when imported here, else :class:`tasks_engine.exceptions.TaskError` naming it."""
        check_not_in_task()
        waiting = self.target.sender().wait(self.id, lambda r: wire.parse_result(r)["status"] in wire.READY, timeout)
        try:  # whatever Redis does (hangs, drops packets), get(timeout) returns soon after its timeout
            raw = await (waiting if timeout is None else asyncio.wait_for(waiting, timeout + 1.0))
        except TimeoutError:
            raise TimeoutError(f"Celery task {self.id} ({self.target.name}): Redis did not answer") from None
        record = wire.parse_result(raw)
        if record["status"] not in wire.READY:
            raise TimeoutError(f"Celery task {self.id} ({self.target.name}) did not finish within {timeout}s")
        if record["status"] == "SUCCESS":
            return record.get("result")
        exc = wire.exception_of(record)
        if propagate:
            raise exc
        return exc

    wait = get

    async def forget(self) -> None:
        await self.target.sender().forget(self.id)


class CeleryTask:
    """A task served by Celery workers, called by name as Celery's ``app.send_task`` / ``signature``.

    ``queue`` is where Celery's workers consume (``-Q``); ``transport_prefix`` and ``backend_prefix``
    are the Celery app's ``broker_transport_options`` / ``result_backend_transport_options``
    ``global_keyprefix``; ``broker_url`` / ``backend_url`` default to the engine's ``redis_url``.
    Other keyword arguments are default call options (``priority``, ``expires``, …)."""

    def __init__(
        self,
        name: str,
        queue: str = "celery",
        *,
        transport_prefix: str = "",
        backend_prefix: str = "",
        broker_url: str | None = None,
        backend_url: str | None = None,
        **defaults: Any,
    ) -> None:
        wire.encode_call(name, [], {}, {**defaults, "queue": queue}, task_id="check", now=datetime.now(UTC), origin="")
        self.name = name
        self.queue = queue
        self.defaults = defaults
        self.keys = CeleryKeys(transport_prefix, backend_prefix)
        self.broker_url = broker_url
        self.backend_url = backend_url

    def __repr__(self) -> str:
        return f"<celery task: {self.name} on {self.queue!r}>"

    def sender(self) -> CelerySender:
        """The sender on this event loop's clients (the engine's own when no other URL was given)."""
        timeout = get_settings().redis_socket_timeout
        own = get_broker().redis
        broker = client_for(self.broker_url, timeout) if self.broker_url else own
        backend = client_for(self.backend_url, timeout) if self.backend_url else own
        return CelerySender(broker, backend, self.keys)

    async def delay(self, *args: Any, **kwargs: Any) -> CeleryResult:
        return await self.apply_async(args, kwargs)

    async def apply_async(
        self, args: list[Any] | tuple[Any, ...] | None = None, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> CeleryResult:
        """Send to Celery's workers; returns once the message is in Redis. Options: ``countdown``, ``eta``,
        ``expires``, ``priority`` (0-9, 0 first), ``queue``, ``retries``, ``task_id``, ``time_limit``,
        ``soft_time_limit``, ``ignore_result``, ``headers``, ``parent_id``, ``root_id``, ``shadow``."""
        merged = {"queue": self.queue, **self.defaults, **options}
        message = wire.encode_call(
            self.name, args, kwargs, merged, task_id=new_id(), now=datetime.now(UTC), origin=_ORIGIN
        )
        sender = self.sender()
        await get_broker().retrying(
            lambda: sender.publish(message.queue, message.priority, message.envelope), "send to Celery"
        )
        return CeleryResult(message.task_id, self)

    def delay_sync(self, *args: Any, **kwargs: Any) -> SyncResult[Any]:
        """Blocking :meth:`delay`, for code that cannot await (see :mod:`tasks_engine.client.sync`)."""
        return self.apply_async_sync(args, kwargs)

    def apply_async_sync(
        self, args: list[Any] | tuple[Any, ...] | None = None, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> SyncResult[Any]:
        result: SyncResult[Any] = apply_sync(
            self.apply_async(args, kwargs, **options), f"{self.name}.apply_async_sync()"
        )
        return result

    def AsyncResult(self, task_id: str) -> CeleryResult:  # noqa: N802 - Celery's name
        """The result handle of an earlier call by its id (await its methods)."""
        return CeleryResult(task_id, self)

    def SyncResult(self, task_id: str) -> SyncResult[Any]:  # noqa: N802 - as AsyncResult
        """The blocking handle of an earlier call by its id."""
        return SyncResult(CeleryResult(task_id, self))


def celery_task(name: str, queue: str = "celery", **options: Any) -> CeleryTask:
    """A handle on the Celery task ``name``: ``await celery_task("proj.add").delay(2, 3)``; see :class:`CeleryTask`."""
    return CeleryTask(name, queue, **options)
