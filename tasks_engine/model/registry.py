"""What a task is to the engine: its options, its registration by name, the per-call request and routing.

:class:`TaskDefinition` holds everything the worker needs to run a task (function, options, argument
spec, retry decision); :class:`tasks_engine.client.task.Task` adds the client API (``delay``, ``s``, …) on top.
"""

from __future__ import annotations

import fnmatch
import inspect
import math
import typing
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tasks_engine.core.config import get_settings
from tasks_engine.exceptions import MaxRetriesExceededError, NotRegistered, Retry, TaskDefinitionError
from tasks_engine.model.arguments import ArgumentSpec
from tasks_engine.model.ratelimit import RateLimit, parse_rate_limit
from tasks_engine.model.validation import check_seconds

#: Names of the engine's own tasks (defined in :mod:`tasks_engine.runtime.builtins`).
STARMAP_TASK = "tasks_engine.starmap"
COLLECT_TASK = "tasks_engine.collect"
UNWIND_TASK = "tasks_engine.chord_unwind"


def check_time_limits(soft: float | None, hard: float | None) -> None:
    for label, value in (("soft_time_limit", soft), ("time_limit", hard)):
        if value is not None and (value <= 0 or not math.isfinite(value)):
            raise ValueError(f"{label} must be a positive finite number of seconds, got {value}")
    if soft is not None and hard is not None and soft > hard:
        raise ValueError(f"soft_time_limit ({soft}) must not exceed time_limit ({hard})")


#: Options accepted for Celery compatibility that deliberately change nothing, and why.
INERT_TASK_OPTIONS: dict[str, str] = {
    "track_started": (
        "accepted, deliberately inert: STARTED is always recorded, by the same Lua call that takes the lease "
        "(at no cost); Celery's default (False) leaves a running task PENDING"
    ),
    "acks_late": (
        "accepted, deliberately inert: every job is acknowledged only when it finishes (leases), so a job whose "
        "worker dies runs again; Celery's default (False) acknowledges on receipt and loses such a job"
    ),
}


class TaskOptions(BaseModel):
    """Every option ``@shared_task`` accepts (the guide's, plus a few of ours); unknown ones are errors.

    ``track_started`` and ``acks_late`` are accepted but change nothing (see :data:`INERT_TASK_OPTIONS`).
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, frozen=True)

    name: str | None = None
    bind: bool = False
    max_retries: int | None = Field(default=-1, description="-1: use the setting (3 by default)")
    default_retry_delay: float | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    autoretry_for: tuple[type[BaseException], ...] = ()
    dont_autoretry_for: tuple[type[BaseException], ...] = ()
    retry_kwargs: dict[str, Any] = Field(default_factory=dict)
    retry_backoff: bool | int | float = False  # a number is the factor, floored to an int >= 1 (Celery)
    retry_backoff_max: int = 600  # a float is truncated to an int, as Celery's int() does
    retry_jitter: bool = True
    rate_limit: str | int | float | None = None
    rate_limit_burst: int = Field(default=1, ge=1)
    ignore_result: bool = False
    serializer: typing.Literal["json"] = "json"
    compression: typing.Literal["gzip", "zlib", "bzip2"] | None = None
    queue: str | None = None
    routing_key: str | None = None
    priority: int | None = Field(default=None, ge=0, le=9)
    expires: float | datetime | None = None
    acks_late: bool = Field(default=True, description=INERT_TASK_OPTIONS["acks_late"])
    idempotent: bool = False
    track_started: bool = Field(default=True, description=INERT_TASK_OPTIONS["track_started"])
    base: type | None = Field(default=None, description="A Task subclass with on_success/on_failure/... handlers")

    @field_validator("autoretry_for", "dont_autoretry_for", mode="before")
    @classmethod
    def _exception_tuple(cls, value: Any) -> tuple[type[BaseException], ...]:
        kinds = tuple(value) if isinstance(value, list | tuple | set | frozenset) else (value,)
        for kind in kinds:
            if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                raise ValueError(f"{kind!r} is not an exception class")
        return kinds

    @field_validator("retry_backoff", mode="before")
    @classmethod
    def _valid_backoff(cls, value: Any) -> Any:
        if isinstance(value, bool) or value is None:
            return bool(value)
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"retry_backoff must be a bool or a finite number, got {value!r}")
        return value

    @field_validator("retry_backoff_max", mode="before")
    @classmethod
    def _valid_backoff_max(cls, value: Any) -> Any:
        if isinstance(value, float) and math.isfinite(value):
            return int(value)  # Celery: int(retry_backoff_max)
        return value

    @field_validator("rate_limit", mode="before")  # before: pydantic would turn True into 1
    @classmethod
    def _valid_rate(cls, value: Any) -> Any:
        parse_rate_limit(value)
        return value

    @field_validator("retry_kwargs")
    @classmethod
    def _valid_retry_kwargs(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = set(value) - {"max_retries", "countdown", "eta", "args", "kwargs"}
        if unknown:
            raise ValueError(f"unknown retry_kwargs {sorted(unknown)}")
        return value

    @model_validator(mode="after")
    def _limits(self) -> TaskOptions:
        check_time_limits(self.soft_time_limit, self.time_limit)
        return self


@dataclass
class Request:
    """The current call's context, as ``self.request`` in a bound task (one per call, via contextvars)."""

    id: str | None = None
    task: str | None = None
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    retries: int = 0
    delivered: int = 0
    is_eager: bool = False
    called_directly: bool = True
    queue: str | None = None
    priority: int | None = None
    eta: float | None = None
    expires: float | None = None
    parent_id: str | None = None
    root_id: str | None = None
    group_id: str | None = None
    hostname: str | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    # A retry asked for with ``retry(throw=False)``: Celery sends it whether or not it is raised.
    requested_retry: Retry | None = field(default=None, repr=False)
    # Ids of the tasks this call sent (``delay()`` inside the task): its Celery ``children``.
    children: list[str] = field(default_factory=list, repr=False)
    # ``retry(max_retries=n)`` called by the body: an ``autoretry_for`` retry of the error it raises uses
    # the same limit (Celery's ``override_max_retries``, issue #6436).
    override_max_retries: int | None = field(default=None, repr=False)


