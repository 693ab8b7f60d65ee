"""Exceptions with Celery's names, so ``except SoftTimeLimitExceeded:`` ports unchanged."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import redis.exceptions

#: What "Redis is unavailable for now" looks like (async and sync clients raise the same classes):
#: callers back off and retry; anything else is a bug or bad data and is reported as such.
#: A replica promoted to primary (READONLY), a primary out of memory, a cluster node loading or
#: moving are outages too: they pass.
REDIS_UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.MasterDownError,
    redis.exceptions.TryAgainError,
    # A Cluster moving a slot or electing a primary: redirections that did not settle within redis-py's
    # attempts ("TTL exhausted"), CLUSTERDOWN, a slot no node serves yet.
    redis.exceptions.ClusterError,
    redis.exceptions.SlotNotCoveredError,
    OSError,
)


class TasksEngineError(Exception):
    """Base class for the engine's own errors."""


class Retry(TasksEngineError):  # noqa: N818 - Celery's name
    """Raised by ``self.retry()``: the worker re-sends the task instead of failing it."""

    def __init__(
        self,
        message: str | None = None,
        exc: BaseException | None = None,
        when: float | datetime | None = None,
    ) -> None:
        self.exc = exc
        self.when = when
        self.countdown: float | None = None
        self.eta: datetime | None = None
        self.new_args: list[Any] | None = None
        self.new_kwargs: dict[str, Any] | None = None
        self.options: dict[str, Any] = {}
        super().__init__(message or f"Retry in {when}: {exc!r}")


class MaxRetriesExceededError(TasksEngineError):
    """The task asked for a retry after its ``max_retries`` were used up, without an ``exc``.

    ``task_args`` (a tuple) and ``task_kwargs`` (a dict) are the arguments the refused retry would have
    run with, as in Celery. They are kept in ``args`` too (``(message, ..., task_args, task_kwargs)``), so the
    error read back from a result record is rebuilt with them; ``str()`` is the message alone.
    """

    def __init__(self, *args: Any, task_args: Any = None, task_kwargs: Any = None) -> None:
        rebuilt = len(args) >= 3 and isinstance(args[-2], list | tuple) and isinstance(args[-1], dict)
        if task_args is None and task_kwargs is None and rebuilt:
            args, task_args, task_kwargs = args[:-2], args[-2], args[-1]  # read back from a result record
        self.task_args: tuple[Any, ...] = tuple(task_args or ())
        self.task_kwargs: dict[str, Any] = dict(task_kwargs or {})
        super().__init__(*(args or ("",)), list(self.task_args), self.task_kwargs)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class SoftTimeLimitExceeded(TasksEngineError):  # noqa: N818 - Celery's name
    """Raised inside the task's own code at its ``soft_time_limit``; it may clean up."""


class TimeLimitExceeded(TasksEngineError):  # noqa: N818 - Celery's name
    """The task hit its hard ``time_limit`` and was stopped."""


class TaskRevokedError(TasksEngineError):
    """The task was revoked (or expired) before or while it ran."""


class ChordError(TasksEngineError):
    """A chord header task failed, so the body never ran."""


class TaskError(TasksEngineError):
    """A task failed with an exception class this process cannot rebuild.

    Only exception classes from modules already imported here are rebuilt: importing a module
    named by data in Redis would let anyone who can write to Redis run that module's code.
    """

    def __init__(self, exc_type: str, message: str, *args: Any) -> None:
        self.exc_type = exc_type
        self.exc_message = message
        super().__init__(f"{exc_type}: {message}", *args)


class NotRegistered(TasksEngineError, KeyError):  # noqa: N818 - Celery's name
    """No task with this name is known to the worker."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "task not registered"


class TaskDefinitionError(TasksEngineError, ValueError):
    """A ``@shared_task`` option or a task argument is invalid; the message names the task."""


class MessageError(TasksEngineError, ValueError):
    """A message in Redis could not be decoded, verified or validated."""


class TaskExitError(TasksEngineError):
    """A task raised ``SystemExit`` or ``KeyboardInterrupt`` (``sys.exit()`` in a task): that job fails, the
    worker goes on. ``original`` is what the task raised."""

    def __init__(self, original: BaseException) -> None:
        self.original = original
        super().__init__(f"the task raised {type(original).__name__}({original})")


class DeliveryLimitExceeded(TasksEngineError):  # noqa: N818 - reads like Celery's TimeLimitExceeded
    """A job was delivered ``max_deliveries`` times without finishing: it went to the dead letters."""


class EngineConfigurationError(TasksEngineError):
    """The worker refuses to start: the Redis it was given cannot keep the engine's promises."""


class EngineConnectionError(TasksEngineError, ConnectionError):
    """Redis could not be reached within the configured bound."""


class NotReplicatedError(TasksEngineError):
    """Fewer replicas than ``replica_acks`` confirmed a write in time: it is on the primary only, and a
    failover now could lose it. Sent again with the same task id, it stays one queue entry."""
