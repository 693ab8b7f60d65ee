"""``@shared_task`` and :class:`Task`: a registered task with Celery's client API on top of its definition."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Concatenate, Generic, Literal, ParamSpec, Protocol, TypeVar, overload

from pydantic import ValidationError

from tasks_engine.client.canvas import chunks, group
from tasks_engine.client.plan import build_plain
from tasks_engine.client.results import AsyncResult, EagerResult, store_state
from tasks_engine.client.signature import Signature, runs_eagerly
from tasks_engine.client.sync import SyncResult, apply_sync
from tasks_engine.core.context import worker_context
from tasks_engine.exceptions import TaskDefinitionError
from tasks_engine.model.registry import Request, TaskDefinition, TaskOptions, current_request, register, registry
from tasks_engine.store import Writes, get_broker

__all__ = ["Request", "Task", "TaskOptions", "current_request", "registry", "shared_task"]


P = ParamSpec("P")
R = TypeVar("R")


class Task(TaskDefinition, Generic[P, R]):
    """A registered task. Calling it runs the body; ``delay``/``apply_async`` send it to a worker.

    Typed by its function: ``delay(...)`` and ``si(...)`` are checked against the function's
    parameters, and ``await (await t.delay(...)).get()`` has its return type (``Task[P, R]``)."""

    def __init__(self, fn: Callable[..., Any], options: TaskOptions) -> None:
        super().__init__(fn, options)
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", self.name)
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<@task: {self.name}>"

    async def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        return await self.apply_async(args, kwargs)

    async def apply_async(
        self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> AsyncResult[R]:
        """Send to a worker; returns once the message is in Redis. Options: see :mod:`tasks_engine.client.plan`."""
        if not options and not runs_eagerly():
            plain = build_plain(self, args or (), kwargs or {})
            if plain is not None:
                await get_broker().write(Writes([plain]))
                return AsyncResult(plain.id, ignore_result=bool(self.options.ignore_result))
        call = Signature(self.name, args, kwargs, options)  # made for this call: sent as it is, not copied
        result: AsyncResult[R] = await (call.apply() if runs_eagerly() else call.send())
        return result

    def delay_sync(self, *args: P.args, **kwargs: P.kwargs) -> SyncResult[R]:
        """Blocking :meth:`delay`, for code that cannot await (see :mod:`tasks_engine.client.sync`)."""
        return self.apply_async_sync(args, kwargs)

    def apply_async_sync(
        self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> SyncResult[R]:
        """Blocking :meth:`apply_async`: returns once the message is in Redis, with a blocking handle."""
        result: SyncResult[R] = apply_sync(self.apply_async(args, kwargs, **options), f"{self.name}.apply_async_sync()")
        return result

    async def apply(
        self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> EagerResult[R]:
        """Run in this process now, retries included (no sleeping); returns an :class:`EagerResult`."""
        result: EagerResult[R] = await Signature(self.name, args, kwargs, options).apply()
        return result

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        return Signature(self.name, args, kwargs)

    def si(self, *args: P.args, **kwargs: P.kwargs) -> Signature:
        return Signature(self.name, args, kwargs, immutable=True)

    def signature(
        self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Signature:
        immutable = bool(options.pop("immutable", False))
        return Signature(self.name, args, kwargs, options, immutable=immutable)

    def map(self, items: Iterable[Any]) -> Signature:
        return group(self.s(item) for item in items)

    def starmap(self, items: Iterable[Iterable[Any]]) -> Signature:
        return group(self.s(*item) for item in items)

    def chunks(self, items: Iterable[Any], n: int) -> Signature:
        """Split ``items`` into chunks of ``n``; each chunk is one call of ``starmap`` semantics."""
        return chunks(self, items, n)

    def AsyncResult(self, task_id: str) -> AsyncResult[R]:  # noqa: N802 - Celery's name
        return AsyncResult(task_id)

    async def update_state(
        self, task_id: str | None = None, state: str | None = None, meta: dict[str, Any] | None = None
    ) -> None:
        """Record a custom state (e.g. PROGRESS) and its meta, visible through ``AsyncResult.record()``."""
        req = self.request
        await store_state(task_id or req.id, state or "PROGRESS", meta, eager=req.is_eager)

    @property
    def worker_ctx(self) -> dict[str, Any]:
        """The worker context (what the worker's ``on_startup`` hook created): ``self.worker_ctx["pool"]``."""
        return worker_context()

    # -- at-least-once delivery: make effects happen once --
    async def effect_done(self, key: str) -> bool:
        """True if :meth:`mark_effect_done` ran for ``key`` in an earlier delivery of this same job."""
        return await get_broker().effect_done(str(self.request.id), key)

    async def mark_effect_done(self, key: str) -> None:
        """Record that the effect ``key`` of this job happened (kept as long as results)."""
        await get_broker().mark_effect_done(str(self.request.id), key)


def _sentence(message: str) -> str:
    """pydantic's message as a sentence: no "Value error, " prefix, Celery's wording for extras."""
    return message.removeprefix("Value error, ").replace("Extra inputs are not permitted", "unknown option")


class _Decorator(Protocol):
    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Task[P, R]: ...


class _BoundDecorator(Protocol):
    """``bind=True``: the function's first parameter is the task itself, not an argument of the call."""

    @overload
    def __call__(self, fn: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]], /) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[Concatenate[Any, P], R], /) -> Task[P, R]: ...


@overload
def shared_task(fn: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...
@overload
def shared_task(fn: Callable[P, R], /) -> Task[P, R]: ...
@overload
def shared_task(fn: None = None, /, *, bind: Literal[True], **options: Any) -> _BoundDecorator: ...
@overload
def shared_task(fn: None = None, /, *, bind: Literal[False] = False, **options: Any) -> _Decorator: ...
def shared_task(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Declare a task, as Celery's ``@shared_task`` (bare or with options). Validates options now."""

    def decorate(func: Callable[..., Any]) -> Task[Any, Any]:
        label = options.get("name") or f"{func.__module__}.{func.__qualname__}"
        try:
            opts = TaskOptions(**options)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'options'}: {_sentence(e['msg'])}" for e in exc.errors()
            )
            raise TaskDefinitionError(f"task {label!r}: {problems}") from None
        cls = opts.base or Task
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise TaskDefinitionError(f"task {label!r}: base must be a subclass of tasks_engine.Task, got {cls!r}")
        task = cls(func, opts)
        register(task)
        return task

    if fn is not None:
        return decorate(fn)
    return decorate