current_request: ContextVar[Request | None] = ContextVar("tasks_engine_request", default=None)


class TaskDefinition:
    """A task as the engine runs it: the function, its options resolved against the settings, its arguments."""

    def __init__(self, fn: Callable[..., Any], options: TaskOptions) -> None:
        self.fn = fn
        self.options = options
        self.name: str = options.name or f"{fn.__module__}.{fn.__qualname__}"
        self.is_async = inspect.iscoroutinefunction(fn)
        self.rate: RateLimit | None = parse_rate_limit(options.rate_limit, options.rate_limit_burst)
        if options.bind and not inspect.signature(fn).parameters:
            raise TaskDefinitionError(f"task {self.name!r}: bind=True needs a 'self' parameter")
        self.arguments = ArgumentSpec(self.name, fn, bound=options.bind)
        self.call_signature = self.arguments.signature

    # -- resolved options (settings supply the defaults at call time, not import time) --
    @property
    def max_retries(self) -> int | None:
        return get_settings().task_max_retries if self.options.max_retries == -1 else self.options.max_retries

    @property
    def default_retry_delay(self) -> float:
        value = self.options.default_retry_delay
        return get_settings().task_default_retry_delay if value is None else value

    @property
    def time_limit(self) -> float | None:
        value = self.options.time_limit
        return get_settings().task_time_limit if value is None else value

    @property
    def soft_time_limit(self) -> float | None:
        value = self.options.soft_time_limit
        return get_settings().task_soft_time_limit if value is None else value

    @property
    def request(self) -> Request:
        req = current_request.get()
        if req is not None and req.task == self.name:
            return req
        return Request(task=self.name)

    # -- Celery's handler methods: override them in a ``base=`` class (sync or async) --
    def on_success(self, retval: Any, task_id: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """Called in the worker after the task succeeded and its result was stored."""

    def on_failure(
        self, exc: BaseException, task_id: str, args: list[Any], kwargs: dict[str, Any], einfo: str | None
    ) -> Any:
        """Called in the worker after the task failed for good (``einfo``: the traceback text)."""

    def on_retry(
        self, exc: BaseException, task_id: str, args: list[Any], kwargs: dict[str, Any], einfo: str | None
    ) -> Any:
        """Called in the worker when a retry of the task has been scheduled."""

    def after_return(
        self, status: str, retval: Any, task_id: str, args: list[Any], kwargs: dict[str, Any], einfo: str | None
    ) -> Any:
        """Called in the worker after every attempt, whatever its outcome."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the body here and now; nothing is stored (like calling a Celery task directly).

        A plain ``def`` task returns its value; an ``async def`` task returns its coroutine (await it).
        """
        call_args = (self, *args) if self.options.bind else args
        return self.fn(*call_args, **kwargs)

    async def call(self, *args: Any, **kwargs: Any) -> Any:
        """The direct call's value, whatever kind of function the task is (awaits a coroutine)."""
        value = self(*args, **kwargs)
        if inspect.isawaitable(value):
            return await value
        return value

    def prepare_args(self, args: list[Any], kwargs: dict[str, Any], complete: bool) -> tuple[list[Any], dict[str, Any]]:
        """Validate a call's arguments and return JSON-ready copies (see :class:`ArgumentSpec`)."""
        return self.arguments.prepare(args, kwargs, complete)

    def run_args(self, args: list[Any], kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        return self.arguments.run_args(args, kwargs)

    # -- inside a running task --
    def retry(
        self,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: datetime | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Retry:
        """Ask for this call to run again (same id, ``retries + 1``); use as ``raise self.retry(exc=e)``.

        Bad arguments are refused here, inside the task, so the attempt fails with a clear error
        instead of the retry failing to be written later."""
        if isinstance(exc, type) and issubclass(exc, BaseException):
            exc = exc()  # ``retry(exc=ValueError)``: Python would instantiate it when raised, so do we
        if exc is not None and not isinstance(exc, BaseException):
            raise TypeError(f"task {self.name!r}: retry(exc=...) must be an exception, got {type(exc).__name__}")
        if countdown is not None:
            countdown = check_seconds(self.name, "retry countdown", countdown)
        if max_retries is not None and (isinstance(max_retries, bool) or not isinstance(max_retries, int)):
            raise TypeError(f"task {self.name!r}: retry(max_retries=...) must be an int, got {max_retries!r}")
        if args is not None and not isinstance(args, list | tuple):
            raise TypeError(f"task {self.name!r}: retry(args=...) must be a list or tuple, got {type(args).__name__}")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise TypeError(f"task {self.name!r}: retry(kwargs=...) must be a dict, got {type(kwargs).__name__}")
        if args is not None or kwargs is not None:
            self.prepare_args(list(args or []), dict(kwargs or {}), complete=False)  # JSON-ready, or a clear error
        req = self.request
        if max_retries is not None and not req.called_directly:
            req.override_max_retries = max_retries
        if req.called_directly:
            # Outside a worker there is nothing to re-send: surface the error itself.
            raise exc if exc is not None else Retry("retry() called outside a worker", exc=exc)
        limit = self.max_retries if max_retries is None else max_retries
        if limit is not None and req.retries >= limit:
            if exc is not None:
                raise exc
            task_args = list(req.args if args is None else args)
            task_kwargs = dict(req.kwargs if kwargs is None else kwargs)
            raise MaxRetriesExceededError(
                f"task {self.name!r} ({req.id}) exceeded max_retries={limit} "
                f"(args={task_args!r}, kwargs={task_kwargs!r})",
                task_args=task_args,
                task_kwargs=task_kwargs,
            )
        if countdown is None and eta is None:
            countdown = self.default_retry_delay
        retry = Retry(exc=exc, when=eta if countdown is None else countdown)
        retry.countdown = countdown
        retry.eta = eta
        retry.new_args = None if args is None else list(args)
        retry.new_kwargs = kwargs
        retry.options = options
        if throw:
            raise retry
        req.requested_retry = retry
        return retry


registry: dict[str, TaskDefinition] = {}


def register(task: TaskDefinition) -> None:
    """Add ``task`` by name; the same function registered again (a re-import) is fine, another one is not."""
    existing = registry.get(task.name)
    same = existing is not None and (existing.fn.__module__, existing.fn.__qualname__) == (
        task.fn.__module__,
        task.fn.__qualname__,
    )
    if existing is not None and not same:
        raise TaskDefinitionError(f"task {task.name!r} is already registered by {existing.fn.__module__}")
    registry[task.name] = task


def get_task(name: str) -> TaskDefinition:
    try:
        return registry[name]
    except KeyError:
        raise NotRegistered(
            f"task {name!r} is not registered on this worker (is its module in worker_settings(imports=...)?)"
        ) from None


def route_queue(name: str, explicit: str | None) -> str:
    """Queue for a call: the call's own, else the task's, else ``task_routes`` (globs), else the default."""
    if explicit:
        return explicit
    task = registry.get(name)
    if task is not None and (task.options.queue or task.options.routing_key):
        # A routing key names its queue: every queue is bound by its own name (Celery's default routing).
        return task.options.queue or task.options.routing_key or ""
    settings = get_settings()
    for pattern, queue in settings.task_routes.items():
        if fnmatch.fnmatchcase(name, pattern):
            return queue
    return settings.default_queue


def argument_label(task_name: str, index: int) -> str:
    """``argument 'name'`` when the task is registered here, else ``argument #index``."""
    known = registry.get(task_name)
    if known is not None:
        names = known.arguments.names
        if index < len(names):
            return f"argument {names[index]!r}"
    return f"argument #{index}"
