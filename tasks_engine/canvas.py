"""Signatures and workflows: chain, group, chord, links — planned into atomic Redis writes.

A workflow never lives in a worker's memory. Applying one *plans* it: every step gets its id up
front (``freeze``), the first messages are enqueued, each message carries the steps still to run
(``chain``) and where its final result goes (``chord``), and a chord's body is stored in Redis
with a placeholder for the header results. When a step finishes, the worker enqueues what
follows in the same transaction that stores the result, so a crash between steps loses nothing;
chord parts are counted by a Lua script that dedupes by task id and dispatches the body exactly
once. The same plan runs in-process for ``apply()``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from tasks_engine.broker import CHORD_PLACEHOLDER, Enqueue, get_broker
from tasks_engine.config import get_settings
from tasks_engine.exceptions import ChordError
from tasks_engine.messages import ChordRef, Message, dumps, encode
from tasks_engine.results import AsyncResult, EagerResult, GroupResult
from tasks_engine.task import registry, route_queue

CHORD_RESULTS = CHORD_PLACEHOLDER.strip('"')
CALL_OPTIONS = frozenset({
    "countdown", "eta", "expires", "queue", "routing_key", "priority", "task_id", "link", "link_error",
    "ignore_result", "time_limit", "soft_time_limit", "headers", "parent_id", "root_id", "group_id",
    "retries", "immutable", "serializer", "compression", "exchange", "shadow", "retry", "retry_policy",
})


def new_id() -> str:
    return str(uuid.uuid4())


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
    def clone(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None, **options: Any) -> Signature:
        copy = from_dict(self.to_dict())
        copy.options.pop("task_id", None)
        if args or kwargs:
            copy = copy._merged(tuple(args or ()), kwargs or {})
        copy.options.update(options)
        return copy

    def _merged(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Signature:
        if self.immutable:
            return self
        out = from_dict(self.to_dict())
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
        self.options.setdefault("link", []).append(callback)
        return callback

    def link_error(self, errback: Signature) -> Signature:
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
        task_id = self.options.setdefault("task_id", new_id())
        ignore = bool(self.options.get("ignore_result", False))
        task = registry.get(self.task)
        if task is not None and task.options.ignore_result and "ignore_result" not in self.options:
            ignore = True
        return AsyncResult(task_id, parent=parent, ignore_result=ignore)

    # -- running --
    async def delay(self, *args: Any, **kwargs: Any) -> Any:
        return await self.apply_async(args, kwargs)

    async def apply_async(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None, **options: Any) -> Any:
        """Send the workflow; returns its result handle once every first message is in Redis."""
        sig = self._merged(tuple(args or ()), kwargs or {}) if (args or kwargs) else self
        if options:
            sig = from_dict(sig.to_dict()).set(**options)
        result = sig.freeze()
        plan = Plan()
        sig._plan([], Context(), plan)
        await plan.execute()
        return result

    async def apply(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None, **options: Any) -> Any:
        """Run in this process now (eager), retries without sleeping; returns Eager/Group results."""
        sig = self._merged(tuple(args or ()), kwargs or {}) if (args or kwargs) else self
        if options:
            sig = from_dict(sig.to_dict()).set(**options)
        sig.freeze()
        return await sig._eager([], None)

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from tasks_engine.task import get_task

        merged = self._merged(args, kwargs)
        return await get_task(self.task)(*merged.args, **merged.kwargs)

    # -- planning (one simple task) --
    def _plan(self, prefix: list[Any], ctx: Context, plan: Plan) -> None:
        plan.enqueues.append(self.to_enqueue(prefix, ctx))
        plan.ids.append(self.options["task_id"])

    def to_enqueue(self, prefix: list[Any], ctx: Context) -> Enqueue:
        from tasks_engine.task import get_task

        settings = get_settings()
        opts = self.options
        task_id = opts.setdefault("task_id", new_id())
        task = registry.get(self.task)
        real_prefix = [] if self.immutable else list(prefix)
        args, kwargs = list(self.args), dict(self.kwargs)
        if task is not None:
            placeholder = bool(real_prefix) and real_prefix[0] == CHORD_RESULTS
            lead = [] if placeholder else real_prefix
            checked, kwargs = task.prepare_args([*lead, *args], kwargs, complete=not placeholder and not ctx.partial)
            args = [*real_prefix[:1], *checked] if placeholder else checked
        else:
            args = [*real_prefix, *args]
            try:
                dumps([args, kwargs])
            except TypeError:
                raise TypeError(f"task {self.task!r}: arguments are not JSON-serializable; pass IDs or plain data") from None
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
            priority = task.options.priority if task is not None and task.options.priority is not None else settings.default_priority
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
        links = [_sig_dict(s) for s in _as_list(opts.get("link"))]
        errbacks = [_sig_dict(s) for s in _as_list(opts.get("link_error"))] + ctx.link_errors
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

    def _errback_call(self, failed_id: str, exc: BaseException | None = None, traceback: str | None = None) -> Signature:
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
            flat.extend(t.tasks if isinstance(t, _chain) else [t])
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

    def __or__(self, other: Signature) -> Signature:
        return chain(*self.tasks, other)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "tasks": [t.to_dict() for t in self.tasks]}

    def freeze(self, parent: Any = None) -> Any:
        result = parent
        for step in self.tasks:
            result = step.freeze(result)
        return result

    def _merged(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Signature:
        if not self.tasks:
            return self
        return chain(self.tasks[0]._merged(args, kwargs), *self.tasks[1:])

    def _plan(self, prefix: list[Any], ctx: Context, plan: Plan) -> None:
        if not self.tasks:
            return
        errbacks = [_sig_dict(s) for s in _as_list(self.options.get("link_error"))]
        rest = [*self.tasks[1:], *ctx.chain_rest]
        self.tasks[0]._plan(prefix, replace(ctx, chain_rest=rest, link_errors=ctx.link_errors + errbacks), plan)

    async def _eager(self, prefix: list[Any], parent: Any) -> Any:
        result: Any = None
        lead = prefix
        for index, step in enumerate(self.tasks):
            result = await step._eager(lead, result)
            value = await result.get(propagate=False)
            if isinstance(value, BaseException):
                for later in self.tasks[index + 1 :]:
                    for leaf in _leaf_ids(later):
                        failed = EagerResult(leaf)
                        failed._finish("FAILURE", exc=value)
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
        self.tasks: list[Signature] = list(items)

    def __repr__(self) -> str:
        return f"group({', '.join(repr(t) for t in self.tasks)})"

    def __or__(self, other: Signature) -> Signature:
        return chord(self, other) if isinstance(other, Signature) else NotImplemented

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "tasks": [t.to_dict() for t in self.tasks]}

    def freeze(self, parent: Any = None) -> GroupResult:
        group_id = self.options.setdefault("task_id", new_id())
        return GroupResult(group_id, [t.freeze() for t in self.tasks])

    def _merged(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Signature:
        return group(*(t._merged(args, kwargs) for t in self.tasks), **self.options)

    async def apply_async(self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None, **options: Any) -> Any:
        result = await super().apply_async(args, kwargs, **options)
        return result

    def _plan(self, prefix: list[Any], ctx: Context, plan: Plan) -> None:
        if ctx.chain_rest:
            nxt, rest = ctx.chain_rest[0], ctx.chain_rest[1:]
            chord(self, nxt)._plan(prefix, replace(ctx, chain_rest=rest), plan)
            return
        if ctx.chord is not None:
            raise ValueError("a group as the last step of a chord header member is not supported; flatten it into the header")
        result = self.freeze()
        plan.groups.append(result)
        for t in self.tasks:
            t._plan(prefix, replace(ctx, group_id=result.id), plan)

    async def _eager(self, prefix: list[Any], parent: Any) -> GroupResult:
        group_id = self.options.setdefault("task_id", new_id())
        return GroupResult(group_id, [await t._eager(prefix, None) for t in self.tasks])


class _chord(Signature):  # noqa: N801 - Celery's spelling
    subtask_type = "chord"

    def __init__(self, header: Any, body: Signature | None = None, **options: Any) -> None:
        super().__init__("celery.chord", (), {}, options)
        self.header: group = header if isinstance(header, group) else group(header)
        self.body = body

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.body!r})"

    async def __call__(self, body: Signature | None = None, **options: Any) -> Any:  # type: ignore[override]
        """``await chord(header)(body)``: apply at once, return the body's result."""
        if body is not None:
            self.body = body
        return await self.apply_async(**options)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "header": self.header.to_dict(), "body": self.body.to_dict() if self.body else None}

    def _need_body(self) -> Signature:
        if self.body is None:
            raise ValueError("chord has no body: use chord(header)(body) or chord(header, body)")
        return self.body

    def freeze(self, parent: Any = None) -> Any:
        header = self.header.freeze()
        return self._need_body().freeze(header)

    def _merged(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Signature:
        return _chord(self.header._merged(args, kwargs), self.body, **self.options)

    def _plan(self, prefix: list[Any], ctx: Context, plan: Plan) -> None:
        body = self._need_body()
        body_result = body.freeze(self.header.freeze())
        body_ctx = replace(ctx, group_id=None)
        if not self.header.tasks:
            body._plan([[]], body_ctx, plan)
            return
        chord_id = body_result.id
        sub = Plan()
        body._plan([CHORD_RESULTS], replace(body_ctx, nx=True, partial=True), sub)
        plan.groups.extend(sub.groups)
        plan.chords.extend(sub.chords)
        errback_ctx = Context(nx=True, parent_id=chord_id)
        errbacks = [
            from_dict(d)._errback_call(chord_id).to_enqueue([], errback_ctx)
            for d in [*(_sig_dict(s) for s in _as_list(body.options.get("link_error"))), *ctx.link_errors]
        ]
        plan.chords.append(ChordRecord(chord_id, len(self.header.tasks), sub.enqueues, errbacks))
        header_group = self.header.options.setdefault("task_id", new_id())
        for index, t in enumerate(self.header.tasks):
            t._plan(prefix, replace(ctx, chain_rest=[], chord=ChordRef(id=chord_id, index=index), group_id=header_group), plan)
        plan.groups.append(self.header.freeze())

    async def _eager(self, prefix: list[Any], parent: Any) -> Any:
        body = self._need_body()
        header = await self.header._eager(prefix, None)
        values = await header.get(propagate=False)
        for leaf, value in zip(header.results, values, strict=True):
            if isinstance(value, BaseException):
                failed = EagerResult(body.options.setdefault("task_id", new_id()))
                failed._finish("FAILURE", exc=ChordError(f"Dependency {leaf.id} raised {value!r}"))
                return failed
        return await body._eager([values], header)



def chord(header: Any, body: Signature | None = None, **options: Any) -> _chord:
    """``await chord(header)(body)`` or ``await chord(header, body).delay()``: body gets header results in order."""
    return _chord(header, body, **options)


def chunks(task: Any, items: Iterable[Any], n: int) -> group:
    """``t.chunks(items, n)``: a group of ``ceil(len/n)`` calls, each a ``starmap`` over its chunk."""
    if n < 1:
        raise ValueError("chunk size must be >= 1")
    data = list(items)
    from tasks_engine.task import registry as reg

    starmap_name = "tasks_engine.starmap"
    if starmap_name not in reg:
        raise RuntimeError("tasks_engine.builtins is not imported")
    return group(
        Signature(starmap_name, (task.name, [list(x) if isinstance(x, list | tuple) else [x] for x in data[i : i + n]]))
        for i in range(0, len(data), n)
    )


def signature(name: Any, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None, **options: Any) -> Signature:
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
    if kind == "chain":
        return _chain(*(from_dict(t) for t in data["tasks"]), **options)
    if kind == "group":
        return group(*(from_dict(t) for t in data["tasks"]), **options)
    if kind == "chord":
        return _chord(from_dict(data["header"]), from_dict(data["body"]) if data.get("body") else None, **options)
    for key in ("link", "link_error"):
        if key in options:
            options[key] = [from_dict(s) if isinstance(s, dict) else s for s in options[key]]
    return Signature(data["task"], data.get("args"), data.get("kwargs"), options, immutable=bool(data.get("immutable")))


@dataclass
class Context:
    """What surrounds a step while planning: the rest of its chain, its chord slot, its errbacks."""

    chain_rest: list[Signature] = field(default_factory=list)
    chord: ChordRef | None = None
    parent_id: str | None = None
    root_id: str | None = None
    group_id: str | None = None
    link_errors: list[dict[str, Any]] = field(default_factory=list)
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
            pipe.hset(key, mapping={
                "total": ch.total, "body_id": ch.id, "count": 0,
                "body": dumps([_write(e) for e in ch.body]), "on_error": dumps([_write(e) for e in ch.on_error]),
            })
            pipe.expire(key, max(ttl, 7 * 86_400))
        for g in self.groups:
            pipe.set(broker.key("group", g.id), dumps(g._tree()), ex=ttl)
        if self.enqueues:
            await broker.enqueue_script(args=broker.enqueue_args(self.enqueues), client=pipe)

    async def execute(self) -> None:
        from tasks_engine.control import with_redis_retry

        broker = get_broker()

        async def write() -> None:
            async with broker.redis.pipeline(transaction=True) as pipe:
                await self.add_to(pipe)
                await pipe.execute()

        await with_redis_retry(write, "enqueue")


def _write(e: Enqueue) -> list[Any]:
    return [e.id, e.raw.decode(), e.queue, str(e.priority), str(e.eta_ms), "1"]


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _sig_dict(value: Any) -> dict[str, Any]:
    return value.to_dict() if isinstance(value, Signature) else dict(value)


def _leaf_ids(sig: Signature) -> list[str]:
    if isinstance(sig, _chain | group):
        return [i for t in sig.tasks for i in _leaf_ids(t)]
    if isinstance(sig, _chord):
        return [*_leaf_ids(sig.header), *(_leaf_ids(sig.body) if sig.body else [])]
    return [sig.options["task_id"]] if "task_id" in sig.options else []


def leaf_ids_of(data: list[dict[str, Any]]) -> list[str]:
    """Task ids of every step in a serialized chain remainder (to fail them when a step fails)."""
    return [i for d in data for i in _leaf_ids(from_dict(d))]


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
