"""Celery's wire format, drained by a tasks_engine worker and by Celery's own worker: one run, same Redis,
same messages, alternating order, several rounds (issue 25, point 8).

    .venv/bin/python bench/celery_wire.py --jobs 5000 --rounds 3
    .venv/bin/python bench/celery_wire.py --smoke            # 200 jobs, 1 round, well under a minute

Per round and engine: a real Celery app sends N protocol-2 messages (``send_task`` of a no-op task that
returns 1, after one ``cwb.stamp`` whose result is the time the first job started) to one queue through
kombu's Redis transport, with no worker running. Then one worker drains them, writing Celery's Redis
result records: (a) ``tasks-engine worker`` (one process, ``-j 100``, ``TE_CELERY_QUEUES`` and the key
prefixes set, the same task names registered as engine tasks), or (b) ``celery worker --pool prefork
-c 2`` (stock settings but JSON and no gossip/mingle/heartbeat, as in ``cmp_celery.py``). Neither writes a
STARTED record (Celery's default ``task_track_started=False``; the engine tasks say ``track_started=False``).

Drain rate = (N + 1) / (the stamp's start time → the moment every result key exists, read from Redis).
Worker CPU per job = CPU seconds (user + system) of the worker's process tree, children included, from
the first message taken to the end, / N. The table shows medians of rounds and the ratios te/celery.

Isolation: its own Redis db (``--db``, default 7; compare.py uses 8-13, the tests 0) and, inside it, key
prefixes unique to this run (kombu's ``global_keyprefix``, the result backend's, the engine's
``key_prefix``); every key under them is deleted before each drain and at the end.

This module is also the app both workers load (``celery -A celery_wire``, ``tasks-engine worker -I
celery_wire``): configured by ``CWB_DB``, ``CWB_PREFIX`` and ``CWB_QUEUE`` in their environment.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import cmp_common as common  # noqa: E402 - after the path set-up above
from celery import Celery  # noqa: E402

from tasks_engine import shared_task  # noqa: E402

DB = int(os.environ.get("CWB_DB", "7"))
PREFIX = os.environ.get("CWB_PREFIX", "cwb-")
QUEUE = os.environ.get("CWB_QUEUE", "cwb")
URL = f"redis://{common.REDIS_HOST}:{common.REDIS_PORT}/{DB}"
META = "celery-task-meta-"
ENGINES = ("tasks_engine", "celery")
GOAL_RATE = 3.0  # te/celery drain jobs/s at least
GOAL_CPU = 0.3  # te/celery worker CPU per job at most


def make_app(prefix: str, url: str) -> Celery:
    """Stock Celery but JSON, with kombu's and the result backend's key prefix."""
    celery = Celery("cwb", broker=url, backend=url, set_as_current=False)
    celery.conf.update(
        broker_transport_options={"global_keyprefix": prefix},
        result_backend_transport_options={"global_keyprefix": prefix},
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return celery


app = make_app(PREFIX, URL)


# ---------------------------------------------------------------------------- the tasks, on both sides
@app.task(name="cwb.noop")
def celery_noop() -> int:
    return 1


@app.task(name="cwb.stamp")
def celery_stamp() -> float:
    return time.time()


@shared_task(name="cwb.noop", track_started=False)
async def engine_noop() -> int:
    return 1


@shared_task(name="cwb.stamp", track_started=False)
async def engine_stamp() -> float:
    """When the first job started, by the worker's clock (same machine as the driver)."""
    return time.time()


# ---------------------------------------------------------------------------- one drain
@dataclass
class Config:
    jobs: int
    rounds: int
    max_jobs: int
    concurrency: int
    db: int
    prefix: str
    logdir: Path
    timeout: float

    @property
    def te_prefix(self) -> str:
        return f"{self.prefix}te"

    def patterns(self) -> list[str]:
        """SCAN patterns of every key this run creates: kombu's and the backend's, and the engine's."""
        return [f"{self.prefix}*", f"{{{self.te_prefix}}}*"]


@dataclass
class Drain:
    round: int
    engine: str
    result: dict[str, Any] = field(default_factory=dict)


def clean(cfg: Config) -> int:
    client = common.sync_redis(cfg.db)
    try:
        gone = 0
        for pattern in cfg.patterns():
            for batch in common.chunks(list(client.scan_iter(match=pattern, count=2000)), 2000):
                gone += int(client.delete(*batch))
        return gone
    finally:
        client.close()


