"""Operations: the ``tasks-engine`` commands a Celery user reaches for (inspect, ping, dead letters,
retry, call, purge), their JSON output and exit codes, and the Prometheus metrics and health probes —
all against the real Redis and real worker processes."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
import urllib.request
from typing import Any

import pytest

import tests.containment_tasks as bad
from tasks_engine import AsyncResult, send_task, states
from tasks_engine.store import get_broker
from tests import sample_tasks as t
from tests.conftest import ROOT, worker_env

pytestmark = pytest.mark.slow
IMPORTS = "tests.containment_tasks"


async def run_cli(prefix: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tasks_engine.cli", *args, "--app", "none", cwd=ROOT,
        env={**worker_env(prefix), **(env or {})}, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def cli_json(prefix: str, *args: str) -> Any:
    code, out, err = await run_cli(prefix, *args, "--json")
    assert code == 0, (code, out, err)
    return json.loads(out)


async def wait_for(predicate: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - a loopback URL of ours
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.serial  # timing-sensitive: runs alone after the parallel run
async def test_inspect_shows_running_scheduled_and_waiting_jobs_and_workers(engine, spawn_worker, prefix):
    spawn_worker(imports=IMPORTS)
    running = await bad.slow_step.delay("inspect", 8.0)
    later = await t.add.apply_async((1, 2), countdown=60)
    waiting = await t.add.apply_async((3, 4), queue="nobody-consumes")
    await wait_for(lambda: _started(running), 10)
    active = await cli_json(prefix, "inspect", "active")
    assert [(j["id"], j["task"]) for j in active] == [(running.id, "bad.slow_step")]
    assert '"inspect"' in active[0]["args"] and active[0]["worker"] and active[0]["started"]
    scheduled = await cli_json(prefix, "inspect", "scheduled")
    assert [(j["id"], j["task"], j["queue"]) for j in scheduled] == [(later.id, "demo.add", "default")]
    reserved = await cli_json(prefix, "inspect", "reserved")
    assert {(j["id"], j["queue"]) for j in reserved} == {(waiting.id, "nobody-consumes")}
    registered = await cli_json(prefix, "inspect", "registered")
    (names,) = registered.values()
    assert "bad.slow_step" in names and "demo.add" in names
    stats = await cli_json(prefix, "inspect", "stats")
    assert stats[0]["running"] == 1 and stats[0]["healthy"] is True
    queues = {q["queue"]: q for q in await cli_json(prefix, "inspect", "queues")}
    assert queues["nobody-consumes"]["ready"] == 1 and queues["nobody-consumes"]["consumers"] == []
    assert queues["nobody-consumes"]["oldest_age_seconds"] is not None
    assert queues["default"]["deferred"] == 1
    code, table, _ = await run_cli(prefix, "inspect", "active", env={"COLUMNS": "300"})
    assert code == 0 and running.id in table and "bad.slow_step" in table  # the human table


async def _started(r: AsyncResult) -> bool:
    return await r.state() == states.STARTED


async def test_ping_answers_only_for_a_healthy_worker_of_the_queue(engine, spawn_worker, prefix):
    code, _, _ = await run_cli(prefix, "ping")
    assert code == 1  # nobody there
    spawn_worker(imports=IMPORTS)
    code, out, _ = await run_cli(prefix, "ping", "--json")
    assert code == 0 and json.loads(out)[0]["queues"] == ["default"]
    code, _, _ = await run_cli(prefix, "ping", "--queue", "reports")
    assert code == 1


async def test_dead_letters_list_show_requeue_and_drop(engine, spawn_worker, prefix):
    lacking = spawn_worker()  # only tests.sample_tasks: bad.pid is unknown here
    unknown = await send_task("bad.pid")
    other = await send_task("bad.pid")
    await wait_for(lambda: _dead_count(prefix, 2), 15)
    listed = await cli_json(prefix, "dead", "list")
    assert {d["id"] for d in listed} == {unknown.id, other.id}
    assert all(d["task"] == "bad.pid" and "not registered" in d["reason"] for d in listed)
    shown = await cli_json(prefix, "dead", "show", unknown.id)
    assert shown["id"] == unknown.id and '"task":"bad.pid"' in shown["raw"]
    lacking.kill()
    lacking.wait()
    spawn_worker(imports=IMPORTS)  # the task is deployed now
    requeued = await cli_json(prefix, "dead", "requeue", unknown.id)
    assert requeued == {"requeued": 1, "refused": []}
    assert isinstance(await unknown.get(timeout=10), int)  # it ran this time
    code, _, err = await run_cli(prefix, "dead", "drop", "--all")
    assert code != 0  # asks first, and there is nobody to answer
    assert [d["id"] for d in await cli_json(prefix, "dead", "list")] == [other.id]
    assert await cli_json(prefix, "dead", "drop", "--all", "--yes") == {"dropped": 1}
    assert await cli_json(prefix, "dead", "list") == []


async def _dead_count(prefix: str, n: int) -> bool:
    broker = get_broker()
    return int(await broker.redis.llen(broker.key("dead"))) >= n


async def test_retry_and_retry_failed_send_failed_jobs_again_with_their_arguments(engine, spawn_worker, prefix):
    spawn_worker(imports=IMPORTS)
    first = await bad.fail_once.delay("ops", 42)
    second = await t.fail.delay(7, "x")
    with pytest.raises(RuntimeError):
        await first.get(timeout=10)
    with pytest.raises(ValueError):
        await second.get(timeout=10)
    failed = await cli_json(prefix, "retry-failed", "--since", "1h", "--dry-run")
    assert {f["id"] for f in failed} >= {first.id, second.id}
    pairs = await cli_json(prefix, "retry", first.id)
    assert pairs[0]["failed"] == first.id
    again = AsyncResult(pairs[0]["retried_as"])
    assert await again.get(timeout=10) == 42  # same arguments, a new job that succeeds now
    assert (await first.record())["state"] == states.FAILURE
    broker = get_broker()
    assert (await broker.redis.hget(broker.key("res", first.id), "retried_as")).decode() == again.id
    pairs = await cli_json(prefix, "retry-failed", "--task", "demo.fail", "--since", "1h")
    assert [p["failed"] for p in pairs] == [second.id]
    with pytest.raises(ValueError):
        await AsyncResult(pairs[0]["retried_as"]).get(timeout=10)
    # The original is never sent twice: only the retry's own (new) failure is left to retry.
    pairs_again = await cli_json(prefix, "retry-failed", "--task", "demo.fail", "--since", "1h")
    assert [p["failed"] for p in pairs_again] == [pairs[0]["retried_as"]]


async def test_call_sends_a_task_by_name(engine, spawn_worker, prefix):
    spawn_worker(imports=IMPORTS)
    sent = await cli_json(prefix, "call", "demo.add", "--args", "[20, 22]")
    assert await AsyncResult(sent["id"]).get(timeout=10) == 42
    code, _, err = await run_cli(prefix, "call", "demo.add", "--args", "not json")
    assert code == 2 and "--args" in err


async def test_purge_asks_first_and_clears_only_the_named_queues(engine, prefix):
    for queue in ("a", "b", "c"):
        await t.add.apply_async((1, 1), queue=queue)
    code, _, _ = await run_cli(prefix, "purge", "-Q", "a,b")
    assert code != 0  # no confirmation possible without a terminal
    assert await cli_json(prefix, "purge", "-Q", "a,b", "--yes") == {"a": 1, "b": 1}
    broker = get_broker()
    assert await broker.redis.zcard(broker.key("q", "c")) == 1
    assert not [k async for k in broker.redis.scan_iter(match=broker.key("msg", "*"))][1:]  # only c's message


async def test_unreachable_redis_is_one_line_and_exit_code_3(prefix):
    env = {"REDIS_URL": "redis://admin:hunter2@127.0.0.1:1/0"}
    code, out, err = await run_cli(prefix, "inspect", "queues", env=env)
    assert code == 3 and out == ""
    assert err.count("\n") == 1 and "***@127.0.0.1:1" in err and "hunter2" not in err and "Traceback" not in err


async def test_worker_metrics_and_health_probes(engine, spawn_worker, prefix):
    port = free_port()
    spawn_worker("--metrics-port", str(port), imports=IMPORTS)
    assert await (await t.add.delay(1, 2)).get(timeout=10) == 3
    with pytest.raises(ValueError):
        await (await t.fail.delay()).get(timeout=10)
    status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    assert 'tasks_engine_tasks_total{state="SUCCESS",task="demo.add"} 1.0' in body
    assert 'tasks_engine_tasks_total{state="FAILURE",task="demo.fail"} 1.0' in body
    assert 'tasks_engine_task_runtime_seconds_count{task="demo.add"} 1.0' in body
    assert "tasks_engine_running_jobs 0.0" in body and "tasks_engine_worker_up 1.0" in body
    assert http_get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
    assert http_get(f"http://127.0.0.1:{port}/readyz") == (200, "ready\n")
    assert http_get(f"http://127.0.0.1:{port}/nothing")[0] == 404


async def test_cluster_metrics_from_redis(engine, prefix):
    await t.add.apply_async((1, 1), queue="backlog")
    await t.add.apply_async((1, 1), queue="backlog", countdown=600)
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tasks_engine.cli", "metrics", "--port", str(port), "--host", "127.0.0.1",
        "--app", "none", cwd=ROOT, env=worker_env(prefix), stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        body = ""
        for _ in range(100):
            try:
                status, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/metrics")
                break
            except OSError:
                await asyncio.sleep(0.1)
        assert 'tasks_engine_queue_ready{queue="backlog"} 1.0' in body
        assert 'tasks_engine_queue_deferred{queue="backlog"} 1.0' in body
        assert 'tasks_engine_workers{queue="backlog"} 0.0' in body
        assert 'tasks_engine_queue_oldest_age_seconds{queue="backlog"}' in body
        assert "tasks_engine_dead_letters 0.0" in body
    finally:
        proc.kill()
        await proc.wait()


# ---------------------------------------------------------------- migration to the hash-tagged layout
async def test_migrate_keys_moves_the_layout_before_hash_tags_and_its_jobs_run(
    engine, prefix, sync_client, spawn_worker
):
    """Keys written as ``<prefix>:…`` (before 0.x put them under ``{<prefix>}``) are renamed by
    ``tasks-engine migrate-keys``; the queued job then runs, and a taken new name is left alone."""
    queued = await t.add.delay(20, 22)
    tagged = sync_client.keys(f"{{{prefix}}}:*")
    assert tagged
    for key in tagged:  # the old spelling of the same keys
        sync_client.rename(key, key.replace(f"{{{prefix}}}:".encode(), f"{prefix}:".encode(), 1))
    sync_client.set(f"{prefix}:jobs:taken", "old")
    sync_client.set(f"{{{prefix}}}:jobs:taken", "new")
    assert await cli_json(prefix, "migrate-keys", "--dry-run") == {"would_rename": len(tagged), "conflicts": 1}
    assert await cli_json(prefix, "migrate-keys") == {"renamed": len(tagged), "conflicts": 1}
    assert sync_client.get(f"{{{prefix}}}:jobs:taken") == b"new" and sync_client.get(f"{prefix}:jobs:taken") == b"old"
    sync_client.delete(f"{prefix}:jobs:taken")
    spawn_worker()
    assert await queued.get(timeout=20) == 42
