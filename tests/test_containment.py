"""Failure containment: every delivery settles, no worker dies silently, no stale write lands.

Real worker processes (``spawn_worker``) against the real Redis; each test plants the bad input a
user or a fault can produce and checks what a user would see: the job's final state, the dead
letters, and a worker that still takes jobs afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis
import structlog
import structlog.testing

import tests.containment_tasks as bad
from tasks_engine import AsyncResult, TaskError, configure, states
from tasks_engine.core.codec import loads
from tasks_engine.core.config import EngineSettings
from tasks_engine.exceptions import EngineConnectionError
from tasks_engine.model.messages import Message, encode
from tasks_engine.model.records import rebuild_exception
from tasks_engine.store import Enqueue, get_broker
from tests import sample_tasks as t
from tests.conftest import ROOT, worker_env
from tests.test_reliability import OwnRedis

pytestmark = pytest.mark.slow
IMPORTS = "tests.containment_tasks"


async def wait_for(predicate: Any, timeout: float, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


async def notes(key: str) -> list[str]:
    broker = get_broker()
    return [e.decode() for e in await broker.redis.lrange(broker.key("log", key), 0, -1)]


async def dead_letters() -> list[dict[str, Any]]:
    broker = get_broker()
    return [loads(e) for e in await broker.redis.lrange(broker.key("dead"), 0, -1)]


async def settled(r: AsyncResult, timeout: float = 15) -> dict[str, Any]:
    """Wait until the job is final, then return its record (and check it left nothing running)."""
    await wait_for(lambda: r.ready(), timeout)
    broker = get_broker()
    assert await broker.redis.zscore(broker.key("active"), r.id) is None, "still leased after settling"
    assert not await broker.redis.exists(broker.key("msg", r.id)), "message left behind"
    return await r.record()


async def still_works() -> None:
    assert await (await t.add.delay(20, 22)).get(timeout=10) == 42


# ---------------------------------------------------------------- finishing a job never re-runs it
async def test_errbacks_that_cannot_run_fail_alone_and_never_rerun_the_parent(engine, spawn_worker):
    spawn_worker(imports=IMPORTS)
    immutable = t.errback.si("given", key="immutable-errback")  # Celery passes an immutable errback nothing
    unfit = t.add.si()  # cannot take any call at all
    sig = t.fail.s()
    sig.link_error(immutable)
    sig.link_error(unfit)
    r = await sig.delay()
    info = await settled(r)
    assert info["state"] == states.FAILURE and info["exc_type"] == "ValueError" and info["delivered"] == 1
    await wait_for(lambda: notes_of_errbacks("immutable-errback"), 10)
    assert await notes_of_errbacks("immutable-errback") == ["given"]  # its own argument, no id prepended
    failed_errbacks = [e for e in await _records_of_task("demo.add") if e["parent_id"] == r.id]
    assert [e["state"] for e in failed_errbacks] == [states.FAILURE], "the unfit errback is recorded as failed"
    await asyncio.sleep(4)  # past the 3 s lease: a stuck job would be delivered again now
    assert (await r.record())["delivered"] == 1
    await still_works()


async def notes_of_errbacks(key: str) -> list[str]:
    broker = get_broker()
    return [e.decode() for e in await broker.redis.lrange(broker.key("test-log", key), 0, -1)]


async def _records_of_task(name: str) -> list[dict[str, Any]]:
    broker = get_broker()
    out = []
    async for rows in broker.iter_records(["task", "state", "parent_id"]):
        out += [
            {"state": b.decode() if b else None, "parent_id": c.decode() if c else None}
            for a, b, c in rows
            if a and a.decode() == name
        ]
    return out


@pytest.mark.parametrize(
    ("task", "exc_type", "message"),
    [
        (bad.retry_unserializable, "TypeError", "not JSON-serializable"),
        (bad.retry_forever, "ValueError", "finite"),
        (bad.raise_cancelled, "CancelledError", ""),
        (bad.sys_exit, "SystemExit", ""),
        (bad.sync_exit, "SystemExit", ""),
        (bad.keyboard, "KeyboardInterrupt", ""),
    ],
)
async def test_a_task_that_raises_anything_fails_only_its_own_job(engine, spawn_worker, task, exc_type, message):
    proc = spawn_worker("--max-jobs", "4", imports=IMPORTS)
    before = await (await bad.pid.delay()).get(timeout=10)
    args = [3] if task in (bad.sys_exit, bad.sync_exit) else []
    r = await task.delay(*args)
    info = await settled(r)
    assert info["state"] == states.FAILURE and info["exc_type"] == exc_type, info
    assert message in (info["exc_message"] or "")
    assert info["delivered"] == 1
    assert proc.poll() is None, "the worker process died with its task"
    assert await (await bad.pid.delay()).get(timeout=10) == before  # the same process goes on
    with pytest.raises(Exception) as raised:
        await r.get(timeout=5)
    assert not isinstance(raised.value, SystemExit | KeyboardInterrupt)  # get() never ends the caller


async def test_retry_with_an_exception_class_retries(engine, spawn_worker):
    spawn_worker(imports=IMPORTS)
    r = await bad.retry_exception_class.delay()
    assert await r.get(timeout=10) == "retried"
    assert (await r.record())["retries"] == 1


async def test_garbage_workflow_data_in_a_message_settles_the_job(engine, spawn_worker):
    spawn_worker(imports=IMPORTS)
    broker = get_broker()
    garbage_chain = Message(id="garbage-chain", task="demo.add", args=[1, 2], chain=[{"task": 5}])
    garbage_errbacks = Message(id="garbage-errbacks", task="demo.fail", link_errors=[{"nope": True}])
    for msg in (garbage_chain, garbage_errbacks):
        await broker.enqueue([Enqueue(msg.id, encode(msg), "default", 5)])
    chain_info = await settled(AsyncResult("garbage-chain"))
    assert chain_info["state"] == states.FAILURE and chain_info["exc_type"] == "TypeError"
    errback_info = await settled(AsyncResult("garbage-errbacks"))
    assert errback_info["state"] == states.FAILURE and errback_info["exc_type"] == "ValueError"  # its own error
    await still_works()


async def test_forged_deeply_nested_message_with_signing_on_is_dead_lettered(prefix, spawn_worker, sync_client):
    key = "s3cret-signing-key"
    configure(EngineSettings(key_prefix=prefix, signing_key=key))
    spawn_worker(env={"TE_SIGNING_KEY": key}, imports=IMPORTS)
    body = '{"id":"forged","task":"demo.add","queue":"default","priority":5,"args":' + "[" * 200_000 + "]" * 200_000
    raw = ("te-sig1:" + "0" * 64 + ":" + body + "}").encode()
    broker = get_broker()
    await broker.enqueue([Enqueue("forged", raw, "default", 5)])
    info = await settled(AsyncResult("forged"))
    assert info["state"] == states.FAILURE and info["exc_type"] == "MessageError"
    assert any(d["id"] == "forged" for d in await dead_letters())
    assert await (await t.add.delay(1, 1)).get(timeout=10) == 2
    await broker.close()


# ---------------------------------------------------------------- bad entries never stop a worker
async def test_bad_entries_in_redis_are_quarantined_and_the_worker_goes_on(engine, spawn_worker, sync_client, prefix):
    spawn_worker(imports=IMPORTS)
    p = "{" + prefix + "}"
    # a queued id that is not UTF-8, with a message
    sync_client.set(f"{p}:msg:".encode() + b"\xff\xfe", b"{}")
    sync_client.zadd(f"{p}:q:default", {b"\xff\xfe": 1})
    # a deferred entry without its 'queue|score' place
    sync_client.set(f"{p}:msg:no-place", encode(Message(id="no-place", task="demo.add", args=[1, 1])))
    sync_client.zadd(f"{p}:delayed", {"no-place": 1})
    sync_client.hset(f"{p}:dq", "no-place", "garbage")
    # a runtime rate limit that is not JSON
    sync_client.hset(f"{p}:rate-limits", "demo.add", "not json")
    # a result key of the wrong type for a job about to run
    sync_client.set(f"{p}:res:wrong-type", "a string, not a hash")
    assert await AsyncResult("wrong-type").state() == states.PENDING  # a client reading it is not hurt either
    assert (await AsyncResult("wrong-type").record())["state"] == states.PENDING
    r = await t.add.apply_async((2, 3), task_id="wrong-type")
    assert await r.get(timeout=10) == 5  # the key was replaced by a proper record
    await wait_for(lambda: _has(reasons_now(), "no-place"), 10)
    assert "unreadable deferred-job entry" in (await reasons_now())["no-place"]
    assert (await AsyncResult("no-place").record())["state"] == states.FAILURE
    await wait_for(lambda: _any_reason("UTF-8"), 10)
    assert not sync_client.hexists(f"{p}:rate-limits", "demo.add")  # unreadable: dropped, the declared limit applies
    await still_works()
    await _assert_healthy(sync_client, prefix)


async def _any_reason(text: str) -> bool:
    return any(text in reason for reason in (await reasons_now()).values())


async def reasons_now() -> dict[str, str]:
    return {str(d["id"]): d["reason"] for d in await dead_letters()}


async def _has(coro: Any, key: str) -> bool:
    return key in await coro


async def _assert_healthy(sync_client: sync_redis.Redis, prefix: str) -> None:
    beats = [json.loads(sync_client.get(k)) for k in sync_client.scan_iter(f"{{{prefix}}}:worker:*")]
    assert beats and all(b["healthy"] for b in beats), beats
    assert all(set(b["loops"].values()) == {"ok"} for b in beats)


async def test_a_queue_name_with_a_separator_is_refused_at_the_call(engine):
    with pytest.raises(ValueError, match="demo.add.*queue 'a|b' must not contain '|'"):
        await t.add.apply_async((1, 2), queue="a|b", countdown=1)
    broker = get_broker()
    assert await broker.redis.zcard(broker.key("delayed")) == 0  # nothing half-written


async def test_message_lost_from_redis_is_reported_not_vanished(engine, spawn_worker):
    r = await t.add.apply_async((1, 2), countdown=1)
    broker = get_broker()
    await broker.redis.delete(broker.key("msg", r.id))  # as allkeys-lru eviction would
    spawn_worker(imports=IMPORTS)
    info = await settled(r)
    assert info["state"] == states.FAILURE and "lost" in info["exc_message"]
    assert any(d["id"] == r.id for d in await dead_letters())


async def test_a_job_that_keeps_killing_its_worker_is_dead_lettered_after_max_deliveries(engine, spawn_worker):
    spawn_worker("-c", "1", env={"TE_MAX_DELIVERIES": "2"}, imports=IMPORTS)
    r = await bad.kill_my_worker.delay("killer")
    info = await settled(r, timeout=40)
    assert info["state"] == states.FAILURE and info["exc_type"] == "DeliveryLimitExceeded"
    assert await notes("killer") == ["1", "2"]  # ran twice, never a third time
    assert any(d["id"] == r.id and "max_deliveries=2" in d["reason"] for d in await dead_letters())
    await still_works()


async def test_one_beat_entry_that_cannot_be_sent_does_not_stop_the_others(engine, spawn_worker):
    spawn_worker(env={"TE_BEAT_ENABLED": "true", "CONTAINMENT_BEAT": "1"}, imports=IMPORTS)
    await wait_for(lambda: _count(notes("healthy-ticks"), 3), 15)


async def _has_note(key: str, value: str) -> bool:
    return value in await notes(key)


async def _count(coro: Any, n: int) -> bool:
    return len(await coro) >= n


async def test_transient_out_of_memory_does_not_kill_heartbeat_or_loops(prefix, tmp_path):
    server = OwnRedis(tmp_path)
    server.start()
    proc = None
    try:
        configure(EngineSettings(redis_url=server.url, key_prefix=prefix))
        client = sync_redis.Redis.from_url(server.url)
        env = worker_env(prefix, REDIS_URL=server.url)
        proc = subprocess.Popen(
            [sys.executable, "-m", "tasks_engine.cli", "worker", "--app", "none", "-I", IMPORTS],
            cwd=ROOT, env=env, stdout=(tmp_path / "w.log").open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        await wait_for(lambda: _worker_key(client, prefix), 20)
        client.config_set("maxmemory", 1)  # every write now fails with OOM (noeviction)
        await asyncio.sleep(5)  # longer than the worker key lives: a dead heartbeat would let it expire
        client.config_set("maxmemory", 0)
        await wait_for(lambda: _worker_key(client, prefix), 10)
        assert await (await t.add.delay(2, 2)).get(timeout=15) == 4
        assert proc.poll() is None
        await _assert_healthy(client, prefix)
    finally:
        await get_broker().close()
        if proc is not None:
            proc.kill()
            proc.wait()
        server.stop()


async def _worker_key(client: sync_redis.Redis, prefix: str) -> bool:
    return bool(list(client.scan_iter(f"{{{prefix}}}:worker:*")))


async def test_worker_refuses_a_redis_that_may_evict(prefix, tmp_path):
    server = OwnRedis(tmp_path)
    server.start()
    try:
        sync_redis.Redis.from_url(server.url).config_set("maxmemory-policy", "allkeys-lru")
        argv = [sys.executable, "-m", "tasks_engine.cli", "worker", "--app", "none", "-I", IMPORTS]
        env = worker_env(prefix, REDIS_URL=server.url)
        refused = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30, check=False)
        assert refused.returncode == 2 and "maxmemory-policy=allkeys-lru" in refused.stderr
        allowed = subprocess.Popen(argv, cwd=ROOT, env={**env, "TE_ALLOW_EVICTION": "true"},
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
        await asyncio.sleep(3)
        assert allowed.poll() is None
        allowed.kill()
        allowed.wait()
    finally:
        server.stop()


def test_supervisor_gives_up_on_a_worker_that_cannot_start(prefix):
    argv = [sys.executable, "-m", "tasks_engine.cli", "worker", "--app", "none", "-I", "no.such.module", "-c", "2"]
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT, env=worker_env(prefix), capture_output=True, text=True, timeout=90,
                          check=False)  # fmt: skip
    assert proc.returncode == 1
    assert "giving up" in proc.stdout + proc.stderr
    assert time.monotonic() - started < 60


# ---------------------------------------------------------------- stale writes and one clock
async def test_a_paused_worker_cannot_overwrite_a_finished_chain(engine, spawn_worker, tmp_path):
    paused = spawn_worker(imports=IMPORTS)
    wf = bad.slow_step.si("paused", 2.0) | t.identity.s()
    r = await wf.delay()
    await wait_for(lambda: _count(notes("paused"), 1), 10)
    os.kill(paused.pid, signal.SIGSTOP)  # a frozen VM: no heartbeat, no event loop
    try:
        spawn_worker(imports=IMPORTS)  # takes the job over once the 3 s lease has run out
        value = await r.get(timeout=30)
        assert value.startswith("done by ") and str(paused.pid) not in value
        final_parent = await r.parent.record()
        final_chain = await r.record()
    finally:
        os.kill(paused.pid, signal.SIGCONT)
    # The paused worker wakes inside its old copy, finishes it and tries to complete it.
    await wait_for(lambda: _has_note("paused", f"{paused.pid}|1|end"), 10)
    await asyncio.sleep(0.5)
    after_parent, after_chain = await r.parent.record(), await r.record()
    for before, after in ((final_parent, after_parent), (final_chain, after_chain)):
        assert after["state"] == before["state"] == states.SUCCESS
        assert after["result"] == before["result"] and after["worker"] == before["worker"]
    broker = get_broker()
    assert await broker.redis.zcard(broker.key("active")) == 0


async def test_a_worker_whose_clock_runs_ahead_does_not_take_live_jobs(engine, spawn_worker, tmp_path):
    skew = tmp_path / "skew"
    skew.mkdir()
    (skew / "sitecustomize.py").write_text("import time\n_real = time.time\ntime.time = lambda: _real() + 30.0\n")
    spawn_worker(imports=IMPORTS)
    r = await bad.slow_step.delay("clock", 6.0)  # twice the lease: renewed by its worker's heartbeat
    await wait_for(lambda: _count(notes("clock"), 1), 10)
    path = os.pathsep.join([str(skew), str(ROOT)])
    spawn_worker(env={"PYTHONPATH": path}, imports=IMPORTS)  # its reaper runs on a clock 30 s ahead
    value = await r.get(timeout=20)
    assert value.startswith("done by ")
    assert (await r.record())["delivered"] == 1
    assert len(await notes("clock")) == 2  # one start, one end: never taken from its live worker


# ---------------------------------------------------------------- bounded client calls
async def test_get_and_delay_are_bounded_when_redis_hangs(prefix):
    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(3600)

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    configure(EngineSettings(redis_url=f"redis://127.0.0.1:{port}/0", key_prefix=prefix, redis_socket_timeout=2))
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await AsyncResult("anything").get(timeout=3)
        assert time.monotonic() - started < 4
        started = time.monotonic()
        with pytest.raises(EngineConnectionError):
            await t.add.delay(1, 2)
        assert time.monotonic() - started < 6
    finally:
        server.close()
        await get_broker().close()


def test_a_forged_record_cannot_make_get_raise_system_exit():
    for name in ("SystemExit", "KeyboardInterrupt", "GeneratorExit"):
        exc = rebuild_exception({"exc_type": name, "exc_module": "builtins", "exc_message": "forged"})
        assert isinstance(exc, TaskError)
    assert isinstance(rebuild_exception({"exc_type": "ValueError", "exc_module": "builtins"}), ValueError)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"countdown": float("inf")}, "countdown"),
        ({"countdown": float("nan")}, "countdown"),
        ({"expires": float("nan")}, "expires"),
        ({"eta": float("inf")}, "eta"),
        ({"time_limit": float("inf")}, "time_limit"),
        ({"soft_time_limit": float("nan")}, "soft_time_limit"),
        ({"priority": True}, "priority"),
        ({"retries": -1}, "retries"),
        ({"queue": "a\nb"}, "queue"),
        ({"task_id": ""}, "task_id"),
    ],
)
async def test_numbers_and_names_are_checked_at_the_call(engine, options, field):
    with pytest.raises((TypeError, ValueError), match=rf"demo\.add.*{field}"):
        await t.add.apply_async((1, 2), **options)


async def test_task_failed_log_lines_carry_the_task_context(engine, spawn_worker, tmp_path):
    proc = spawn_worker(env={"TE_LOG_FORMAT": "json"}, imports=IMPORTS)
    r = await t.fail.delay()
    await settled(r)
    await asyncio.sleep(0.3)
    log_path = next(Path(tmp_path).glob("worker-*.log"))
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    failed = [line for line in lines if line.get("event") == "task failed"]
    assert failed and failed[0]["task_id"] == r.id and failed[0]["task_name"] == "demo.fail"
    assert proc.poll() is None


async def test_a_failing_loop_is_logged_visible_in_the_heartbeat_and_restarted(engine, worker, sync_client):
    broker = worker.broker
    assert broker is not None
    real_claim = broker.claim
    calls = {"n": 0}

    async def claim_fails_twice(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise RuntimeError("claim exploded")
        return await real_claim(*args, **kwargs)

    with structlog.testing.capture_logs() as logs:
        broker.claim = claim_fails_twice  # type: ignore[method-assign]
        await broker.leave_idle(worker.id)  # not handed to it directly: the consume loop must claim it
        r = await t.add.delay(1, 2)
        await wait_for(lambda: _async(worker.health.restarts.get("consume", 0) >= 1), 5)
        await wait_for(lambda: _worker_key(sync_client, engine.key_prefix), 5)  # the heartbeat goes on meanwhile
        assert await r.get(timeout=15) == 3  # the loop came back and took the job
    assert worker.health.healthy
    failures = [e for e in logs if e["event"] == "background loop failed; restarting it"]
    assert failures and failures[0]["loop"] == "consume" and failures[0]["log_level"] == "error"


async def _async(value: Any) -> Any:
    return value


async def test_terminate_reaches_a_running_job_even_when_the_broadcast_is_missed(engine, spawn_worker):
    """revoke(terminate=True) is a pub/sub broadcast; a worker that missed it (reconnecting, or the job
    still being claimed) learns of it from its next heartbeat: the mark in Redis says 'terminate'."""
    spawn_worker(imports=IMPORTS)
    r = await bad.slow_step.delay("missed-terminate", 30.0)
    await wait_for(lambda: _count(notes("missed-terminate"), 1), 10)
    broker = get_broker()
    await broker.redis.set(broker.key("revoked", r.id), "terminate", ex=600)  # the mark, without the broadcast
    started = time.monotonic()
    await wait_for(lambda: _state_is(r, states.REVOKED), 5)
    assert time.monotonic() - started < 3  # within a heartbeat or two (0.5 s here)
    assert len(await notes("missed-terminate")) == 1  # it never got to its end


async def _state_is(r: AsyncResult, state: str) -> bool:
    return await r.state() == state
