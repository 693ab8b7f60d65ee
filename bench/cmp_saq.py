"""SAQ 0.26 in the benchmark: the settings its worker CLI loads (``saq cmp_saq.settings``) and the client.

Runs from ``.bench-venv/saq`` (``saq[redis,hiredis]``: SAQ's own extras for a Redis queue with
redis-py's C parser, as its install notes suggest). The worker is SAQ's CLI, ``saq
cmp_saq.settings --workers N`` (its documented way to start workers, and to run several
processes); ``settings`` is a callable returning the settings dict, which SAQ accepts. Same
settings as the others where they mean the same thing: ``concurrency`` = ``--max-jobs`` (100),
results kept (SAQ keeps the finished job, result included, for the job's ``ttl``, 600 s by
default), JSON through orjson (SAQ's default is the stdlib ``json``; ``Queue(dump=, load=)`` is its
documented hook, arq gets the same), uvloop as for tasks_engine and arq, default log level
(WARNING: no line per job). Everything else is SAQ's default: BLMOVE-based dequeue (no polling),
``timeout`` 10 s and one attempt per job.

SAQ has no chord: the chord row is the closest thing its docs describe, done from the client —
enqueue the K headers, wait until they are all finished, fetch their K results (one MGET via
``Queue.jobs``) and run the body with them (``Queue.apply``).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from saq import Queue
from saq.queue.base import JobError

if TYPE_CHECKING:  # mypy checks this module against the bench package
    from bench import cmp_common as common
else:  # at run time bench/ is on sys.path (the script's own dir)
    import cmp_common as common

JOB_CHANNEL = "saq:job:default:"  # SAQ publishes every status change of a job on its id


def make_queue(db: int) -> Any:
    url = f"redis://{common.REDIS_HOST}:{common.REDIS_PORT}/{db}"
    return Queue.from_url(url, dump=orjson.dumps, load=orjson.loads)


async def noop(ctx: dict[str, Any]) -> None:
    return None


async def sleep(ctx: dict[str, Any]) -> None:
    await asyncio.sleep(0.01)


async def io(ctx: dict[str, Any]) -> None:
    """One Redis round trip with SAQ's own client (the job's queue's redis.asyncio client)."""
    await ctx["job"].get_queue().redis.incr(common.IO_KEY)


async def stamp(ctx: dict[str, Any]) -> float:
    """When the job started, by the worker's clock (same machine as the client)."""
    return time.time()


async def collect(ctx: dict[str, Any], *, results: list[Any]) -> int:
    return len(results)


def settings() -> dict[str, Any]:
    """What ``saq cmp_saq.settings`` loads (called once per worker process, before its loop exists)."""
    try:
        import uvloop

        uvloop.install()  # SAQ's worker creates its loop with asyncio.new_event_loop()
    except ImportError:
        pass
    return {
        "queue": make_queue(int(os.environ["BENCH_DB"])),
        "functions": [noop, sleep, io, stamp, collect],
        "concurrency": int(os.environ.get("BENCH_MAX_JOBS", "100")),
    }