def start_worker(cfg: Config, engine: str, workers: common.Workers) -> None:
    env = {
        "CWB_DB": str(cfg.db),
        "CWB_PREFIX": cfg.prefix,
        "CWB_QUEUE": QUEUE,
        "REDIS_URL": f"redis://{common.REDIS_HOST}:{common.REDIS_PORT}/{cfg.db}",
    }
    if engine == "tasks_engine":
        env.update(
            TE_KEY_PREFIX=cfg.te_prefix,
            TE_LOG_LEVEL="WARNING",
            TE_BEAT_ENABLED="false",
            TE_CELERY_QUEUES=QUEUE,
            TE_CELERY_TRANSPORT_PREFIX=cfg.prefix,
            TE_CELERY_RESULT_PREFIX=cfg.prefix,
        )
        argv = [sys.executable, "-m", "tasks_engine.cli", "worker", "--app", "none", "-I", "celery_wire",
                "-j", str(cfg.max_jobs), "--no-beat"]  # fmt: skip
    else:
        argv = [sys.executable, "-m", "celery", "-A", "celery_wire", "worker", "--pool", "prefork",
                "-c", str(cfg.concurrency), "-Q", QUEUE, "--loglevel", "WARNING", "--without-gossip",
                "--without-mingle", "--without-heartbeat", "-n", f"cwb-{os.getpid()}@%h"]  # fmt: skip
    workers.start(argv, env)


def drain(cfg: Config, engine: str, sender: Celery, round_: int = 1) -> dict[str, Any]:
    """Send N + 1 messages with no worker running, then drain them with ``engine``'s worker (module docstring)."""
    clean(cfg)
    client = common.sync_redis(cfg.db)
    workers = common.Workers(cfg.logdir, f"{engine}-r{round_}")
    queue_key = f"{cfg.prefix}{QUEUE}"
    try:
        first = sender.send_task("cwb.stamp", queue=QUEUE)
        t0 = time.perf_counter()
        ids = [sender.send_task("cwb.noop", queue=QUEUE).id for _ in range(cfg.jobs)]
        send_s = time.perf_counter() - t0
        if int(client.llen(queue_key)) != cfg.jobs + 1:
            raise RuntimeError(f"{queue_key} holds {client.llen(queue_key)} messages, expected {cfg.jobs + 1}")
        start_worker(cfg, engine, workers)
        common.wait_until(
            lambda: int(client.llen(queue_key)) < cfg.jobs + 1, cfg.timeout, interval=0.002, alive=workers.check_alive
        )
        cpu0 = workers.cpu_seconds()  # start-up (imports) excluded: the first message is taken
        tracker = common.ResultTracker(client, lambda i: f"{cfg.prefix}{META}{i}", [first.id, *ids])
        done_at = common.wait_until(
            lambda: int(client.llen(queue_key)) == 0 and tracker.remaining() == 0,
            cfg.timeout,
            alive=workers.check_alive,
        )
        cpu = workers.cpu_seconds() - cpu0
        workers.stop()
        started_at = float(first.get(timeout=30))
        stored = 0
        for batch in common.chunks(ids, 2000):
            for raw in client.mget([f"{cfg.prefix}{META}{i}" for i in batch]):
                record = json.loads(raw) if raw else {}
                stored += record.get("status") == "SUCCESS" and record.get("result") == 1
        if stored != cfg.jobs:
            raise RuntimeError(f"{engine}: {stored} of {cfg.jobs} results are SUCCESS with the task's value")
        return {
            "send_rate": cfg.jobs / send_s,
            "drain_rate": (cfg.jobs + 1) / (done_at - started_at),
            "drain_s": done_at - started_at,
            "cpu_us_per_job": cpu / cfg.jobs * 1e6,
            "stored": stored,
        }
    finally:
        workers.stop()
        client.close()
        clean(cfg)


def plan(rounds: int) -> list[Drain]:
    """Both engines each round, the order swapped every round."""
    out: list[Drain] = []
    for r in range(rounds):
        order = ENGINES if r % 2 == 0 else ENGINES[::-1]
        out.extend(Drain(r, engine) for engine in order)
    return out


# ---------------------------------------------------------------------------- report
def median_of(runs: list[Drain], engine: str, key: str) -> float | None:
    values = [d.result[key] for d in runs if d.engine == engine and key in d.result]
    return statistics.median(values) if values else None


