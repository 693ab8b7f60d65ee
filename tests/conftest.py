"""Test fixtures: a real Redis (started embedded if nothing answers), one key prefix per test,
workers in the test process or as real subprocesses."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, cast

import pytest
import redis as sync_redis

import tasks_engine.runtime.builtins  # noqa: F401
import tests.sample_tasks  # noqa: F401 - registers the sample tasks
from tasks_engine import configure
from tasks_engine.core.config import EngineSettings
from tasks_engine.integrations.embedded import ensure_redis
from tasks_engine.runtime.worker import Worker
from tasks_engine.store import get_broker
from tasks_engine.store.connection import sync_client as sync_client_for

ROOT = Path(__file__).resolve().parent.parent
pytest_plugins = ["tests.dashboard_support"]  # the dashboard fixture of both dashboard test files
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() == "true"


def skip_or_fail_in_ci(reason: str, *, allow_module_level: bool = False) -> NoReturn:
    """Skip a test whose prerequisite is missing, except under ``CI=true``: there a skip would let a README
    claim go unchecked while the run still looks green, so it fails with the reason instead."""
    if IN_CI:
        pytest.fail(f"CI=true, so this is a failure, not a skip: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=allow_module_level)


@pytest.fixture(scope="session", autouse=True)
def redis_server() -> str:
    return ensure_redis(REDIS_URL, ROOT / "var" / "redis")


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


#: REDIS_URL may name a Cluster or Sentinel (``scripts/test-cluster`` runs the core modules on a Cluster).
ON_CLUSTER = REDIS_URL.startswith(("redis+cluster://", "rediss+cluster://"))


def redis_client() -> sync_redis.Redis:
    """A blocking client for REDIS_URL, whatever it names (one server, Sentinel, Cluster)."""
    return cast("sync_redis.Redis", sync_client_for(EngineSettings(redis_url=REDIS_URL), socket_timeout=10))


@pytest.fixture
def sync_client() -> Iterator[sync_redis.Redis]:
    client = redis_client()
    yield client
    client.close()


not_on_cluster = pytest.mark.skipif(ON_CLUSTER, reason="arq's CLI has no Redis Cluster client (README: Scale-out)")


@pytest.fixture
async def engine(prefix: str, sync_client: sync_redis.Redis) -> AsyncIterator[EngineSettings]:
    """Engine settings isolated to this test's key prefix; keys are removed afterwards."""
    settings = configure(
        EngineSettings(
            key_prefix=prefix, lease_seconds=3, heartbeat_seconds=0.5, shutdown_grace_seconds=5, beat_enabled=False
        )
    )
    yield settings
    broker = get_broker()
    await broker.close()
    keys = list(sync_client.scan_iter(match=f"{{{prefix}}}:*", count=1000))
    if keys:
        sync_client.delete(*keys)


@contextlib.asynccontextmanager
async def running_worker(**options: Any) -> AsyncIterator[Worker]:
    """A worker in this event loop for the duration of the block (options go to ``Worker``)."""
    w = Worker(beat=False, **options)
    await w.start(handle_signals=False)
    try:
        yield w
    finally:
        await w.stop(grace=1)


@pytest.fixture
async def worker(engine: EngineSettings) -> AsyncIterator[Worker]:
    """A worker in this test's event loop."""
    async with running_worker() as w:
        yield w


def worker_env(prefix: str, **extra: Any) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "TE_KEY_PREFIX": prefix,
            "REDIS_URL": REDIS_URL,
            "TE_LEASE_SECONDS": "3",
            "TE_HEARTBEAT_SECONDS": "0.5",
            "TE_BEAT_ENABLED": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


@pytest.fixture
def spawn_worker(
    prefix: str, sync_client: sync_redis.Redis, tmp_path: Path
) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ``tasks-engine worker`` subprocesses; waits until each has announced itself in Redis."""
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(
        *args: str,
        env: dict[str, Any] | None = None,
        wait: bool = True,
        imports: str = "tests.sample_tasks",
    ) -> subprocess.Popen[bytes]:
        # Wait for a worker key that was not there before (a count could be fooled by a dead worker's
        # key expiring meanwhile).
        before = set(sync_client.scan_iter(f"{{{prefix}}}:worker:*"))
        log = open(tmp_path / f"worker-{len(procs)}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "tasks_engine.cli", "worker", "--app", "none", "-I", imports, *args],
            cwd=ROOT,
            env=worker_env(prefix, **(env or {})),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a supervisor's children die with it
        )
        procs.append(proc)
        if wait:
            deadline = time.monotonic() + 20
            while not set(sync_client.scan_iter(f"{{{prefix}}}:worker:*")) - before:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log_text = (tmp_path / f"worker-{len(procs) - 1}.log").read_text()
                    raise RuntimeError(f"worker did not start: {log_text}")
                time.sleep(0.05)
        return proc

    yield spawn
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
