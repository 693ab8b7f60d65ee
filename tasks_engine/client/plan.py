"""Planning one call into a message: option resolution → :class:`Message` → size check → store write.

The canvas decides *which* calls a workflow makes and in what context (:class:`Context`); this
module turns each call into its message and collects everything one apply writes (:class:`Plan`),
which the store then writes in a single transaction.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from tasks_engine.core.codec import dumps
from tasks_engine.core.config import get_settings
from tasks_engine.core.ids import new_id, own_id
from tasks_engine.core.tracing import sending_span, tracing_active
from tasks_engine.model.arguments import nested_too_deep, too_deep_message
from tasks_engine.model.messages import CHORD_RESULTS, ChordRef, Message, compression_of, encode_plain, encode_sized
from tasks_engine.model.registry import (
    TaskDefinition,
    check_time_limits,
    current_request,
    get_task,
    registry,
    route_queue,
)
from tasks_engine.model.validation import check_count, check_name, check_queue, check_seconds, check_task_name
from tasks_engine.store import ChordRecord, Enqueue, Writes, get_broker

if TYPE_CHECKING:
    from tasks_engine.client.results import GroupResult


#: Call options accepted for Celery compatibility that deliberately change nothing (their type is still checked).
INERT_CALL_OPTIONS: dict[str, str] = {
    "exchange": "Redis has no exchanges here: a call is routed by queue (or routing_key, read as the queue name)",
    "shadow": "Celery's other name for logs and monitoring; the task's own name is logged and stored",
    "retry": "publishing always retries while Redis is unreachable, up to the enqueue_wait_seconds setting",
    "retry_policy": "see 'retry': the enqueue_wait_seconds setting bounds how long publishing waits",
}
_RETRY_POLICY_KEYS = frozenset({"max_retries", "interval_start", "interval_step", "interval_max", "retry_errors"})


def check_inert_options(task: str, opts: dict[str, Any]) -> None:
    """The serializer must be JSON (the only one, no pickle); the inert options must at least be well-formed."""
    serializer = opts.get("serializer")
    if serializer is not None and serializer not in ("json", "application/json"):
        raise ValueError(f"task {task!r}: serializer {serializer!r} is not available; messages are JSON only")
    for name in ("exchange", "shadow"):
        if opts.get(name) is not None and not isinstance(opts[name], str):
            raise TypeError(f"task {task!r}: {name} must be a str, got {type(opts[name]).__name__}")
    if "retry" in opts and not isinstance(opts["retry"], bool):
        raise TypeError(f"task {task!r}: retry must be True or False, got {opts['retry']!r}")
    policy = opts.get("retry_policy")
    if policy is not None and (not isinstance(policy, dict) or set(policy) - _RETRY_POLICY_KEYS):
        raise ValueError(f"task {task!r}: retry_policy must be a dict with keys among {sorted(_RETRY_POLICY_KEYS)}")


class Call(Protocol):
    """What planning needs of a signature (see :class:`tasks_engine.client.signature.Signature`)."""

    task: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    immutable: bool

    def copy(self) -> Call: ...
    def freeze(self, parent: Any = None) -> Any: ...
    def to_dict(self) -> dict[str, Any]: ...
    def check_waiting(self) -> None: ...


@dataclass
class Context:
    """What surrounds a step while planning: the rest of its chain, its chord slot."""

    chain_rest: list[Any] = field(default_factory=list)  # Signatures still to run after this step
    chord: ChordRef | None = None
    parent_id: str | None = None
    root_id: str | None = None
    group_id: str | None = None
    nx: bool = False  # skip ids already enqueued or finished (re-runs after a crash)
    partial: bool = False  # args still await a parent result; don't check arity yet
    require_registered: bool = False


@dataclass
class Plan:
    """Everything one apply writes, executed in a single Redis transaction."""

    enqueues: list[Enqueue] = field(default_factory=list)
    chords: list[ChordRecord] = field(default_factory=list)
    groups: list[GroupResult] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)

    def writes(self) -> Writes:
        return Writes(self.enqueues, self.chords, [(g.id, g.tree_json()) for g in self.groups])

    async def execute(self) -> None:
        await get_broker().write(self.writes())


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _moment(task: str, field: str, value: Any) -> float:
    """An absolute time (datetime, ISO string, epoch seconds) as epoch seconds; naive means UTC."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"task {task!r}: {field} {value!r} is not an ISO 8601 time") from None
    if isinstance(value, datetime):
        return aware(value).timestamp()
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    if not numeric or not math.isfinite(value) or not 0 <= value < 253_402_300_800:  # before year 10000
        raise ValueError(f"task {task!r}: {field} must be a datetime, an ISO time or epoch seconds, got {value!r}")
    return float(value)


