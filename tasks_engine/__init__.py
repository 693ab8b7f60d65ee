"""tasks_engine: Celery's task model on asyncio, arq and Redis — without Celery, without pickle.

Flow: :mod:`task` (definition) → :mod:`canvas` (signature → plan) → :mod:`messages` (JSON) →
:mod:`broker` (Redis, Lua) → :mod:`worker` (claim, run with :mod:`limits`/:mod:`retries`) →
:mod:`results` (record, ``get()``).
"""

from tasks_engine import states
from tasks_engine.arq_bridge import worker_settings
from tasks_engine.canvas import Signature, chain, chord, group, signature
from tasks_engine.config import EngineSettings, configure, get_settings
from tasks_engine.exceptions import (
    ChordError,
    MaxRetriesExceededError,
    NotRegistered,
    Retry,
    SoftTimeLimitExceeded,
    TaskError,
    TaskRevokedError,
    TimeLimitExceeded,
)
from tasks_engine.results import AsyncResult, EagerResult, GroupResult
from tasks_engine.schedules import crontab
from tasks_engine.task import Task, shared_task


async def send_task(name: str, args: list[object] | tuple[object, ...] | None = None,
                    kwargs: dict[str, object] | None = None, **options: object) -> AsyncResult:
    """Enqueue a task by name, for services that don't import the task's code."""
    result: AsyncResult = await Signature(name, args, kwargs, dict(options)).apply_async()
    return result


__all__ = [
    "AsyncResult", "ChordError", "EagerResult", "EngineSettings", "GroupResult", "MaxRetriesExceededError",
    "NotRegistered", "Retry", "Signature", "SoftTimeLimitExceeded", "Task", "TaskError", "TaskRevokedError",
    "TimeLimitExceeded", "chain", "chord", "configure", "crontab", "get_settings", "group", "send_task",
    "shared_task", "signature", "states", "worker_settings",
]
