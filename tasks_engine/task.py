"""Task definition: ``@shared_task``, the registry, per-call ``request`` context and argument checks."""

from __future__ import annotations

import fnmatch
import inspect
import typing
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, overload

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic_core import PydanticSerializationError

from tasks_engine.config import get_settings
from tasks_engine.exceptions import MaxRetriesExceededError, NotRegistered, Retry, TaskDefinitionError
from tasks_engine.limits import RateLimit, check_time_limits, parse_rate_limit

if TYPE_CHECKING:
    from tasks_engine.canvas import Signature
    from tasks_engine.results import AsyncResult, EagerResult


class TaskOptions(BaseModel):
    """Every option ``@shared_task`` accepts (the guide's, plus a few of ours); unknown ones are errors."""

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
    retry_backoff: bool | int = False
    retry_backoff_max: int = 600
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
    acks_late: bool = True
    idempotent: bool = False
    track_started: bool = True

    @field_validator("autoretry_for", "dont_autoretry_for", mode="before")
    @classmethod
    def _exception_tuple(cls, value: Any) -> tuple[type[BaseException], ...]:
        kinds = tuple(value) if isinstance(value, list | tuple | set | frozenset) else (value,)
        for kind in kinds:
            if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                raise ValueError(f"{kind!r} is not an exception class")
        return kinds

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


current_request: ContextVar[Request | None] = ContextVar("tasks_engine_request", default=None)

registry: dict[str, Task] = {}