def fmt(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def ratio(te: float | None, celery: float | None) -> float | None:
    return te / celery if te is not None and celery else None


def report(cfg: Config, runs: list[Drain], machine: list[str], argv: list[str], load: tuple[float, float]) -> str:
    rows = [
        ("drain (first start -> last result stored)", "jobs/s", "higher", "drain_rate"),
        ("worker CPU per job (process tree)", "us/job", "lower", "cpu_us_per_job"),
        ("send with Celery send_task (driver)", "jobs/s", "higher", "send_rate"),
    ]
    lines = [
        f"Celery wire format: {cfg.jobs:,} no-op Celery messages per drain, {cfg.rounds} round(s), median of rounds;",
        f"tasks_engine: 1 worker process, -j {cfg.max_jobs}; celery: prefork -c {cfg.concurrency}; "
        f"Redis db {cfg.db}, key prefix {cfg.prefix!r}",
        "",
        f"{'metric':<44}{'unit':<9}{'better':<8}{'tasks_engine':>14}{'celery':>12}{'te/celery':>11}",
        "-" * 98,
    ]
    ratios: dict[str, float | None] = {}
    for label, unit, better, key in rows:
        te, ce = median_of(runs, "tasks_engine", key), median_of(runs, "celery", key)
        ratios[key] = ratio(te, ce)
        lines.append(f"{label:<44}{unit:<9}{better:<8}{fmt(te):>14}{fmt(ce):>12}{fmt(ratios[key], 2):>11}")
    rate, cpu = ratios["drain_rate"], ratios["cpu_us_per_job"]
    lines += [
        "",
        "goals (issue 25 point 8, te/celery):",
        f"{verdict(rate, rate is not None and rate >= GOAL_RATE)} drain jobs/s >= {GOAL_RATE:.1f}x: {fmt(rate, 2)}x",
        f"{verdict(cpu, cpu is not None and cpu <= GOAL_CPU)} worker CPU per job <= {GOAL_CPU:.1f}x: {fmt(cpu, 2)}x",
        "",
        "every run:",
    ]
    for d in runs:
        r = d.result
        if "error" in r:
            detail = "ERROR " + str(r["error"]).splitlines()[0]
        else:
            detail = (
                f"send {r['send_rate']:,.0f}/s  drain {r['drain_rate']:,.0f}/s in {r['drain_s']:.2f}s  "
                f"worker CPU {r['cpu_us_per_job']:,.0f} us/job  stored={r['stored']}"
            )
        lines.append(f"  round {d.round + 1} {d.engine:<13} {detail}")
    for r in range(cfg.rounds):
        te, ce = ({d.engine: d.result for d in runs if d.round == r}.get(e, {}) for e in ENGINES)
        lines.append(
            f"  round {r + 1} te/celery: drain {fmt(ratio(te.get('drain_rate'), ce.get('drain_rate')), 2)}x, "
            f"worker CPU per job {fmt(ratio(te.get('cpu_us_per_job'), ce.get('cpu_us_per_job')), 2)}x"
        )
    lines += ["", *machine, f"load average at start {load[0]:.2f}, at end {load[1]:.2f}"]
    lines.append("command: " + shlex.join([sys.executable, "bench/celery_wire.py", *argv]))
    return "\n".join(lines) + "\n"


def verdict(value: float | None, ok: bool) -> str:
    return "n/a " if value is None else ("PASS" if ok else "FAIL")


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Celery-format messages: tasks_engine worker vs Celery prefork worker")
    ap.add_argument("--jobs", type=int, default=5000, help="messages per drain")
    ap.add_argument("--rounds", type=int, default=3, help="each round drains with both engines, order alternating")
    ap.add_argument("--max-jobs", type=int, default=100, help="the tasks_engine worker's -j")
    ap.add_argument("--concurrency", type=int, default=2, help="Celery's prefork -c")
    ap.add_argument("--db", type=int, default=7, help="Redis db (only this run's key prefixes in it are touched)")
    ap.add_argument("--logdir", type=Path, default=None, help="worker logs (default: a new temporary directory)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds one drain may take")
    ap.add_argument("--save", type=Path, default=None, help="also write the report to this file")
    ap.add_argument("--smoke", action="store_true", help="200 jobs, 1 round: checks the harness, not the numbers")
    a = ap.parse_args(argv)
    if a.smoke:
        a.jobs, a.rounds = 200, 1
    return a


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = parse(argv)
    import compare  # the machine description compare.py prints (versions of both engines' libraries)

    logdir = a.logdir or Path(tempfile.mkdtemp(prefix="bench-celery-wire-"))
    logdir.mkdir(parents=True, exist_ok=True)
    cfg = Config(a.jobs, a.rounds, a.max_jobs, a.concurrency, a.db, f"cwb-{os.getpid()}-", logdir, a.timeout)
    load0 = os.getloadavg()[0]
    machine = compare.describe_machine({"tasks_engine": sys.executable, "celery": sys.executable}, shared=True)
    sender = make_app(cfg.prefix, f"redis://{common.REDIS_HOST}:{common.REDIS_PORT}/{cfg.db}")
    runs = plan(cfg.rounds)
    try:
        for i, d in enumerate(runs, 1):
            try:
                d.result = drain(cfg, d.engine, sender, d.round + 1)
            except Exception as exc:  # the table shows it; the exit status says the run failed
                d.result = {"error": f"{type(exc).__name__}: {exc}"}
            compare.log(f"[{i}/{len(runs)}] round {d.round + 1} {d.engine}: {json.dumps(d.result)}")
    finally:
        sender.close()
        clean(cfg)
    out = report(cfg, runs, machine, argv, (load0, os.getloadavg()[0]))
    print(out, end="")
    if a.save:
        a.save.write_text(out)
    compare.log(f"worker logs: {logdir}")
    return 1 if any("error" in d.result for d in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
