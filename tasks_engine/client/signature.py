"""A task call described as data (Celery's ``signature``): the base every workflow kind builds on.

Engine-facing methods (``plan_into``, ``run_eager``, ``merged``, ``push_down``, ``errback_call``,
``parts``, ``leaf_ids``, ``check_waiting``) are overridden by chain, group and chord in
:mod:`tasks_engine.client.canvas`; :func:`from_dict` rebuilds any kind from its dict form.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from tasks_engine.client.eager import run_call
from tasks_engine.client.plan import Context, Plan, as_list, aware, build_enqueue, check_call_options, check_errback
from tasks_engine.client.results import AsyncResult
from tasks_engine.client.sync import apply_sync
from tasks_engine.core.config import get_settings
from tasks_engine.core.context import eager_override
from tasks_engine.core.ids import own_id
from tasks_engine.model.registry import get_task, registry
from tasks_engine.store import Enqueue, Writes, get_broker

CALL_OPTIONS = frozenset(
    {
        "countdown",
        "eta",
        "expires",
        "queue",
        "routing_key",
        "priority",
        "task_id",
        "link",
        "link_error",
        "ignore_result",
        "time_limit",
        "soft_time_limit",
        "headers",
        "parent_id",
        "root_id",
        "group_id",
        "retries",
        "immutable",
        "serializer",
        "compression",
        "exchange",
        "shadow",
        "retry",
        "retry_policy",
    }
)
_CALLBACK_OPTIONS = ("link", "link_error")
#: Workflow kinds by ``subtask_type`` (built from their dict form), filled in by :mod:`tasks_engine.client.canvas`.
KINDS: dict[str, Callable[[dict[str, Any], dict[str, Any]], Signature]] = {}
#: ``a | b`` for two plain signatures: a chain, registered by :mod:`tasks_engine.client.canvas`.
COMBINE: dict[str, Callable[..., Signature]] = {}


def runs_eagerly() -> bool:
    """True under ``task_always_eager`` or :func:`tasks_engine.testing.always_eager`: applies run in-process."""
    eager = eager_override.get()
    return eager if eager is not None else get_settings().task_always_eager


class Signature:
    """A task call described as data: name, args, kwargs, options."""

    subtask_type: str | None = None

    def __init__(
        self,
        task: str,
        args: Iterable[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        immutable: bool = False,
    ) -> None:
        self.task = task
        self.args: tuple[Any, ...] = tuple(args or ())
        self.kwargs: dict[str, Any] = dict(kwargs or {})
        self.options: dict[str, Any] = {}
        self.immutable = immutable
        if options:
            self.set(**options)

    def __repr__(self) -> str:
        inner = ", ".join([*(repr(a) for a in self.args), *(f"{k}={v!r}" for k, v in self.kwargs.items())])
        return f"{self.task}({inner}){'!' if self.immutable else ''}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Signature) and other.to_dict() == self.to_dict()

    __hash__ = None  # type: ignore[assignment]

    @property
    def id(self) -> str | None:
        return self.options.get("task_id")

    # -- building --
    def copy(self) -> Signature:
        """An independent copy that keeps every id already assigned."""
        return Signature(self.task, self.args, self.kwargs, copy_options(self), self.immutable)

    def clone(
        self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Signature:
        """A new call: same task and arguments (partial ``args`` prepended, ``kwargs`` merged), no ids."""
        copy = self.copy()
        copy.strip_ids()
        if args or kwargs:
            copy = copy.merged(tuple(args or ()), kwargs or {})
        if options:
            copy.set(**options)
        return copy

    def merged(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Signature:
        """Celery's ``_merge``: partial args go first, kwargs merge; an immutable signature keeps its own."""
        if self.immutable:
            return self
        out = self.copy()
        out.args = tuple(args) + self.args
        out.kwargs = {**self.kwargs, **kwargs}
        return out

    def set(self, **options: Any) -> Signature:
        unknown = set(options) - CALL_OPTIONS
        if unknown:
            raise TypeError(f"task {self.task!r}: unknown option(s) {sorted(unknown)}")
        if "immutable" in options:
            self.immutable = bool(options.pop("immutable"))
        for key in _CALLBACK_OPTIONS:  # callbacks are Signatures from here on, whatever form they came in
            if key in options:
                options[key] = [as_signature(s, f"task {self.task!r}: {key}") for s in as_list(options[key])]
        self.options.update(options)
        return self

    def _add_callback(self, key: str, value: Any) -> Any:
        """Append a callback unless an equal one is already there (Celery's ``append_to_list_option``)."""
        callback = as_signature(value, f"task {self.task!r}: {key}")
        callbacks = self.options.setdefault(key, [])
        if callback not in callbacks:
            callbacks.append(callback)
        return value

    def link(self, callback: Signature) -> Any:
        """Run ``callback`` with this call's result when it succeeds; returns ``callback`` (as Celery)."""
        return self._add_callback("link", callback)

    def link_error(self, errback: Signature) -> Any:
        """Run ``errback(failed_task_id[, exc, traceback])`` when this call fails; returns ``errback``."""
        return self._add_callback("link_error", errback)

    def on_error(self, errback: Signature) -> Signature:
        """:meth:`link_error` that returns this signature, so ``sig.on_error(eb).delay()`` runs ``sig``."""
        self.link_error(errback)
        return self

    def __or__(self, other: Signature) -> Signature:
        if isinstance(other, Signature):
            return COMBINE["chain"](self, other)
        return NotImplemented

    def to_dict(self) -> dict[str, Any]:
        options = dict(self.options)
        for key in _CALLBACK_OPTIONS:
            if key in options:
                options[key] = [s.to_dict() for s in as_list(options[key])]
        for key in ("eta", "expires"):
            if isinstance(options.get(key), datetime):
                options[key] = aware(options[key]).isoformat()
        return {
            "task": self.task,
            "args": list(self.args),
            "kwargs": self.kwargs,
            "options": options,
            "immutable": self.immutable,
            "subtask_type": self.subtask_type,
        }

    # -- structure (overridden by workflows) --
    def parts(self) -> list[Signature]:
        """The signatures a workflow is made of (a chain's or group's tasks, a chord's header and body)."""
        return []

    def leaf_ids(self) -> list[str]:
        """Task ids of every task call inside (after ``freeze``)."""
        return [self.options["task_id"]] if "task_id" in self.options else []

    def strip_ids(self) -> None:
        self.options.pop("task_id", None)
        for part in self.parts():
            part.strip_ids()

    def assign_result_id(self, task_id: str) -> None:
        """Give the call whose result this returns (a chain's last step, a chord's body) this id."""
        self.options.setdefault("task_id", task_id)

    def errbacks(self) -> list[dict[str, Any]]:
        """The errbacks to call when this as a whole cannot run (its chord header failed)."""
        return [s.to_dict() for s in as_list(self.options.get("link_error"))]

    def check_waiting(self) -> None:
        """Check a call that is enqueued only later, by a worker, with one value prepended (chain steps,
        callbacks): a wrong signature then fails at apply time, not in the middle of a workflow."""
        task = registry.get(self.task)
        if task is not None and self.immutable:
            task.prepare_args(list(self.args), dict(self.kwargs), complete=True)
        elif task is not None:
            task.arguments.prepare_after_value(list(self.args), dict(self.kwargs), "after its parent's result")
        if not self.parts():  # a workflow's options are pushed down to its parts, checked there
            check_call_options(self)
        for callback in as_list(self.options.get("link")):
            callback.check_waiting()
        for errback in as_list(self.options.get("link_error")):
            check_errback(errback)

    # -- ids --
    def freeze(
        self,
        _id: str | None = None,
        group_id: str | None = None,
        chord: Any = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        group_index: int | None = None,
    ) -> Any:
        """Celery's ``freeze``: give this signature (and every step inside) its task id now — ``_id`` if it
        has none yet (a chain's last step, a chord's body) — and return the result handle. ``root_id`` and
        ``parent_id`` are set as options; ``chord`` and ``group_index`` are accepted and ignored (the
        engine plans those itself)."""
        del chord, group_index
        if _id is not None:
            self.assign_result_id(_id)
        for key, value in (("root_id", root_id), ("parent_id", parent_id)):
            if value:
                self.options[key] = value
        if group_id:
            self.options.setdefault("group_id", group_id)
        return self.freeze_under(None)

    def freeze_under(self, parent: Any) -> Any:
        """:meth:`freeze` with ``parent`` as the returned handle's parent (the step this one follows)."""
        task_id = own_id(self.options)
        ignore = bool(self.options.get("ignore_result", False))
        task = registry.get(self.task)
        if task is not None and task.options.ignore_result and "ignore_result" not in self.options:
            ignore = True
        return AsyncResult(task_id, parent=parent, ignore_result=ignore)

    def push_down(self) -> None:
        """Move workflow-level options onto the calls inside (no-op for a single task)."""

    # -- running --
    async def delay(self, *args: Any, **kwargs: Any) -> Any:
        return await self.apply_async(args, kwargs)

    async def apply_async(
        self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Any:
        """Send the workflow; returns its result handle once every first message is in Redis.

        Works on a copy: applying the same signature twice makes two calls (unless it was frozen).
        Under ``task_always_eager`` (or :func:`tasks_engine.testing.always_eager`) it runs in-process
        instead, as ``apply()`` does, with no Redis.
        """
        if runs_eagerly():
            return await self.apply(args, kwargs, **options)
        result = await self._prepared(args, kwargs, options).send()
        self.remember(result)
        return result

    def delay_sync(self, *args: Any, **kwargs: Any) -> Any:
        """Blocking :meth:`delay` for code that cannot await: a ``SyncResult`` (``SyncGroupResult`` for a group)."""
        return self.apply_async_sync(args, kwargs)

    def apply_async_sync(
        self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Any:
        """Blocking :meth:`apply_async` (see :mod:`tasks_engine.client.sync`)."""
        return apply_sync(self.apply_async(args, kwargs, **options), f"{self.task}.apply_async_sync()")

    async def send(self) -> Any:
        """Send this very signature, not a copy (for one built for this call alone, as ``delay()``
        builds it); returns its result handle once every first message is in Redis."""
        result = self.freeze_under(None)
        if self.subtask_type is None:  # one task call: one message, no plan to assemble
            await get_broker().write(Writes([self.to_enqueue([], Context())]))
            return result
        plan = Plan()
        self.plan_into([], Context(), plan)
        await plan.execute()
        return result

    async def apply(
        self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Any:
        """Run in this process now (eager), retries without sleeping; returns Eager/Group results."""
        sig = self._prepared(args, kwargs, options)
        sig.freeze_under(None)
        result = await sig.run_eager([], None)
        self.remember(result)
        return result

    def remember(self, result: Any) -> None:
        """After an apply: what the original (not the applied copy) keeps of it (a chain: its ``id``)."""

    def _prepared(
        self, args: Iterable[Any] | None, kwargs: dict[str, Any] | None, options: dict[str, Any]
    ) -> Signature:
        sig = (self.merged(tuple(args or ()), kwargs or {}) if (args or kwargs) else self).copy()
        if options:
            sig.set(**options)
        return sig

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        merged = self.merged(args, kwargs)
        return await get_task(self.task).call(*merged.args, **merged.kwargs)

    # -- planning and eager running (one simple task) --
    def plan_into(self, prefix: list[Any], ctx: Context, plan: Plan) -> None:
        plan.enqueues.append(self.to_enqueue(prefix, ctx))
        plan.ids.append(self.options["task_id"])

    def to_enqueue(self, prefix: list[Any], ctx: Context) -> Enqueue:
        """This call as one message (see :func:`tasks_engine.client.plan.build_enqueue`)."""
        return build_enqueue(self, prefix, ctx)

    def errback_call(self, failed_id: str, exc: BaseException | None = None, traceback: str | None = None) -> Signature:
        """The errback with the failed task's id first, plus exception and traceback if it takes three args.

        An immutable errback (``.si()``) gets nothing prepended, as in Celery: it keeps its own arguments."""
        if self.immutable:
            out = from_dict(self.to_dict())
            out.options.pop("task_id", None)
            return out
        task = registry.get(self.task)
        extra: tuple[Any, ...] = (failed_id,)
        if task is not None and exc is not None:
            positional, var_positional = task.arguments.positional_count()
            if positional - len(self.args) >= 3 or var_positional:
                extra = (failed_id, f"{type(exc).__name__}({str(exc)!r})", traceback or "")
        out = from_dict(self.to_dict())
        out.args = extra + out.args
        out.options.pop("task_id", None)
        return out

    async def run_eager(self, prefix: list[Any], parent: Any) -> Any:
        return await run_call(self, prefix, parent)


def from_dict(data: dict[str, Any]) -> Signature:
    """Any signature kind from its dict form (as messages and chord records carry them)."""
    if not isinstance(data, dict) or not isinstance(data.get("task"), str):
        raise TypeError(f"not a signature: {str(data)[:120]}")
    options = dict(data.get("options") or {})
    kind = data.get("subtask_type")
    if kind:
        return KINDS[kind](data, options)
    return Signature(data["task"], data.get("args"), data.get("kwargs"), options, immutable=bool(data.get("immutable")))


def as_signature(value: Any, where: str = "") -> Signature:
    if isinstance(value, Signature):
        return value
    if isinstance(value, dict):
        return from_dict(value)
    prefix = f"{where}: " if where else ""
    raise TypeError(f"{prefix}expected a signature (e.g. task.s(...)), got {type(value).__name__}")


def fresh(value: Any) -> Signature:
    """A copy without ids: one more, separate call."""
    out = as_signature(value).copy()
    out.strip_ids()
    return out


def copy_options(sig: Signature) -> dict[str, Any]:
    """Options for a copy: callbacks copied too (they get ids of their own when planned)."""
    if "link" not in sig.options and "link_error" not in sig.options:
        return dict(sig.options)
    return {k: ([s.copy() for s in as_list(v)] if k in _CALLBACK_OPTIONS else v) for k, v in sig.options.items()}


def pop_workflow_options(sig: Signature) -> tuple[list[Signature], list[Signature], dict[str, Any]]:
    """Take a workflow's callbacks and call options off it (its ``task_id`` stays: a group's own id)."""
    links = list(as_list(sig.options.pop("link", None)))
    errbacks = list(as_list(sig.options.pop("link_error", None)))
    call = {k: sig.options.pop(k) for k in list(sig.options) if k != "task_id"}
    return links, errbacks, call
