"""tasks_engine in the benchmark: the tasks its workers import (``-I cmp_te``) and the client.

Workers are real ``tasks-engine worker`` processes (uvloop, ``--max-jobs``, no beat) on their own
Redis db; the client enqueues with the public API (``delay``, ``group``, ``chord``) and waits with
``AsyncResult.get`` (pub/sub) or, for bulk drains, on the queue and lease sets being empty (the
result is written in the same transaction as the ack, so empty means every result is stored).
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import cmp_common as common

from tasks_engine import AsyncResult, chord, group, shared_task
from tasks_engine.client.task import Task
from tasks_engine.store import get_broker


@shared_task(name="bench.noop")
async def noop() -> None:
    return None


@shared_task(name="bench.sleep")
async def sleep() -> None:
    await asyncio.sleep(0.01)


@shared_task(name="bench.io")
async def io() -> None:
    """One Redis round trip with the engine's own client, as a task doing I/O would."""
    await get_broker().redis.incr(common.IO_KEY)


@shared_task(name="bench.stamp")
async def stamp() -> float:
    """When the job started, by the worker's clock (same machine as the client)."""
    return time.time()


@shared_task(name="bench.collect")
async def collect(results: list[Any]) -> int:
    return len(results)


TASKS: dict[str, Task] = {"noop": noop, "sleep": sleep, "io": io}


