"""What the pages show, read from Redis at each request through :mod:`tasks_engine.ops.control`.

Nothing is cached except the overview's series: Redis keeps counts, not history, so a small ring of
samples (taken every ``sample_seconds`` while the dashboard runs) is the only way to draw throughput
and failures over time without a database.
"""

from __future__ import annotations

import asyncio
import fnmatch
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from tasks_engine.client import beat
from tasks_engine.client.results import AsyncResult
from tasks_engine.core.clock import ms_to_iso, now_iso
from tasks_engine.core.codec import loads
from tasks_engine.exceptions import REDIS_UNAVAILABLE
from tasks_engine.model import states
from tasks_engine.model.records import parse_record
from tasks_engine.ops import control
from tasks_engine.store import get_broker

log = structlog.get_logger("tasks_engine.dashboard")

#: The sections of the tasks page, in the order shown; the ``state`` filter picks one.
SECTIONS = ("running", "scheduled", "waiting", "failed")
#: States a revoke can still change (a finished job keeps its outcome).
REVOCABLE = frozenset({states.PENDING, states.RECEIVED, states.STARTED, states.RETRY})


class Sampler:
    """A ring of cluster samples: jobs finished per second and jobs failed per interval, plus depths.

    Throughput is the growth of the workers' ``processed`` counters (heartbeats): a worker first seen
    after the first sample started since, so all it processed counts; one that vanished stops counting.
    Failures are read from the ``failed`` index, so none is missed between samples.
    """

    def __init__(self, every: float, kept: int) -> None:
        self.every = every
        self.samples: deque[dict[str, Any]] = deque(maxlen=kept)
        self._processed: dict[str, int] | None = None
        self._last_ms = 0

    async def sample(self) -> dict[str, Any]:
        now_ms = int(time.time() * 1000)
        workers = await control.workers()
        totals = await control.totals()
        ready = sum(q["ready"] for q in await control.queues())
        processed = {str(w.get("id")): int(w.get("processed") or 0) for w in workers}
        failed = len(await get_broker().failed_since(self._last_ms + 1)) if self._processed is not None else 0
        finished = 0
        if self._processed is not None:
            finished = sum(max(0, n - self._processed.get(wid, 0)) for wid, n in processed.items())
        seconds = (now_ms - self._last_ms) / 1000 if self._last_ms else self.every
        point = {
            "t": now_ms / 1000, "at": ms_to_iso(now_ms), "throughput": round(finished / max(seconds, 0.001), 3),
            "finished": finished, "failures": failed, "ready": ready, "running": totals["running"],
            "deferred": totals["deferred"], "dead": totals["dead"], "workers": len(workers),
        }  # fmt: skip
        self._processed, self._last_ms = processed, now_ms
        self.samples.append(point)
        return point

    async def run(self) -> None:
        """Sample until cancelled; a Redis outage leaves a gap in the series, not a dead loop."""
        while True:
            try:
                await self.sample()
            except REDIS_UNAVAILABLE as exc:
                log.warning("dashboard sample failed: redis unavailable", error=str(exc))
            except Exception:  # a bug in one sample must not end the series
                log.exception("dashboard sample failed")
            await asyncio.sleep(self.every)


def _matches(row: dict[str, Any], name: str | None, queue: str | None) -> bool:
    if queue and row.get("queue") != queue:
        return False
    if not name:
        return True
    task = str(row.get("task") or "")
    return fnmatch.fnmatchcase(task, name) if any(c in name for c in "*?[") else name in task


async def failed(limit: int) -> list[dict[str, Any]]:
    """The newest jobs that failed for good and were not retried yet (at most ``limit`` records read)."""
    broker = get_broker()
    out = []
    for task_id in reversed((await broker.failed_since(0))[-limit:]):
        record = parse_record(await broker.record(task_id))
        if record.get("state") != states.FAILURE or record.get("retried_as"):
            continue
        out.append({"id": task_id, "task": record.get("task"), "queue": record.get("queue"),
                    "error": f"{record.get('exc_type')}: {record.get('exc_message')}",
                    "retries": record.get("retries", 0), "date_done": record.get("date_done")})  # fmt: skip
    return out


