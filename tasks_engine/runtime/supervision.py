"""No silent death: every background loop of a worker is supervised, and a thread reports on them.

:func:`supervised` runs a loop forever: an unexpected error is logged with the loop's name and the
loop restarts after a backoff (reset once it has run cleanly for a while); :class:`LoopHealth` keeps
what each loop is doing, and the heartbeat publishes it, so a worker whose loops are failing is
visible in ``tasks-engine status`` instead of looking alive while it takes no jobs.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from tasks_engine.core.clock import Backoff, now_iso
from tasks_engine.core.config import EngineSettings
from tasks_engine.exceptions import REDIS_UNAVAILABLE
from tasks_engine.execution.timelimits import current_steps
from tasks_engine.store import SyncHeartbeat

log = structlog.get_logger("tasks_engine.worker")
CLEAN_RUN_SECONDS = 30.0  # a loop that ran this long before failing starts its backoff afresh


@dataclass
class LoopHealth:
    """``name -> "ok"`` or the last error of a loop that is restarting."""

    states: dict[str, str] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)

    def ok(self, name: str) -> None:
        self.states[name] = "ok"

    def failed(self, name: str, exc: BaseException) -> None:
        self.states[name] = f"restarting after {type(exc).__name__}: {exc}"[:300]
        self.restarts[name] = self.restarts.get(name, 0) + 1

    @property
    def healthy(self) -> bool:
        return all(state == "ok" for state in self.states.values())


async def supervised(
    name: str, body: Callable[[], Awaitable[None]], health: LoopHealth, stopping: Callable[[], bool]
) -> None:
    """Run ``body`` until cancelled or stopping; restart it (logged, with backoff) whenever it fails."""
    backoff = Backoff(first=0.5, maximum=30.0)
    while True:
        started = time.monotonic()
        health.ok(name)
        try:
            await body()
            if stopping():
                return
            raise RuntimeError(f"the {name} loop returned")  # they run until the worker stops
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # logged below; the loop must come back
            if time.monotonic() - started > CLEAN_RUN_SECONDS:
                backoff.reset()
            delay = backoff.next()
            health.failed(name, exc)
            log.exception("background loop failed; restarting it", loop=name, retry_in=delay)
            await asyncio.sleep(delay)


class Advertised(Protocol):
    """What the heartbeat reads of its worker."""

    id: str
    queues: list[str]
    max_jobs: int
    processed: int
    running: dict[str, Any]
    health: LoopHealth
    loop_tick: float
    started_at: str
    task_names: list[str]

    def terminate_soon(self, task_ids: list[str]) -> None: ...


class HeartbeatThread(threading.Thread):
    """Renews leases and advertises the worker from a thread, so a blocked loop cannot lose its jobs;
    also the watchdog that names the task blocking the loop. Any error is logged and retried."""

    def __init__(self, worker: Advertised, settings: EngineSettings) -> None:
        super().__init__(name="tasks-engine-heartbeat", daemon=True)
        self.worker = worker
        self.settings = settings
        self.stopping = threading.Event()

    def run(self) -> None:
        heartbeat = SyncHeartbeat(self.settings)
        reported_stall = False
        next_beat = 0.0
        failing = False
        while not self.stopping.wait(0.25):
            reported_stall = self._watch_loop(reported_stall)
            if time.monotonic() < next_beat:
                continue
            next_beat = time.monotonic() + self.settings.heartbeat_seconds
            try:
                self._beat(heartbeat)
                failing = False
            except REDIS_UNAVAILABLE:
                next_beat = time.monotonic() + 0.5
            except Exception:  # e.g. MISCONF: logged once per streak, the thread goes on
                if not failing:
                    log.exception("heartbeat failed; retrying")
                failing = True
                next_beat = time.monotonic() + 1.0
        heartbeat.close()

    def _beat(self, heartbeat: SyncHeartbeat) -> None:
        w = self.worker
        ids = tuple(w.running)
        info = {
            "id": w.id, "queues": w.queues, "running": len(ids), "pid": os.getpid(), "host": socket.gethostname(),
            "processed": w.processed, "max_jobs": w.max_jobs, "seen": now_iso(),
            "loops": dict(w.health.states), "healthy": w.health.healthy, "started": w.started_at,
            "tasks": w.task_names,
        }  # fmt: skip
        lease_ms = int(self.settings.lease_seconds * 1000)
        stop = heartbeat.beat(w.id, ids, lease_ms, info, ttl=max(3, int(self.settings.lease_seconds)))
        if stop:
            w.terminate_soon(stop)

    def _watch_loop(self, reported: bool) -> bool:
        stalled = time.monotonic() - self.worker.loop_tick
        if stalled <= self.settings.blocked_loop_seconds:
            return False
        if not reported:
            # The task whose step holds the loop (the engine steps every async task itself).
            culprit = max(current_steps(), key=lambda step: step[1], default=(None, 0.0))[0]
            log.error(
                "event loop blocked: a task runs sync code without awaiting; use a def task (runs in a thread) "
                "or await",
                task_id=culprit, blocked_seconds=round(stalled, 2), running=list(self.worker.running),
            )  # fmt: skip
        return True