class Client:
    def __init__(self, p: common.Params) -> None:
        self.p = p
        self.workers = common.Workers(p.logdir, "tasks_engine")
        broker = get_broker()
        self.redis = broker.redis
        self.keys = broker.keys  # the engine's own key names (whatever its key layout)

    def start_workers(self, count: int) -> None:
        argv = [
            sys.executable,
            "-m",
            "tasks_engine.cli",
            "worker",
            "--app",
            "none",
            "-I",
            "cmp_te",
            "-j",
            str(self.p.max_jobs),
            "--no-beat",
        ]
        self.workers.start(argv, {"TE_LOG_LEVEL": "WARNING", "TE_BEAT_ENABLED": "false"}, count=count)

    async def remaining(self) -> int:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self.keys.queue("default"))
            pipe.zcard(self.keys.active)
            pipe.zcard(self.keys.delayed)
            counts = await pipe.execute()
        return int(sum(counts))

    async def drained(self) -> bool:
        return await self.remaining() == 0

    async def wait_drained(self, timeout: float | None = None) -> float:
        return await common.async_wait_until(self.drained, timeout or self.p.timeout, alive=self.workers.check_alive)

    async def count_success(self, ids: list[str]) -> int:
        ok = 0
        for batch in common.chunks(ids, 2000):
            async with self.redis.pipeline(transaction=False) as pipe:
                for task_id in batch:
                    pipe.hget(self.keys.result(task_id), "state")
                ok += sum(1 for s in await pipe.execute() if s == b"SUCCESS")
        return ok

    async def enqueue(self, task: Task, count: int, batch: int = 100) -> list[AsyncResult]:
        """``delay()`` with up to ``batch`` calls in flight, as a busy async service would."""
        out: list[AsyncResult] = []
        for i in range(0, count, batch):
            out.extend(await asyncio.gather(*(task.delay() for _ in range(min(batch, count - i)))))
        return out

    async def warm_up(self) -> None:
        handles = [await stamp.delay() for _ in range(20)]
        await asyncio.gather(*(h.get(timeout=60) for h in handles))

    # ------------------------------------------------------------------ workloads
    async def drain(self) -> dict[str, Any]:
        """Enqueue N jobs with no worker running (enqueue rate), then start the workers: drain rate is
        N / (first job start → last result stored), so process start-up is not counted."""
        p = self.p
        memory = common.MemoryProbe(p)
        memory.read("empty", settle=False)
        first = await stamp.delay()
        t0 = time.perf_counter()
        handles = await self.enqueue(TASKS[p.task], p.jobs)
        enqueue_s = time.perf_counter() - t0
        memory.read("queued")
        self.start_workers(p.procs)
        await common.async_wait_until(
            lambda: self._queued_below(p.jobs + 1), p.timeout, interval=0.002, alive=self.workers.check_alive
        )
        cpu0 = self.workers.cpu_seconds()  # start-up (imports) excluded: a first job is claimed
        done_at = await self.wait_drained()
        cpu = self.workers.cpu_seconds() - cpu0
        self.workers.stop()
        memory.read("drained")
        started_at = float(await first.get(timeout=30))
        ok = await self.count_success([h.id for h in handles])
        return {
            "enqueue_rate": p.jobs / enqueue_s,
            "drain_rate": (p.jobs + 1) / (done_at - started_at),
            "drain_s": done_at - started_at,
            "cpu_us_per_job": cpu / p.jobs * 1e6,
            "ok": ok == p.jobs,
            "stored": ok,
            **memory.summary(p.jobs + 1),
            **common.io_summary(p),
        }

    async def cost(self) -> dict[str, Any]:
        """Redis's work per job with a worker already running: ``delay()``, claim, run, result stored,
        one ``AsyncResult.result()`` per job (a single read that never waits)."""
        p = self.p
        self.start_workers(p.procs)
        await self.warm_up()
        probe = common.CostProbe(p, self.workers)
        probe.mark()
        await asyncio.sleep(common.IDLE_S)
        probe.mark()
        handles = await self.enqueue(noop, p.jobs)
        keys = [self.keys.queue("default"), self.keys.active, self.keys.delayed]
        await probe.wait_async(lambda: sum(int(probe.redis.zcard(k)) for k in keys))
        await common.read_all([h.result for h in handles])
        probe.mark()
        ok = await self.count_success([h.id for h in handles])
        return {**probe.summary(p.jobs), "ok": ok == p.jobs, "stored": ok}

    async def _queued_below(self, limit: int) -> bool:
        return int(await self.redis.zcard(self.keys.queue("default"))) < limit

    async def latency(self) -> dict[str, Any]:
        """Open-loop trickle; enqueue → start from the stamp the job returns, enqueue → result when
        ``get()`` (woken by pub/sub) returns."""
        p = self.p
        self.start_workers(1)
        await self.warm_up()
        starts: list[float] = []
        results: list[float] = []
        last_sent = [0.0]  # perf_counter when the last delay() returned: the achieved send rate

        async def one() -> None:
            sent = time.time()
            handle = await stamp.delay()
            last_sent[0] = max(last_sent[0], time.perf_counter())
            started = float(await handle.get(timeout=60))
            results.append(time.time() - sent)
            starts.append(started - sent)

        t0 = time.perf_counter()
        running = []
        for offset in common.trickle_offsets(p.jobs, p.rate):
            pause = t0 + offset - time.perf_counter()
            if pause > 0:
                await asyncio.sleep(pause)
            running.append(asyncio.create_task(one()))
        await asyncio.gather(*running)
        return common.trickle_summary(starts, results, last_sent[0] - t0)

    async def chord(self) -> dict[str, Any]:
        """Per size: K independent jobs sent as one group (wait: all results stored), then a chord of
        K headers (wait: the body's result, which needs every header result)."""
        self.start_workers(1)
        await self.warm_up()
        out: dict[str, Any] = {}
        for size in self.p.chord_sizes:
            sigs = [noop.s() for _ in range(size)]
            t0 = time.perf_counter()
            await group(sigs).apply_async()
            await self.wait_drained()
            out[f"group_{size}_s"] = time.perf_counter() - t0
            header, body = [noop.s() for _ in range(size)], collect.s()
            t0 = time.perf_counter()
            result = await chord(header, body).apply_async()
            counted = await result.get(timeout=self.p.timeout)
            out[f"chord_{size}_s"] = time.perf_counter() - t0
            if counted != size:
                raise RuntimeError(f"chord body saw {counted} results, expected {size}")
        return out

    async def rss(self) -> dict[str, Any]:
        """RSS of the worker after a warm-up, then after ``jobs`` more jobs (backlog kept under 5,000)."""
        self.start_workers(1)
        task = TASKS[self.p.task]
        return await common.measure_rss(
            self.p, self.workers, lambda n: self.enqueue(task, n), self.wait_drained, lambda: self._below(5000)
        )

    async def _below(self, limit: int) -> bool:
        return await self.remaining() < limit

    async def backlog(self) -> dict[str, Any]:
        """``p.backlog`` no-op jobs queued with no worker running (``group(...).apply_async()`` in
        chunks of 1,000: one transaction per chunk, the engine's bulk enqueue), then one worker
        process: drain rate over the first ``p.jobs`` (the stamp job goes first)."""
        p = self.p
        first = await stamp.delay()

        async def send(n: int) -> None:
            await group([noop.s() for _ in range(n)]).apply_async()

        preload_rate = await common.preload_async(send, p.backlog, p.preload_limit, chunk=1000)
        self.start_workers(1)
        await common.async_wait_until(
            lambda: self._queued_below(p.backlog + 1), p.timeout, interval=0.002, alive=self.workers.check_alive
        )
        cpu0 = self.workers.cpu_seconds()
        done_at = await common.async_wait_until(
            lambda: self._at_most(p.backlog - p.jobs), p.timeout, alive=self.workers.check_alive
        )
        cpu = self.workers.cpu_seconds() - cpu0
        self.workers.stop()
        started_at = float(await first.get(timeout=30))
        out: dict[str, Any] = common.backlog_summary(p, preload_rate, started_at, done_at, cpu)
        return out

    async def _at_most(self, limit: int) -> bool:
        return await self.remaining() <= limit


async def run(p: common.Params) -> dict[str, Any]:
    common.flush(p.db)
    client = Client(p)
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
        broker = get_broker()
        await broker.close()
        common.flush(p.db)  # leave nothing behind in the shared Redis


def main(p: common.Params) -> dict[str, Any]:
    return common.run_async(run, p)


if __name__ == "__main__":
    common.run_main(main)
