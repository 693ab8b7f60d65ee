"""The worker context: resources a worker's start-up hook creates (pools, clients) for its tasks.

``worker_settings(on_startup=hook)`` (or an ``on_startup`` function in the app module of
``tasks-engine worker -A app``) receives this dict before the first job runs; tasks read it with
:func:`worker_context` (or ``self.worker_ctx`` in a bound task), as arq's ``ctx``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

Hook = Callable[[dict[str, Any]], Awaitable[None] | None]

current_worker_context: ContextVar[dict[str, Any] | None] = ContextVar("tasks_engine_worker_context", default=None)


def worker_context() -> dict[str, Any]:
    """The running worker's context dict (what its ``on_startup`` hook put there)."""
    ctx = current_worker_context.get()
    if ctx is None:
        raise RuntimeError("worker_context() is only available inside a task run by a worker")
    return ctx


#: Set by :func:`tasks_engine.testing.always_eager`; None means "as the ``task_always_eager`` setting says".
eager_override: ContextVar[bool | None] = ContextVar("tasks_engine_always_eager", default=None)