class Client:
    def __init__(self, p: common.Params) -> None:
        self.p = p
        self.queue = make_queue(p.db)
        self.workers = common.Workers(p.logdir, "saq")

    def start_workers(self, count: int) -> None:
        cli = Path(sys.executable).parent / "saq"
        argv = [str(cli)] if cli.exists() else [sys.executable, "-m", "saq"]
        argv += ["cmp_saq.settings", "--workers", str(count)]
        env = {"BENCH_DB": str(self.p.db), "BENCH_MAX_JOBS": str(self.p.max_jobs)}
        self.workers.start(argv, env, term_group=True)

    async def unfinished(self) -> int:
        # A job leaves SAQ's "incomplete" zset in the MULTI that stores its finished state and result.
        return int(await self.queue.count("incomplete"))

    async def drained(self) -> bool:
        return await self.unfinished() == 0

    async def wait_drained(self) -> float:
        return await common.async_wait_until(self.drained, self.p.timeout, alive=self.workers.check_alive)

    async def wait_claimed(self, queued: int) -> None:
        async def claimed() -> bool:  # BLMOVE moved a first job from "queued" to "active"
            return int(await self.queue.count("queued")) < queued

        await common.async_wait_until(claimed, self.p.timeout, interval=0.002, alive=self.workers.check_alive)

    async def enqueue(self, function: str, count: int, batch: int = 100, keep: bool = True) -> list[Any]:
        """``Queue.enqueue`` with up to ``batch`` calls in flight (SAQ itself caps them at 20)."""
        out: list[Any] = []
        for i in range(0, count, batch):
            jobs = await asyncio.gather(*(self.queue.enqueue(function) for _ in range(min(batch, count - i))))
            if keep:
                out.extend(j for j in jobs if j is not None)
        return out

    async def fetch(self, keys: list[str]) -> list[Any]:
        out: list[Any] = []
        for batch in common.chunks(keys, 2000):
            out.extend(await self.queue.jobs(batch))
        return out

    async def warm_up(self) -> None:
        await asyncio.gather(*(self.queue.apply("stamp", poll_interval=0.01, timeout=60) for _ in range(20)))

    async def drain(self) -> dict[str, Any]:
        p = self.p
        memory = common.MemoryProbe(p)
        memory.read("empty", settle=False)
        first = await self.queue.enqueue("stamp")  # SAQ's queue is a list: FIFO, the stamp runs first
        t0 = time.perf_counter()
        jobs = await self.enqueue(p.task, p.jobs)
        enqueue_s = time.perf_counter() - t0
        memory.read("queued")
        self.start_workers(p.procs)
        await self.wait_claimed(p.jobs + 1)
        cpu0 = self.workers.cpu_seconds()  # start-up (imports) excluded: the first job is running
        done_at = await self.wait_drained()
        cpu = self.workers.cpu_seconds() - cpu0
        self.workers.stop()
        memory.read("drained")
        await first.refresh()
        finished = await self.fetch([j.key for j in jobs])
        if first.result is not None:
            started_at = float(first.result)
        else:  # the stamp job itself was swept (the SAQ race below): the first start SAQ recorded
            started_at = min(j.started for j in finished if j is not None and j.started) / 1000
        stored = sum(1 for j in finished if j is not None and j.status == "complete")
        # Seen once in ~10 runs: a job BLMOVEd to "active" but not yet marked active when the sweep
        # that SAQ's worker runs at start-up looks at "active" is swept (aborted). Reported, not hidden.
        other = Counter(
            "missing" if j is None else str(j.status.value) for j in finished if j is None or j.status != "complete"
        )
        return {
            "enqueue_rate": p.jobs / enqueue_s,
            "drain_rate": (p.jobs + 1) / (done_at - started_at),
            "drain_s": done_at - started_at,
            "cpu_us_per_job": cpu / p.jobs * 1e6,
            "ok": stored == p.jobs,
            "stored": stored,
            **({"not_complete": dict(other)} if other else {}),
            **memory.summary(p.jobs + 1),
            **common.io_summary(p),
        }

    async def cost(self) -> dict[str, Any]:
        """Redis's work per job with a worker already running: ``Queue.enqueue``, claim (BLMOVE), run,
        finished job stored with its result, one ``Job.refresh()`` per job (a single read, no wait)."""
        p = self.p
        self.start_workers(p.procs)
        try:
            await self.warm_up()
        except JobError:  # a warm-up job swept by the worker's start-up sweep (the race drain() notes)
            await self.warm_up()  # not measured: only the workers' readiness matters here
        probe = common.CostProbe(p, self.workers)
        probe.mark()
        await asyncio.sleep(common.IDLE_S)
        probe.mark()
        jobs = await self.enqueue("noop", p.jobs)
        incomplete = self.queue.namespace("incomplete")
        await probe.wait_async(lambda: int(probe.redis.zcard(incomplete)))
        await common.read_all([j.refresh for j in jobs])
        probe.mark()
        stored = sum(1 for j in jobs if j.status == "complete")
        return {**probe.summary(p.jobs), "ok": stored == p.jobs, "stored": stored}

    async def latency(self) -> dict[str, Any]:
        """Open-loop trickle; enqueue → start from the stamp the job returns, enqueue → result when
        SAQ's "complete" notification (what ``Job.refresh(until_complete=...)`` listens for) arrives at
        one pattern subscription."""
        p = self.p
        self.start_workers(1)
        await self.warm_up()
        sent: dict[str, float] = {}
        with common.ChannelObserver(
            p.db, JOB_CHANNEL + "*", lambda ch: ch[len(JOB_CHANNEL) :], lambda data: data == b"complete"
        ) as observer:

            async def one() -> None:
                before = time.time()
                job = await self.queue.enqueue("stamp")
                sent[job.key] = before

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
                return all(k in observer.seen for k in sent)

            await common.async_wait_until(all_seen, p.timeout, alive=self.workers.check_alive)
        keys = list(sent)
        jobs = await self.fetch(keys)
        starts = [float(j.result) - sent[k] for k, j in zip(keys, jobs, strict=True)]
        results = [observer.seen[k] - sent[k] for k in keys]
        return common.trickle_summary(starts, results, sent_s)

    async def chord(self) -> dict[str, Any]:
        """Per size: K independent jobs (done when all are finished), then the client-side chord."""
        self.start_workers(1)
        await self.warm_up()
        out: dict[str, Any] = {"chord_method": "client"}
        for size in self.p.chord_sizes:
            t0 = time.perf_counter()
            await self.enqueue("noop", size)
            await self.wait_drained()
            out[f"group_{size}_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            headers = await self.enqueue("noop", size)
            await self.wait_drained()  # nothing else is queued on this db: drained = every header finished
            results = [j.result for j in await self.fetch([j.key for j in headers])]
            counted = await self.queue.apply(
                "collect", results=results, poll_interval=0.002, timeout=int(self.p.timeout)
            )
            out[f"chord_{size}_s"] = time.perf_counter() - t0
            if counted != size:
                raise RuntimeError(f"chord body saw {counted} results, expected {size}")
        return out

    async def rss(self) -> dict[str, Any]:
        self.start_workers(1)
        task = self.p.task
        return await common.measure_rss(
            self.p, self.workers, lambda n: self.enqueue(task, n, keep=False), self.wait_drained, self._below_5000
        )

    async def _below_5000(self) -> bool:
        return await self.unfinished() < 5000

    async def backlog(self) -> dict[str, Any]:
        """``p.backlog`` no-op jobs queued with no worker running; drain rate over the first ``p.jobs``."""
        p = self.p
        first = await self.queue.enqueue("stamp")

        async def send(n: int) -> None:
            await self.enqueue("noop", n, keep=False)

        preload_rate = await common.preload_async(send, p.backlog, p.preload_limit)
        self.start_workers(1)
        await self.wait_claimed(p.backlog + 1)
        cpu0 = self.workers.cpu_seconds()

        async def measured() -> bool:
            return await self.unfinished() <= p.backlog - p.jobs

        done_at = await common.async_wait_until(measured, p.timeout, alive=self.workers.check_alive)
        cpu = self.workers.cpu_seconds() - cpu0
        self.workers.stop()
        await first.refresh()
        return common.backlog_summary(p, preload_rate, float(first.result), done_at, cpu)


async def run(p: common.Params) -> dict[str, Any]:
    common.flush(p.db)
    client = Client(p)
    await client.queue.connect()
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
        await client.queue.disconnect()
        common.flush(p.db)  # leave nothing behind in the shared Redis


def main(p: common.Params) -> dict[str, Any]:
    return common.run_async(run, p)


if __name__ == "__main__":
    common.run_main(main)
