"""Enqueue throughput of the blocking ``delay_sync()`` next to the async ``delay()``, in one run.

    .venv/bin/python bench/sync_delay.py                 # 5,000 calls per case, 3 rounds, medians
    .venv/bin/python bench/sync_delay.py --calls 20000 --rounds 5

Cases, each N calls, no worker running (enqueue only: the time until every message is in Redis):
async ``delay()`` one after another in one coroutine, and in 8 coroutines at once (``gather``);
``delay_sync()`` from 1 thread and from 8 threads (the process's one loop thread sends for all of
them). The order of the cases alternates each round. Uses its own key prefix on ``REDIS_URL``
(default db 0) and deletes its keys afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable

import redis

from tasks_engine import configure, shared_task
from tasks_engine.client import sync
from tasks_engine.core.config import EngineSettings
from tasks_engine.store import get_broker

THREADS = 8


@shared_task(name="bench.sync_noop")
async def noop(i: int) -> int:
    return i


async def _async_case(calls: int, concurrency: int) -> float:
    per = calls // concurrency

    async def one_after_another() -> None:
        for i in range(per):
            await noop.delay(i)

    start = time.perf_counter()
    await asyncio.gather(*(one_after_another() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    await get_broker().close()
    return per * concurrency / elapsed


def async_case(calls: int, concurrency: int) -> float:
    return asyncio.run(_async_case(calls, concurrency))


def sync_case(calls: int, threads: int) -> float:
    per = calls // threads
    noop.delay_sync(0)  # the loop thread and its connection exist before the clock starts, as in a server
    barrier = threading.Barrier(threads + 1)

    def work() -> None:
        barrier.wait()
        for i in range(per):
            noop.delay_sync(i)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    sync.shutdown()
    return per * threads / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=5000, help="calls per case and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    opts = parser.parse_args()
    prefix = f"benchsync{uuid.uuid4().hex[:8]}"
    configure(EngineSettings(redis_url=opts.redis_url, key_prefix=prefix, beat_enabled=False))
    cases: dict[str, Callable[[], float]] = {
        "async delay(), 1 coroutine": lambda: async_case(opts.calls, 1),
        "delay_sync(), 1 thread": lambda: sync_case(opts.calls, 1),
        f"async delay(), {THREADS} coroutines": lambda: async_case(opts.calls, THREADS),
        f"delay_sync(), {THREADS} threads": lambda: sync_case(opts.calls, THREADS),
    }
    rates: dict[str, list[float]] = {name: [] for name in cases}
    client = redis.Redis.from_url(opts.redis_url)
    try:
        for round_no in range(opts.rounds):
            order = list(cases) if round_no % 2 == 0 else list(reversed(cases))
            for name in order:
                rates[name].append(cases[name]())
                keys = list(client.scan_iter(match=f"{{{prefix}}}:*", count=1000))
                if keys:
                    client.delete(*keys)
    finally:
        keys = list(client.scan_iter(match=f"{{{prefix}}}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    medians = {name: statistics.median(values) for name, values in rates.items()}
    load = os.getloadavg()[0]
    print(f"sync vs async enqueue: {opts.calls} calls per case, {opts.rounds} rounds, medians (load {load:.2f})")
    for name, value in medians.items():
        runs = ", ".join(f"{v:,.0f}" for v in rates[name])
        print(f"  {name:<28} {value:>10,.0f} calls/s   ({runs})")
    one = medians["delay_sync(), 1 thread"] / medians["async delay(), 1 coroutine"]
    many = medians[f"delay_sync(), {THREADS} threads"] / medians[f"async delay(), {THREADS} coroutines"]
    print(f"  ratio sync/async, 1 thread vs 1 coroutine:   {one:.2f}")
    print(f"  ratio sync/async, {THREADS} threads vs {THREADS} coroutines: {many:.2f}")


if __name__ == "__main__":
    main()
