"""Workflows: chain, group, chord (and chunks) — planned into atomic Redis writes.

A workflow never lives in a worker's memory. Applying one *plans* it: every step gets its id up
front (``freeze``), the first messages are enqueued, each message carries the steps still to run
(``chain``) and where its final result goes (``chord``), and a chord's body is stored in Redis
with a placeholder for the header results. When a step finishes, the worker enqueues what
follows in the same transaction that stores the result, so a crash between steps loses nothing;
chord parts are counted by a Lua script that dedupes by task id and dispatches the body exactly
once. The same plan runs in-process for ``apply()``.

Options given to a whole workflow are pushed down to the calls that carry them (as Celery does):
a chain's ``link_error`` goes on every step and its ``link`` on the last, a group's ``link_error``
on every member and its ``link`` (immutable) on its first member only, a chord's on its body;
other call options go to a chain's first step, a group's members, a chord's header. Each message
thus carries only its own callbacks, and nothing leaks from one step to the next.

Shapes follow Celery's: nested groups are flattened (into a chord header too), a group followed by
a step in a chain becomes a chord with that step as body (``chain(g1, g2, t)`` is
``chord(g1, chord(g2, t))``), empty groups between steps are dropped, a group of one is its member.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from tasks_engine.client.plan import Context, Plan, chain_ids
from tasks_engine.client.results import EagerResult, GroupResult
from tasks_engine.client.signature import (
    COMBINE,
    KINDS,
    Signature,
    as_signature,
    copy_options,
    fresh,
    from_dict,
    pop_workflow_options,
)
from tasks_engine.core.ids import derived_id, own_id
from tasks_engine.exceptions import ChordError
from tasks_engine.model import states
from tasks_engine.model.messages import CHORD_RESULTS, ChordRef
from tasks_engine.model.registry import COLLECT_TASK, STARMAP_TASK, UNWIND_TASK, registry
from tasks_engine.store import ChordRecord


class _chain(Signature):  # noqa: N801 - Celery's spelling
    subtask_type = "chain"

    def __init__(self, *tasks: Any, **options: Any) -> None:
        flat: list[Signature] = []
        items = tasks[0] if len(tasks) == 1 and not isinstance(tasks[0], Signature) else tasks
        for item in items:
            t = as_signature(item)
            if isinstance(t, _chain | group) and t.options:  # its own link/link_error/options go inside first
                t = t.copy()
                t.push_down()
            if isinstance(t, _chain):
                flat.extend(t.tasks)
            elif isinstance(t, group) and len(t.tasks) == 1:
                flat.append(t.tasks[0])  # a group of one inside a chain is unrolled (Celery's maybe_unroll_group)
            else:
                flat.append(t)
        # Celery's prepare_steps, from the last step back: an empty group between steps is dropped, and a
        # group followed by a step becomes a chord whose body is that step (itself maybe such a chord), so
        # chain(g1, g2, t) == chord(g1, chord(g2, t)).
        steps: list[Signature] = []
        for t in reversed(flat):
            if isinstance(t, group) and not t.tasks and len(flat) > 1:
                continue
            steps.append(chord(t, steps.pop()) if isinstance(t, group) and steps else t)
        super().__init__("celery.chain", (), {}, options)
        self.tasks: list[Signature] = steps[::-1]
        self._result_id: str | None = None

    @property
    def id(self) -> str | None:
        """Celery's ``chain.id``: set by ``freeze`` and by an apply — the last step's id."""
        return self.options.get("task_id") or self._result_id

    def remember(self, result: Any) -> None:
        self._result_id = result.id if result is not None else None

    def __repr__(self) -> str:
        return " | ".join(repr(t) for t in self.tasks)

    def copy(self) -> Signature:
        return _chain(*(t.copy() for t in self.tasks), **copy_options(self))

    def __or__(self, other: Signature) -> Signature:
        return chain(self, other) if isinstance(other, Signature) else NotImplemented

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "tasks": [t.to_dict() for t in self.tasks]}

    def parts(self) -> list[Signature]:
        return list(self.tasks)

    def leaf_ids(self) -> list[str]:
        return chain_ids(self.tasks)

    def assign_result_id(self, task_id: str) -> None:
        if self.tasks:
            self.tasks[-1].assign_result_id(task_id)

    def errbacks(self) -> list[dict[str, Any]]:
        return super().errbacks() + (self.tasks[0].errbacks() if self.tasks else [])

    def check_waiting(self) -> None:
        for part in self.tasks:
            part.check_waiting()

    def freeze_under(self, parent: Any) -> Any:
        own = self.options.pop("task_id", None)
        if own and self.tasks:  # a chain's id is its last step's
            self.tasks[-1].assign_result_id(own)
        result = parent
        for step in self.tasks:
            result = step.freeze_under(result)
        self.remember(result if self.tasks else None)
        return result

    def push_down(self) -> None:
        links, errbacks, call = pop_workflow_options(self)
        if not self.tasks:
            return
        for step in self.tasks:
            for errback in errbacks:
                step.link_error(errback.copy())
        for callback in links:
            self.tasks[-1].link(callback.copy())
        if call:
            self.tasks[0].set(**call)

    def merged(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Signature:
        if not self.tasks:
            return self
        return chain(self.tasks[0].merged(args, kwargs), *(t.copy() for t in self.tasks[1:]), **copy_options(self))

    def plan_into(self, prefix: list[Any], ctx: Context, plan: Plan) -> None:
        self.freeze_under(None)  # no-op when already frozen; gives ids to unfrozen callback chains
        self.push_down()
        if not self.tasks:
            return
        if not ctx.nx:  # applied by a client (not re-planned by a worker): check the later steps now
            for step in self.tasks[1:]:
                step.check_waiting()
        rest = [*self.tasks[1:], *ctx.chain_rest]
        self.tasks[0].plan_into(prefix, replace(ctx, chain_rest=rest), plan)

    async def run_eager(self, prefix: list[Any], parent: Any) -> Any:
        self.push_down()
        result: Any = parent
        lead = prefix
        for index, step in enumerate(self.tasks):
            result = await step.run_eager(lead, result)
            value = await result.get(propagate=False)
            if isinstance(value, BaseException):
                cause = result.cause if isinstance(result, EagerResult) else None
                for later in self.tasks[index + 1 :]:
                    result = failed_results(later, value, result, cause)
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
        self.tasks: list[Signature] = []
        for item in items:
            t = as_signature(item)
            if isinstance(t, group):  # nested groups are flattened (Celery unrolls them): group(a, group(b, c))
                if t.options:
                    t = t.copy()
                    t.push_down()
                self.tasks.extend(t.tasks)
            else:
                self.tasks.append(t)

    def link(self, callback: Signature) -> Any:
        """As Celery's ``group.link``: linked to the first member only, as an immutable clone, so it runs
        once, when that member succeeds, with nothing prepended (use a chord to wait for every member)."""
        if not self.tasks:
            raise ValueError("cannot link a callback to an empty group; use a chord")
        return self.tasks[0].link(as_signature(callback, "group link").clone(immutable=True))

    def link_error(self, errback: Signature) -> Any:
        """As Celery's ``group.link_error``: a copy on every member, so it runs once per failing member."""
        errback = as_signature(errback, "group link_error")
        return tuple(member.link_error(errback.clone()) for member in self.tasks)

    async def apply_async(
        self, args: Iterable[Any] | None = None, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Any:
        if options.get("link") is not None:  # Celery's refusals
            raise TypeError("Cannot add link to group: use a chord")
        if options.get("link_error") is not None:
            raise TypeError("Cannot add link to group: do that on individual tasks")
        return await super().apply_async(args, kwargs, **options)

    def __repr__(self) -> str:
        return f"group({', '.join(repr(t) for t in self.tasks)})"

    def copy(self) -> group:
        return group([t.copy() for t in self.tasks], **copy_options(self))

    def __or__(self, other: Signature) -> Signature:
        """``group | x`` is a chord with body ``x`` (a task, a chain or another group)."""
        return chord(self, other) if isinstance(other, Signature) else NotImplemented

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "tasks": [t.to_dict() for t in self.tasks]}

    def parts(self) -> list[Signature]:
        return list(self.tasks)

    def leaf_ids(self) -> list[str]:
        return chain_ids(self.tasks)

    def errbacks(self) -> list[dict[str, Any]]:
        out = super().errbacks()
        for member in self.tasks:
            out.extend(d for d in member.errbacks() if d not in out)
        return out

    def check_waiting(self) -> None:
        for part in self.tasks:
            part.check_waiting()

    def freeze_under(self, parent: Any) -> GroupResult:
        return GroupResult(own_id(self.options), [t.freeze_under(None) for t in self.tasks], parent=parent)

    def push_down(self) -> None:
        links, errbacks, call = pop_workflow_options(self)
        for callback in links if self.tasks else []:  # a link option (set, or from a chain or chord): group.link
            self.link(fresh(callback))
        for member in self.tasks:
            for errback in errbacks:
                member.link_error(errback.copy())
            if call:
                member.set(**call)

    def merged(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Signature:
        return group([t.merged(args, kwargs) for t in self.tasks], **copy_options(self))

    def plan_into(self, prefix: list[Any], ctx: Context, plan: Plan) -> None:
        self.push_down()
        if ctx.chain_rest:
            nxt, rest = ctx.chain_rest[0], ctx.chain_rest[1:]
            chord(self, nxt).plan_into(prefix, replace(ctx, chain_rest=rest), plan)
            return
        if ctx.chord is not None:
            # A group whose results feed a chord slot (header member, or a header chain ending in a group):
            # it becomes a chord of its own whose body hands the list of results on to that slot.
            collect = Signature(COLLECT_TASK, options={"task_id": derived_id(own_id(self.options), "collect")})
            chord(self, collect).plan_into(prefix, ctx, plan)
            return
        result = self.freeze_under(None)
        plan.groups.append(result)
        for t in self.tasks:
            t.plan_into(prefix, replace(ctx, group_id=result.id), plan)

    async def run_eager(self, prefix: list[Any], parent: Any) -> GroupResult:
        self.push_down()
        return GroupResult(own_id(self.options), [await t.run_eager(prefix, None) for t in self.tasks])


class _chord(Signature):  # noqa: N801 - Celery's spelling
    subtask_type = "chord"

    def __init__(self, header: Any, body: Signature | None = None, **options: Any) -> None:
        super().__init__("celery.chord", (), {}, options)
        self.header: group = header if isinstance(header, group) else group(header)
        self.body = as_signature(body) if body is not None else None

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.body!r})"

    def copy(self) -> Signature:
        return _chord(self.header.copy(), self.body.copy() if self.body is not None else None, **copy_options(self))

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

    def parts(self) -> list[Signature]:
        return [self.header, *([self.body] if self.body is not None else [])]

    def leaf_ids(self) -> list[str]:
        return chain_ids(self.parts())

    def assign_result_id(self, task_id: str) -> None:
        if self.body is not None:
            self.body.assign_result_id(task_id)

    def errbacks(self) -> list[dict[str, Any]]:
        return super().errbacks() + (self.body.errbacks() if self.body is not None else [])

    def check_waiting(self) -> None:
        for part in self.parts():
            part.check_waiting()

    def _need_body(self) -> Signature:
        if self.body is None:
            raise ValueError("chord has no body: use chord(header)(body) or chord(header, body)")
        return self.body

    def freeze_under(self, parent: Any) -> Any:
        body = self._need_body()
        own = self.options.pop("task_id", None)
        if own:  # a chord's id is its body's
            body.assign_result_id(own)
        header = self.header.freeze_under(parent)
        return body.freeze_under(header)

    def push_down(self) -> None:
        links, errbacks, call = pop_workflow_options(self)
        body = self._need_body()
        for callback in links:
            body.link(callback)
        for errback in errbacks:
            body.link_error(errback)
        if call:
            self.header.set(**call)
        self.header.push_down()

    def merged(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Signature:
        body = self.body.copy() if self.body is not None else None
        return _chord(self.header.merged(args, kwargs), body, **copy_options(self))

    def plan_into(self, prefix: list[Any], ctx: Context, plan: Plan) -> None:
        body = self._need_body()
        header_result = self.header.freeze_under(None)
        body_result = body.freeze_under(header_result)
        self.push_down()
        body_ctx = replace(ctx, group_id=None)
        if not self.header.tasks:
            body.plan_into([[]], body_ctx, plan)
            return
        # The chord is keyed by its body's result id, which a header failure marks FAILURE — unless the body
        # ends in a chord of its own, which is keyed by that id already: then by an id of its own.
        chord_id = derived_id(header_result.id, "chord") if _ends_in_chord(body) else body_result.id
        sub = Plan()
        # As in Celery, the body is sent by a header task: it is its parent (here: the last one).
        body_ctx = replace(body_ctx, nx=True, partial=True, parent_id=header_result.leaves()[-1].id)
        body.plan_into([CHORD_RESULTS], body_ctx, sub)
        if not ctx.nx:  # sent by a client: the body's later steps too (its own plan above is nx)
            body.check_waiting()
        plan.groups.extend(sub.groups)
        plan.chords.extend(sub.chords)
        # If a header task fails, Lua marks the body FAILURE and enqueues this one job, which fails the steps
        # after the body, calls the body's errbacks and reports the failure to an enclosing chord.
        later = [i for i in body.leaf_ids() if i != chord_id] + chain_ids(ctx.chain_rest)
        outer = ctx.chord.model_dump() if ctx.chord is not None else None
        unwind = Signature(
            UNWIND_TASK, (chord_id, body.errbacks(), later, outer), options={"task_id": derived_id(chord_id, "unwind")}
        )
        on_error = unwind.to_enqueue([], Context(nx=True, parent_id=chord_id, root_id=ctx.root_id))
        plan.chords.append(ChordRecord(chord_id, len(self.header.tasks), sub.enqueues, [on_error]))
        for index, t in enumerate(self.header.tasks):
            member_ctx = Context(
                [],
                ChordRef(id=chord_id, index=index),
                ctx.parent_id,
                ctx.root_id,
                header_result.id,
                ctx.nx,
                ctx.partial,
                ctx.require_registered,
            )
            t.plan_into(prefix, member_ctx, plan)
        plan.groups.append(header_result)

    async def run_eager(self, prefix: list[Any], parent: Any) -> Any:
        body = self._need_body()
        self.push_down()
        header = await self.header.run_eager(prefix, None)
        for leaf in header.leaves():  # nested groups too
            value = await leaf.get(propagate=False)
            if isinstance(value, BaseException):
                error = ChordError(f"Dependency {leaf.id} raised {type(value).__name__}({str(value)!r})")
                failed = failed_results(body, error, header, value)  # get() raises the header task's error
                for errback in body.errbacks():
                    await from_dict(errback).errback_call(failed.id, error, "").run_eager([], failed)
                return failed
        return await body.run_eager([await header.get()], header)


def chord(header: Any, body: Signature | None = None, **options: Any) -> _chord:
    """``await chord(header)(body)`` or ``await chord(header, body).delay()``: body gets header results in order."""
    return _chord(header, body, **options)


def chunks(task: Any, items: Iterable[Any], n: int) -> group:
    """``t.chunks(items, n)``: a group of ``ceil(len/n)`` calls, each a ``starmap`` over its chunk."""
    if n < 1:
        raise ValueError("chunk size must be >= 1")
    data = list(items)
    if STARMAP_TASK not in registry:
        raise RuntimeError("tasks_engine.runtime.builtins is not imported")
    return group(
        Signature(STARMAP_TASK, (task.name, [list(x) if isinstance(x, list | tuple) else [x] for x in data[i : i + n]]))
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


def failed_results(sig: Signature, exc: BaseException, parent: Any, cause: BaseException | None = None) -> Any:
    """Eager mode: FAILURE results, shaped like ``sig.freeze()``, for steps that will never run
    (``cause``: the header task's error that ``get()`` raises instead of a ChordError ``exc``)."""
    if isinstance(sig, _chain):
        result = parent
        for step in sig.tasks:
            result = failed_results(step, exc, result, cause)
        return result
    if isinstance(sig, group):
        return GroupResult(own_id(sig.options), [failed_results(t, exc, None, cause) for t in sig.tasks])
    if isinstance(sig, _chord):
        header = failed_results(sig.header, exc, parent, cause)
        return failed_results(sig._need_body(), exc, header, cause)
    failed: EagerResult[Any] = EagerResult(own_id(sig.options), parent)
    failed.finish(states.FAILURE, exc=exc, cause=cause)
    return failed


def _ends_in_chord(sig: Signature) -> bool:
    """Whether ``sig``'s result is a chord body (a chord, or a chain ending in one): keyed by that id."""
    while isinstance(sig, _chain) and sig.tasks:
        sig = sig.tasks[-1]
    return isinstance(sig, _chord) and bool(sig.header.tasks)


def leaf_ids_of(data: list[dict[str, Any]]) -> list[str]:
    """Task ids of every step in a serialized chain remainder (to fail them when a step fails)."""
    return chain_ids(from_dict(d) for d in data)


KINDS["chain"] = lambda data, options: _chain(*(from_dict(t) for t in data["tasks"]), **options)
KINDS["group"] = lambda data, options: group([from_dict(t) for t in data["tasks"]], **options)
KINDS["chord"] = lambda data, options: _chord(
    from_dict(data["header"]), from_dict(data["body"]) if data.get("body") else None, **options
)
COMBINE["chain"] = chain

__all__ = ["Signature", "chain", "chord", "chunks", "failed_results", "group", "leaf_ids_of", "signature"]