async def task_lists(state: str | None, name: str | None, queue: str | None, limit: int) -> dict[str, Any]:
    """Running, scheduled (deferred), waiting (ready) and failed jobs, filtered; each list capped at ``limit``."""
    wanted = [s for s in SECTIONS if not state or s == state]
    readers: dict[str, Callable[[], Awaitable[list[dict[str, Any]]]]] = {
        "running": control.active,
        "scheduled": lambda: control.scheduled(limit),
        "waiting": lambda: control.reserved(limit),
        "failed": lambda: failed(limit),
    }
    lists: dict[str, list[dict[str, Any]]] = {}
    for section in SECTIONS:
        rows = await readers[section]() if section in wanted else []
        lists[section] = [r for r in rows if _matches(r, name, queue)][:limit]
    counts = {s: len(rows) for s, rows in lists.items()}
    return {"filters": {"state": state or "", "name": name or "", "queue": queue or ""}, "lists": lists,
            "counts": counts}  # fmt: skip


async def overview(sampler: Sampler) -> dict[str, Any]:
    live = await control.workers()
    return {
        "totals": {
            **await control.totals(),
            "workers": len(live),
            "healthy": sum(bool(w.get("healthy")) for w in live),
        },
        "queues": await control.queues(),
        "series": list(sampler.samples),
    }


async def workers() -> list[dict[str, Any]]:
    """Live workers with the jobs each is running now (the heartbeat has only a count)."""
    running = await control.active()
    out = []
    for w in await control.workers():
        loops = w.get("loops") or {}
        jobs = [{"id": j["id"], "task": j["task"], "started": j["started"]} for j in running if j["worker"] == w["id"]]
        out.append({**w, "jobs": jobs, "loops_text": ", ".join(f"{k}: {v}" for k, v in sorted(loops.items())),
                    "tasks_count": len(w.get("tasks") or [])})  # fmt: skip
    return out


async def task(task_id: str) -> dict[str, Any]:
    """A job's record (args, result, traceback, retries, dates, progress meta, parent/root/group) and,
    while it is not finished, where it is now (running on a worker, deferred, waiting in a queue)."""
    info = await AsyncResult(task_id).record()
    record = parse_record(await get_broker().record(task_id))
    place: dict[str, Any] | None = None
    if info["state"] in REVOCABLE:
        readers = (("running", control.active), ("scheduled", control.scheduled), ("waiting", control.reserved))
        for where, read in readers:  # read lazily: most unfinished jobs are found running
            found = next((r for r in await read() if r["id"] == task_id), None)
            if found:
                place = {"where": where, **found}
                break
    args: Any = loads(record["args"]) if record.get("args") else None
    kwargs: Any = loads(record["kwargs"]) if record.get("kwargs") else None
    shown_args = place["args"] if place and args is None else None
    state = info["state"]
    can_retry = state == states.FAILURE and not record.get("retried_as") and "args" in record
    return {
        **info,
        "exists": bool(record) or place is not None,
        "args": args, "kwargs": kwargs, "args_text": shown_args,
        "queue": record.get("queue") or (place or {}).get("queue"), "priority": record.get("priority"),
        "retried_as": record.get("retried_as"), "place": place, "can_revoke": state in REVOCABLE,
        "can_retry": can_retry, "ready": state in states.READY_STATES,
    }  # fmt: skip


async def periodic() -> list[dict[str, Any]]:
    """Periodic entries known to this process (the app's beat schedule) with next and last run."""
    broker = get_broker()
    out = []
    for entry in beat.view():
        out.append({**entry, "last_run": ms_to_iso(await broker.beat_last(entry["name"]))})
    return out


async def dead(limit: int) -> list[dict[str, Any]]:
    rows = await control.dead_letters(limit=limit)
    return [{"id": d.get("id"), "task": d.get("task"), "reason": d.get("reason"), "at": d.get("at"),
             "raw": str(d.get("raw", ""))[:300], "truncated": bool(d.get("truncated"))}
            for d in rows]  # fmt: skip


async def snapshot(page: str, params: dict[str, str], sampler: Sampler, limit: int) -> dict[str, Any]:
    """One push of ``/api/events``: what the page named ``page`` shows, plus the cluster totals."""
    out: dict[str, Any] = {"at": now_iso(), "page": page}
    if page == "overview":
        out.update(await overview(sampler))
    else:
        out["totals"] = await control.totals()
    if page == "workers":
        out["workers"] = await workers()
    elif page == "tasks":
        out.update(await task_lists(params.get("state"), params.get("name"), params.get("queue"), limit))
    elif page == "task" and params.get("id"):
        out["task"] = await task(params["id"])
    elif page == "periodic":
        out["periodic"] = await periodic()
    elif page == "dead":
        out["dead"] = await dead(limit)
    return out
