"""Eager execution (``apply()``): one call run in this process the way a worker would run it.

Arguments make the same JSON round trip, retries happen at once (no sleeping), and callbacks and
errbacks run in-process too.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Protocol

from pydantic_core import PydanticSerializationError, to_jsonable_python

from tasks_engine.client.plan import as_list
from tasks_engine.client.results import EagerResult
from tasks_engine.core.codec import dumps, loads
from tasks_engine.core.ids import new_id
from tasks_engine.exceptions import TaskRevokedError
from tasks_engine.execution.attempt import run_attempt
from tasks_engine.model import states
from tasks_engine.model.registry import Request, current_request, get_task


class EagerCall(Protocol):
    """What eager execution needs of a signature (see :class:`tasks_engine.client.signature.Signature`)."""

    task: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    immutable: bool

    async def run_eager(self, prefix: list[Any], parent: Any) -> Any: ...
    def errback_call(
        self, failed_id: str, exc: BaseException | None = None, traceback: str | None = None
    ) -> EagerCall: ...


async def run_call(sig: EagerCall, prefix: list[Any], parent: Any) -> EagerResult[Any]:
    """Run one signature in-process like a worker would (JSON round trip, retries at once, callbacks)."""
    task = get_task(sig.task)
    args = ([] if sig.immutable else list(prefix)) + list(sig.args)
    args, kwargs = task.prepare_args(args, dict(sig.kwargs), complete=True)
    result: EagerResult[Any] = EagerResult(sig.options.get("task_id") or new_id(), parent)
    soft = sig.options.get("soft_time_limit", task.soft_time_limit)
    hard = sig.options.get("time_limit", task.time_limit)
    # As Celery's apply(): the calling task (if any) is the parent, its root is the root, else this call is.
    caller = current_request.get()
    parent_id = sig.options.get("parent_id") or (caller.id if caller is not None else None)
    root_id = sig.options.get("root_id") or (caller.root_id or caller.id if caller is not None else None) or result.id
    req = Request(
        id=result.id,
        task=task.name,
        args=args,
        kwargs=kwargs,
        is_eager=True,
        called_directly=False,
        parent_id=parent_id,
        root_id=root_id,
        group_id=sig.options.get("group_id"),
    )
    while True:
        attempt = await run_attempt(task, req, soft, hard)
        if attempt.outcome != "retry":
            break
        assert attempt.retry is not None
        req = replace(
            req,
            retries=req.retries + 1,
            args=attempt.retry.new_args if attempt.retry.new_args is not None else req.args,
            kwargs=attempt.retry.new_kwargs if attempt.retry.new_kwargs is not None else req.kwargs,
        )
        result.retries = req.retries
    if attempt.outcome == "success":
        try:
            value = loads(dumps(to_jsonable_python(attempt.value)))
        except (TypeError, PydanticSerializationError, ValueError):
            exc = TypeError(
                f"task {task.name!r} returned a {type(attempt.value).__name__}, which cannot be serialized to JSON"
            )
            result.finish(states.FAILURE, exc=exc, tb=str(exc))
            return result
        result.finish(states.SUCCESS, value=value)
        for link in as_list(sig.options.get("link")):
            await link.run_eager([value], result)
        return result
    error: BaseException = attempt.exc or TaskRevokedError("revoked")
    result.finish(states.REVOKED if attempt.outcome == "revoked" else states.FAILURE, exc=error, tb=attempt.traceback)
    for errback in as_list(sig.options.get("link_error")):
        await errback.errback_call(result.id, error, attempt.traceback).run_eager([], result)
    return result
