"""Operations on a running cluster: revoke, rate limits at runtime, queue and worker views, purge."""

from __future__ import annotations

import fnmatch
import time
from typing import Any

import structlog

from tasks_engine.client.results import revoke as revoke  # re-exported: control.revoke is the operation
from tasks_engine.client.signature import Signature
from tasks_engine.core.clock import ms_to_iso
from tasks_engine.core.codec import dumps, loads
from tasks_engine.core.config import get_settings
from tasks_engine.exceptions import MessageError
from tasks_engine.model import states
from tasks_engine.model.messages import decode
from tasks_engine.model.ratelimit import parse_rate_limit
from tasks_engine.model.records import parse_record
from tasks_engine.store import Enqueue, get_broker

log = structlog.get_logger("tasks_engine.control")


async def queued_messages(queues: list[str] | None = None) -> list[tuple[str, str, str]]:
    """(queue or 'delayed', task id, task name) of every waiting job."""
    names = queues if queues is not None else await known_queues()
    return await get_broker().queued_messages(names)


async def revoke_matching(pattern: str, queues: list[str] | None = None) -> int:
    """Drop every queued or deferred job whose task name matches a glob, e.g. ``report.*``."""
    ids = [tid for _, tid, name in await queued_messages(queues) if fnmatch.fnmatchcase(name, pattern)]
    return await revoke(ids, reason=f"revoked by pattern {pattern!r}") if ids else 0


async def set_rate_limit(task_name: str, rate: str | float | None, burst: int = 1) -> int:
    """Change a task's rate limit for the whole cluster, at once (Celery's ``control rate_limit``).

    ``rate`` uses the task option's grammar (``"0"`` = unlimited); None restores the declared limit.
    Running workers apply it on their next claim; jobs already parked under the old limit are put
    back and re-planned (the old reservations are dropped, so a change takes effect at once both
    ways). Returns how many parked jobs were released.
    """
    value = ""
    if rate is not None:
        try:
            parsed = parse_rate_limit(rate, burst)
        except ValueError as exc:
            raise ValueError(f"task {task_name!r}: {exc}") from None
        value = dumps(parsed.lua_value() if parsed else [0, 0]).decode()
    released = await get_broker().replan_rate_limit(task_name, value)
    log.info("rate limit changed", task=task_name, rate=rate, burst=burst, released=released)
    return released


async def known_queues() -> list[str]:
    names = await get_broker().queue_names()
    for worker in await workers():
        names.update(worker.get("queues", []))
    return sorted(names | {get_settings().default_queue})


async def workers() -> list[dict[str, Any]]:
    """Live workers (heartbeat within the lease): id, queues, running jobs, pid, host."""
    return await get_broker().workers()


async def queue_stats() -> list[dict[str, Any]]:
    """Per queue: ready jobs, consumers."""
    broker = get_broker()
    live = await workers()
    stats = []
    for queue in await known_queues():
        consumers = [w["id"] for w in live if queue in w.get("queues", [])]
        stats.append({"queue": queue, "ready": await broker.ready_count(queue), "consumers": consumers})
    return stats


async def totals() -> dict[str, int]:
    """Deferred, running and dead-lettered job counts."""
    return await get_broker().totals()


async def purge(queue: str) -> int:
    """Delete every ready job of a queue (not deferred or running ones), atomically."""
    return await get_broker().purge(queue)


# ---------------------------------------------------------------- inspection (``tasks-engine inspect``)
def describe(raw: bytes | None, width: int = 120) -> dict[str, Any]:
    """What a person wants to see of a message: task, arguments (shortened), retries, eta, expires."""
    if not raw:
        return {"task": None, "args": "", "retries": None, "eta": None, "expires": None}
    try:
        data = decode(raw).model_dump()
    except MessageError:  # shown as far as it can be read
        try:
            data = loads(raw[raw.find(b"{") :])
        except ValueError:
            data = {}
    if not isinstance(data, dict):
        data = {}
    text = _json_text(data.get("args", [])) + " " + _json_text(data.get("kwargs", {}))
    shown = text if len(text) <= width else text[: width - 1] + "…"
    return {"task": data.get("task"), "args": shown, "retries": data.get("retries"), "eta": _iso(data.get("eta")),
            "expires": _iso(data.get("expires"))}  # fmt: skip


def _json_text(value: Any) -> str:
    """Arguments as JSON, as they were sent (not Python reprs, in the table and in ``--json`` alike)."""
    try:
        return dumps(value).decode()
    except TypeError:
        return repr(value)


def _iso(seconds: Any) -> str | None:
    return ms_to_iso(int(seconds * 1000)) if isinstance(seconds, int | float) else None


async def active() -> list[dict[str, Any]]:
    """Running jobs: id, task, args, worker, queue, started and lease deadline."""
    jobs = await get_broker().running_jobs()
    return [
        {"id": j["id"], **describe(j["message"]), "worker": j["worker"], "queue": j["queue"],
         "started": ms_to_iso(j["started_ms"]), "lease_until": ms_to_iso(j["lease_deadline_ms"])}
        for j in jobs
    ]  # fmt: skip


async def scheduled(limit: int = 1000) -> list[dict[str, Any]]:
    """Deferred jobs (countdown/eta, waiting retries, rate-limited), soonest first."""
    jobs = await get_broker().scheduled_jobs(limit)
    return [{"id": j["id"], **describe(j["message"]), "queue": j["queue"], "due": ms_to_iso(j["due_ms"])} for j in jobs]


async def reserved(limit: int = 100) -> list[dict[str, Any]]:
    """The next ready jobs of every queue, in the order workers will take them.

    (Celery's "reserved" are jobs a worker prefetched; workers here take jobs only when they start
    them, so what waits is in the queues, shown here.)"""
    broker = get_broker()
    out: list[dict[str, Any]] = []
    for queue in await known_queues():
        out += [
            {"id": j["id"], **describe(j["message"]), "queue": queue} for j in await broker.ready_jobs(queue, limit)
        ]
    return out


