"""Where 100,000 deferred jobs live: Redis memory, not worker memory.

A worker process runs while 100,000 jobs with an eta a day ahead are enqueued (Celery would hold
each one in the worker's RAM until due). Printed: the worker's RSS and Redis ``used_memory``
before and after, the memory of this run's own keys (``MEMORY USAGE``), per job, and how fast a
ready job still runs with all of them waiting.

Each job is the real wire message of ``apply_async(eta=...)``; the first is built through the API
and the rest are copies under fresh uuid4 ids (same size), because building 100,000 signatures in
Python takes longer than the measurement itself on a shared machine.

Run: ``.venv/bin/python bench/eta_memory.py [--jobs 100000]``. It starts its own worker under a
unique key prefix and removes its keys and process at the end. ``used_memory`` is server-wide, so
other clients of the same Redis add noise; the per-key figure is this run's alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from tasks_engine import shared_task  # noqa: E402
from tasks_engine.store import Enqueue, get_broker  # noqa: E402


@shared_task(name="bench.deferred_noop")
async def deferred_noop(i: int, payload: str = "") -> int:
    return i


def mb(n: float) -> float:
    return round(n / 1024 / 1024, 2)


async def used_memory() -> int:
    info = await get_broker().redis.info("memory")
    return int(info["used_memory"])


async def keys_memory(prefix: str) -> tuple[int, int]:
    """Bytes and count of this run's keys, by MEMORY USAGE (pipelined)."""
    redis = get_broker().redis
    total, count = 0, 0
    batch: list[bytes] = []

    async def flush() -> None:
        nonlocal total
        async with redis.pipeline(transaction=False) as pipe:
            for key in batch:
                pipe.memory_usage(key, samples=0)
            total += sum(int(v or 0) for v in await pipe.execute())
        batch.clear()

    async for key in redis.scan_iter(match=f"{{{prefix}}}:*", count=2000):
        batch.append(key)
        count += 1
        if len(batch) >= 2000:
            await flush()
    if batch:
        await flush()
    return total, count


async def main(jobs: int) -> dict[str, Any]:
    from tasks_engine.client.plan import Context
    from tasks_engine.client.signature import Signature
    from tasks_engine.core.config import EngineSettings, configure
    from tasks_engine.ops.control import workers as live_workers

    prefix = f"bench-eta-{uuid.uuid4().hex[:8]}"
    configure(EngineSettings(key_prefix=prefix, beat_enabled=False))
    broker = get_broker()
    env = dict(os.environ, TE_KEY_PREFIX=prefix, TE_BEAT_ENABLED="false")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tasks_engine.cli",
            "worker",
            "--app",
            "none",
            "-I",
            "bench.eta_memory",
            "--no-beat",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not await live_workers():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("worker did not start")
            await asyncio.sleep(0.05)
        worker = psutil.Process(proc.pid)
        await asyncio.sleep(2.0)  # let the worker settle (imports done, first claims made)
        rss_before, redis_before = worker.memory_info().rss, await used_memory()

        eta = datetime.now(UTC) + timedelta(days=1)
        template = Signature("bench.deferred_noop", (0, "x" * 100), {}, {"eta": eta}).to_enqueue([], Context())
        started = time.perf_counter()
        for start in range(0, jobs, 5_000):
            items = []
            for _ in range(start, min(start + 5_000, jobs)):
                new_id = str(uuid.uuid4())
                items.append(
                    Enqueue(
                        new_id,
                        template.raw.replace(template.id.encode(), new_id.encode()),
                        template.queue,
                        template.priority,
                        template.eta_ms,
                    )
                )
            await broker.enqueue(items)
        enqueue_s = time.perf_counter() - started
        deferred = await broker.redis.zcard(broker.key("delayed"))

        await asyncio.sleep(3.0)  # the worker keeps claiming (idle rounds) with all of them waiting
        probe_started = time.perf_counter()
        ready = await Signature("bench.deferred_noop", (1,)).apply_async()
        await ready.get(timeout=10)
        ready_ms = (time.perf_counter() - probe_started) * 1000
        await asyncio.sleep(1.0)
        rss_after, redis_after = worker.memory_info().rss, await used_memory()
        own_bytes, own_keys = await keys_memory(prefix)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        leftovers = [k async for k in broker.redis.scan_iter(match=f"{{{prefix}}}:*", count=5000)]
        for start in range(0, len(leftovers), 5000):
            await broker.redis.delete(*leftovers[start : start + 5000])
        await close_quietly(broker)
    return {
        "deferred_jobs": deferred,
        "message_bytes": len(template.raw),
        "enqueue_seconds": round(enqueue_s, 2),
        "worker_rss_before_mb": mb(rss_before),
        "worker_rss_after_mb": mb(rss_after),
        "worker_rss_growth_mb": mb(rss_after - rss_before),
        "redis_used_memory_before_mb": mb(redis_before),
        "redis_used_memory_after_mb": mb(redis_after),
        "redis_used_memory_growth_mb": mb(redis_after - redis_before),
        "own_keys": own_keys,
        "own_keys_memory_mb": mb(own_bytes),
        "redis_bytes_per_deferred_job": round(own_bytes / max(1, deferred)),
        "ready_job_round_trip_ms": round(ready_ms, 1),
    }


async def close_quietly(broker: Any) -> None:
    """Stop the result listener ``get()`` started before closing the client (else it logs a closed connection)."""
    await broker.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    args = parser.parse_args()
    result = asyncio.run(main(args.jobs))
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
