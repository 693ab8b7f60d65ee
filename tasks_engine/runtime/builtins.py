"""Tasks the engine itself needs: ``starmap`` (chunks), ``collect`` and ``chord_unwind`` (workflows)."""

from __future__ import annotations

from typing import Any

from tasks_engine.client.plan import Context, Plan
from tasks_engine.client.signature import from_dict
from tasks_engine.client.task import Task, shared_task
from tasks_engine.core.clock import now_iso
from tasks_engine.model import states
from tasks_engine.model.records import EXCEPTION_FIELDS, parse_record, rebuild_exception
from tasks_engine.model.registry import COLLECT_TASK, STARMAP_TASK, UNWIND_TASK, get_task
from tasks_engine.store import ChordPart, get_broker


@shared_task(name=STARMAP_TASK)
async def starmap(task_name: str, items: list[list[Any]]) -> list[Any]:
    """Call ``task_name`` once per argument list, in this worker, and return the results in order."""
    task = get_task(task_name)
    return [await task.call(*args) for args in items]


async def _collect(results: list[Any]) -> list[Any]:
    """The body of a group nested in a chord header: passes the group's results on as one value."""
    return results


async def _chord_unwind(
    body_id: str, errbacks: list[dict[str, Any]], later: list[str], outer: dict[str, Any] | None = None
) -> None:
    """After a chord header failed (the body is already FAILURE): fail what came after the body, call the
    body's errbacks with its ChordError, and report the failure to an enclosing chord — in one transaction."""
    broker = get_broker()
    record = parse_record(await broker.record(body_id))
    exc = rebuild_exception(record)
    traceback = record.get("traceback") or ""
    failure = {k: record[k] for k in EXCEPTION_FIELDS if k in record}
    plan = Plan()
    for data in errbacks:
        from_dict(data).errback_call(body_id, exc, traceback).plan_into([], Context(parent_id=body_id), plan)
    failed = [
        (later_id, {"state": states.FAILURE, **failure, "date_done": now_iso(), "parent_id": body_id})
        for later_id in later
    ]
    part = None
    if outer is not None:
        text = f"Dependency {body_id} raised {type(exc).__name__}({str(exc)!r})"
        part = ChordPart(outer["id"], body_id, int(outer["index"]), ok=False, error_text=text, traceback=traceback)
    await broker.write_failed_later(failed, plan.writes(), part)


collect: Task[Any, Any] = shared_task(name=COLLECT_TASK)(_collect)
chord_unwind: Task[Any, Any] = shared_task(name=UNWIND_TASK, ignore_result=True)(_chord_unwind)
