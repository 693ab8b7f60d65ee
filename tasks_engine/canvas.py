"""Signatures and workflows: chain, group, chord, links — planned into atomic Redis writes.

A workflow never lives in a worker's memory. Applying one *plans* it: every step gets its id up
front (``freeze``), the first messages are enqueued, each message carries the steps still to run
(``chain``) and where its final result goes (``chord``), and a chord's body is stored in Redis
with a placeholder for the header results. When a step finishes, the worker enqueues what
follows in the same transaction that stores the result, so a crash between steps loses nothing;
chord parts are counted by a Lua script that dedupes by task id and dispatches the body exactly
once. The same plan runs in-process for ``apply()``.

Options given to a whole workflow are pushed down to the calls that carry them (as Celery does):
a chain's ``link_error`` goes on every step and its ``link`` on the last, a group's on every
member, a chord's on its body; other call options go to a chain's first step, a group's members,
a chord's header. Each message thus carries only its own callbacks, and nothing leaks from one
step to the next.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, cast

from tasks_engine import states
from tasks_engine.broker import CHORD_PLACEHOLDER, Enqueue, get_broker, now_ms
from tasks_engine.config import get_settings
from tasks_engine.exceptions import ChordError
from tasks_engine.messages import ChordRef, Message, dumps, encode
from tasks_engine.results import (
    AsyncResult,
    EagerResult,
    GroupResult,
    now_iso,
    parse_record,
    rebuild_exception,
)
from tasks_engine.task import Task, registry, route_queue, shared_task

CHORD_RESULTS = CHORD_PLACEHOLDER.strip('"')
CALL_OPTIONS = frozenset({
    "countdown", "eta", "expires", "queue", "routing_key", "priority", "task_id", "link", "link_error",
    "ignore_result", "time_limit", "soft_time_limit", "headers", "parent_id", "root_id", "group_id",
    "retries", "immutable", "serializer", "compression", "exchange", "shadow", "retry", "retry_policy",
})
COLLECT_TASK = "tasks_engine.collect"
UNWIND_TASK = "tasks_engine.chord_unwind"


def new_id() -> str:
    return str(uuid.uuid4())


def derived_id(base: str, tag: str) -> str:
    """A stable id computed from another: re-planning the same step (a re-delivered parent) gives the same id."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"tasks-engine:{base}:{tag}"))


