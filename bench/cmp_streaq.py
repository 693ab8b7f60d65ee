"""streaq in the benchmark: the worker its CLI runs (``streaq run cmp_streaq:worker``) and the client.

Runs from ``.bench-venv/streaq`` (the newest streaq on PyPI; it talks to Redis through coredis,
redis-py is in that venv only for ``cmp_common``). The worker is streaq's CLI, ``streaq run
cmp_streaq:worker --workers N`` (its documented way to start workers and to run several
processes). Same settings as the others where they mean the same thing: ``concurrency`` =
``--max-jobs`` (100; streaq prefetches as many again, its default), results kept (streaq's
default ``ttl`` of 5 minutes), JSON through orjson instead of streaq's default pickle (its docs show
the ``serializer=``/``deserializer=`` hook; arq gets the same), uvloop (anyio's ``use_uvloop``) as
for tasks_engine and arq, and ``silent=True`` on every task: streaq's CLI logs at INFO and would
otherwise print two lines per job, while every other competitor logs nothing per job.

streaq has no chord; the closest documented feature is its task dependency graph: the body is
enqueued with ``.start(after=<the K header ids>)`` and runs once all K have succeeded. The body
then reads the K results itself (one MGET of streaq's result keys), so it consumes what a chord
body receives.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from streaq import Worker
from streaq.constants import REDIS_CHANNEL

if TYPE_CHECKING:  # mypy checks this module against the bench package
    from bench import cmp_common as common
else:  # at run time bench/ is on sys.path (the script's own dir)
    import cmp_common as common

DB = int(os.environ.get("BENCH_DB", "12"))
URL = f"redis://{common.REDIS_HOST}:{common.REDIS_PORT}/{DB}"
GROUP = "workers"  # streaq's consumer group

worker = Worker(
    redis_url=URL,
    concurrency=int(os.environ.get("BENCH_MAX_JOBS", "100")),
    serializer=orjson.dumps,
    deserializer=orjson.loads,
    anyio_kwargs={"use_uvloop": True},
)
STREAM = worker.stream_key + worker.priorities[-1]  # the one (default) priority's stream
CHANNEL = worker.prefix + REDIS_CHANNEL  # where a worker publishes each result as it stores it


@worker.task(silent=True)  # type: ignore[untyped-decorator]  # streaq is not in the project venv
async def noop() -> None:
    return None


@worker.task(silent=True)  # type: ignore[untyped-decorator]  # streaq is not in the project venv
async def sleep() -> None:
    await asyncio.sleep(0.01)


@worker.task(silent=True)  # type: ignore[untyped-decorator]  # streaq is not in the project venv
async def io() -> None:
    """One Redis round trip with streaq's own client (the worker's coredis client)."""
    await worker.redis.incr(common.IO_KEY)


@worker.task(silent=True)  # type: ignore[untyped-decorator]  # streaq is not in the project venv
async def stamp() -> float:
    """When the job started, by the worker's clock (same machine as the client)."""
    return time.time()


@worker.task(silent=True)  # type: ignore[untyped-decorator]  # streaq is not in the project venv
async def collect(ids: list[str]) -> int:
    """The chord body: read the results of the tasks it was made to wait for."""
    found = 0
    for batch in common.chunks(ids, 1000):
        for raw in await worker.redis.mget([worker.results_key + i for i in batch]):
            if raw is not None and (await worker.deserialize(raw))["s"]:
                found += 1
    return found


TASKS: dict[str, Any] = {"noop": noop, "sleep": sleep, "io": io}