def eta_of(task: str, opts: dict[str, Any], now: float) -> float | None:
    countdown = opts.get("countdown")
    if countdown is not None:  # countdown wins over eta, as in Celery
        seconds = check_seconds(task, "countdown", countdown)
        return now + seconds if seconds > 0 else None
    eta = opts.get("eta")
    if eta is None:
        return None
    stamp = _moment(task, "eta", eta)
    return stamp if stamp > now else None


def expires_of(task: str, value: Any, now: float) -> float | None:
    """``expires``: seconds from now (a number) or an absolute time."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return now + check_seconds(task, "expires", value)
    return _moment(task, "expires", value)


def _arguments(call: Call, prefix: list[Any], ctx: Context) -> tuple[list[Any], dict[str, Any]]:
    task = registry.get(call.task)
    real_prefix = [] if call.immutable else list(prefix)
    args, kwargs = list(call.args), dict(call.kwargs)
    if task is None:
        args = [*real_prefix, *args]
        try:
            dumps([args, kwargs])
        except TypeError:
            named = [*((str(i), a) for i, a in enumerate(args)), *kwargs.items()]
            deep = next((name for name, value in named if nested_too_deep(value)), None)
            if deep is not None:
                raise TypeError(too_deep_message(call.task, deep)) from None
            raise TypeError(
                f"task {call.task!r}: arguments are not JSON-serializable; pass IDs or plain data"
            ) from None
        return args, kwargs
    if real_prefix and real_prefix[0] == CHORD_RESULTS:
        args, kwargs = task.arguments.prepare_after_value(args, kwargs, "chord body")
        return [CHORD_RESULTS, *args], kwargs
    return task.prepare_args([*real_prefix, *args], kwargs, complete=not ctx.partial)


@dataclass(frozen=True)
class CallOptions:
    """A call's options as its message carries them, each checked."""

    queue: str
    priority: int
    retries: int
    eta: float | None
    expires: float | None
    soft_time_limit: Any
    time_limit: Any
    headers: dict[str, Any]
    compression: Any


def call_options(call: Call, now: float) -> CallOptions:
    """Resolve and check ``call``'s options against its task and the settings (errors name the task and
    the option). The same checks for a call sent now and for one a worker sends later (a chain's later
    step, a callback): a bad option fails the whole workflow at the call, before anything is written."""
    check_task_name(call.task)
    opts = call.options
    if opts.get("task_id") is not None:
        check_name(call.task, "task_id", opts["task_id"])
    task = registry.get(call.task)
    eta = eta_of(call.task, opts, now)
    expires = expires_of(call.task, opts.get("expires", task.options.expires if task is not None else None), now)
    priority = opts.get("priority")
    if priority is None:
        own = task.options.priority if task is not None else None
        priority = own if own is not None else get_settings().default_priority
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9:
        raise ValueError(f"task {call.task!r}: priority must be an int 0-9 (0 = highest), got {priority!r}")
    soft, hard = opts.get("soft_time_limit"), opts.get("time_limit")
    if soft is not None or hard is not None:
        try:
            check_time_limits(
                soft if soft is not None else (task.soft_time_limit if task else None),
                hard if hard is not None else (task.time_limit if task else None),
            )
        except ValueError as exc:
            raise ValueError(f"task {call.task!r}: {exc}") from None
    queue = check_queue(call.task, route_queue(call.task, opts.get("queue") or opts.get("routing_key")))
    retries = check_count(call.task, "retries", opts.get("retries", 0))
    headers = opts.get("headers") or {}
    if not isinstance(headers, dict):
        raise TypeError(f"task {call.task!r}: headers must be a dict, got {type(headers).__name__}")
    check_inert_options(call.task, opts)
    # The call's compression, else the task's (as Celery: a false call option falls back to the task's).
    compression = compression_of(call.task, opts.get("compression") or (task.options.compression if task else None))
    return CallOptions(queue, priority, retries, eta, expires, soft, hard, dict(headers), compression)


def check_call_options(call: Call) -> None:
    """:func:`call_options` for a call a worker sends later: only the checks."""
    call_options(call, datetime.now(UTC).timestamp())