class Signature:
    """A task call described as data (Celery's ``signature``): name, args, kwargs, options."""

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
        self.options: dict[str, Any] = dict(options or {})
        self.immutable = immutable
        unknown = set(self.options) - CALL_OPTIONS
        if unknown:
            raise TypeError(f"task {task!r}: unknown option(s) {sorted(unknown)}")
        if "immutable" in self.options:
            self.immutable = bool(self.options.pop("immutable"))

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
        return Signature(self.task, self.args, self.kwargs, _copy_options(self), self.immutable)

    def clone(
        self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Signature:
        """A new call: same task and arguments (partial ``args`` prepended, ``kwargs`` merged), no ids."""
        copy = self.copy()
        _strip_ids(copy)
        if args or kwargs:
            copy = copy._merged(tuple(args or ()), kwargs or {})
        if options:
            copy.set(**options)
        return copy

    def _merged(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Signature:
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
        self.options.update(options)
        return self

    def link(self, callback: Signature) -> Signature:
        """Run ``callback`` with this call's result when it succeeds."""
        self.options.setdefault("link", []).append(callback)
        return callback

    def link_error(self, errback: Signature) -> Signature:
        """Run ``errback(failed_task_id[, exc, traceback])`` when this call fails."""
        self.options.setdefault("link_error", []).append(errback)
        return errback

    on_error = link_error

    def __or__(self, other: Signature) -> Signature:
        if isinstance(other, Signature):
            return chain(self, other)
        return NotImplemented

    def to_dict(self) -> dict[str, Any]:
        options = dict(self.options)
        for key in ("link", "link_error"):
            if key in options:
                options[key] = [s.to_dict() if isinstance(s, Signature) else s for s in _as_list(options[key])]
        for key in ("eta", "expires"):
            if isinstance(options.get(key), datetime):
                options[key] = _aware(options[key]).isoformat()
        return {"task": self.task, "args": list(self.args), "kwargs": self.kwargs, "options": options,
                "immutable": self.immutable, "subtask_type": self.subtask_type}

    # -- ids --
    def freeze(self, parent: Any = None) -> Any:
        """Give this signature (and every step inside) its task id now; return the result handle."""
        task_id = _own_id(self)
        ignore = bool(self.options.get("ignore_result", False))
        task = registry.get(self.task)
        if task is not None and task.options.ignore_result and "ignore_result" not in self.options:
            ignore = True
        return AsyncResult(task_id, parent=parent, ignore_result=ignore)

    def _push_down(self) -> None:
        """Move workflow-level options onto the calls inside (no-op for a single task)."""

    # -- running --
    async def delay(self, *args: Any, **kwargs: Any) -> Any:
        return await self.apply_async(args, kwargs)

    async def apply_async(
        self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Any:
        """Send the workflow; returns its result handle once every first message is in Redis.

        Works on a copy: applying the same signature twice makes two calls (unless it was frozen).
        """
        sig = self._prepared(args, kwargs, options)
        result = sig.freeze()
        plan = Plan()
        sig._plan([], Context(), plan)
        await plan.execute()
        return result

    async def apply(
        self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Any:
        """Run in this process now (eager), retries without sleeping; returns Eager/Group results."""
        sig = self._prepared(args, kwargs, options)
        sig.freeze()
        return await sig._eager([], None)

    def _prepared(
        self, args: Iterable[Any] | None, kwargs: dict[str, Any] | None, options: dict[str, Any]
    ) -> Signature:
        sig = (self._merged(tuple(args or ()), kwargs or {}) if (args or kwargs) else self).copy()
        if options:
            sig.set(**options)
        return sig

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from tasks_engine.task import get_task

        merged = self._merged(args, kwargs)
        return await get_task(self.task)(*merged.args, **merged.kwargs)

    # -- planning (one simple task) --
    def _plan(self, prefix: list[Any], ctx: Context, plan: Plan) -> None:
        plan.enqueues.append(self.to_enqueue(prefix, ctx))
        plan.ids.append(self.options["task_id"])

    def to_enqueue(self, prefix: list[Any], ctx: Context) -> Enqueue:
        """This call as one message. ``ctx.link_errors`` is ignored: errbacks travel in each step's options."""
        from tasks_engine.task import get_task

        settings = get_settings()
        opts = self.options
        task_id = _own_id(self)
        task = registry.get(self.task)
        real_prefix = [] if self.immutable else list(prefix)
        args, kwargs = list(self.args), dict(self.kwargs)
        placeholder = bool(real_prefix) and real_prefix[0] == CHORD_RESULTS
        if task is not None:
            if placeholder:
                args, kwargs = _check_after_results(task, args, kwargs)
                args = [CHORD_RESULTS, *args]
            else:
                args, kwargs = task.prepare_args([*real_prefix, *args], kwargs, complete=not ctx.partial)
        else:
            args = [*real_prefix, *args]
            try:
                dumps([args, kwargs])
            except TypeError:
                raise TypeError(
                    f"task {self.task!r}: arguments are not JSON-serializable; pass IDs or plain data"
                ) from None
        now = datetime.now(UTC).timestamp()
        eta = _eta(opts, now)
        expires = opts.get("expires", task.options.expires if task is not None else None)
        if isinstance(expires, int | float):
            expires = now + float(expires)
        elif isinstance(expires, datetime):
            expires = _aware(expires).timestamp()
        elif isinstance(expires, str):
            expires = datetime.fromisoformat(expires).timestamp()
        priority = opts.get("priority")
        if priority is None:
            own = task.options.priority if task is not None else None
            priority = own if own is not None else settings.default_priority
        if not isinstance(priority, int) or not 0 <= priority <= 9:
            raise ValueError(f"task {self.task!r}: priority must be an int 0-9 (0 = highest), got {priority!r}")
        soft, hard = opts.get("soft_time_limit"), opts.get("time_limit")
        if soft is not None or hard is not None:
            from tasks_engine.limits import check_time_limits

            try:
                check_time_limits(soft if soft is not None else (task.soft_time_limit if task else None),
                                  hard if hard is not None else (task.time_limit if task else None))
            except ValueError as exc:
                raise ValueError(f"task {self.task!r}: {exc}") from None
        # Callbacks get their ids now, so a re-delivered completion plans the very same callback (nx dedupes it).
        links = []
        for callback in _as_list(opts.get("link")):
            frozen = _sig(callback).copy()
            if not ctx.nx:
                _check_waiting(frozen)
            frozen.freeze()
            links.append(frozen.to_dict())
        errbacks = [_sig_dict(s) for s in _as_list(opts.get("link_error"))]
        queue = route_queue(self.task, opts.get("queue") or opts.get("routing_key"))
        message = Message(
            id=task_id, task=self.task, args=args, kwargs=kwargs, queue=queue, priority=priority,
            retries=int(opts.get("retries", 0)), eta=eta, expires=expires, time_limit=hard, soft_time_limit=soft,
            ignore_result=opts.get("ignore_result"), parent_id=opts.get("parent_id", ctx.parent_id),
            root_id=opts.get("root_id", ctx.root_id or task_id), group_id=opts.get("group_id", ctx.group_id),
            links=links, link_errors=errbacks, chain=[s.to_dict() for s in ctx.chain_rest], chord=ctx.chord,
            headers=dict(opts.get("headers") or {}),
        )
        raw = encode(message)
        if len(raw) > settings.max_payload_bytes:
            raise ValueError(
                f"task {self.task!r}: message is {len(raw)} bytes, over max_payload_bytes="
                f"{settings.max_payload_bytes}; pass IDs, not data"
            )
        if task is None and ctx.require_registered:
            get_task(self.task)
        return Enqueue(task_id, raw, queue, priority, int(eta * 1000) if eta else 0, nx=ctx.nx)

    def _errback_call(
        self, failed_id: str, exc: BaseException | None = None, traceback: str | None = None
    ) -> Signature:
        """The errback with the failed task's id first, plus exception and traceback if it takes three args."""
        task = registry.get(self.task)
        extra: tuple[Any, ...] = (failed_id,)
        if task is not None and exc is not None:
            positional = [
                p for p in task.call_signature.parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
            ]
            if len(positional) - len(self.args) >= 3 or any(p.kind is p.VAR_POSITIONAL for p in positional):
                extra = (failed_id, f"{type(exc).__name__}({str(exc)!r})", traceback or "")
        out = from_dict(self.to_dict())
        out.args = extra + out.args
        out.options.pop("task_id", None)
        return out

    # -- eager --
    async def _eager(self, prefix: list[Any], parent: Any) -> Any:
        from tasks_engine.worker import run_eager

        return await run_eager(self, prefix, parent)


class _chain(Signature):  # noqa: N801 - Celery's spelling
    subtask_type = "chain"

    def __init__(self, *tasks: Any, **options: Any) -> None:
        flat: list[Signature] = []
        items = tasks[0] if len(tasks) == 1 and not isinstance(tasks[0], Signature) else tasks
        for t in items:
            if isinstance(t, _chain):
                if t.options:  # its own link/link_error/options go onto its steps first
                    t = t.copy()
                    assert isinstance(t, _chain)
                    t._push_down()
                flat.extend(t.tasks)
            elif isinstance(t, group) and len(t.tasks) == 1 and not t.options:
                flat.append(t.tasks[0])  # a group of one inside a chain is unrolled (Celery)
            else:
                flat.append(_sig(t))
        # A group followed by anything becomes a chord (Celery's rule).
        steps: list[Signature] = []
        i = 0
        while i < len(flat):
            if isinstance(flat[i], group) and i + 1 < len(flat):
                steps.append(chord(flat[i], flat[i + 1]))
                i += 2
            else:
                steps.append(flat[i])
                i += 1
        super().__init__("celery.chain", (), {}, options)
        self.tasks: list[Signature] = steps

    def __repr__(self) -> str:
        return " | ".join(repr(t) for t in self.tasks)

    def copy(self) -> Signature:
        return _chain(*(t.copy() for t in self.tasks), **_copy_options(self))

    def __or__(self, other: Signature) -> Signature:
        return chain(self, other) if isinstance(other, Signature) else NotImplemented

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "tasks": [t.to_dict() for t in self.tasks]}

    def freeze(self, parent: Any = None) -> Any:
        own_id = self.options.pop("task_id", None)
        if own_id and self.tasks:  # a chain's id is its last step's
            _assign_id(self.tasks[-1], own_id)
        result = parent
        for step in self.tasks:
            result = step.freeze(result)
        return result

    def _push_down(self) -> None:
        links, errbacks, call = _pop_workflow_options(self)
        if not self.tasks:
            return
        for step in self.tasks:
            for errback in errbacks:
                step.link_error(errback.copy())
        for callback in links:
            self.tasks[-1].link(callback.copy())
        if call:
            self.tasks[0].set(**call)

    def _merged(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Signature:
        if not self.tasks:
            return self
        return chain(self.tasks[0]._merged(args, kwargs), *(t.copy() for t in self.tasks[1:]), **_copy_options(self))

    def _plan(self, prefix: list[Any], ctx: Context, plan: Plan) -> None:
        self.freeze()  # no-op when already frozen; gives ids to unfrozen callback chains
        self._push_down()
        if not self.tasks:
            return
        if not ctx.nx:  # applied by a client (not re-planned by a worker): check the later steps now
            for step in self.tasks[1:]:
                _check_waiting(step)
        rest = [*self.tasks[1:], *ctx.chain_rest]
        self.tasks[0]._plan(prefix, replace(ctx, chain_rest=rest), plan)

    async def _eager(self, prefix: list[Any], parent: Any) -> Any:
        self._push_down()
        result: Any = parent
        lead = prefix
        for index, step in enumerate(self.tasks):
            result = await step._eager(lead, result)
            value = await result.get(propagate=False)
            if isinstance(value, BaseException):
                for later in self.tasks[index + 1 :]:
                    result = _failed_results(later, value, result)
                return result
            lead = [value]
        return result


def chain(*tasks: Any, **options: Any) -> _chain:
    """``chain(a.s(), b.s())`` == ``a.s() | b.s()``: each result is prepended to the next step's args."""
    return _chain(*tasks, **options)


class group(Signature):  # noqa: N801 - Celery's spelling
    """Run signatures in parallel; results come back in declaration order."""

    subtask_type = "group"

    def __init__(self, *tasks: Any, **options: Any) -> None:
        items = tasks[0] if len(tasks) == 1 and not isinstance(tasks[0], Signature) else tasks
        super().__init__("celery.group", (), {}, options)
        self.tasks: list[Signature] = [_sig(t) for t in items]

    def __repr__(self) -> str:
        return f"group({', '.join(repr(t) for t in self.tasks)})"

    def copy(self) -> Signature:
        return group([t.copy() for t in self.tasks], **_copy_options(self))

    def __or__(self, other: Signature) -> Signature:
        """``group | x`` is a chord with body ``x`` (a task, a chain or another group)."""
        return chord(self, other) if isinstance(other, Signature) else NotImplemented

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "tasks": [t.to_dict() for t in self.tasks]}

    def freeze(self, parent: Any = None) -> GroupResult:
        group_id = _own_id(self)
        return GroupResult(group_id, [t.freeze() for t in self.tasks], parent=parent)

    def _push_down(self) -> None:
        links, errbacks, call = _pop_workflow_options(self)
        for member in self.tasks:
            for errback in errbacks:
                member.link_error(errback.copy())
            for callback in links:  # each member's own result goes to its own copy of the callback
                member.link(_fresh(callback))
            if call:
                member.set(**call)

    def _merged(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Signature:
        return group([t._merged(args, kwargs) for t in self.tasks], **_copy_options(self))

    def _plan(self, prefix: list[Any], ctx: Context, plan: Plan) -> None:
        self._push_down()
        if ctx.chain_rest:
            nxt, rest = ctx.chain_rest[0], ctx.chain_rest[1:]
            chord(self, nxt)._plan(prefix, replace(ctx, chain_rest=rest), plan)
            return
        if ctx.chord is not None:
            # A group whose results feed a chord slot (header member, or a header chain ending in a group):
            # it becomes a chord of its own whose body hands the list of results on to that slot.
            group_id = _own_id(self)
            collect = Signature(COLLECT_TASK, options={"task_id": derived_id(group_id, "collect")})
            chord(self, collect)._plan(prefix, ctx, plan)
            return
        result = self.freeze()
        plan.groups.append(result)
        for t in self.tasks:
            t._plan(prefix, replace(ctx, group_id=result.id), plan)

    async def _eager(self, prefix: list[Any], parent: Any) -> GroupResult:
        self._push_down()
        group_id = _own_id(self)
        return GroupResult(group_id, [await t._eager(prefix, None) for t in self.tasks])


class _chord(Signature):  # noqa: N801 - Celery's spelling
    subtask_type = "chord"

    def __init__(self, header: Any, body: Signature | None = None, **options: Any) -> None:
        super().__init__("celery.chord", (), {}, options)
        self.header: group = header if isinstance(header, group) else group(header)
        self.body = _sig(body) if body is not None else None

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.body!r})"

    def copy(self) -> Signature:
        return _chord(self.header.copy(), self.body.copy() if self.body is not None else None, **_copy_options(self))

    async def __call__(self, body: Signature | None = None, **options: Any) -> Any:
        """``await chord(header)(body)``: apply at once, return the body's result."""
        sig = self.copy()
        assert isinstance(sig, _chord)
        if body is not None:
            sig.body = body.copy()
        return await sig.apply_async(**options)

    def __or__(self, other: Signature) -> Signature:
        """``chord | x``: ``x`` runs after the body (it becomes part of the body), as in Celery."""
        if not isinstance(other, Signature):
            return NotImplemented
        sig = self.copy()
        assert isinstance(sig, _chord)
        sig.body = other if sig.body is None else chain(sig.body, other)
        return sig

    def to_dict(self) -> dict[str, Any]:
        body = self.body.to_dict() if self.body else None
        return {**super().to_dict(), "header": self.header.to_dict(), "body": body}

    def _need_body(self) -> Signature:
        if self.body is None:
            raise ValueError("chord has no body: use chord(header)(body) or chord(header, body)")
        return self.body

    def freeze(self, parent: Any = None) -> Any:
        body = self._need_body()
        own_id = self.options.pop("task_id", None)
        if own_id:  # a chord's id is its body's
            _assign_id(body, own_id)
        header = self.header.freeze(parent)
        return body.freeze(header)

    def _push_down(self) -> None:
        links, errbacks, call = _pop_workflow_options(self)
        body = self._need_body()
        for callback in links:
            body.link(callback)
        for errback in errbacks:
            body.link_error(errback)
        if call:
            self.header.set(**call)
        self.header._push_down()

    def _merged(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Signature:
        body = self.body.copy() if self.body is not None else None
        return _chord(self.header._merged(args, kwargs), body, **_copy_options(self))

    def _plan(self, prefix: list[Any], ctx: Context, plan: Plan) -> None:
        body = self._need_body()
        header_result = self.header.freeze()
        body_result = body.freeze(header_result)
        self._push_down()
        body_ctx = replace(ctx, group_id=None)
        if not self.header.tasks:
            body._plan([[]], body_ctx, plan)
            return
        chord_id = body_result.id
        sub = Plan()
        body._plan([CHORD_RESULTS], replace(body_ctx, nx=True, partial=True), sub)
        plan.groups.extend(sub.groups)
        plan.chords.extend(sub.chords)
        # If a header task fails, Lua marks the body FAILURE and enqueues this one job, which fails the steps
        # after the body, calls the body's errbacks and reports the failure to an enclosing chord.
        later = [i for i in _leaf_ids(body) if i != chord_id] + [i for s in ctx.chain_rest for i in _leaf_ids(s)]
        outer = ctx.chord.model_dump() if ctx.chord is not None else None
        unwind = Signature(UNWIND_TASK, (chord_id, _errbacks_of(body), later, outer),
                           options={"task_id": derived_id(chord_id, "unwind")})
        on_error = unwind.to_enqueue([], Context(nx=True, parent_id=chord_id, root_id=ctx.root_id))
        plan.chords.append(ChordRecord(chord_id, len(self.header.tasks), sub.enqueues, [on_error]))
        for index, t in enumerate(self.header.tasks):
            member_ctx = Context([], ChordRef(id=chord_id, index=index), ctx.parent_id, ctx.root_id, header_result.id,
                                 [], ctx.nx, ctx.partial, ctx.require_registered)
            t._plan(prefix, member_ctx, plan)
        plan.groups.append(header_result)

    async def _eager(self, prefix: list[Any], parent: Any) -> Any:
        body = self._need_body()
        self._push_down()
        header = await self.header._eager(prefix, None)
        for leaf in header._leaves():  # nested groups too
            value = await leaf.get(propagate=False)
            if isinstance(value, BaseException):
                error = ChordError(f"Dependency {leaf.id} raised {type(value).__name__}({str(value)!r})")
                failed = _failed_results(body, error, header)
                failed_id = body.freeze(header).id
                for errback in _errbacks_of(body):
                    await from_dict(errback)._errback_call(failed_id, error, "")._eager([], failed)
                return failed
        return await body._eager([await header.get()], header)


def chord(header: Any, body: Signature | None = None, **options: Any) -> _chord:
    """``await chord(header)(body)`` or ``await chord(header, body).delay()``: body gets header results in order."""
    return _chord(header, body, **options)


def chunks(task: Any, items: Iterable[Any], n: int) -> group:
    """``t.chunks(items, n)``: a group of ``ceil(len/n)`` calls, each a ``starmap`` over its chunk."""
    if n < 1:
        raise ValueError("chunk size must be >= 1")
    data = list(items)
    starmap_name = "tasks_engine.starmap"
    if starmap_name not in registry:
        raise RuntimeError("tasks_engine.builtins is not imported")
    return group(
        Signature(starmap_name, (task.name, [list(x) if isinstance(x, list | tuple) else [x] for x in data[i : i + n]]))
        for i in range(0, len(data), n)
    )


def signature(
    name: Any, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None, **options: Any
) -> Signature:
    """A signature by task name (or from its dict form), without importing the task's code."""
    if isinstance(name, Signature):
        return name
    if isinstance(name, dict):
        return from_dict(name)
    immutable = bool(options.pop("immutable", False))
    return Signature(name, args, kwargs, options, immutable=immutable)


def from_dict(data: dict[str, Any]) -> Signature:
    kind = data.get("subtask_type")
    options = dict(data.get("options") or {})
    for key in ("link", "link_error"):
        if key in options:
            options[key] = [from_dict(s) if isinstance(s, dict) else s for s in _as_list(options[key])]
    if kind == "chain":
        return _chain(*(from_dict(t) for t in data["tasks"]), **options)
    if kind == "group":
        return group([from_dict(t) for t in data["tasks"]], **options)
    if kind == "chord":
        return _chord(from_dict(data["header"]), from_dict(data["body"]) if data.get("body") else None, **options)
    return Signature(data["task"], data.get("args"), data.get("kwargs"), options, immutable=bool(data.get("immutable")))


@dataclass
class Context:
    """What surrounds a step while planning: the rest of its chain, its chord slot."""

    chain_rest: list[Signature] = field(default_factory=list)
    chord: ChordRef | None = None
    parent_id: str | None = None
    root_id: str | None = None
    group_id: str | None = None
    link_errors: list[dict[str, Any]] = field(default_factory=list)  # unused: errbacks travel in step options
    nx: bool = False  # skip ids already enqueued or finished (re-runs after a crash)
    partial: bool = False  # args still await a parent result; don't check arity yet
    require_registered: bool = False


@dataclass
class ChordRecord:
    id: str
    total: int
    body: list[Enqueue]
    on_error: list[Enqueue]


@dataclass
class Plan:
    """Everything one apply writes, executed in a single Redis transaction."""

    enqueues: list[Enqueue] = field(default_factory=list)
    chords: list[ChordRecord] = field(default_factory=list)
    groups: list[GroupResult] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)

    async def add_to(self, pipe: Any) -> None:
        broker = get_broker()
        ttl = get_settings().result_expires
        for ch in self.chords:
            key = broker.key("chord", ch.id)
            # HSETNX, field by field: planning the same chord again (its parent step re-delivered and
            # completed twice) must not reset the count of parts already returned.
            for name, value in (("total", ch.total), ("body_id", ch.id), ("count", 0),
                                ("body", dumps([_write(e) for e in ch.body])),
                                ("on_error", dumps([_write(e) for e in ch.on_error]))):
                pipe.hsetnx(key, name, value)
            pipe.expire(key, max(ttl, 7 * 86_400))
        for g in self.groups:
            pipe.set(broker.key("group", g.id), dumps(g._tree()), ex=ttl)
        if self.enqueues:
            await broker.enqueue_script(args=broker.enqueue_args(self.enqueues), client=pipe)

    async def execute(self) -> None:
        from tasks_engine.control import with_redis_retry

        broker = get_broker()

        async def write() -> None:
            if not self.chords and not self.groups:
                # One script call is atomic by itself: no MULTI, and no SCRIPT EXISTS, which redis-py
                # sends before every pipeline holding a script (delay() took 2 round trips, now 1).
                await broker.enqueue(self.enqueues)
                return
            async with broker.redis.pipeline(transaction=True) as pipe:
                await self.add_to(pipe)
                await pipe.execute()

        await with_redis_retry(write, "enqueue")


# ---------------------------------------------------------------- engine tasks used by workflows
async def _collect(results: list[Any]) -> list[Any]:
    """The body of a group nested in a chord header: passes the group's results on as one value."""
    return results


async def _chord_unwind(body_id: str, errbacks: list[dict[str, Any]], later: list[str],
                       outer: dict[str, Any] | None = None) -> None:
    """After a chord header failed (the body is already FAILURE): fail what came after the body, call the
    body's errbacks with its ChordError, and report the failure to an enclosing chord — in one transaction."""
    broker = get_broker()
    ttl = get_settings().result_expires
    raw = await cast(Awaitable[dict[bytes, bytes]], broker.redis.hgetall(broker.result_key(body_id)))
    record = parse_record(raw)
    exc = rebuild_exception(record)
    traceback = record.get("traceback") or ""
    failure = {k: record[k] for k in ("exc_type", "exc_module", "exc_message", "exc_args", "traceback") if k in record}
    plan = Plan()
    for data in errbacks:
        from_dict(data)._errback_call(body_id, exc, traceback)._plan([], Context(parent_id=body_id), plan)
    async with broker.redis.pipeline(transaction=True) as pipe:
        for later_id in later:
            key = broker.result_key(later_id)
            pipe.hset(key, mapping={"state": states.FAILURE, **failure, "date_done": now_iso(), "parent_id": body_id})
            pipe.expire(key, ttl)
            pipe.set(broker.key("revoked", later_id), "1", ex=ttl)  # they must never start now
            pipe.publish(broker.done_channel, later_id)
        await plan.add_to(pipe)
        if outer is not None:
            text = f"Dependency {body_id} raised {type(exc).__name__}({str(exc)!r})"
            await broker.chord_part_script(args=[broker.prefix, outer["id"], body_id, outer["index"], "0", "null",
                                                 text, traceback, now_ms(), now_iso(), ttl], client=pipe)
        await pipe.execute()


collect: Task = shared_task(name=COLLECT_TASK)(_collect)
chord_unwind: Task = shared_task(name=UNWIND_TASK, ignore_result=True)(_chord_unwind)


# ---------------------------------------------------------------- helpers
def _own_id(sig: Signature) -> str:
    """The signature's task id, assigned now if it has none (never overwritten)."""
    task_id = sig.options.get("task_id")
    if task_id is None:
        task_id = sig.options["task_id"] = new_id()
    return str(task_id)


def _write(e: Enqueue) -> list[Any]:
    return [e.id, e.raw.decode(), e.queue, str(e.priority), str(e.eta_ms), "1"]


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _sig(value: Any) -> Signature:
    if isinstance(value, Signature):
        return value
    if isinstance(value, dict):
        return from_dict(value)
    raise TypeError(f"expected a signature (e.g. task.s(...)), got {type(value).__name__}")


def _sig_dict(value: Any) -> dict[str, Any]:
    return value.to_dict() if isinstance(value, Signature) else dict(value)


def _fresh(value: Any) -> Signature:
    """A copy without ids: one more, separate call."""
    out = _sig(value).copy()
    _strip_ids(out)
    return out


def _parts(sig: Signature) -> list[Signature]:
    """The signatures a workflow is made of (a chain's or group's tasks, a chord's header and body)."""
    if isinstance(sig, _chain | group):
        return list(sig.tasks)
    if isinstance(sig, _chord):
        return [sig.header, *([sig.body] if sig.body is not None else [])]
    return []


def _is_workflow(sig: Signature) -> bool:
    return isinstance(sig, _chain | group | _chord)


def _strip_ids(sig: Signature) -> None:
    sig.options.pop("task_id", None)
    for part in _parts(sig):
        _strip_ids(part)


def _assign_id(sig: Signature, task_id: str) -> None:
    """Give the call whose result a workflow returns this id (a chain's last step, a chord's body)."""
    if isinstance(sig, _chain) and sig.tasks:
        _assign_id(sig.tasks[-1], task_id)
    elif isinstance(sig, _chord) and sig.body is not None:
        _assign_id(sig.body, task_id)
    else:
        sig.options.setdefault("task_id", task_id)


def _pop_workflow_options(sig: Signature) -> tuple[list[Signature], list[Signature], dict[str, Any]]:
    """Take a workflow's callbacks and call options off it (its ``task_id`` stays: a group's own id)."""
    links = [_sig(s) for s in _as_list(sig.options.pop("link", None))]
    errbacks = [_sig(s) for s in _as_list(sig.options.pop("link_error", None))]
    call = {k: sig.options.pop(k) for k in list(sig.options) if k != "task_id"}
    return links, errbacks, call


def _copy_options(sig: Signature) -> dict[str, Any]:
    """Options for a copy: callbacks copied too (they get ids of their own when planned)."""
    if "link" not in sig.options and "link_error" not in sig.options:
        return dict(sig.options)
    return {k: ([_sig(s).copy() for s in _as_list(v)] if k in ("link", "link_error") else v)
            for k, v in sig.options.items()}


def _errbacks_of(sig: Signature) -> list[dict[str, Any]]:
    """The errbacks to call when ``sig`` as a whole cannot run (its chord header failed)."""
    if isinstance(sig, _chain):
        own = [_sig_dict(s) for s in _as_list(sig.options.get("link_error"))]
        return own + (_errbacks_of(sig.tasks[0]) if sig.tasks else [])
    if isinstance(sig, group):
        out = [_sig_dict(s) for s in _as_list(sig.options.get("link_error"))]
        for member in sig.tasks:
            out.extend(d for d in _errbacks_of(member) if d not in out)
        return out
    if isinstance(sig, _chord):
        own = [_sig_dict(s) for s in _as_list(sig.options.get("link_error"))]
        return own + (_errbacks_of(sig.body) if sig.body is not None else [])
    return [_sig_dict(s) for s in _as_list(sig.options.get("link_error"))]


def _check_after_results(
    task: Task, args: list[Any], kwargs: dict[str, Any], role: str = "chord body"
) -> tuple[list[Any], dict[str, Any]]:
    """Check a call's own args as they will sit after the value it receives first (header results,
    parent result), and return them JSON-ready."""
    try:
        task.call_signature.bind(None, *args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"task {task.name!r} ({role}): {exc}") from None
    names = task._positional_names(len(args) + 1)[1:]
    var_kw = task._var_kw()
    return ([task._to_json(name, value) for name, value in zip(names, args, strict=True)],
            {key: task._to_json(key if key in task._kinds else var_kw, value) for key, value in kwargs.items()})


def _check_waiting(sig: Signature) -> None:
    """Check calls that are enqueued only later, by a worker, with one value prepended (chain steps,
    callbacks): a wrong signature then fails at apply time, not in the middle of a workflow."""
    if _is_workflow(sig):
        for part in _parts(sig):
            _check_waiting(part)
    else:
        task = registry.get(sig.task)
        if task is not None and sig.immutable:
            task.prepare_args(list(sig.args), dict(sig.kwargs), complete=True)
        elif task is not None:
            _check_after_results(task, list(sig.args), dict(sig.kwargs), role="after its parent's result")
    for callback in _as_list(sig.options.get("link")):
        _check_waiting(_sig(callback))


def _leaf_ids(sig: Signature) -> list[str]:
    if _is_workflow(sig):
        return [i for part in _parts(sig) for i in _leaf_ids(part)]
    return [sig.options["task_id"]] if "task_id" in sig.options else []


def leaf_ids_of(data: list[dict[str, Any]]) -> list[str]:
    """Task ids of every step in a serialized chain remainder (to fail them when a step fails)."""
    return [i for d in data for i in _leaf_ids(from_dict(d))]


def _failed_results(sig: Signature, exc: BaseException, parent: Any) -> Any:
    """Eager mode: FAILURE results, shaped like ``sig.freeze()``, for steps that will never run."""
    if isinstance(sig, _chain):
        result = parent
        for step in sig.tasks:
            result = _failed_results(step, exc, result)
        return result
    if isinstance(sig, group):
        group_id = _own_id(sig)
        return GroupResult(group_id, [_failed_results(t, exc, None) for t in sig.tasks])
    if isinstance(sig, _chord):
        header = _failed_results(sig.header, exc, parent)
        return _failed_results(sig._need_body(), exc, header)
    failed = EagerResult(_own_id(sig), parent)
    failed._finish(states.FAILURE, exc=exc)
    return failed


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _eta(opts: dict[str, Any], now: float) -> float | None:
    countdown = opts.get("countdown")
    if countdown is not None:  # countdown wins over eta, as in Celery
        return now + float(countdown) if float(countdown) > 0 else None
    eta = opts.get("eta")
    if eta is None:
        return None
    moment = datetime.fromisoformat(eta) if isinstance(eta, str) else eta
    if isinstance(moment, int | float):
        return float(moment)
    stamp = _aware(moment).timestamp()
    return stamp if stamp > now else None
