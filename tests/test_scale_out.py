"""Issue 17: Redis Sentinel and Redis Cluster, with real ``redis-server`` processes on loopback.

- Sentinel: one primary, one replica, three sentinels. 2,000 jobs are sent while the primary is
  killed (SIGKILL, then restarted as an operator would) or handed over (``SENTINEL FAILOVER``); the
  workers and the producer carry on without a restart. Each run of a job appends its id to a file, so
  lost, duplicated and stuck jobs are counted outside Redis. With ``replica_acks=1`` none is lost.
- Cluster: the default suite's core, canvas, retries, rate-limit, revoke and beat modules run against a
  3-primary cluster, and a primary failover (``CLUSTER FAILOVER`` on its replica) mid-run loses no job.

Each case prints one ``SCALEOUT {json}`` line: the figures in the README come from these.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis
from redis.exceptions import RedisError

from tasks_engine import configure
from tasks_engine.config import EngineSettings
from tasks_engine.exceptions import EngineConnectionError, NotReplicatedError
from tasks_engine.store import get_broker
from tasks_engine.store.connection import sync_client
from tasks_engine.store.keys import Keys
from tests import scaleout_tasks
from tests.topology import cluster, sentinels, wait_until

pytestmark = pytest.mark.extended
ROOT = Path(__file__).resolve().parent.parent
JOBS = 2_000
RATE = 400  # jobs/s sent: the run lasts ~5 s, the failover happens in the middle
FAIL_AT = 600


def spawn_workers(
    url: str, prefix: str, runs: Path, logs: Path, count: int = 2, **env: Any
) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(count):
        with open(logs / f"worker-{i}.log", "ab") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "tasks_engine.cli", "worker", "--app", "none", "-I", "tests.scaleout_tasks"],
                    cwd=ROOT,
                    env={
                        **os.environ,
                        "REDIS_URL": url,
                        "TE_KEY_PREFIX": prefix,
                        "TE_LEASE_SECONDS": "3",
                        "TE_HEARTBEAT_SECONDS": "0.5",
                        "TE_BEAT_ENABLED": "false",
                        "TE_TEST_RUNS_FILE": str(runs),
                        "PYTHONUNBUFFERED": "1",
                        **{k: str(v) for k, v in env.items()},
                    },
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    settings = EngineSettings(redis_url=url, key_prefix=prefix)
    client = sync_client(settings, socket_timeout=5)
    pattern = Keys(prefix).pattern("worker")
    wait_until(lambda: len(list(client.scan_iter(match=pattern))) >= count, 30, "the workers to announce themselves")
    client.close()
    return procs


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.kill()
        proc.wait()


async def produce(on_sent: Callable[[int], Any]) -> tuple[list[str], int]:
    """Send JOBS jobs at RATE/s; a send that fails is sent again with the same id until acknowledged.
    Returns the acknowledged ids and how many sends had to be repeated."""
    acked: list[str] = []
    repeats = 0
    start = time.monotonic()
    for i in range(JOBS):
        task_id = f"job-{i}"
        deadline = time.monotonic() + 60
        while True:
            try:
                await scaleout_tasks.mark.apply_async(task_id=task_id)
                break
            except (EngineConnectionError, NotReplicatedError, RedisError, OSError):
                repeats += 1
                assert time.monotonic() < deadline, f"{task_id} could not be sent for 60 s"
                await asyncio.sleep(0.05)
        acked.append(task_id)
        await on_sent(i)
        await asyncio.sleep(max(0.0, start + (i + 1) / RATE - time.monotonic()))
    return acked, repeats


def tally(acked: list[str], runs: Path, url: str, prefix: str, wait: float = 60) -> dict[str, int]:
    """Lost: acknowledged, never ran and gone from Redis. Stuck: never ran and still there. Duplicated:
    ran more than once."""

    def counts() -> collections.Counter[str]:
        return collections.Counter(runs.read_text().split()) if runs.exists() else collections.Counter()

    deadline = time.monotonic() + wait
    seen = -1
    while time.monotonic() < deadline:  # until every job ran, or nothing moved for 10 s
        ran = counts()
        if all(ran[i] for i in acked):
            break
        if sum(ran.values()) != seen:
            seen, quiet_since = sum(ran.values()), time.monotonic()
        elif time.monotonic() - quiet_since > 10:
            break
        time.sleep(0.25)
    ran = counts()
    client = sync_client(EngineSettings(redis_url=url, key_prefix=prefix), socket_timeout=5)
    keys = Keys(prefix)
    missing = [i for i in acked if not ran[i]]
    present = [i for i in missing if client.exists(keys.message(i))]
    client.close()
    return {
        "acknowledged": len(acked),
        "ran": sum(1 for i in acked if ran[i]),
        "lost": len(missing) - len(present),
        "stuck": len(present),
        "duplicated": sum(1 for i in acked if ran[i] > 1),
    }


def report(case: str, figures: dict[str, Any]) -> None:
    print("SCALEOUT " + json.dumps({"case": case, **figures}), flush=True)


# ---------------------------------------------------------------- Sentinel
@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[Any]:
    with sentinels(tmp_path / "redis") as topology:
        yield topology


@pytest.mark.parametrize(
    ("how", "acks"),
    [("sigkill", 0), ("sigkill", 1), ("sentinel-failover", 1)],
    ids=["kill-acks0", "kill-acks1", "failover-acks1"],
)
async def test_sentinel_failover_mid_run(sentinel_set: Any, tmp_path: Path, how: str, acks: int) -> None:
    url = sentinel_set.url()
    prefix = f"so{how[:4]}{acks}"
    runs = tmp_path / "runs.txt"
    procs = spawn_workers(url, prefix, runs, tmp_path, TE_REPLICA_ACKS=acks)
    configure(EngineSettings(redis_url=url, key_prefix=prefix, replica_acks=acks, enqueue_wait_seconds=30,
                             replica_ack_timeout=1.0))  # fmt: skip
    old_port = sentinel_set.current_primary_port()
    failed_over_at: list[float] = []

    async def maybe_fail(i: int) -> None:
        if i != FAIL_AT:
            return
        failed_over_at.append(time.monotonic())
        if how == "sigkill":
            sentinel_set.server(old_port).kill()
        else:
            sentinel_set.sentinels[0].client().execute_command("SENTINEL", "FAILOVER", sentinel_set.master_name)

    try:
        producing = asyncio.create_task(produce(maybe_fail))
        while not failed_over_at:
            await asyncio.sleep(0.05)
        await asyncio.to_thread(
            wait_until,
            lambda: sentinel_set.current_primary_port() != old_port,
            30,
            "the sentinels to promote the replica",
        )
        switched = time.monotonic() - failed_over_at[0]
        if how == "sigkill":  # the operator brings the old primary back: the sentinels make it a replica
            await asyncio.to_thread(sentinel_set.server(old_port).start)
        acked, repeats = await producing
        figures = await asyncio.to_thread(tally, acked, runs, url, prefix)
        for proc in procs:
            assert proc.poll() is None, "a worker died in the failover"
    finally:
        stop(procs)
        await get_broker().close()
    report(f"sentinel {how} replica_acks={acks}", {**figures, "resent": repeats, "failover_s": round(switched, 1)})
    assert figures["stuck"] == 0, figures
    assert figures["ran"] + figures["lost"] == JOBS
    if acks:
        assert figures["lost"] == 0, figures


# ---------------------------------------------------------------- Cluster
CLUSTER_MODULES = [
    "tests/test_core.py",
    "tests/test_canvas.py",
    "tests/test_retries.py",
    "tests/test_flow_control.py",  # rate limits, priorities, revoke
    "tests/test_beat.py",
    "tests/test_time_limits.py",  # revoke(terminate=True) among them
]


def test_core_canvas_retries_rate_limits_revoke_and_beat_pass_on_a_cluster(tmp_path: Path) -> None:
    with cluster(primaries=3, root=tmp_path / "redis") as topology:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *CLUSTER_MODULES],
            cwd=ROOT,
            env={**os.environ, "REDIS_URL": topology.url},
            capture_output=True,
            text=True,
            timeout=600,
        )
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
    assert proc.returncode == 0, tail
    assert " passed" in tail and "failed" not in tail, tail


async def test_cluster_primary_failover_mid_run_loses_no_job(tmp_path: Path) -> None:
    with cluster(primaries=3, replicas=1, root=tmp_path / "redis") as topology:
        prefix = "socluster"
        runs = tmp_path / "runs.txt"
        procs = spawn_workers(topology.url, prefix, runs, tmp_path)
        configure(EngineSettings(redis_url=topology.url, key_prefix=prefix, enqueue_wait_seconds=30))
        primary = topology.node_of(Keys(prefix).active)
        primary_id = primary.client().execute_command("CLUSTER", "MYID").decode()
        replica = next(
            s for s in topology.replicas if primary_id in s.client().execute_command("CLUSTER", "NODES").decode().split(
                "myself")[1].splitlines()[0]
        )  # fmt: skip
        failed_over: list[float] = []

        async def maybe_fail(i: int) -> None:
            if i == FAIL_AT:
                failed_over.append(time.monotonic())
                replica.client().execute_command("CLUSTER", "FAILOVER")

        try:
            acked, repeats = await produce(maybe_fail)
            assert topology.node_of(Keys(prefix).active).port == replica.port, "the replica did not take over"
            figures = await asyncio.to_thread(tally, acked, runs, topology.url, prefix)
            for proc in procs:
                assert proc.poll() is None, "a worker died in the failover"
        finally:
            stop(procs)
            await get_broker().close()
    report("cluster primary failover (CLUSTER FAILOVER)", {**figures, "resent": repeats})
    assert figures["lost"] == 0 and figures["stuck"] == 0, figures
    assert figures["ran"] == JOBS


def test_a_sentinel_url_reaches_the_primary_from_the_cli_and_arq_settings(sentinel_set: Any) -> None:
    """The CLI and arq's own RedisSettings take the same URL (arq gets ``sentinel=True``)."""
    from tasks_engine.arq_bridge import arq_redis_settings

    url = sentinel_set.url(db=3)
    settings = arq_redis_settings(url)
    assert settings.sentinel and settings.sentinel_master == sentinel_set.master_name and settings.database == 3
    assert sorted(settings.host) == sorted(("127.0.0.1", s.port) for s in sentinel_set.sentinels)  # type: ignore[arg-type]
    proc = subprocess.run(
        [sys.executable, "-m", "tasks_engine.cli", "inspect", "queues", "--json"],
        cwd=ROOT,
        env={**os.environ, "REDIS_URL": url, "TE_KEY_PREFIX": "socli"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    primary = sync_redis.Redis(port=sentinel_set.current_primary_port())
    assert primary.ping()
