"""What the competitor clients share: arguments, worker processes, RSS, CPU, Redis memory, waiting,
pre-loading a backlog, watching result channels, percentiles, Redis's own work per job (``CostProbe``)
and the benchmark's private ``redis-server``.

Only the standard library, psutil and redis-py (sync) are used here, because this module is
imported from every competitor's virtual environment: the project's (tasks_engine) and one per
peer (arq pins redis-py < 6 while Celery 5.7 needs >= 6.4, SAQ 0.26 < 8, taskiq-redis >= 8, and
streaq brings coredis: they cannot share one; streaq's venv gets redis-py only for this module).
Each client prints exactly one ``BENCH_RESULT {json}`` line that ``compare.py`` parses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import psutil
import redis

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
REDIS_HOST = os.environ.get("BENCH_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("BENCH_REDIS_PORT", "6379"))
RESULT_MARK = "BENCH_RESULT "


@dataclass
class Params:
    workload: str  # drain | latency | chord | rss | backlog | cost
    task: str  # noop | sleep | io (drain, rss)
    jobs: int  # backlog: how many of the queued jobs the drain rate is measured over
    procs: int  # worker processes (Celery: prefork pool processes of one node)
    max_jobs: int  # concurrent jobs per asyncio worker process
    poll_delay: float  # arq only
    rate: float  # latency trickle, jobs/s
    warmup: int
    chord_sizes: list[int]
    db: int
    logdir: Path
    timeout: float
    backlog: int = 0  # backlog: jobs queued before the workers start
    preload_limit: float = 300.0  # backlog: give up (result "skipped") if pre-loading would take longer
    memory: bool = False  # drain: also take the Redis memory readings (MemoryProbe)

    @property
    def redis_url(self) -> str:
        return f"redis://{REDIS_HOST}:{REDIS_PORT}/{self.db}"


def parse_args(argv: Sequence[str] | None = None) -> Params:
    ap = argparse.ArgumentParser(description="one benchmark workload for one competitor (run by compare.py)")
    ap.add_argument("--workload", required=True, choices=["drain", "latency", "chord", "rss", "backlog", "cost"])
    ap.add_argument("--task", default="noop", choices=["noop", "sleep", "io"])
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
    ap.add_argument("--backlog", type=int, default=0, help="backlog: jobs queued before the workers start")
    ap.add_argument("--preload-limit", type=float, default=300.0, help="backlog: seconds pre-loading may take")
    ap.add_argument("--memory", action="store_true", help="drain: also measure Redis memory per job")
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
        max(a.backlog, a.jobs),
        a.preload_limit,
        a.memory,
    )


def emit(result: dict[str, Any]) -> None:
    print(RESULT_MARK + json.dumps(result), flush=True)


class Skipped(Exception):
    """A workload this competitor cannot do here (e.g. pre-loading 1M jobs would take too long)."""


def run_main(body: Callable[[Params], dict[str, Any]]) -> None:
    """Parse, run one workload, print its result line; errors are reported as a result too."""
    params = parse_args()
    try:
        result = body(params)
    except Skipped as exc:  # not an error: the table shows n/a and the reason
        emit({"skipped": str(exc)})
        return
    except BaseException as exc:  # the driver must always get a line, whatever happened
        traceback.print_exc()
        emit({"error": f"{type(exc).__name__}: {exc}"})
        sys.exit(1)
    emit(result)


def sync_redis(db: int) -> redis.Redis:
    return redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)


def flush(db: int) -> None:
    """Every competitor has its own db number: flushing it never touches anybody else's keys. A large
    db (a pre-loaded backlog) is freed in the background so the shared server does not stall."""
    client = sync_redis(db)
    client.flushdb(asynchronous=cast(int, client.dbsize()) > 100_000)
    client.close()


def redis_memory(db: int) -> dict[str, int]:
    """Two views of what this db holds: the server's ``used_memory`` less its client buffers
    (``mem_clients_normal``, which grow with every connection a client pool opens) — what the issue
    asks for, but server-wide, so anything else running on the shared server moves it — and the sum
    of ``MEMORY USAGE`` over this db's keys (this db only: immune to the neighbours, but blind to
    allocator overhead outside the keys)."""
    client = sync_redis(db)
    try:
        info = cast(dict[str, Any], client.info("memory"))
        used = int(info["used_memory"]) - int(info.get("mem_clients_normal", 0))
        keys: list[bytes] = list(client.scan_iter(count=2000))
        total = 0
        for batch in chunks(keys, 2000):
            pipe = client.pipeline(transaction=False)
            for key in batch:
                pipe.memory_usage(key, samples=0)
            total += sum(int(v or 0) for v in pipe.execute())
        return {"used": used, "keys_bytes": total, "keys": len(keys)}
    finally:
        client.close()


MEMORY_SETTLE = 2.5  # s: Redis shrinks an idle connection's query buffer after 2 s (clientsCron)


class MemoryProbe:
    """The Redis memory readings of a no-op drain, taken only when the driver passes ``--memory``:
    empty (after the flush), queued (N jobs enqueued, no worker yet) and drained (every result
    stored, workers stopped so their connections are gone). Before the last two the client's own
    connections are left idle for ``MEMORY_SETTLE`` seconds: a client pool that just opened 50-100
    connections otherwise shows up as ~1-3 MB of query buffers that ``mem_clients_normal`` does not
    fully account for."""

    def __init__(self, p: Params) -> None:
        self.db = p.db
        self.on = p.memory
        self.readings: dict[str, dict[str, int]] = {}

    def read(self, name: str, settle: bool = True) -> None:
        if self.on:
            if settle:
                time.sleep(MEMORY_SETTLE)
            self.readings[name] = redis_memory(self.db)

    def summary(self, jobs: int) -> dict[str, Any]:
        """Bytes per job with the N jobs queued, and per job once they all ran and their results are
        stored (whatever the engine keeps by then: result, job record, stream entry)."""
        if not self.on:
            return {}
        empty, queued, drained = (self.readings[k] for k in ("empty", "queued", "drained"))
        return {
            "mem_queued_used_b": (queued["used"] - empty["used"]) / jobs,
            "mem_queued_keys_b": (queued["keys_bytes"] - empty["keys_bytes"]) / jobs,
            "mem_result_used_b": (drained["used"] - empty["used"]) / jobs,
            "mem_result_keys_b": (drained["keys_bytes"] - empty["keys_bytes"]) / jobs,
            "keys_queued": queued["keys"] - empty["keys"],
            "keys_drained": drained["keys"] - empty["keys"],
        }


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


async def measure_rss(
    p: Params,
    workers: Any,
    send: Callable[[int], Awaitable[Any]],
    drained: Callable[[], Awaitable[Any]],
    below_5000: Callable[[], Awaitable[bool]],
) -> dict[str, Any]:
    """RSS of one running worker after ``p.warmup`` jobs, then after ``p.jobs`` more, sent in chunks of
    5,000 while fewer than 5,000 are unfinished (the asyncio clients' shared RSS workload)."""
    await send(p.warmup)
    await drained()
    settle = min(1.0, 0.2 + p.jobs / 100_000)  # let the last jobs' garbage go before reading RSS
    await asyncio.sleep(settle)
    before = workers.rss_bytes()
    sent = 0
    while sent < p.jobs:
        await async_wait_until(below_5000, p.timeout, interval=0.05, alive=workers.check_alive)
        n = min(5000, p.jobs - sent)
        await send(n)
        sent += n
    await drained()
    await asyncio.sleep(settle)
    return rss_summary(before, workers.rss_bytes(), p.jobs)


def run_async(run: Callable[[Params], Coroutine[Any, Any, dict[str, Any]]], p: Params) -> dict[str, Any]:
    """``run(p)`` on uvloop when the venv has it (every engine gets the same loop), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run(p))
    return uvloop.run(run(p))


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
        self.term_group = False

    def start(
        self, argv: list[str], env: dict[str, str] | None = None, count: int = 1, term_group: bool = False
    ) -> None:
        """``term_group``: stop with SIGTERM to the worker's whole process group (as Ctrl-C in a terminal
        does), for CLIs whose ``--workers N`` children are plain multiprocessing processes that the
        parent neither signals nor stops waiting for (SAQ, streaq); otherwise only the main process is
        signalled, as Celery and taskiq expect (they stop their own children)."""
        self.term_group = self.term_group or term_group
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
                if self.term_group:
                    os.killpg(proc.pid, signal.SIGTERM)  # the session we created for this worker only
                else:
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


def trickle_summary(starts: Sequence[float], results: Sequence[float], sent_s: float) -> dict[str, Any]:
    """``latency_summary`` plus the send rate the client really achieved: a client that cannot enqueue
    at the asked rate falls behind, and its latencies then describe a slower trickle."""
    out = latency_summary(starts, results)
    out["sent_rate"] = len(starts) / sent_s if sent_s > 0 else math.nan
    return out


# ---------------------------------------------------------------------------- backlog
def _check_preload(sent: int, total: int, started: float, limit: float) -> None:
    elapsed = time.perf_counter() - started
    if sent < total and elapsed > min(10.0, limit / 10):
        projected = elapsed / sent * total
        if projected > limit:
            raise Skipped(
                f"pre-loading {total:,} jobs would take ~{projected:.0f} s at {sent / elapsed:,.0f} jobs/s "
                f"(> --preload-limit {limit:.0f} s)"
            )


async def preload_async(send: Callable[[int], Awaitable[Any]], total: int, limit: float, chunk: int = 5000) -> float:
    """Queue ``total`` jobs with ``send(n)`` in chunks; returns jobs/s. Raises ``Skipped`` as soon as the
    projected time exceeds ``limit`` seconds."""
    started = time.perf_counter()
    sent = 0
    while sent < total:
        n = min(chunk, total - sent)
        await send(n)
        sent += n
        _check_preload(sent, total, started, limit)
    return total / (time.perf_counter() - started)


def preload_sync(send: Callable[[int], Any], total: int, limit: float, chunk: int = 2000) -> float:
    """``preload_async`` for synchronous clients."""
    started = time.perf_counter()
    sent = 0
    while sent < total:
        n = min(chunk, total - sent)
        send(n)
        sent += n
        _check_preload(sent, total, started, limit)
    return total / (time.perf_counter() - started)


def backlog_summary(p: Params, preload_rate: float, started_at: float, done_at: float, cpu: float) -> dict[str, Any]:
    """Drain rate over the first ``p.jobs`` (+ the stamp job) of a ``p.backlog`` backlog."""
    return {
        "backlog": p.backlog,
        "jobs": p.jobs,
        "preload_rate": preload_rate,
        "drain_rate": (p.jobs + 1) / (done_at - started_at),
        "cpu_us_per_job": cpu / p.jobs * 1e6,
    }


# ---------------------------------------------------------------------------- streams and channels
def stream_group(client: redis.Redis, stream: str, group: str) -> dict[str, Any] | None:
    """``XINFO GROUPS`` of one consumer group (None while the stream or the group does not exist)."""
    try:
        groups = cast(list[dict[str, Any]], client.xinfo_groups(stream))
    except redis.ResponseError:
        return None
    for g in groups:
        name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
        if name == group:
            return dict(g)
    return None


def stream_group_started(client: redis.Redis, stream: str, group: str) -> bool:
    """A consumer of ``group`` has read something from ``stream`` (it is working)."""
    g = stream_group(client, stream, group)
    if g is None:
        return False
    last = g["last-delivered-id"]
    return int(g["pending"]) > 0 or (last.decode() if isinstance(last, bytes) else str(last)) != "0-0"


class ChannelObserver:
    """A thread subscribed to ``pattern`` that notes when the first accepted message arrives for each
    id (``id_of(channel)``): how an engine that publishes its results is observed without one
    subscription per job. ``accept(data)`` filters (e.g. only a "complete" status)."""

    def __init__(self, db: int, pattern: str, id_of: Callable[[str], str], accept: Callable[[bytes], bool]) -> None:
        self.db = db
        self.pattern = pattern
        self.id_of = id_of
        self.accept = accept
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        client = sync_redis(self.db)
        pubsub = client.pubsub()  # type: ignore[no-untyped-call]  # untyped in redis-py 5
        pubsub.psubscribe(self.pattern)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the confirmation: from here on no message is missed
            message = pubsub.get_message(timeout=0.5)
            if message and message["type"] == "psubscribe":
                self._ready.set()
                break
        while not self._stop.is_set():
            message = pubsub.get_message(timeout=0.05)
            if message and message["type"] == "pmessage":
                now = time.time()
                key = self.id_of(message["channel"].decode())
                if key not in self.seen and self.accept(message["data"]):
                    self.seen[key] = now
        pubsub.close()
        client.close()

    def __enter__(self) -> ChannelObserver:
        self._thread.start()
        if not self._ready.wait(11):
            raise RuntimeError("pub/sub observer did not subscribe within 10 s")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# ---------------------------------------------------------------------------- Redis's own work per job
IO_KEY = "bench:io"  # the one key every engine's "io" task body INCRs: one Redis round trip per job
IDLE_S = 1.0  # seconds of idle workers measured before a cost window (their polls and heartbeats)
COST_POLL_S = 0.01  # the harness's completion check interval inside a cost window


def io_summary(p: Params) -> dict[str, Any]:
    """For an "io" drain: how many INCRs the bodies made (must equal the jobs: each body ran its call)."""
    if p.task != "io":
        return {}
    client = sync_redis(p.db)
    try:
        return {"io_calls": int(cast(bytes | None, client.get(IO_KEY)) or 0)}
    finally:
        client.close()


class HarnessRedis(redis.Redis):
    """The harness's own connection inside a cost window. Every command it sends is counted under the
    name ``INFO commandstats`` gives it, so the harness's share is taken out of Redis's figures
    exactly. It is used only through plain commands and ``exists_each`` (which counts its pipeline)."""

    def __init__(self, db: int) -> None:
        super().__init__(host=REDIS_HOST, port=REDIS_PORT, db=db)
        self.sent: Counter[str] = Counter()

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.sent[str(args[0]).lower().replace(" ", "|")] += 1
        return super().execute_command(*args, **options)

    def exists_each(self, keys: Sequence[str]) -> list[bool]:
        pipe = self.pipeline(transaction=False)
        for key in keys:
            pipe.exists(key)
        self.sent["exists"] += len(keys)
        return [bool(found) for found in pipe.execute()]


@dataclass
class Reading:
    calls: dict[str, int]  # commandstats: calls per command, Lua's redis.call()s and MULTI's commands included
    cpu_s: float  # INFO cpu: used_cpu_user + used_cpu_sys of the server process
    at: float  # perf_counter
    harness: Counter[str]  # what the harness sent since the previous reading, this reading's INFOs included


class CostProbe:
    """Redis's own work between readings: ``mark()`` before the idle second, before the first enqueue
    and after the last result read. Server-wide counters, so only meaningful on a Redis nobody else
    uses (``compare.py`` starts a private one). The readings' INFO calls land one segment later
    (commandstats is read after cpu, and a command is counted once it has run), two per segment,
    which is what ``harness`` records: they cancel exactly."""

    def __init__(self, p: Params, workers: Workers) -> None:
        self.p = p
        self.workers = workers
        self.redis = HarnessRedis(p.db)
        self.readings: list[Reading] = []
        self.worker_cpu: list[float] = []

    def mark(self) -> None:
        cpu = cast(dict[str, Any], self.redis.info("cpu"))
        stats = cast(dict[str, Any], self.redis.info("commandstats"))
        calls = {k[len("cmdstat_") :]: int(v["calls"]) for k, v in stats.items() if k.startswith("cmdstat_")}
        used = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
        self.readings.append(Reading(calls, used, time.perf_counter(), Counter(self.redis.sent)))
        self.redis.sent.clear()
        self.worker_cpu.append(self.workers.cpu_seconds())

    def wait(self, unfinished: Callable[[], int]) -> None:
        """Until ``unfinished()`` (harness commands only) is 0: every job ran and its result is stored."""
        wait_until(lambda: unfinished() == 0, self.p.timeout, interval=COST_POLL_S, alive=self.workers.check_alive)

    async def wait_async(self, unfinished: Callable[[], int]) -> None:
        async def done() -> bool:
            return unfinished() == 0

        await async_wait_until(done, self.p.timeout, interval=COST_POLL_S, alive=self.workers.check_alive)

    def _segment(self, i: int) -> tuple[dict[str, int], int, float, float]:
        a, b = self.readings[i], self.readings[i + 1]
        engine = {}
        for name in set(a.calls) | set(b.calls):
            n = b.calls.get(name, 0) - a.calls.get(name, 0) - b.harness.get(name, 0)
            if n:
                engine[name] = n
        return engine, sum(b.harness.values()), b.cpu_s - a.cpu_s, b.at - a.at

    def summary(self, jobs: int) -> dict[str, Any]:
        """Segment 0 is the idle second, segment 1 the window of ``jobs`` jobs."""
        idle, _, idle_cpu, idle_s = self._segment(0)
        engine, harness, cpu, window_s = self._segment(1)
        top = sorted(engine.items(), key=lambda kv: -kv[1])
        self.redis.close()
        return {
            "jobs": jobs,
            "redis_cmds_per_job": sum(engine.values()) / jobs,
            "redis_cpu_us_per_job": cpu / jobs * 1e6,
            "harness_cmds_per_job": harness / jobs,
            "idle_cmds_per_s": sum(idle.values()) / idle_s,
            "idle_cpu_ms_per_s": idle_cpu / idle_s * 1000,
            "window_s": window_s,
            "worker_cpu_us_per_job": (self.worker_cpu[2] - self.worker_cpu[1]) / jobs * 1e6,
            "cmds": {name: round(n / jobs, 2) for name, n in top if n / jobs >= 0.01},
        }


async def read_all(reads: Sequence[Callable[[], Awaitable[Any]]], batch: int = 100) -> list[Any]:
    """One result read per job through the engine's API, up to ``batch`` in flight."""
    out: list[Any] = []
    for part in chunks(reads, batch):
        out.extend(await asyncio.gather(*(read() for read in part)))
    return out


# ---------------------------------------------------------------------------- the benchmark's own Redis
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A ``redis-server`` on a free loopback port for one ``compare.py`` run, no persistence: INFO's
    server-wide counters (commandstats, cpu, used_memory) then see the benchmark's processes only."""

    def __init__(self, directory: Path, binary: str = "redis-server") -> None:
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        log = (directory / "redis-server.log").open("wb")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=directory,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        client = redis.Redis(host="127.0.0.1", port=self.port)
        try:
            wait_until(lambda: self._pong(client), 10, interval=0.05)
        finally:
            client.close()

    def _pong(self, client: redis.Redis) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
