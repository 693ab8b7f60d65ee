"""Real processes: a SIGKILLed tasks_engine worker's Celery job runs again and completes once; a
message claimed but never taken over comes back after the visibility timeout; a real ``celery worker``
and a tasks_engine worker share one queue, 2,000 jobs, each run exactly once, all SUCCESS."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis as sync_redis
from celery import chain

from tasks_engine import configure
from tasks_engine.store import get_broker
from tasks_engine.store.celery import CeleryStore
from tests.celery_wire.conftest import Wire, engine_worker
from tests.celery_wire.test_consume import get
from tests.conftest import REDIS_URL, ROOT

IMPORTS = "tests.celery_wire.engine_tasks"


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


async def test_sigkilled_worker_job_runs_again_and_completes_once(
    wire: Wire, sync_client: sync_redis.Redis, spawn_worker: Callable[..., subprocess.Popen[bytes]]
) -> None:
    key = f"{wire.celery_prefix}kill"
    first = spawn_worker(env=wire.env(), imports=IMPORTS)
    r = wire.send("cw.slow_first", key)
    await asyncio.to_thread(wait_for, lambda: sync_client.hget(key, "runs") == b"1", 10, "the first run")
    assert wire.app.AsyncResult(r.id).state == "STARTED"
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    spawn_worker(env=wire.env(), imports=IMPORTS)
    assert await get(r, timeout=20) == 2  # the second delivery, after the dead worker's lease ran out
    assert sync_client.hget(key, "runs") == b"2" and sync_client.hget(key, "done") == b"1"


async def test_message_claimed_but_never_taken_over_is_restored_after_the_visibility_timeout(
    wire: Wire, sync_client: sync_redis.Redis
) -> None:
    """A worker dying between the claim and the hand-over leaves the message in kombu's unacked set only."""
    r = wire.send("cw.add", 4, 5)
    store = CeleryStore(get_broker(), wire.settings)
    (claimed,) = await store.claim([wire.queue], 10)  # and then "dies"
    assert sync_client.llen(f"{wire.celery_prefix}{wire.queue}") == 0
    assert sync_client.hexists(store.keys.unacked, claimed.tag) and sync_client.zscore(
        store.keys.unacked_index, claimed.tag
    )
    assert await store.restore() == 0  # younger than the visibility timeout: left alone
    wire.settings = configure(wire.settings, celery_visibility_timeout=0.5)
    await asyncio.sleep(0.6)
    async with engine_worker():
        assert await get(r) == 9
    assert not sync_client.hexists(store.keys.unacked, claimed.tag)


@pytest.fixture
def celery_worker(wire: Wire, tmp_path: Path) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        env = {**os.environ, "CW_PREFIX": wire.celery_prefix, "CW_REDIS": REDIS_URL, "PYTHONUNBUFFERED": "1"}
        log = open(tmp_path / f"celery-{len(procs)}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.celery_wire.celery_app", "worker", "--pool", "solo",
             "-Q", f"{wire.queue},{wire.queue}-celery", "-n", f"cw-{wire.queue}@%h", "--without-mingle",
             "--without-gossip", "--without-heartbeat", "-l", "INFO"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


@pytest.mark.slow
async def test_mixed_fleet_shares_a_queue_each_job_once(
    wire: Wire,
    sync_client: sync_redis.Redis,
    spawn_worker: Callable[..., subprocess.Popen[bytes]],
    celery_worker: Callable[[], subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    key = f"{wire.celery_prefix}fleet"
    n = 2000
    # One message left behind in kombu's unacked set long ago by a lost consumer: kombu's restore (in the
    # Celery worker, at start-up) or ours puts it back; either way it runs once.
    lost = wire.send("cw.count", key)
    store = CeleryStore(get_broker(), wire.settings)
    (claimed,) = await store.claim([wire.queue], 1)
    sync_client.zadd(store.keys.unacked_index, {claimed.tag: time.time() - 3600})
    proc = celery_worker()
    spawn_worker(env={**wire.env(), "TE_CELERY_QUEUES": f"{wire.queue},{wire.queue}-te"}, imports=IMPORTS)
    await asyncio.to_thread(
        wait_for, lambda: b"ready" in (tmp_path / "celery-0.log").read_bytes() or proc.poll() is not None, 30,
        "the celery worker",
    )  # fmt: skip
    ids = [lost.id] + [wire.send("cw.count", key).id for _ in range(n)]
    # A chain crossing engines: its steps' queues are served by one engine each.
    steps = [("te", 1, 2), ("celery", 10), ("te", 100)]
    crossing = chain(
        *(wire.app.signature("cw.add", args=a, queue=f"{wire.queue}-{where}") for where, *a in steps)
    ).apply_async()
    await asyncio.to_thread(wait_for, lambda: int(sync_client.hget(key, "done") or 0) >= n + 1, 60, "every job")
    await asyncio.sleep(0.5)  # a job run twice would show up by now
    runs = {k.decode(): int(v) for k, v in sync_client.hgetall(key).items()}
    assert runs["done"] == n + 1
    assert all(runs.get(i) == 1 for i in ids), [i for i in ids if runs.get(i) != 1][:5]
    assert runs.get("by-celery", 0) > 0 and runs.get("by-engine", 0) > 0, runs.get("by-celery")
    keys = [wire.app.backend.get_key_for_task(i) for i in ids]
    records = [json.loads(v) for v in sync_client.mget(keys) if v is not None]
    assert len(records) == n + 1 and {r["status"] for r in records} == {"SUCCESS"}
    assert await get(crossing, timeout=20) == 113
    assert proc.poll() is None, "the celery worker died"
    assert sync_client.hlen(store.keys.unacked) == 0
