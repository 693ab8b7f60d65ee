"""Prometheus metrics and health probes: per worker, and cluster-wide from Redis.

A worker started with ``metrics_port`` serves ``/metrics`` (its own counters), ``/healthz`` (the
process answers) and ``/readyz`` (Redis answers and every loop is healthy: 503 otherwise).
``tasks-engine metrics --port`` serves the cluster's view — queue depths, oldest job age, consumers,
dead letters — read from Redis at each scrape, so nothing can be missed between scrapes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from tasks_engine.ops import control

log = structlog.get_logger("tasks_engine.metrics")
Handler = Callable[[], Awaitable[tuple[int, str, bytes]]]


class WorkerMetrics:
    """One worker's counters, in a registry of its own (several workers may share a process in tests)."""

    def __init__(self, running: Callable[[], int], healthy: Callable[[], bool]) -> None:
        self.registry = CollectorRegistry()
        self.tasks = Counter("tasks_engine_tasks", "Jobs finished, by task and final state (or RETRY).",
                             ["task", "state"], registry=self.registry)  # fmt: skip
        self.runtime = Histogram("tasks_engine_task_runtime_seconds", "Time one attempt of a task ran.", ["task"],
                                 registry=self.registry)  # fmt: skip
        self.retries = Counter("tasks_engine_task_retries", "Retries scheduled, by task.", ["task"],
                               registry=self.registry)  # fmt: skip
        self.duplicates = Counter(
            "tasks_engine_duplicate_deliveries",
            "Deliveries settled unrun because the job had already finished (its final state) or was running "
            "(RUNNING): replayed or re-sent messages.",
            ["task", "state"],
            registry=self.registry,
        )
        Gauge("tasks_engine_running_jobs", "Jobs running in this worker now.",
              registry=self.registry).set_function(running)  # fmt: skip
        Gauge("tasks_engine_worker_up", "1 while this worker runs with all its loops healthy.",
              registry=self.registry).set_function(lambda: 1.0 if healthy() else 0.0)  # fmt: skip

    def finished(self, task: str, state: str, seconds: float | None) -> None:
        self.tasks.labels(task, state).inc()
        if state == "RETRY":
            self.retries.labels(task).inc()
        if seconds is not None:
            self.runtime.labels(task).observe(seconds)

    def duplicate(self, task: str, state: str) -> None:
        self.duplicates.labels(task, state).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


async def cluster_exposition() -> bytes:
    """The cluster's metrics, read from Redis now."""
    registry = CollectorRegistry()
    rows = await control.queues()
    totals = await control.totals()
    families = [
        ("tasks_engine_queue_ready", "Ready jobs waiting in a queue.", "ready"),
        ("tasks_engine_queue_deferred", "Deferred jobs (countdown, eta, retries, rate limits) of a queue.", "deferred"),
        ("tasks_engine_queue_oldest_age_seconds", "Age of the longest-waiting ready job of a queue.",
         "oldest_age_seconds"),
    ]  # fmt: skip
    collected: list[Any] = []
    for name, text, field in families:
        family = GaugeMetricFamily(name, text, labels=["queue"])
        for row in rows:
            family.add_metric([row["queue"]], float(row[field] or 0))
        collected.append(family)
    consumers = GaugeMetricFamily("tasks_engine_workers", "Live workers consuming a queue.", labels=["queue"])
    for row in rows:
        consumers.add_metric([row["queue"]], float(len(row["consumers"])))
    collected.append(consumers)
    collected.append(GaugeMetricFamily("tasks_engine_dead_letters", "Dead letters kept.", value=float(totals["dead"])))

    class Snapshot:
        def collect(self) -> list[Any]:
            return collected

    registry.register(Snapshot())
    return generate_latest(registry)


async def serve(host: str, port: int, routes: dict[str, Handler]) -> asyncio.Server:
    """A minimal HTTP/1.0 server for ``GET`` on a few paths (scrapes and probes need no more)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            method, _, rest = request.decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            handler = routes.get(path)
            if method != "GET" or handler is None:
                status, ctype, body = 404, "text/plain", b"not found\n"
            else:
                status, ctype, body = await handler()
        except Exception as exc:  # noqa: BLE001 - a bad request or a failing handler: answer, log, keep serving
            log.warning("metrics request failed", error=str(exc))
            status, ctype, body = 500, "text/plain", b"error\n"
        reason = {200: "OK", 404: "Not Found", 500: "Internal Server Error", 503: "Service Unavailable"}[status]
        head = f"HTTP/1.0 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
        try:
            writer.write(head.encode() + body)
            await writer.drain()
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)


async def serve_worker_probes(
    host: str, port: int, metrics: WorkerMetrics, ping: Callable[[], Awaitable[Any]], problem: Callable[[], str | None]
) -> asyncio.Server:
    """A worker's ``/metrics``, ``/healthz`` (the process answers) and ``/readyz`` (Redis answers within
    a second and ``problem()`` is None: every loop healthy, not stopping)."""

    async def ready() -> tuple[int, str, bytes]:
        try:
            await asyncio.wait_for(ping(), 1.0)
        except Exception as exc:  # noqa: BLE001 - any failure to answer means "not ready"
            return text(503, f"redis unreachable: {exc}\n")
        issue = problem()
        return text(503, f"not ready: {issue}\n") if issue else text(200, "ready\n")

    async def alive() -> tuple[int, str, bytes]:
        return text(200, "ok\n")

    async def scrape() -> tuple[int, str, bytes]:
        return prometheus(metrics.exposition())

    routes: dict[str, Handler] = {"/metrics": scrape, "/healthz": alive, "/readyz": ready}
    server = await serve(host, port, routes)
    log.info("metrics and health probes served", port=port, paths=sorted(routes))
    return server


def text(status: int, body: str) -> tuple[int, str, bytes]:
    return status, "text/plain; charset=utf-8", body.encode()


def prometheus(body: bytes) -> tuple[int, str, bytes]:
    return 200, CONTENT_TYPE_LATEST, body
