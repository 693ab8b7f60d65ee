"""What the three competitor clients share: arguments, worker processes, RSS, waiting, percentiles.

Only the standard library, psutil and redis-py (sync) are used here, because this module is
imported from three virtual environments: the project's (tasks_engine) and the two competitor
venvs (arq pins redis-py < 6 while Celery 5.7 needs >= 6.4, so they cannot share one).
Each client prints exactly one ``BENCH_RESULT {json}`` line that ``compare.py`` parses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import redis

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
REDIS_HOST = os.environ.get("BENCH_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("BENCH_REDIS_PORT", "6379"))
RESULT_MARK = "BENCH_RESULT "


@dataclass
class Params:
    workload: str  # drain | latency | chord | rss
    task: str  # noop | sleep (drain, rss)
    jobs: int
    procs: int  # worker processes (Celery: prefork pool processes of one node)
    max_jobs: int  # concurrent jobs per asyncio worker process
    poll_delay: float  # arq only
    rate: float  # latency trickle, jobs/s
    warmup: int
    chord_sizes: list[int]
    db: int
    logdir: Path
    timeout: float

    @property
    def redis_url(self) -> str:
        return f"redis://{REDIS_HOST}:{REDIS_PORT}/{self.db}"


def parse_args(argv: Sequence[str] | None = None) -> Params:
    ap = argparse.ArgumentParser(description="one benchmark workload for one competitor (run by compare.py)")
    ap.add_argument("--workload", required=True, choices=["drain", "latency", "chord", "rss"])
    ap.add_argument("--task", default="noop", choices=["noop", "sleep"])
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--max-jobs", type=int, default=100)
    ap.add_argument("--poll-delay", type=float, default=0.01)
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--chord-sizes", default="1000")
    ap.add_argument("--db", type=int, required=True)
    ap.add_argument("--logdir", type=Path, default=Path("/tmp"))
    ap.add_argument("--timeout", type=float, default=300.0)
    a = ap.parse_args(argv)
    a.logdir.mkdir(parents=True, exist_ok=True)
    return Params(
        a.workload,
        a.task,
        a.jobs,
        a.procs,
        a.max_jobs,
        a.poll_delay,
        a.rate,
        a.warmup,
        [int(x) for x in a.chord_sizes.split(",") if x],
        a.db,
        a.logdir,
        a.timeout,
    )


def emit(result: dict[str, Any]) -> None:
    print(RESULT_MARK + json.dumps(result), flush=True)


def run_main(body: Callable[[Params], dict[str, Any]]) -> None:
    """Parse, run one workload, print its result line; errors are reported as a result too."""
    params = parse_args()
    try:
        result = body(params)
    except BaseException as exc:  # the driver must always get a line, whatever happened
        traceback.print_exc()
        emit({"error": f"{type(exc).__name__}: {exc}"})
        sys.exit(1)
    emit(result)


def sync_redis(db: int) -> redis.Redis:
    return redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)


def flush(db: int) -> None:
    """Every competitor has its own db number: flushing it never touches anybody else's keys."""
    client = sync_redis(db)
    client.flushdb()
    client.close()


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (q in 0..100)."""
    if not values:
        return math.nan
    data = sorted(values)
    k = (len(data) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def latency_summary(starts: Sequence[float], results: Sequence[float]) -> dict[str, Any]:
    """Seconds in, milliseconds out."""
    return {
        "start_p50_ms": percentile(starts, 50) * 1000,
        "start_p99_ms": percentile(starts, 99) * 1000,
        "result_p50_ms": percentile(results, 50) * 1000,
        "result_p99_ms": percentile(results, 99) * 1000,
        "samples": len(starts),
    }


def rss_summary(before: int, after: int, jobs: int) -> dict[str, Any]:
    growth = (after - before) / 2**20
    return {
        "rss_before_mb": before / 2**20,
        "rss_after_mb": after / 2**20,
        "rss_growth_mb": growth,
        "rss_growth_per_100k_mb": growth * 100_000 / jobs,
        "jobs": jobs,
    }


class Workers:
    """Worker processes of one competitor, each in its own session so a stuck one can be killed whole."""

    def __init__(self, logdir: Path, name: str) -> None:
        self.logdir = logdir
        self.name = name
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def start(self, argv: list[str], env: dict[str, str] | None = None, count: int = 1) -> None:
        full_env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(BENCH_DIR), os.environ.get("PYTHONPATH", "")]),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        for _ in range(count):
            path = self.logdir / f"{self.name}-worker-{os.getpid()}-{len(self.procs)}.log"
            log = path.open("wb")
            # cwd is the log dir, not the repo: `python -m` puts the cwd first on sys.path, and a
            # PYTHONPATH pointing at a patched engine copy must win over the repo's checkout.
            self.procs.append(
                subprocess.Popen(
                    argv, cwd=self.logdir, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
            log.close()
            self.logs.append(path)

    def check_alive(self) -> None:
        for proc, path in zip(self.procs, self.logs, strict=True):
            if proc.poll() is not None:
                tail = path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{self.name} worker exited with {proc.returncode}:\n{tail}")

    def rss_bytes(self) -> int:
        """RSS of every worker process and its children (Celery's prefork pool lives in children)."""
        total = 0
        for proc in self.procs:
            try:
                root = psutil.Process(proc.pid)
                total += sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
            except psutil.NoSuchProcess:
                pass
        return total

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by every worker process and its children. Unlike wall
        time it barely moves when other programs share the cores, so it compares engines fairly."""
        total = 0.0
        for proc in self.procs:
            try:
                root = psutil.Process(proc.pid)
                for p in [root, *root.children(recursive=True)]:
                    t = p.cpu_times()
                    total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def stop(self, grace: float = 15.0) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the session we created for this worker only
                proc.wait()
        for proc in self.procs:  # leftover pool children of a worker that exited
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.procs.clear()


def chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class ResultTracker:
    """Which of ``ids`` still have no result key; checked in pipelined batches, each id confirmed once."""

    def __init__(self, client: redis.Redis, key_of: Callable[[str], str], ids: Iterable[str]) -> None:
        self.client = client
        self.key_of = key_of
        self.pending = list(ids)

    def remaining(self) -> int:
        still: list[str] = []
        for batch in chunks(self.pending, 2000):
            pipe = self.client.pipeline(transaction=False)
            for task_id in batch:
                pipe.exists(self.key_of(task_id))
            still.extend(t for t, found in zip(batch, pipe.execute(), strict=True) if not found)
        self.pending = still
        return len(still)


def wait_until(
    done: Callable[[], bool], timeout: float, interval: float = 0.005, alive: Callable[[], None] | None = None
) -> float:
    """Poll ``done`` until true; returns ``time.time()`` at that moment."""
    deadline = time.monotonic() + timeout
    checks = 0
    while not done():
        checks += 1
        if alive is not None and checks % 50 == 0:
            alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"not done within {timeout:.0f}s")
        time.sleep(interval)
    return time.time()


async def async_wait_until(
    done: Callable[[], Any], timeout: float, interval: float = 0.005, alive: Callable[[], None] | None = None
) -> float:
    """``wait_until`` for asyncio clients: ``done`` is a coroutine function."""
    deadline = time.monotonic() + timeout
    checks = 0
    while not await done():
        checks += 1
        if alive is not None and checks % 50 == 0:
            alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"not done within {timeout:.0f}s")
        await asyncio.sleep(interval)
    return time.time()


def trickle_offsets(count: int, rate: float) -> list[float]:
    """Evenly spaced send times (seconds from start) for an open-loop trickle."""
    return [i / rate for i in range(count)]
