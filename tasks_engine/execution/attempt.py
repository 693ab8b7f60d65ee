"""One attempt of a task: request context, argument check, time limits, and what an error means.

Shared by the worker and by eager ``apply()``, so both decide retries exactly alike. The outcome is
data (:class:`Attempt`); the caller turns it into a result record, a re-sent message or a failure.
"""

from __future__ import annotations

import asyncio
import traceback as tb_module
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog

from tasks_engine.exceptions import Retry, TaskExitError, TimeLimitExceeded
from tasks_engine.execution.timelimits import LimitedRun
from tasks_engine.model.registry import Request, TaskDefinition, current_request
from tasks_engine.model.retries import backoff_countdown, backoff_factor, matches

log = structlog.get_logger("tasks_engine.execution")

_thread_pool: ThreadPoolExecutor | None = None


def thread_pool() -> ThreadPoolExecutor:
    """Where sync (``def``) task functions run, so they never block the event loop."""
    global _thread_pool
    if _thread_pool is None:
        _thread_pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="tasks-engine-sync")
    return _thread_pool


@dataclass
class Attempt:
    outcome: Literal["success", "retry", "failure", "revoked"]
    value: Any = None
    exc: BaseException | None = None
    traceback: str | None = None
    retry: Retry | None = None
    children: list[str] = field(default_factory=list)  # tasks the attempt sent


def _format(exc: BaseException) -> str:
    return "".join(tb_module.format_exception(exc))


def _retrying(retry: Retry) -> Attempt:
    # The record shows why: the task's exception, or the Retry itself when none was given.
    reason = retry.exc if retry.exc is not None else retry
    return Attempt("retry", exc=reason, retry=retry, traceback=_format(reason))


async def run_attempt(
    task: TaskDefinition,
    req: Request,
    soft: float | None,
    hard: float | None,
    run: LimitedRun | None = None,
    log_context_bound: bool = False,
) -> Attempt:
    """One attempt; its log lines carry the task's id, name and retries (``log_context_bound``: the
    caller has bound them already, as the worker's delivery does for the whole job)."""
    if log_context_bound:
        attempt = await _attempt(task, req, soft, hard, run or LimitedRun())
    else:
        # bound_, not bind_: on the way out the caller's own context is restored, not wiped.
        with structlog.contextvars.bound_contextvars(task_id=req.id, task_name=task.name, retries=req.retries):
            attempt = await _attempt(task, req, soft, hard, run or LimitedRun())
    attempt.children = list(req.children)
    return attempt


async def _attempt(task: TaskDefinition, req: Request, soft: float | None, hard: float | None, run: LimitedRun,
                   ) -> Attempt:  # fmt: skip
    run.label = req.id or task.name  # what the blocked-loop watchdog reports
    req.requested_retry = None  # eager retries reuse the request
    req.override_max_retries = None
    req.children.clear()
    token = current_request.set(req)
    try:
        try:
            args, kwargs = task.run_args(req.args, req.kwargs)
        except TypeError as exc:  # arguments that no longer fit the task's signature: never retried
            return Attempt("failure", exc=exc, traceback=_format(exc))
        if task.options.bind:
            args = [task, *args]
        if task.is_async:
            value = await run.run_coroutine(task.fn(*args, **kwargs), soft, hard)
        else:
            value = await run.run_sync(thread_pool(), task.fn, args, kwargs, soft, hard)
        if isinstance(value, Retry):  # ``return self.retry(..., throw=False)``
            return _retrying(value)
        if req.requested_retry is not None:  # ``self.retry(throw=False)`` then returned something else
            return _retrying(req.requested_retry)
        return Attempt("success", value=value)
    except Retry as retry:
        return _retrying(retry)
    except asyncio.CancelledError as exc:
        if run.terminated:
            return Attempt("revoked")
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # the worker itself is being cancelled (cold shutdown)
        # The task raised CancelledError of its own accord: a failure like any other, never a lost job.
        return Attempt("failure", exc=exc, traceback=_format(exc))
    except TaskExitError as exc:  # sys.exit() / KeyboardInterrupt inside the task: this job fails, nothing else
        return Attempt("failure", exc=exc.original, traceback=_format(exc.original))
    except TimeLimitExceeded as exc:
        if run.timed_out:  # the hard limit is terminal, as when Celery kills the child process
            return Attempt("failure", exc=exc, traceback=_format(exc))
        return _after_error(task, exc)
    except Exception as exc:  # noqa: BLE001 - every task error becomes a result, never a worker crash
        return _after_error(task, exc)
    finally:
        current_request.reset(token)


def _after_error(task: TaskDefinition, exc: Exception) -> Attempt:
    """``autoretry_for``/``dont_autoretry_for`` (checked first), with backoff, as in Celery.

    The backoff countdown is computed before ``retry()`` checks ``max_retries`` (Celery does the
    same), so the last, refused retry still "asks" for the next countdown in the sequence. When the body
    itself called ``self.retry(max_retries=n)`` (and the error came out of that call), ``n`` is the
    limit here too, over ``retry_kwargs`` and the task's own (Celery #6436).
    """
    opts = task.options
    if matches(exc, opts.dont_autoretry_for) or not matches(exc, opts.autoretry_for):
        return Attempt("failure", exc=exc, traceback=_format(exc))
    retry_kwargs = dict(opts.retry_kwargs)
    if opts.retry_backoff:
        retry_kwargs["countdown"] = backoff_countdown(
            backoff_factor(opts.retry_backoff), task.request.retries, opts.retry_backoff_max, opts.retry_jitter
        )
    override = task.request.override_max_retries
    if override is not None:
        retry_kwargs["max_retries"] = override
    try:
        task.retry(exc=exc, **retry_kwargs)
    except Retry as retry:
        return Attempt("retry", exc=exc, retry=retry, traceback=_format(exc))
    except Exception as final:  # noqa: BLE001 - max retries reached: the original error (or MaxRetriesExceeded)
        return Attempt("failure", exc=final, traceback=_format(final))
    raise AssertionError("Task.retry() returned instead of raising")  # pragma: no cover