def check_errback(errback: Any) -> None:
    """An errback is sent by a worker when its call fails, with the failure prepended (so its own
    arguments are not bound here): its options, its parts (a workflow) and callbacks are checked now."""
    parts = errback.parts()
    if not parts:
        check_call_options(errback)
    for inner in (*parts, *as_list(errback.options.get("link")), *as_list(errback.options.get("link_error"))):
        check_errback(inner)


def build_enqueue(call: Call, prefix: list[Any], ctx: Context) -> Enqueue:
    """One call as one message: options resolved against the task and the settings, arguments checked."""
    check_task_name(call.task)
    settings = get_settings()
    opts = call.options
    task_id = own_id(opts)
    task = registry.get(call.task)
    args, kwargs = _arguments(call, prefix, ctx)
    now = datetime.now(UTC).timestamp()
    check_name(call.task, "task_id", task_id)
    sender = current_request.get()  # a task sending another: Celery's parent/child link
    if sender is not None and not sender.called_directly and ctx.parent_id is None and sender.id:
        sender.children.append(task_id)
        ctx = replace(ctx, parent_id=sender.id, root_id=ctx.root_id or sender.root_id or sender.id)
    resolved = call_options(call, now)
    queue, priority, eta = resolved.queue, resolved.priority, resolved.eta
    # Callbacks get their ids now, so a re-delivered completion plans the very same callback (nx dedupes it).
    links = []
    for callback in as_list(opts.get("link")):
        frozen = callback.copy()
        if not ctx.nx:
            frozen.check_waiting()
        frozen.freeze()
        links.append(frozen.to_dict())
    if not ctx.nx:
        for errback in as_list(opts.get("link_error")):
            check_errback(errback)
    errbacks = [s.to_dict() for s in as_list(opts.get("link_error"))]
    headers = resolved.headers
    with sending_span(call.task, task_id, queue, headers):  # its trace context goes into the headers
        message = Message(
            id=task_id,
            task=call.task,
            args=args,
            kwargs=kwargs,
            queue=queue,
            priority=priority,
            retries=resolved.retries,
            eta=eta,
            expires=resolved.expires,
            time_limit=resolved.time_limit,
            soft_time_limit=resolved.soft_time_limit,
            ignore_result=opts.get("ignore_result"),
            parent_id=opts.get("parent_id", ctx.parent_id),
            root_id=opts.get("root_id", ctx.root_id or task_id),
            group_id=opts.get("group_id", ctx.group_id),
            links=links,
            link_errors=errbacks,
            chain=[s.to_dict() for s in ctx.chain_rest],
            chord=ctx.chord,
            headers=headers,
            compression=resolved.compression,
        )
    raw, size = encode_sized(message)
    # Compressed or not, the worker holds the whole message: its size before compression counts too.
    if max(len(raw), size) > settings.max_payload_bytes:
        raise ValueError(
            f"task {call.task!r}: message is {max(len(raw), size)} bytes, over max_payload_bytes="
            f"{settings.max_payload_bytes}; pass IDs, not data"
        )
    if task is None and ctx.require_registered:
        get_task(call.task)
    return Enqueue(task_id, raw, queue, priority, int(eta * 1000) if eta else 0, nx=ctx.nx)


def build_plain(task: TaskDefinition, args: Iterable[Any], kwargs: dict[str, Any]) -> Enqueue | None:
    """``build_enqueue`` for the commonest call, ``task.delay(...)`` from outside a task: no option, and
    nothing of the task's own that its message must carry (expiry, compression, a trace context). The
    arguments get the same checks; the message is the same bytes, written without the model round trip
    (``encode_plain``), so a trickle of single sends starts sooner. None: build it the general way
    (which also gives the precise error for a value the short path can't write)."""
    opts = task.options
    if opts.expires is not None or opts.compression is not None or current_request.get() is not None:
        return None
    if tracing_active():
        return None
    values, named = task.prepare_args(list(args), kwargs, complete=True)
    settings = get_settings()
    queue = check_queue(task.name, route_queue(task.name, None))
    priority = opts.priority if opts.priority is not None else settings.default_priority
    task_id = new_id()
    raw = encode_plain(task_id, check_task_name(task.name), queue, priority, values, named)
    if raw is None or len(raw) > settings.max_payload_bytes:
        return None
    return Enqueue(task_id, raw, queue, priority, 0)


def chain_ids(calls: Iterable[Any]) -> list[str]:
    """Task ids of every step inside ``calls`` (Signatures), for failing the steps that will never run."""
    return [i for c in calls for i in c.leaf_ids()]
