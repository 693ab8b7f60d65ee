"""tasks_engine: Celery's task model on asyncio, arq and Redis — without Celery, without pickle.

Flow: :mod:`task` / :mod:`canvas` (what to call) → :mod:`plan` (options → :mod:`messages`) →
:mod:`store` (the only code that touches Redis) → :mod:`worker` (claim, :mod:`execution` under
:mod:`timelimits`) → :mod:`completion` (a pure decision) → store → :mod:`results` (``get()``).
The layers and their rules are in the README ("How it works").
"""

from typing import Any

from tasks_engine import (
    builtins,  # noqa: F401 - registers the engine's own tasks
    states,
)
from tasks_engine.arq_bridge import worker_settings
from tasks_engine.beat import configure_beat
from tasks_engine.canvas import Signature, chain, chord, group, signature
from tasks_engine.config import EngineSettings, configure, get_settings
from tasks_engine.context import worker_context
from tasks_engine.exceptions import (
    ChordError,
    EngineConnectionError,
    MaxRetriesExceededError,
    NotRegistered,
    Retry,
    SoftTimeLimitExceeded,
    TaskError,
    TaskRevokedError,
    TimeLimitExceeded,
)
from tasks_engine.logs import route_to_stdlib
from tasks_engine.results import AsyncResult, EagerResult, GroupResult
from tasks_engine.schedules import crontab
from tasks_engine.task import Task, shared_task
from tasks_engine.version import __version__ as __version__

route_to_stdlib()  # engine lines go to the host's logging (stderr without handlers), never to stdout


async def send_task(
    name: str,
    args: list[object] | tuple[object, ...] | None = None,
    kwargs: dict[str, object] | None = None,
    **options: object,
) -> AsyncResult[Any]:
    """Enqueue a task by name, for services that don't import the task's code."""
    result: AsyncResult[Any] = await Signature(name, args, kwargs, dict(options)).apply_async()
    return result


__all__ = [
    "AsyncResult",
    "ChordError",
    "EagerResult",
    "EngineConnectionError",
    "EngineSettings",
    "GroupResult",
    "MaxRetriesExceededError",
    "NotRegistered",
    "Retry",
    "Signature",
    "SoftTimeLimitExceeded",
    "Task",
    "TaskError",
    "TaskRevokedError",
    "TimeLimitExceeded",
    "chain",
    "chord",
    "configure",
    "configure_beat",
    "crontab",
    "get_settings",
    "group",
    "send_task",
    "shared_task",
    "signature",
    "states",
    "worker_context",
    "worker_settings",
]
