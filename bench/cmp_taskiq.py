"""taskiq 0.13 + taskiq-redis in the benchmark: the broker its CLI loads (``taskiq worker
cmp_taskiq:broker``) and the client.

Runs from ``.bench-venv/taskiq`` (``taskiq[uv,orjson]``, ``taskiq-redis``, hiredis). Broker choice:
``RedisStreamBroker``. taskiq-redis offers three Redis brokers — PubSub (every worker gets every
message), ListQueue (LPUSH/BRPOP, no acknowledgement: a worker killed mid-job loses it) and Stream
(consumer group, acknowledged, unacknowledged messages re-claimed) — and its README uses the stream
broker in its example and points to it when messages must survive a worker crash; tasks_engine,
arq, SAQ and streaq all keep a job in Redis until it has finished, so the durable broker is the
like-for-like choice. It acknowledges once the result is saved (taskiq's default ``--ack-type
when_saved``).

Result backend: ``RedisAsyncResultBackend`` with ``result_ex_time`` 3600 s (taskiq-redis advises
setting an expiry; 3600 s is arq's default) and ``keep_results`` (its default: reading a
result does not delete it). A result is stored for every job, ``None`` results included.

Worker: taskiq's CLI, ``taskiq worker cmp_taskiq:broker --workers N --max-async-tasks 100
--log-level WARNING`` — its process manager always forks N worker processes under a supervising
parent (the CLI's default is 2; 1 here unless the workload says otherwise), and both are measured.
``--max-async-tasks`` is the per-process concurrency (100, the others' ``max_jobs``; it is also
taskiq's default). JSON via taskiq's ``ORJSONSerializer`` for messages and results (taskiq's
message default is JSON already; the result backend's default is pickle). taskiq uses uvloop by
itself when it is installed (the ``uv`` extra).

taskiq has no chord (taskiq-pipelines, a separate package, chains steps); the chord row is done
from the client: kick the K headers, wait until all K results are stored, read them
(``get_result`` each) and kick the body with them.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from taskiq.serializers import ORJSONSerializer
from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

if TYPE_CHECKING:  # mypy checks this module against the bench package
    from bench import cmp_common as common
else:  # at run time bench/ is on sys.path (the script's own dir)
    import cmp_common as common

DB = int(os.environ.get("BENCH_DB", "13"))
URL = f"redis://{common.REDIS_HOST}:{common.REDIS_PORT}/{DB}"
STREAM = "taskiq"  # the broker's default queue_name: the stream key
GROUP = "taskiq"  # and its default consumer group

broker = RedisStreamBroker(url=URL, queue_name=STREAM, consumer_group_name=GROUP).with_serializer(ORJSONSerializer())
broker = broker.with_result_backend(
    RedisAsyncResultBackend(redis_url=URL, result_ex_time=3600, serializer=ORJSONSerializer())
)


@broker.task(task_name="bench.noop")  # type: ignore[untyped-decorator]  # taskiq is not in the project venv
async def noop() -> None:
    return None


@broker.task(task_name="bench.sleep")  # type: ignore[untyped-decorator]  # taskiq is not in the project venv
async def sleep() -> None:
    await asyncio.sleep(0.01)


@broker.task(task_name="bench.io")  # type: ignore[untyped-decorator]  # taskiq is not in the project venv
async def io() -> None:
    """One Redis round trip with taskiq's own client (a redis.asyncio client on the broker's pool)."""
    async with aioredis.Redis(connection_pool=broker.connection_pool) as client:
        await client.incr(common.IO_KEY)


@broker.task(task_name="bench.stamp")  # type: ignore[untyped-decorator]  # taskiq is not in the project venv
async def stamp() -> float:
    """When the job started, by the worker's clock (same machine as the client)."""
    return time.time()


@broker.task(task_name="bench.collect")  # type: ignore[untyped-decorator]  # taskiq is not in the project venv
async def collect(results: list[Any]) -> int:
    return len(results)


TASKS: dict[str, Any] = {"noop": noop, "sleep": sleep, "io": io}


