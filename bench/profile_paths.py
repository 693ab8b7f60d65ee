"""The two client-facing hot paths, to run under ``py-spy``: ``delay()`` with 100 calls in flight, and
enqueue → start of one job at a time against an idle worker in another process.

    .venv/bin/py-spy record --format raw -o /tmp/enqueue.txt -- .venv/bin/python bench/profile_paths.py enqueue
    .venv/bin/python bench/profile_paths.py --summary /tmp/enqueue.txt      # self time by function
    .venv/bin/python bench/profile_paths.py wakeup                          # where enqueue -> start goes
    .venv/bin/python bench/profile_paths.py floor                           # the machine's own wake-up floor

``floor`` is what no engine on this machine can beat at a 50/s trickle: a bare redis-py client
RPUSHes, a bare BLPOP listener in another process notes when it sees the item. Every engine pays
this cross-process wake-up (client, Redis, worker) and adds its own Python on both sides.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tasks_engine import configure, shared_task  # noqa: E402
from tasks_engine.core.config import EngineSettings  # noqa: E402
from tasks_engine.store import get_broker  # noqa: E402
from tests import sample_tasks  # noqa: E402

PREFIX = "bench-profile"


@shared_task(name="bench.stamp")
async def stamp() -> float:
    return time.time()


async def cleanup() -> None:
    broker = get_broker()
    keys = [k async for k in broker.redis.scan_iter(match=broker.keys.everything, count=5000)]
    for start in range(0, len(keys), 1000):
        await broker.redis.delete(*keys[start : start + 1000])
    await broker.close()


async def enqueue(jobs: int, in_flight: int) -> None:
    configure(EngineSettings(key_prefix=PREFIX, beat_enabled=False))
    t0 = time.perf_counter()
    for _ in range(0, jobs, in_flight):
        await asyncio.gather(*(sample_tasks.add.delay(1, 2) for _ in range(in_flight)))
    print(f"delay(): {jobs / (time.perf_counter() - t0):,.0f}/s with {in_flight} in flight")
    await cleanup()


async def wakeup(jobs: int) -> None:
    """enqueue -> start, one job at a time (a 50/s trickle), against a worker in another process."""
    configure(EngineSettings(key_prefix=PREFIX, beat_enabled=False))
    env = {**os.environ, "TE_KEY_PREFIX": PREFIX, "TE_BEAT_ENABLED": "false"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "tasks_engine.cli", "worker", "--app", "none", "-I", "bench.profile_paths"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await asyncio.sleep(3)
        sent, started = [], []
        for _ in range(jobs):
            t0 = time.time()
            r = await stamp.delay()
            sent.append(time.time() - t0)
            started.append(await r.get(timeout=10) - t0)
            await asyncio.sleep(0.02)
        print(f"delay() returns after {statistics.median(sent) * 1e3:.2f} ms (median of {jobs})")
        print(f"job started after      {statistics.median(started) * 1e3:.2f} ms")
    finally:
        worker.terminate()
        worker.wait(30)
        await cleanup()


_LISTENER = """
import asyncio, sys, time
import redis.asyncio as aioredis
import uvloop
async def main():
    client = aioredis.Redis.from_url(sys.argv[1])
    while True:
        _, sent = await client.blpop(["bench-floor"], timeout=0)
        await client.rpush("bench-floor-seen", f"{sent.decode()}|{time.time()}")
uvloop.run(main())
"""


async def floor(jobs: int) -> None:
    """Send -> seen by a bare BLPOP in another process, one item every 20 ms (the 50/s trickle)."""
    import redis.asyncio as aioredis

    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    listener = subprocess.Popen([sys.executable, "-c", _LISTENER, url])
    client = aioredis.Redis.from_url(url)
    try:
        await asyncio.sleep(1.5)
        seen = []
        for _ in range(jobs):
            await client.rpush("bench-floor", str(time.time()))
            reply = await client.blpop(["bench-floor-seen"], timeout=5)
            assert reply is not None, "the listener did not answer"
            sent, got = reply[1].decode().split("|")
            seen.append(float(got) - float(sent))
            await asyncio.sleep(0.02)
        seen.sort()
        p50, p99 = seen[len(seen) // 2], seen[min(len(seen) - 1, int(len(seen) * 0.99))]
        print(
            f"bare RPUSH -> BLPOP in another process: p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms ({jobs} at 50/s)"
        )
    finally:
        listener.kill()
        listener.wait()
        await client.delete("bench-floor", "bench-floor-seen")
        await client.aclose()


def summary(path: Path, top: int) -> None:
    """py-spy raw output (collapsed stacks with counts) as self time by function, the top ``top``."""
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        leaf = stack.split(";")[-1]
        own[leaf.split(" (")[0] + " (" + leaf.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] + ")"] += int(count)
        total += int(count)
    for name, count in own.most_common(top):
        print(f"{count / total:6.1%}  {name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path", nargs="?", choices=["enqueue", "wakeup", "floor"])
    ap.add_argument("--jobs", type=int, default=20_000)
    ap.add_argument("--in-flight", type=int, default=100)
    ap.add_argument("--summary", type=Path)
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args()
    if a.summary:
        summary(a.summary, a.top)
    elif a.path == "enqueue":
        asyncio.run(enqueue(a.jobs, a.in_flight))
    elif a.path == "wakeup":
        asyncio.run(wakeup(min(a.jobs, 300)))
    elif a.path == "floor":
        asyncio.run(floor(min(a.jobs, 500)))
    else:
        ap.error("name a path (enqueue, wakeup, floor) or --summary FILE")


if __name__ == "__main__":
    main()
