"""tasks_engine: Celery's task model on asyncio, arq and Redis — without Celery, without pickle.

The subpackages are the layers, each importing only those below it (contracts in pyproject.toml):
``core`` → ``model`` → ``store`` → ``execution`` → ``client`` → ``runtime`` → ``ops`` →
``integrations`` / ``dashboard`` → ``cli``. One job's path through them is in docs/architecture.md.
"""

from typing import Any

from tasks_engine.client.beat import configure_beat
from tasks_engine.client.canvas import Signature, chain, chord, group, signature
from tasks_engine.client.celery_task import CeleryResult, CeleryTask, celery_task
from tasks_engine.client.results import AsyncResult, EagerResult, GroupResult
from tasks_engine.client.sync import SyncGroupResult, SyncResult, apply_sync
from tasks_engine.client.task import Task, shared_task
from tasks_engine.core import legacy_paths
from tasks_engine.core.config import EngineSettings, configure, get_settings
from tasks_engine.core.context import worker_context
from tasks_engine.core.logs import route_to_stdlib
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
from tasks_engine.integrations.arq_bridge import worker_settings
from tasks_engine.model import states
from tasks_engine.model.schedules import crontab
from tasks_engine.runtime import builtins  # noqa: F401 - registers the engine's own tasks
from tasks_engine.version import __version__ as __version__

legacy_paths.install(__name__)  # `tasks_engine.config`, `tasks_engine.worker`, … still import

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


def send_task_sync(
    name: str,
    args: list[object] | tuple[object, ...] | None = None,
    kwargs: dict[str, object] | None = None,
    **options: object,
) -> SyncResult[Any]:
    """Blocking :func:`send_task`, for code that cannot await; returns a :class:`SyncResult`."""
    result: SyncResult[Any] = apply_sync(send_task(name, args, kwargs, **options), f"send_task_sync({name!r})")
    return result


__all__ = [
    "AsyncResult",
    "CeleryResult",
    "CeleryTask",
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
    "SyncGroupResult",
    "SyncResult",
    "Task",
    "TaskError",
    "TaskRevokedError",
    "TimeLimitExceeded",
    "celery_task",
    "chain",
    "chord",
    "configure",
    "configure_beat",
    "crontab",
    "get_settings",
    "group",
    "send_task",
    "send_task_sync",
    "shared_task",
    "signature",
    "states",
    "worker_context",
    "worker_settings",
]