async def registered() -> dict[str, list[str]]:
    """Task names each live worker has registered."""
    return {str(w["id"]): list(w.get("tasks", [])) for w in await workers()}


async def queues() -> list[dict[str, Any]]:
    """Per queue: ready, deferred, age of the oldest ready job, consumers."""
    broker = get_broker()
    live = await workers()
    deferred = await broker.deferred_by_queue()
    now = time.time() * 1000
    out = []
    for queue in sorted(set(await known_queues()) | set(deferred)):
        oldest = await broker.oldest_ready_ms(queue)
        out.append({
            "queue": queue, "ready": await broker.ready_count(queue), "deferred": deferred.get(queue, 0),
            "oldest_age_seconds": round(max(0.0, now - oldest) / 1000, 3) if oldest is not None else None,
            "consumers": [w["id"] for w in live if queue in w.get("queues", [])],
        })  # fmt: skip
    return out


async def ping(queue: str | None = None) -> list[dict[str, Any]]:
    """Live workers whose loops are all healthy (and that consume ``queue``, if given)."""
    return [w for w in await workers() if w.get("healthy", False) and (queue is None or queue in w.get("queues", []))]


# ---------------------------------------------------------------- dead letters and failed jobs
async def dead_letters(task: str | None = None, limit: int = 10_000) -> list[dict[str, Any]]:
    """Dead letters, newest first (each with ``reason``, ``at``, ``task`` and the message kept)."""
    return [e for _, e in await get_broker().dead_letters(limit) if task is None or e.get("task") == task]


async def _dead_matching(ids: list[str] | None, task: str | None) -> list[tuple[bytes, dict[str, Any]]]:
    entries = await get_broker().dead_letters()
    return [(raw, e) for raw, e in entries
            if (ids is None or e.get("id") in ids) and (task is None or e.get("task") == task)]  # fmt: skip


async def requeue_dead(ids: list[str] | None = None, task: str | None = None) -> tuple[int, list[str]]:
    """Send dead letters' messages again (e.g. after deploying the task a worker lacked). Returns how many
    were requeued and, for those that cannot be, why (message kept only in part, not decodable)."""
    items, problems = [], []
    for raw, entry in await _dead_matching(ids, task):
        task_id = str(entry.get("id"))
        if entry.get("truncated"):
            problems.append(f"{task_id}: only the start of its message was kept; it cannot be sent again")
            continue
        try:
            msg = decode(str(entry.get("raw", "")).encode(), expected_id=task_id)
        except MessageError as exc:
            problems.append(f"{task_id}: {exc}")
            continue
        items.append((raw, Enqueue(msg.id, str(entry["raw"]).encode(), msg.queue, msg.priority)))
    requeued = await get_broker().requeue_dead(items)
    log.info("dead letters requeued", requeued=requeued, refused=len(problems))
    return requeued, problems


async def drop_dead(ids: list[str] | None = None, task: str | None = None) -> int:
    return await get_broker().drop_dead([raw for raw, _ in await _dead_matching(ids, task)])


async def retry(task_ids: list[str]) -> list[tuple[str, str]]:
    """Send failed jobs again with their original arguments, queue and priority: a new job each (its
    own id, retries from 0, header ``retry_of``), and the old record points to it (``retried_as``)."""
    broker = get_broker()
    out = []
    for old_id in task_ids:
        record = parse_record(await broker.record(old_id))
        if record.get("state") != states.FAILURE:
            raise ValueError(
                f"task {old_id}: only FAILURE jobs can be retried (state {record.get('state', 'PENDING')})"
            )
        if "args" not in record or not record.get("task"):
            raise ValueError(f"task {old_id}: its record keeps no arguments (failed before they were recorded)")
        options = {"queue": record.get("queue") or None, "headers": {"retry_of": old_id}}
        if str(record.get("priority", "")).isdigit():
            options["priority"] = int(record["priority"])
        sig = Signature(record["task"], loads(record["args"]), loads(record.get("kwargs") or "{}"), options)
        new = await sig.apply_async()
        await broker.mark_retried(old_id, new.id)
        out.append((old_id, new.id))
    return out


async def failed_jobs(task: str | None = None, queue: str | None = None, since_seconds: float | None = None,
                      ) -> list[dict[str, Any]]:  # fmt: skip
    """Jobs that failed for good (the bounded ``failed`` index), oldest first, filtered."""
    broker = get_broker()
    since_ms = int((time.time() - since_seconds) * 1000) if since_seconds is not None else 0
    out = []
    for task_id in await broker.failed_since(since_ms):
        record = parse_record(await broker.record(task_id))
        if record.get("state") != states.FAILURE or record.get("retried_as"):
            continue
        if (task is None or record.get("task") == task) and (queue is None or record.get("queue") == queue):
            out.append({"id": task_id, "task": record.get("task"), "queue": record.get("queue"),
                        "error": f"{record.get('exc_type')}: {record.get('exc_message')}",
                        "date_done": record.get("date_done")})  # fmt: skip
    return out


async def retry_failed(task: str | None = None, queue: str | None = None, since_seconds: float | None = None,
                       ) -> list[tuple[str, str]]:  # fmt: skip
    return await retry([j["id"] for j in await failed_jobs(task, queue, since_seconds)])


async def call(name: str, args: list[Any], kwargs: dict[str, Any], **options: Any) -> str:
    """Celery's ``celery call``: send a task by name; returns its id."""
    result = await Signature(name, args, kwargs, options).apply_async()
    return str(result.id)
