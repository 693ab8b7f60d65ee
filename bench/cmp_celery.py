"""Celery 5.7 in the benchmark: the app its worker loads (``celery -A cmp_celery worker``) and the client.

Runs from ``.bench-venv/celery``. Stock settings except what the comparison fixes: prefork pool,
``--concurrency`` = cores unless the workload says otherwise, Redis broker and Redis result
backend on this competitor's db, JSON for messages and results, WARNING log level (no line per
task, like the others), and ``--without-gossip --without-mingle --without-heartbeat`` (the usual
Redis advice; the asyncio competitors broadcast no events either). The I/O-bound task uses
``time.sleep`` because prefork runs sync functions. The client is Celery's own sync API
(``delay``, ``group``, ``chord``, ``AsyncResult.get``).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

import cmp_common as common
from celery import Celery, chord, group

DB = int(os.environ.get("BENCH_DB", "15"))
URL = f"redis://{common.REDIS_HOST}:{common.REDIS_PORT}/{DB}"
QUEUE = "celery"
META = "celery-task-meta-"

app = Celery("bench", broker=URL, backend=URL)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    task_default_queue=QUEUE,
)


@app.task(name="bench.noop")
def noop() -> None:
    return None


@app.task(name="bench.sleep")
def sleep() -> None:
    time.sleep(0.01)


@app.task(name="bench.io")
def io() -> None:
    """One Redis round trip with Celery's own client (the Redis result backend's redis-py client)."""
    app.backend.client.incr(common.IO_KEY)


@app.task(name="bench.stamp")
def stamp() -> float:
    return time.time()


@app.task(name="bench.collect")
def collect(results: list[Any]) -> int:
    return len(results)


TASKS = {"noop": noop, "sleep": sleep, "io": io}


class Client:
    def __init__(self, p: common.Params) -> None:
        self.p = p
        self.redis = common.sync_redis(p.db)
        self.workers = common.Workers(p.logdir, "celery")

    def start_workers(self, concurrency: int) -> None:
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "cmp_celery",
            "worker",
            "-P",
            "prefork",
            "-c",
            str(concurrency),
            "--loglevel",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-n",
            f"bench-{os.getpid()}@%h",
        ]
        self.workers.start(argv, {"BENCH_DB": str(self.p.db)})

    def wait_results(self, ids: list[str]) -> float:
        """Done when the queue list is empty and every id has its result key (written only at the end)."""
        tracker = common.ResultTracker(self.redis, lambda i: META + i, ids)

        def done() -> bool:
            return self.redis.llen(QUEUE) == 0 and tracker.remaining() == 0

        return common.wait_until(done, self.p.timeout, alive=self.workers.check_alive)

    def enqueue(self, task: Any, count: int) -> list[str]:
        return [task.delay().id for _ in range(count)]

    def warm_up(self) -> None:
        for handle in [stamp.delay() for _ in range(20)]:
            handle.get(timeout=60)

    def drain(self) -> dict[str, Any]:
        p = self.p
        memory = common.MemoryProbe(p)
        memory.read("empty", settle=False)
        first = stamp.delay()
        t0 = time.perf_counter()
        ids = self.enqueue(TASKS[p.task], p.jobs)
        enqueue_s = time.perf_counter() - t0
        memory.read("queued")
        self.start_workers(p.procs)
        common.wait_until(
            lambda: self.redis.llen(QUEUE) < p.jobs + 1, p.timeout, interval=0.002, alive=self.workers.check_alive
        )
        cpu0 = self.workers.cpu_seconds()  # start-up (imports) excluded: the first messages are taken
        done_at = self.wait_results(ids)
        cpu = self.workers.cpu_seconds() - cpu0
        self.workers.stop()
        memory.read("drained")
        started_at = float(first.get(timeout=30))
        return {
            "enqueue_rate": p.jobs / enqueue_s,
            "drain_rate": (p.jobs + 1) / (done_at - started_at),
            "drain_s": done_at - started_at,
            "cpu_us_per_job": cpu / p.jobs * 1e6,
            "ok": True,
            "stored": len(ids),
            **memory.summary(p.jobs + 1),
            **common.io_summary(p),
        }

    def cost(self) -> dict[str, Any]:
        """Redis's work per job with the worker already running: ``delay()`` (which also subscribes the
        client to the result's channel, as Celery's Redis backend does for every call), claim, run,
        result stored and published, one ``AsyncResult.result`` per job (a single GET, never waits).
        Done: queue empty, DBSIZE within a few keys (kombu's bookkeeping) of one result key per job,
        then every result key confirmed."""
        p = self.p
        self.start_workers(p.procs)
        self.warm_up()
        probe = common.CostProbe(p, self.workers)
        probe.mark()
        time.sleep(common.IDLE_S)
        probe.mark()
        base = int(probe.redis.dbsize())
        handles = [noop.delay() for _ in range(p.jobs)]
        pending = [META + h.id for h in handles]

        def unfinished() -> int:
            nonlocal pending
            if probe.redis.llen(QUEUE) or int(probe.redis.dbsize()) < base + p.jobs - 5:
                return len(pending)
            pending = [k for k, found in zip(pending, probe.redis.exists_each(pending), strict=True) if not found]
            return len(pending)

        probe.wait(unfinished)
        states = [h.result for h in handles]
        probe.mark()
        stored = sum(1 for h in handles if h.state == "SUCCESS")
        return {**probe.summary(p.jobs), "ok": stored == p.jobs and len(states) == p.jobs, "stored": stored}

    def latency(self) -> dict[str, Any]:
        """Sends open-loop from this thread; a second thread listens on the result channels the Redis
        backend publishes to (what ``get()`` waits on) and notes when each result arrives."""
        p = self.p
        self.start_workers(p.procs)
        self.warm_up()
        done: dict[str, float] = {}
        stop = threading.Event()
        listening = threading.Event()

        def observe() -> None:
            client = common.sync_redis(p.db)
            pubsub = client.pubsub()
            pubsub.psubscribe(META + "*")
            listening.set()
            while not stop.is_set():
                message = pubsub.get_message(timeout=0.05)
                if message and message["type"] == "pmessage":
                    done[message["channel"].decode()[len(META) :]] = time.time()
            pubsub.close()
            client.close()

        thread = threading.Thread(target=observe, daemon=True)
        thread.start()
        listening.wait(10)
        sent: dict[str, float] = {}
        t0 = time.perf_counter()
        for offset in common.trickle_offsets(p.jobs, p.rate):
            pause = t0 + offset - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            before = time.time()
            sent[stamp.delay().id] = before
        sent_s = time.perf_counter() - t0
        common.wait_until(lambda: all(i in done for i in sent), p.timeout, alive=self.workers.check_alive)
        stop.set()
        thread.join()
        ids = list(sent)
        values = self.redis.mget([META + i for i in ids])
        starts = [float(json.loads(v)["result"]) - sent[i] for i, v in zip(ids, values, strict=True)]
        results = [done[i] - sent[i] for i in ids]
        return common.trickle_summary(starts, results, sent_s)

    def chord(self) -> dict[str, Any]:
        self.start_workers(self.p.procs)
        self.warm_up()
        out: dict[str, Any] = {}
        for size in self.p.chord_sizes:
            sigs = [noop.s() for _ in range(size)]
            t0 = time.perf_counter()
            result = group(sigs).apply_async()
            self.wait_results([r.id for r in result.results])
            out[f"group_{size}_s"] = time.perf_counter() - t0
            header, body = [noop.s() for _ in range(size)], collect.s()
            t0 = time.perf_counter()
            counted = chord(header)(body).get(timeout=self.p.timeout)
            out[f"chord_{size}_s"] = time.perf_counter() - t0
            if counted != size:
                raise RuntimeError(f"chord body saw {counted} results, expected {size}")
        return out

    def backlog(self) -> dict[str, Any]:
        """``p.backlog`` no-op jobs queued with no worker running (``delay()`` one after the other, as
        in (1)), then the worker: drain rate over the first ``p.jobs``. Prefork takes messages
        ahead (prefetch), so finished jobs are counted as result keys: DBSIZE less the keys there
        before the worker started (its few bookkeeping keys make it finish marginally early)."""
        p = self.p
        first = stamp.delay()
        preload_rate = common.preload_sync(lambda n: self.enqueue(noop, n), p.backlog, p.preload_limit)
        base = int(self.redis.dbsize())
        self.start_workers(p.procs)
        common.wait_until(
            lambda: self.redis.llen(QUEUE) < p.backlog + 1, p.timeout, interval=0.002, alive=self.workers.check_alive
        )
        cpu0 = self.workers.cpu_seconds()
        done_at = common.wait_until(
            lambda: int(self.redis.dbsize()) - base >= p.jobs + 1, p.timeout, alive=self.workers.check_alive
        )
        cpu = self.workers.cpu_seconds() - cpu0
        self.workers.stop()
        out: dict[str, Any] = common.backlog_summary(p, preload_rate, float(first.get(timeout=30)), done_at, cpu)
        return out

    def rss(self) -> dict[str, Any]:
        p = self.p
        self.start_workers(p.procs)
        self.wait_results(self.enqueue(TASKS[p.task], p.warmup))
        settle = min(1.0, 0.2 + p.jobs / 100_000)  # let the last jobs' garbage go before reading RSS
        time.sleep(settle)
        before = self.workers.rss_bytes()
        sent: list[str] = []
        while len(sent) < p.jobs:
            common.wait_until(
                lambda: self.redis.llen(QUEUE) < 5000, p.timeout, interval=0.05, alive=self.workers.check_alive
            )
            sent.extend(self.enqueue(TASKS[p.task], min(5000, p.jobs - len(sent))))
        self.wait_results(sent)
        time.sleep(settle)
        after = self.workers.rss_bytes()
        return common.rss_summary(before, after, p.jobs)


def main(p: common.Params) -> dict[str, Any]:
    common.flush(p.db)
    client = Client(p)
    try:
        if p.workload == "drain":
            return client.drain()
        if p.workload == "latency":
            return client.latency()
        if p.workload == "chord":
            return client.chord()
        if p.workload == "backlog":
            return client.backlog()
        if p.workload == "cost":
            return client.cost()
        return client.rss()
    finally:
        client.workers.stop()
        client.redis.close()
        common.flush(p.db)  # leave nothing behind in the shared Redis


if __name__ == "__main__":
    common.run_main(main)
