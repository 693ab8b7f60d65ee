"""Issue 17: Redis Sentinel and Redis Cluster, with real ``redis-server`` processes on loopback.

- Sentinel: one primary, one replica, three sentinels. 2,000 jobs are sent while the primary is
  killed (SIGKILL, then restarted as an operator would) or handed over (``SENTINEL FAILOVER``); the
  workers and the producer carry on without a restart. Each run of a job appends its id to a file, so
  lost, duplicated and stuck jobs are counted outside Redis. With ``replica_acks=1`` none is lost.
- Cluster: the default suite's core, canvas, retries, rate-limit, revoke and beat modules run against a
  3-primary cluster; a primary failover (``CLUSTER FAILOVER`` on its replica) and a migration of the
  app's slot to another primary, each in the middle of a run, lose no job.

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

from tasks_engine import configure, send_task
from tasks_engine.core.config import EngineSettings
from tasks_engine.exceptions import EngineConnectionError, NotRegistered, NotReplicatedError
from tasks_engine.ops import control
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
WORKER_COMMAND = [
    sys.executable,
    "-m",
    "tasks_engine.cli",
    "worker",
    "--app",
    "none",
    "-I",
    "tests.scaleout_tasks",
]


def spawn_workers(
    url: str, prefix: str, runs: Path, logs: Path, count: int = 2, queues: str = "default", **env: Any
) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(count):
        with open(logs / f"worker-{queues}-{i}.log", "ab") as out:
            procs.append(
                subprocess.Popen(
                    [*WORKER_COMMAND, "-Q", queues],
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


@pytest.mark.timeout(660)  # a whole sub-suite; its own run is bounded at 600 s below
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


def migrate_slot(topology: Any, key: str, batch: int = 20, pause: float = 0.01) -> tuple[Any, int, float]:
    """Move ``key``'s slot to another primary the way ``redis-cli --cluster reshard`` does (IMPORTING,
    MIGRATING, MIGRATE in batches, SETSLOT NODE); returns the new node, the keys moved and the seconds."""
    started = time.monotonic()
    source = topology.node_of(key)
    target = next(s for s in topology.primaries if s.port != source.port)
    src, dst = source.client(), target.client()
    slot = int(src.execute_command("CLUSTER", "KEYSLOT", key))
    src_id, dst_id = (c.execute_command("CLUSTER", "MYID").decode() for c in (src, dst))
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
    moved = 0
    while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch):
        src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
        moved += len(keys)
        time.sleep(pause)  # jobs keep being sent and run while the slot is half moved
    for server in (target, source, *(s for s in topology.primaries if s.port not in (source.port, target.port))):
        server.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
    return target, moved, time.monotonic() - started


async def test_cluster_slot_migration_mid_run_loses_no_job(tmp_path: Path) -> None:
    """The app's slot moves to another primary while jobs are sent and run. Scripts declare a key that
    never exists (``slot-guard``), so the Cluster refuses them (TRYAGAIN) until the move is done instead
    of letting one run on half-moved keys; clients and workers retry, and nothing is lost."""
    with cluster(primaries=3, root=tmp_path / "redis") as topology:
        prefix = "soslot"
        runs = tmp_path / "runs.txt"
        procs = spawn_workers(topology.url, prefix, runs, tmp_path)
        procs += spawn_workers(topology.url, prefix, runs, tmp_path, count=1, queues="quiet")  # stays idle
        configure(EngineSettings(redis_url=topology.url, key_prefix=prefix, enqueue_wait_seconds=30))
        keys = Keys(prefix)
        # Every key the scripts declare exists, as in an app that has run a while: the Cluster then
        # refuses a script during the move only because of the never-written slot-guard key.
        await control.set_rate_limit("scaleout.limited", "50/s")  # rate-limits
        await scaleout_tasks.mark.apply_async(countdown=3600)  # delayed, dq
        rejected = await send_task("scaleout.not_registered")  # dead
        failed = await scaleout_tasks.fail.delay()  # failed
        with pytest.raises(RuntimeError):
            await failed.get(timeout=10)
        with pytest.raises(NotRegistered):
            await rejected.get(timeout=10)
        await scaleout_tasks.mark.delay(pause=8)  # active, inflight: running through the move
        static = [k for k in keys.static if not k.endswith(":slot-guard")]
        await asyncio.to_thread(
            wait_until, lambda: topology.node_of(keys.active).client().exists(*static) == len(static), 10,
            "every declared key to exist",
        )  # fmt: skip
        key = keys.active
        before = topology.node_of(key).port
        migration: list[asyncio.Task[Any]] = []

        async def maybe_move(i: int) -> None:
            if i == FAIL_AT:
                migration.append(asyncio.create_task(asyncio.to_thread(migrate_slot, topology, key)))

        try:
            acked, repeats = await produce(maybe_move)
            target, moved, seconds = await migration[0]
            assert topology.node_of(key).port == target.port != before, "the slot did not move"
            figures = await asyncio.to_thread(tally, acked, runs, topology.url, prefix)
            for proc in procs:
                assert proc.poll() is None, "a worker died while the slot moved"
            node = topology.node_of(key).client()
            states_seen = collections.Counter(
                (node.hget(keys.result(i), "state") or b"none").decode() for i in acked
            )  # fmt: skip
            dead_letters = node.llen(keys.dead)
        finally:
            stop(procs)
            await get_broker().close()
    report("cluster slot migration", {**figures, "resent": repeats, "keys_moved": moved, "move_s": round(seconds, 1)})
    assert moved > 100, moved  # the move happened with the app's keys in the slot, not on an empty one
    assert figures["lost"] == 0 and figures["stuck"] == 0, figures
    assert figures["ran"] == JOBS
    # Without the guard a completion script can run on the half-moved slot, fail on a key already
    # moved and get its job quarantined: a job that ran recorded as FAILURE, with a dead letter.
    assert states_seen == {"SUCCESS": JOBS}, states_seen
    assert dead_letters == 1, "only the unregistered task's message is a dead letter"


def test_a_sentinel_url_reaches_the_primary_from_the_cli_and_arq_settings(sentinel_set: Any) -> None:
    """The CLI and arq's own RedisSettings take the same URL (arq gets ``sentinel=True``)."""
    from tasks_engine.integrations.arq_bridge import arq_redis_settings

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
