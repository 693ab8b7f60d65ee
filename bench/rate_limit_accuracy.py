"""Rate-limit accuracy across worker processes.

Two worker processes share one task declared ``rate_limit="20/s"``; 200 jobs are queued at once.
Each job records the moment it starts (in Redis, so both processes write to one log). Printed:
the achieved overall rate and its deviation from 20/s, and the most starts seen in any 1-second
window (a token bucket of capacity ``burst`` allows at most ``rate + burst`` in a closed 1-s window).

Run: ``.venv/bin/python bench/rate_limit_accuracy.py [--jobs 200] [--rate 20] [--workers 2] [--burst 1]``.
It starts its own workers under a unique key prefix and removes its keys and processes at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tasks_engine import shared_task  # noqa: E402
from tasks_engine.store import get_broker  # noqa: E402

RATE = os.environ.get("BENCH_RATE", "20/s")
BURST = int(os.environ.get("BENCH_BURST", "1"))


@shared_task(name="bench.rate_limited", rate_limit=RATE, rate_limit_burst=BURST)
async def rate_limited(i: int) -> None:
    broker = get_broker()
    await broker.redis.rpush(broker.key("bench-starts"), f"{i}|{time.time()}|{os.getpid()}")


def max_in_window(starts: list[float], width: float = 1.0) -> int:
    """Most starts inside any closed window of ``width`` seconds."""
    best, j = 0, 0
    for i, t in enumerate(starts):
        while starts[j] < t - width:
            j += 1
        best = max(best, i - j + 1)
    return best


def spawn_workers(prefix: str, count: int) -> list[subprocess.Popen[bytes]]:
    env = dict(os.environ, TE_KEY_PREFIX=prefix, TE_BEAT_ENABLED="false", BENCH_RATE=RATE, BENCH_BURST=str(BURST))
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tasks_engine.cli",
                "worker",
                "--app",
                "none",
                "-I",
                "bench.rate_limit_accuracy",
                "--no-beat",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]


async def main(jobs: int, workers: int) -> dict[str, Any]:
    from tasks_engine.client.plan import Context, Plan
    from tasks_engine.client.signature import Signature
    from tasks_engine.core.config import EngineSettings, configure
    from tasks_engine.ops.control import workers as live_workers

    prefix = f"bench-rl-{uuid.uuid4().hex[:8]}"
    configure(EngineSettings(key_prefix=prefix, beat_enabled=False))
    broker = get_broker()
    procs = spawn_workers(prefix, workers)
    try:
        deadline = time.monotonic() + 30
        while len(await live_workers()) < workers:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError("workers did not start")
            await asyncio.sleep(0.05)
        plan = Plan()
        for i in range(jobs):
            Signature("bench.rate_limited", (i,)).plan_into([], Context(), plan)
        queued_at = time.time()
        await plan.execute()  # one transaction: every job is ready at the same moment
        log_key = broker.key("bench-starts")
        deadline = time.monotonic() + jobs / rate_limited.rate.count * rate_limited.rate.period + 30  # type: ignore[union-attr]
        while await broker.redis.llen(log_key) < jobs:
            if time.monotonic() > deadline:
                raise RuntimeError("jobs did not all start in time")
            await asyncio.sleep(0.2)
        rows = [r.decode().split("|") for r in await broker.redis.lrange(log_key, 0, -1)]
        retries = [
            int(v or 0)
            for v in await asyncio.gather(*(broker.redis.hget(broker.result_key(i), "retries") for i in plan.ids))
        ]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        keys = [k async for k in broker.redis.scan_iter(match=f"{{{prefix}}}:*", count=1000)]
        if keys:
            await broker.redis.delete(*keys)
        await close_quietly(broker)
    starts = sorted(float(r[1]) for r in rows)
    pids = {r[2] for r in rows}
    limit = rate_limited.rate
    assert limit is not None
    target = limit.count / limit.period
    span = starts[-1] - starts[0]
    achieved = (len(starts) - 1) / span if span > 0 else float("inf")
    return {
        "jobs": len(starts),
        "worker_processes": len(pids),
        "rate_limit": RATE,
        "burst": BURST,
        "first_start_after_enqueue_s": round(starts[0] - queued_at, 3),
        "span_s": round(span, 3),
        "achieved_rate_per_s": round(achieved, 3),
        "deviation_pct": round((achieved - target) / target * 100, 2),
        "max_starts_in_any_1s_window": max_in_window(starts),
        "allowed_per_window": int(target) + BURST,
        "max_retries_seen": max(retries),
        "min_gap_ms": round(min(b - a for a, b in itertools.pairwise(starts)) * 1000, 1),
    }


async def close_quietly(broker: Any) -> None:
    """Stop the result listener ``get()`` started before closing the client (else it logs a closed connection)."""
    await broker.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    result = asyncio.run(main(args.jobs, args.workers))
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    ok = abs(result["deviation_pct"]) <= 5 and result["max_starts_in_any_1s_window"] <= result["allowed_per_window"]
    print("PASS" if ok else "FAIL", "(goal: 20/s ± 5%, no 1-s window over rate + burst)")
    sys.exit(0 if ok else 1)