class Client:
    def __init__(self, p: common.Params) -> None:
        if p.db != DB:
            raise SystemExit(f"BENCH_DB={DB} but --db {p.db}: the worker object is built from BENCH_DB")
        self.p = p
        self.redis = common.sync_redis(p.db)
        self.workers = common.Workers(p.logdir, "streaq")

    def start_workers(self, count: int) -> None:
        cli = Path(sys.executable).parent / "streaq"
        argv = [str(cli)] if cli.exists() else [sys.executable, "-m", "streaq"]
        argv += ["run", "cmp_streaq:worker", "--workers", str(count)]
        env = {"BENCH_DB": str(self.p.db), "BENCH_MAX_JOBS": str(self.p.max_jobs)}
        self.workers.start(argv, env, term_group=True)

    async def unfinished(self) -> int:
        # streaq XDELs a task's stream entry in the MULTI that stores its result.
        return int(await worker.queue_size(include_scheduled=False))

    async def drained(self) -> bool:
        return await self.unfinished() == 0

    async def wait_drained(self) -> float:
        return await common.async_wait_until(self.drained, self.p.timeout, alive=self.workers.check_alive)

    async def wait_claimed(self) -> None:
        async def claimed() -> bool:
            return common.stream_group_started(self.redis, STREAM, GROUP)

        await common.async_wait_until(claimed, self.p.timeout, interval=0.002, alive=self.workers.check_alive)

    async def enqueue(self, task: Any, count: int, batch: int = 100, keep: bool = True) -> list[Any]:
        """One ``await task.enqueue()`` per job (one Lua call each), up to ``batch`` in flight."""
        out: list[Any] = []
        for i in range(0, count, batch):
            tasks = await asyncio.gather(*(task.enqueue() for _ in range(min(batch, count - i))))
            if keep:
                out.extend(tasks)
        return out

    def count_stored(self, ids: list[str]) -> int:
        tracker = common.ResultTracker(self.redis, lambda i: worker.results_key + i, ids)
        return len(ids) - tracker.remaining()

    async def warm_up(self) -> None:
        tasks = [await stamp.enqueue() for _ in range(20)]
        await asyncio.gather(*(t.result(timeout=60) for t in tasks))

    async def drain(self) -> dict[str, Any]:
        p = self.p
        memory = common.MemoryProbe(p)
        memory.read("empty", settle=False)
        first = await stamp.enqueue()  # a stream: FIFO, the stamp is read first
        t0 = time.perf_counter()
        tasks = await self.enqueue(TASKS[p.task], p.jobs)
        enqueue_s = time.perf_counter() - t0
        memory.read("queued")
        self.start_workers(p.procs)
        await self.wait_claimed()
        cpu0 = self.workers.cpu_seconds()  # start-up (imports) excluded: the first tasks are read
        done_at = await self.wait_drained()
        cpu = self.workers.cpu_seconds() - cpu0
        self.workers.stop()
        memory.read("drained")
        started_at = float((await first.result(timeout=30)).result)
        stored = self.count_stored([t.id for t in tasks])
        return {
            "enqueue_rate": p.jobs / enqueue_s,
            "drain_rate": (p.jobs + 1) / (done_at - started_at),
            "drain_s": done_at - started_at,
            "cpu_us_per_job": cpu / p.jobs * 1e6,
            "ok": stored == p.jobs,
            "stored": stored,
            **memory.summary(p.jobs + 1),
            **common.io_summary(p),
        }

    async def cost(self) -> dict[str, Any]:
        """Redis's work per job with a worker already running: ``enqueue()``, claim (XREADGROUP), run,
        result stored, one ``Task.result()`` per job (streaq's only result read: it subscribes to the
        task's channel, GETs the result, unsubscribes). Done: the stream is empty (XDEL on finish)."""
        p = self.p
        self.start_workers(p.procs)
        await self.warm_up()
        probe = common.CostProbe(p, self.workers)
        probe.mark()
        await asyncio.sleep(common.IDLE_S)
        probe.mark()
        tasks = await self.enqueue(noop, p.jobs)
        await probe.wait_async(lambda: int(probe.redis.xlen(STREAM)))
        # 50 in flight, as in latency(): each read holds a pub/sub connection, and 100 exhaust coredis's pool
        results = await common.read_all([lambda t=t: t.result(timeout=30) for t in tasks], batch=50)
        probe.mark()
        stored = sum(1 for r in results if r.success)
        return {**probe.summary(p.jobs), "ok": stored == p.jobs, "stored": stored}

    async def latency(self) -> dict[str, Any]:
        """Open-loop trickle; enqueue → start from the stamp the task returns, enqueue → result when
        the result the worker publishes (what ``Task.result()`` waits for) reaches one pattern
        subscription (``Task.result()`` itself subscribes once per task)."""
        p = self.p
        self.start_workers(1)
        await self.warm_up()
        sent: dict[str, float] = {}
        tasks: list[Any] = []
        with common.ChannelObserver(p.db, CHANNEL + "*", lambda ch: ch[len(CHANNEL) :], lambda _: True) as observer:

            async def one() -> None:
                before = time.time()
                task = await stamp.enqueue()
                sent[task.id] = before
                tasks.append(task)

            t0 = time.perf_counter()
            running = []
            for offset in common.trickle_offsets(p.jobs, p.rate):
                pause = t0 + offset - time.perf_counter()
                if pause > 0:
                    await asyncio.sleep(pause)
                running.append(asyncio.create_task(one()))
            await asyncio.gather(*running)
            sent_s = time.perf_counter() - t0

            async def all_seen() -> bool:
                return all(i in observer.seen for i in sent)

            await common.async_wait_until(all_seen, p.timeout, alive=self.workers.check_alive)
        stamps: list[float] = []
        for batch in common.chunks(tasks, 50):
            stamps.extend(float(r.result) for r in await asyncio.gather(*(t.result(timeout=30) for t in batch)))
        starts = [s - sent[t.id] for s, t in zip(stamps, tasks, strict=True)]
        results = [observer.seen[t.id] - sent[t.id] for t in tasks]
        return common.trickle_summary(starts, results, sent_s)

    async def chord(self) -> dict[str, Any]:
        """Per size: K independent tasks (done when all results are stored), then K headers and a body
        enqueued with ``after=`` the K header ids (done when the body's result is back)."""
        self.start_workers(1)
        await self.warm_up()
        out: dict[str, Any] = {"chord_method": "after"}
        for size in self.p.chord_sizes:
            t0 = time.perf_counter()
            await self.enqueue(noop, size)
            await self.wait_drained()
            out[f"group_{size}_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            headers = await self.enqueue(noop, size)
            ids = [t.id for t in headers]
            body = await collect.enqueue(ids).start(after=ids)
            counted = (await body.result(timeout=self.p.timeout)).result
            out[f"chord_{size}_s"] = time.perf_counter() - t0
            if counted != size:
                raise RuntimeError(f"chord body saw {counted} results, expected {size}")
        return out

    async def rss(self) -> dict[str, Any]:
        self.start_workers(1)
        return await common.measure_rss(
            self.p,
            self.workers,
            lambda n: self.enqueue(TASKS[self.p.task], n, keep=False),
            self.wait_drained,
            self._below_5000,
        )

    async def _below_5000(self) -> bool:
        return await self.unfinished() < 5000

    async def backlog(self) -> dict[str, Any]:
        """``p.backlog`` no-op tasks queued with no worker running (``Worker.enqueue_many``, streaq's
        pipelined bulk enqueue); drain rate over the first ``p.jobs``."""
        p = self.p
        first = await stamp.enqueue()

        async def send(n: int) -> None:
            await worker.enqueue_many([noop.enqueue() for _ in range(n)])

        preload_rate = await common.preload_async(send, p.backlog, p.preload_limit)
        self.start_workers(1)
        await self.wait_claimed()
        cpu0 = self.workers.cpu_seconds()

        async def measured() -> bool:
            return await self.unfinished() <= p.backlog - p.jobs

        done_at = await common.async_wait_until(measured, p.timeout, alive=self.workers.check_alive)
        cpu = self.workers.cpu_seconds() - cpu0
        self.workers.stop()
        started_at = float((await first.result(timeout=30)).result)
        return common.backlog_summary(p, preload_rate, started_at, done_at, cpu)


async def run(p: common.Params) -> dict[str, Any]:
    common.flush(p.db)
    client = Client(p)
    try:
        async with worker:  # streaq's client side: connects and loads its Lua library
            if p.workload == "drain":
                return await client.drain()
            if p.workload == "latency":
                return await client.latency()
            if p.workload == "chord":
                return await client.chord()
            if p.workload == "backlog":
                return await client.backlog()
            if p.workload == "cost":
                return await client.cost()
            return await client.rss()
    finally:
        client.workers.stop()
        client.redis.close()
        common.flush(p.db)  # leave nothing behind in the shared Redis


def main(p: common.Params) -> dict[str, Any]:
    return common.run_async(run, p)


if __name__ == "__main__":
    common.run_main(main)
