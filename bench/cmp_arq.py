"""Raw arq 0.28 in the benchmark: its worker (``python cmp_arq.py --worker ...``) and the client.

Runs from ``.bench-venv/arq``. Same settings as tasks_engine where they mean the same thing:
``max_jobs``; ``poll_delay`` 0.01 s (arq polls, tasks_engine blocks on a wake-up list), or arq's
default 0.5 s for the latency variant; uvloop; results kept (arq's default 3600 s); JSON
(orjson) instead of arq's default pickle, as tasks_engine must. arq has no chord.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

import cmp_common as common
import orjson
from arq import Worker
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import default_queue_name, in_progress_key_prefix, result_key_prefix
from arq.jobs import Job


def dumps(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj)


async def noop(ctx: dict[str, Any]) -> None:
    return None


async def sleep(ctx: dict[str, Any]) -> None:
    await asyncio.sleep(0.01)


async def io(ctx: dict[str, Any]) -> None:
    """One Redis round trip with arq's own pool (the worker's ``ctx["redis"]``)."""
    await ctx["redis"].incr(common.IO_KEY)


async def stamp(ctx: dict[str, Any]) -> float:
    return time.time()


def settings_for(db: int) -> RedisSettings:
    return RedisSettings(host=common.REDIS_HOST, port=common.REDIS_PORT, database=db)


def run_worker(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", type=int, required=True)
    ap.add_argument("--poll-delay", type=float, required=True)
    ap.add_argument("--max-jobs", type=int, required=True)
    a = ap.parse_args(argv)
    try:
        import uvloop

        uvloop.install()  # arq's Worker takes the loop from the policy
    except ImportError:
        pass
    asyncio.set_event_loop(asyncio.new_event_loop())
    Worker(
        functions=[noop, sleep, io, stamp],
        redis_settings=settings_for(a.db),
        poll_delay=a.poll_delay,
        max_jobs=a.max_jobs,
        job_serializer=dumps,
        job_deserializer=orjson.loads,
        handle_signals=True,
    ).run()


class Client:
    def __init__(self, p: common.Params, pool: ArqRedis) -> None:
        self.p = p
        self.pool = pool
        self.workers = common.Workers(p.logdir, "arq")

    def start_workers(self, count: int) -> None:
        argv = [
            sys.executable,
            str(common.BENCH_DIR / "cmp_arq.py"),
            "--worker",
            "--db",
            str(self.p.db),
            "--poll-delay",
            str(self.p.poll_delay),
            "--max-jobs",
            str(self.p.max_jobs),
        ]
        self.workers.start(argv, count=count)

    async def drained(self) -> bool:
        # arq removes a job from its queue zset only when it finishes, in the MULTI that stores the result.
        return int(await self.pool.zcard(default_queue_name)) == 0

    async def wait_drained(self) -> float:
        return await common.async_wait_until(self.drained, self.p.timeout, alive=self.workers.check_alive)

    async def count_results(self, ids: list[str]) -> int:
        found = 0
        for batch in common.chunks(ids, 2000):
            async with self.pool.pipeline(transaction=False) as pipe:
                for job_id in batch:
                    pipe.exists(result_key_prefix + job_id)
                found += sum(int(x) for x in await pipe.execute())
        return found

    async def enqueue(self, function: str, count: int, batch: int = 100) -> list[Job]:
        out: list[Job] = []
        for i in range(0, count, batch):
            jobs = await asyncio.gather(*(self.pool.enqueue_job(function) for _ in range(min(batch, count - i))))
            out.extend(j for j in jobs if j is not None)
        return out

    async def result(self, job: Job) -> Any:
        return await job.result(timeout=60, poll_delay=0.01)

    async def warm_up(self) -> None:
        jobs = [await self.pool.enqueue_job("stamp") for _ in range(20)]
        await asyncio.gather(*(self.result(j) for j in jobs if j is not None))

    async def drain(self) -> dict[str, Any]:
        p = self.p
        memory = common.MemoryProbe(p)
        memory.read("empty", settle=False)
        first = await self.pool.enqueue_job("stamp")
        assert first is not None
        await asyncio.sleep(0.005)  # arq orders by enqueue time (ms): make the stamp job strictly first
        t0 = time.perf_counter()
        jobs = await self.enqueue(p.task, p.jobs)
        enqueue_s = time.perf_counter() - t0
        memory.read("queued")
        self.start_workers(p.procs)

        async def claimed() -> bool:  # arq keeps running jobs in its queue zset: look for the lease
            return bool(await self.pool.exists(in_progress_key_prefix + first.job_id, result_key_prefix + first.job_id))

        await common.async_wait_until(claimed, p.timeout, interval=0.002, alive=self.workers.check_alive)
        cpu0 = self.workers.cpu_seconds()  # start-up (imports) excluded: the first job is running
        done_at = await self.wait_drained()
        cpu = self.workers.cpu_seconds() - cpu0
        self.workers.stop()
        memory.read("drained")
        started_at = float(await self.result(first))
        stored = await self.count_results([j.job_id for j in jobs])
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
        """Redis's work per job with a worker already running: ``enqueue_job``, poll and claim, run,
        result stored, one ``Job.result_info()`` per job (a single read that never waits)."""
        p = self.p
        self.start_workers(p.procs)
        await self.warm_up()
        probe = common.CostProbe(p, self.workers)
        probe.mark()
        await asyncio.sleep(common.IDLE_S)
        probe.mark()
        jobs = await self.enqueue("noop", p.jobs)
        await probe.wait_async(lambda: int(probe.redis.zcard(default_queue_name)))
        await common.read_all([j.result_info for j in jobs])
        probe.mark()
        stored = await self.count_results([j.job_id for j in jobs])
        return {**probe.summary(p.jobs), "ok": stored == p.jobs, "stored": stored}

    async def latency(self) -> dict[str, Any]:
        """arq publishes nothing when a job ends, so results are noticed by one poller checking every
        outstanding job every 2 ms (arq's own ``Job.result`` polls each job every 0.5 s by default)."""
        p = self.p
        self.start_workers(1)
        await self.warm_up()
        sent: dict[str, float] = {}
        done: dict[str, float] = {}
        jobs: list[Job] = []
        finished = asyncio.Event()

        async def observe() -> None:
            while not (finished.is_set() and len(done) == len(sent)):
                waiting = [j for j in sent if j not in done]
                if waiting:
                    async with self.pool.pipeline(transaction=False) as pipe:
                        for job_id in waiting:
                            pipe.exists(result_key_prefix + job_id)
                        found = await pipe.execute()
                    now = time.time()
                    for job_id, hit in zip(waiting, found, strict=True):
                        if hit:
                            done[job_id] = now
                await asyncio.sleep(0.002)

        async def one() -> None:
            before = time.time()
            job = await self.pool.enqueue_job("stamp")
            assert job is not None
            sent[job.job_id] = before
            jobs.append(job)

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
        starts = [float(await self.result(j)) - sent[j.job_id] for j in jobs]
        results = [done[j.job_id] - sent[j.job_id] for j in jobs]
        return common.trickle_summary(starts, results, sent_s)

    async def rss(self) -> dict[str, Any]:
        self.start_workers(1)
        task = self.p.task
        return await common.measure_rss(
            self.p, self.workers, lambda n: self.enqueue(task, n), self.wait_drained, self._below_5000
        )

    async def _below_5000(self) -> bool:
        return int(await self.pool.zcard(default_queue_name)) < 5000

    async def backlog(self) -> dict[str, Any]:
        """``p.backlog`` no-op jobs queued with no worker running (arq has no bulk enqueue:
        ``enqueue_job`` with 100 in flight), then one worker: drain rate over the first ``p.jobs``."""
        p = self.p
        first = await self.pool.enqueue_job("stamp")
        assert first is not None
        await asyncio.sleep(0.005)  # strictly first (arq orders by enqueue time, ms)

        async def send(n: int) -> None:
            await self.enqueue("noop", n)

        preload_rate = await common.preload_async(send, p.backlog, p.preload_limit)
        self.start_workers(1)

        async def claimed() -> bool:
            return bool(await self.pool.exists(in_progress_key_prefix + first.job_id, result_key_prefix + first.job_id))

        await common.async_wait_until(claimed, p.timeout, interval=0.002, alive=self.workers.check_alive)
        cpu0 = self.workers.cpu_seconds()

        async def measured() -> bool:  # a job leaves the queue zset when it finishes
            return bool(int(await self.pool.zcard(default_queue_name)) <= p.backlog - p.jobs)

        done_at = await common.async_wait_until(measured, p.timeout, alive=self.workers.check_alive)
        cpu = self.workers.cpu_seconds() - cpu0
        self.workers.stop()
        started_at = float(await self.result(first))
        out: dict[str, Any] = common.backlog_summary(p, preload_rate, started_at, done_at, cpu)
        return out


async def run(p: common.Params) -> dict[str, Any]:
    common.flush(p.db)
    pool = await create_pool(settings_for(p.db), job_serializer=dumps, job_deserializer=orjson.loads)
    client = Client(p, pool)
    try:
        if p.workload == "drain":
            return await client.drain()
        if p.workload == "latency":
            return await client.latency()
        if p.workload == "rss":
            return await client.rss()
        if p.workload == "backlog":
            return await client.backlog()
        if p.workload == "cost":
            return await client.cost()
        raise ValueError(f"arq has no {p.workload!r} workload")
    finally:
        client.workers.stop()
        await pool.aclose()
        common.flush(p.db)  # leave nothing behind in the shared Redis


def main(p: common.Params) -> dict[str, Any]:
    return common.run_async(run, p)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        os.environ.setdefault("PYTHONUNBUFFERED", "1")
        run_worker(sys.argv[2:])
    else:
        common.run_main(main)