class Client:
    def __init__(self, p: common.Params) -> None:
        if p.db != DB:
            raise SystemExit(f"BENCH_DB={DB} but --db {p.db}: the broker is built from BENCH_DB")
        self.p = p
        self.redis = common.sync_redis(p.db)
        self.aredis = aioredis.Redis(host=common.REDIS_HOST, port=common.REDIS_PORT, db=p.db)
        self.workers = common.Workers(p.logdir, "taskiq")

    def start_workers(self, count: int) -> None:
        cli = Path(sys.executable).parent / "taskiq"
        argv = [str(cli)] if cli.exists() else [sys.executable, "-m", "taskiq"]
        argv += [
            "worker",
            "cmp_taskiq:broker",
            "--workers",
            str(count),
            "--max-async-tasks",
            str(self.p.max_jobs),
            "--log-level",
            "WARNING",
        ]
        self.workers.start(argv, {"BENCH_DB": str(self.p.db)})

    def unfinished(self) -> int:
        """Messages not yet delivered (lag) + delivered but not acknowledged (pending); the ack comes
        after the result is stored, so 0 means every result is stored."""
        g = common.stream_group(self.redis, STREAM, GROUP)
        if g is None:
            raise RuntimeError(f"no consumer group {GROUP!r} on stream {STREAM!r}")
        if g.get("lag") is None:  # Redis cannot tell (entries deleted); not the case here
            raise RuntimeError(f"consumer group lag unknown: {g}")
        return int(g["lag"]) + int(g["pending"])

    async def drained(self) -> bool:
        return self.unfinished() == 0

    async def wait_drained(self) -> float:
        return await common.async_wait_until(self.drained, self.p.timeout, alive=self.workers.check_alive)

    async def wait_claimed(self) -> None:
        async def claimed() -> bool:
            return common.stream_group_started(self.redis, STREAM, GROUP)

        await common.async_wait_until(claimed, self.p.timeout, interval=0.002, alive=self.workers.check_alive)

    async def enqueue(self, task: Any, count: int, batch: int = 100, keep: bool = True) -> list[Any]:
        """``kiq()`` with up to ``batch`` calls in flight (one XADD each)."""
        out: list[Any] = []
        for i in range(0, count, batch):
            handles = await asyncio.gather(*(task.kiq() for _ in range(min(batch, count - i))))
            if keep:
                out.extend(handles)
        return out

    async def values(self, handles: list[Any]) -> list[Any]:
        out: list[Any] = []
        for batch in common.chunks(handles, 100):
            out.extend(r.return_value for r in await asyncio.gather(*(h.get_result() for h in batch)))
        return out

    def count_stored(self, ids: list[str]) -> int:
        return len(ids) - common.ResultTracker(self.redis, lambda i: i, ids).remaining()

    async def warm_up(self) -> None:
        handles = [await stamp.kiq() for _ in range(20)]
        await asyncio.gather(*(h.wait_result(check_interval=0.01, timeout=60) for h in handles))

    async def drain(self) -> dict[str, Any]:
        p = self.p
        memory = common.MemoryProbe(p)
        memory.read("empty", settle=False)
        first = await stamp.kiq()  # a stream: FIFO, the stamp is read first
        t0 = time.perf_counter()
        handles = await self.enqueue(TASKS[p.task], p.jobs)
        enqueue_s = time.perf_counter() - t0
        memory.read("queued")
        self.start_workers(p.procs)
        await self.wait_claimed()
        cpu0 = self.workers.cpu_seconds()  # start-up (imports) excluded: the first messages are read
        done_at = await self.wait_drained()
        cpu = self.workers.cpu_seconds() - cpu0
        self.workers.stop()
        memory.read("drained")
        started_at = float((await first.get_result()).return_value)
        stored = self.count_stored([h.task_id for h in handles])
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
        """Redis's work per job with a worker already running: ``kiq()``, claim (XREADGROUP), run,
        result stored, ack, one ``get_result()`` per job (a single GET, no wait). Done: the consumer
        group has no lag and nothing pending (the ack follows the stored result)."""
        p = self.p
        self.start_workers(p.procs)
        await self.warm_up()
        probe = common.CostProbe(p, self.workers)
        probe.mark()
        await asyncio.sleep(common.IDLE_S)
        probe.mark()
        handles = await self.enqueue(noop, p.jobs)

        def unfinished() -> int:
            g = common.stream_group(probe.redis, STREAM, GROUP)
            return 1 if g is None or g.get("lag") is None else int(g["lag"]) + int(g["pending"])

        await probe.wait_async(unfinished)
        results = await common.read_all([h.get_result for h in handles])
        probe.mark()
        stored = sum(1 for r in results if not r.is_err)
        return {**probe.summary(p.jobs), "ok": stored == p.jobs, "stored": stored}

    async def latency(self) -> dict[str, Any]:
        """taskiq's result backend publishes nothing when a result is stored (``wait_result`` polls every
        0.2 s by default), so results are noticed by one poller checking every outstanding task every
        2 ms, as for arq."""
        p = self.p
        self.start_workers(1)
        await self.warm_up()
        sent: dict[str, float] = {}
        done: dict[str, float] = {}
        handles: list[Any] = []
        finished = asyncio.Event()

        async def observe() -> None:
            while not (finished.is_set() and len(done) == len(sent)):
                waiting = [i for i in sent if i not in done]
                if waiting:
                    async with self.aredis.pipeline(transaction=False) as pipe:
                        for task_id in waiting:
                            pipe.exists(task_id)
                        found = await pipe.execute()
                    now = time.time()
                    for task_id, hit in zip(waiting, found, strict=True):
                        if hit:
                            done[task_id] = now
                await asyncio.sleep(0.002)

        async def one() -> None:
            before = time.time()
            handle = await stamp.kiq()
            sent[handle.task_id] = before
            handles.append(handle)

        observer = asyncio.create_task(observe())
        t0 = time.perf_counter()
        running = []
        for offset in common.trickle_offsets(p.jobs, p.rate):
            pause = t0 + offset - time.perf_counter()
            if pause > 0:
                await asyncio.sleep(pause)
            running.append(asyncio.create_task(one()))
        await asyncio.gather(*running)
        sent_s = time.perf_counter() - t0
        finished.set()
        await asyncio.wait_for(observer, p.timeout)
        stamps = await self.values(handles)
        starts = [float(s) - sent[h.task_id] for s, h in zip(stamps, handles, strict=True)]
        results = [done[h.task_id] - sent[h.task_id] for h in handles]
        return common.trickle_summary(starts, results, sent_s)

    async def chord(self) -> dict[str, Any]:
        """Per size: K independent tasks (done when all results are stored), then the client-side chord."""
        self.start_workers(1)
        await self.warm_up()
        out: dict[str, Any] = {"chord_method": "client"}
        for size in self.p.chord_sizes:
            t0 = time.perf_counter()
            await self.enqueue(noop, size)
            await self.wait_drained()
            out[f"group_{size}_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            headers = await self.enqueue(noop, size)
            await self.wait_drained()  # nothing else is queued on this db: drained = every header stored
            results = await self.values(headers)
            body = await collect.kiq(results)
            counted = (await body.wait_result(check_interval=0.002, timeout=self.p.timeout)).return_value
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
        return self.unfinished() < 5000

    async def backlog(self) -> dict[str, Any]:
        """``p.backlog`` no-op tasks queued with no worker running (taskiq has no bulk kick: ``kiq()``
        with 100 in flight); drain rate over the first ``p.jobs``."""
        p = self.p
        first = await stamp.kiq()

        async def send(n: int) -> None:
            await self.enqueue(noop, n, keep=False)

        preload_rate = await common.preload_async(send, p.backlog, p.preload_limit)
        self.start_workers(1)
        await self.wait_claimed()
        cpu0 = self.workers.cpu_seconds()

        async def measured() -> bool:
            return self.unfinished() <= p.backlog - p.jobs

        done_at = await common.async_wait_until(measured, p.timeout, alive=self.workers.check_alive)
        cpu = self.workers.cpu_seconds() - cpu0
        self.workers.stop()
        started_at = float((await first.get_result()).return_value)
        return common.backlog_summary(p, preload_rate, started_at, done_at, cpu)


async def run(p: common.Params) -> dict[str, Any]:
    common.flush(p.db)
    client = Client(p)
    await broker.startup()  # the client side: creates the stream's consumer group before anything is kicked
    try:
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
        await broker.shutdown()
        await client.aredis.aclose()
        client.redis.close()
        common.flush(p.db)  # leave nothing behind in the shared Redis


def main(p: common.Params) -> dict[str, Any]:
    return common.run_async(run, p)


if __name__ == "__main__":
    common.run_main(main)