class Task:
    """A registered task. Calling it runs the body; ``delay``/``apply_async`` send it to a worker."""

    def __init__(self, fn: Callable[..., Any], options: TaskOptions) -> None:
        self.fn = fn
        self.options = options
        self.name: str = options.name or f"{fn.__module__}.{fn.__qualname__}"
        self.is_async = inspect.iscoroutinefunction(fn)
        self.rate: RateLimit | None = parse_rate_limit(options.rate_limit, options.rate_limit_burst)
        signature = inspect.signature(fn)
        params = list(signature.parameters.values())
        if options.bind:
            if not params:
                raise TaskDefinitionError(f"task {self.name!r}: bind=True needs a 'self' parameter")
            params = params[1:]
        self.call_signature = signature.replace(parameters=params)
        try:
            hints = typing.get_type_hints(fn)
        except Exception:  # noqa: BLE001 - unresolved forward refs: validate nothing rather than fail import
            hints = {}
        self._adapters: dict[str, TypeAdapter[Any]] = {
            p.name: TypeAdapter(hints[p.name]) for p in params if p.name in hints and hints[p.name] is not Any
        }
        self._kinds = {p.name: p.kind for p in params}
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", self.name)
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<@task: {self.name}>"

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

    # -- calling --
    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the body here and now; nothing is stored (like calling a Celery task directly)."""
        call_args = (self, *args) if self.options.bind else args
        if self.is_async:
            return await self.fn(*call_args, **kwargs)
        return self.fn(*call_args, **kwargs)

    async def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        return await self.apply_async(args, kwargs)

    async def apply_async(
        self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> AsyncResult:
        """Send to a worker; returns once the message is in Redis. Options: see :mod:`tasks_engine.canvas`."""
        from tasks_engine.canvas import Signature

        result: AsyncResult = await Signature(self.name, args, kwargs, options).apply_async()
        return result

    async def apply(
        self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> EagerResult:
        """Run in this process now, retries included (no sleeping); returns an :class:`EagerResult`."""
        from tasks_engine.canvas import Signature

        result: EagerResult = await Signature(self.name, args, kwargs, options).apply()
        return result

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        from tasks_engine.canvas import Signature

        return Signature(self.name, args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        from tasks_engine.canvas import Signature

        return Signature(self.name, args, kwargs, immutable=True)

    def signature(
        self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Signature:
        from tasks_engine.canvas import Signature

        immutable = bool(options.pop("immutable", False))
        return Signature(self.name, args, kwargs, options, immutable=immutable)

    def map(self, items: Iterable[Any]) -> Signature:
        from tasks_engine.canvas import group

        return group(self.s(item) for item in items)

    def starmap(self, items: Iterable[Iterable[Any]]) -> Signature:
        from tasks_engine.canvas import group

        return group(self.s(*item) for item in items)

    def chunks(self, items: Iterable[Any], n: int) -> Signature:
        """Split ``items`` into chunks of ``n``; each chunk is one call of ``starmap`` semantics."""
        from tasks_engine.canvas import chunks

        return chunks(self, items, n)

    def AsyncResult(self, task_id: str) -> AsyncResult:  # noqa: N802 - Celery's name
        from tasks_engine.results import AsyncResult

        return AsyncResult(task_id)

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
        """Ask for this call to run again (same id, ``retries + 1``); use as ``raise self.retry(exc=e)``."""
        req = self.request
        if req.called_directly:
            # Outside a worker there is nothing to re-send: surface the error itself.
            raise exc if exc is not None else Retry("retry() called outside a worker", exc=exc)
        limit = self.max_retries if max_retries is None else max_retries
        if limit is not None and req.retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"task {self.name!r} ({req.id}) exceeded max_retries={limit} (args={req.args!r})"
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

    async def update_state(
        self, task_id: str | None = None, state: str | None = None, meta: dict[str, Any] | None = None
    ) -> None:
        """Record a custom state (e.g. PROGRESS) and its meta, visible through ``AsyncResult.info()``."""
        from tasks_engine.results import store_state

        req = self.request
        await store_state(task_id or req.id, state or "PROGRESS", meta, eager=req.is_eager)

    # -- at-least-once delivery: make effects happen once --
    async def effect_done(self, key: str) -> bool:
        """True if :meth:`mark_effect_done` ran for ``key`` in an earlier delivery of this same job."""
        from tasks_engine.broker import get_broker

        broker = get_broker()
        return bool(await broker.redis.exists(broker.key("effect", str(self.request.id), key)))

    async def mark_effect_done(self, key: str) -> None:
        """Record that the effect ``key`` of this job happened (kept as long as results)."""
        from tasks_engine.broker import get_broker

        broker = get_broker()
        await broker.redis.set(broker.key("effect", str(self.request.id), key), "1", ex=get_settings().result_expires)

    # -- argument checks (at enqueue and again at run) --
    def prepare_args(self, args: list[Any], kwargs: dict[str, Any], complete: bool) -> tuple[list[Any], dict[str, Any]]:
        """Validate against the type hints and return JSON-ready copies; errors name the task and argument.

        ``complete`` is False for partial signatures that still await a parent result.
        """
        if complete:
            try:
                self.call_signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise TypeError(f"task {self.name!r}: {exc}") from None
        names = self._positional_names(len(args))
        out_args = [self._to_json(name, value) for name, value in zip(names, args, strict=True)]
        out_kwargs = {key: self._to_json(key if key in self._kinds else self._var_kw(), v) for key, v in kwargs.items()}
        return out_args, out_kwargs

    def run_args(self, args: list[Any], kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        """Turn JSON values back into the annotated types (e.g. ISO strings into datetimes)."""
        try:
            self.call_signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"task {self.name!r}: {exc}") from None
        if not self._adapters:
            return args, kwargs
        names = self._positional_names(len(args))
        return (
            [self._validate(name, value) for name, value in zip(names, args, strict=True)],
            {key: self._validate(key if key in self._kinds else self._var_kw(), v) for key, v in kwargs.items()},
        )

    def _positional_names(self, count: int) -> list[str | None]:
        names: list[str | None] = []
        for name, kind in self._kinds.items():
            if kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
                names.append(name)
            elif kind is inspect.Parameter.VAR_POSITIONAL:
                names.extend([name] * max(0, count - len(names)))
                break
        names.extend([None] * max(0, count - len(names)))
        return names[:count]

    def _var_kw(self) -> str | None:
        return next((n for n, k in self._kinds.items() if k is inspect.Parameter.VAR_KEYWORD), None)

    def _validate(self, name: str | None, value: Any) -> Any:
        adapter = self._adapters.get(name) if name else None
        variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        if adapter is None or self._kinds.get(name or "") in variadic:
            return value
        try:
            return adapter.validate_python(value)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise TypeError(f"task {self.name!r}: argument {name!r}: {err['msg']} (got {value!r:.80})") from None

    def _to_json(self, name: str | None, value: Any) -> Any:
        adapter = self._adapters.get(name) if name else None
        try:
            if adapter is not None and self._kinds.get(name or "") not in (
                inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD
            ):
                return adapter.dump_python(self._validate(name, value), mode="json")
            orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
            return value
        except (TypeError, PydanticSerializationError) as exc:
            if isinstance(exc, TypeError) and str(exc).startswith(f"task {self.name!r}"):
                raise
            raise TypeError(
                f"task {self.name!r}: argument {name or '?'!r} of type {type(value).__name__} is not "
                "JSON-serializable; pass IDs or plain data (str, int, float, bool, list, dict)"
            ) from None


@overload
def shared_task(fn: Callable[..., Any], **options: Any) -> Task: ...
@overload
def shared_task(fn: None = None, **options: Any) -> Callable[[Callable[..., Any]], Task]: ...
def shared_task(fn: Callable[..., Any] | None = None, **options: Any) -> Task | Callable[[Callable[..., Any]], Task]:
    """Declare a task, as Celery's ``@shared_task`` (bare or with options). Validates options now."""

    def decorate(func: Callable[..., Any]) -> Task:
        label = options.get("name") or f"{func.__module__}.{func.__qualname__}"
        try:
            opts = TaskOptions(**options)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'options'}: {e['msg']}".replace(
                    "Extra inputs are not permitted", "unknown option"
                )
                for e in exc.errors()
            )
            raise TaskDefinitionError(f"task {label!r}: {problems}") from None
        task = Task(func, opts)
        existing = registry.get(task.name)
        same = existing is not None and (existing.fn.__module__, existing.fn.__qualname__) == (
            func.__module__, func.__qualname__
        )
        if existing is not None and not same:
            raise TaskDefinitionError(f"task {task.name!r} is already registered by {existing.fn.__module__}")
        registry[task.name] = task
        return task

    if fn is not None:
        return decorate(fn)
    return decorate


def get_task(name: str) -> Task:
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
    if task is not None and task.options.queue:
        return task.options.queue
    settings = get_settings()
    for pattern, queue in settings.task_routes.items():
        if fnmatch.fnmatchcase(name, pattern):
            return queue
    return settings.default_queue
