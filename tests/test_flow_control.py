"""Issue 5: flow control against a real Redis and real worker processes.

Cluster-wide rate limits (GCRA in the claim script), priority 0-9, countdown/eta/expires, revoke
(queued, deferred, running, workflows, by name pattern), routing, multi-queue workers, and
``arq settings.WorkerSettings``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis as sync_redis
from redis.asyncio import Redis

from tasks_engine import (
    AsyncResult,
    EngineSettings,
    GroupResult,
    TaskRevokedError,
    chain,
    chord,
    configure,
    get_settings,
    group,
    send_task,
    shared_task,
    states,
)
from tasks_engine.client.plan import Context, Plan
from tasks_engine.client.signature import Signature
from tasks_engine.exceptions import TaskDefinitionError
from tasks_engine.model.ratelimit import parse_rate_limit
from tasks_engine.ops import control
from tasks_engine.store import Enqueue, get_broker
from tests import sample_tasks as t
from tests.conftest import REDIS_URL, ROOT, not_on_cluster, redis_client, running_worker, worker_env

BIN = Path(sys.executable).parent


def __getattr__(name: str) -> Any:
    """``arq tests.test_flow_control.WorkerSettings``, built on demand (importing this module has no side effect)."""
    if name == "WorkerSettings":
        from tasks_engine import worker_settings

        return worker_settings(imports=["tests.sample_tasks"])
    raise AttributeError(name)


# ---------------------------------------------------------------- two worker processes shared by this module
@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """Two real ``tasks-engine worker`` processes on their own key prefix, started once for the module
    (process start-up is the slow part of these tests)."""
    prefix = f"tfc{uuid.uuid4().hex[:8]}"
    client = redis_client()
    logs = tmp_path_factory.mktemp("cluster")
    procs = []
    for i in range(2):
        with open(logs / f"worker-{i}.log", "wb") as out:  # the child keeps its own copy of the descriptor
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "tasks_engine.cli",
                        "worker",
                        "--app",
                        "none",
                        "-I",
                        "tests.sample_tasks",
                    ],
                    cwd=ROOT,
                    env=worker_env(prefix),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        deadline = time.monotonic() + 30
        while len(list(client.scan_iter(f"{{{prefix}}}:worker:*"))) < 2:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"cluster workers did not start: {[f.read_text() for f in logs.iterdir()]}")
            time.sleep(0.05)
        yield prefix, procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        keys = list(client.scan_iter(match=f"{{{prefix}}}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture
async def on_cluster(
    cluster: tuple[str, list[subprocess.Popen[bytes]]], sync_client: sync_redis.Redis
) -> AsyncIterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """Like the ``engine`` fixture, but on the shared workers' prefix; the test's keys go afterwards."""
    prefix, procs = cluster
    configure(
        EngineSettings(
            key_prefix=prefix, lease_seconds=3, heartbeat_seconds=0.5, shutdown_grace_seconds=5, beat_enabled=False
        )
    )
    yield cluster
    await get_broker().close()
    keys = [k for k in sync_client.scan_iter(match=f"{{{prefix}}}:*", count=1000) if b":worker:" not in k]
    if keys:
        sync_client.delete(*keys)
    assert all(p.poll() is None for p in procs), "a shared worker process died"


# ---------------------------------------------------------------- tasks only in-process workers know
@shared_task(name="flow.slow_limited", bind=True, rate_limit="30/m")
async def slow_limited(self: Any, key: str, value: Any = None) -> Any:
    await _log(key, f"{self.request.id}|{value}|{time.time()}|{os.getpid()}")
    return value


@shared_task(name="flow.limited_5", bind=True, rate_limit="5/s")
async def limited_5(self: Any, key: str, value: Any = None) -> Any:
    await _log(key, f"{self.request.id}|{value}|{time.time()}|{os.getpid()}")
    return value


@shared_task(name="flow.bursty", bind=True, rate_limit="4/s", rate_limit_burst=3)
async def bursty(self: Any, key: str, value: Any = None) -> Any:
    await _log(key, f"{self.request.id}|{value}|{time.time()}|{os.getpid()}")
    return value


@shared_task(name="flow.prio_task", bind=True, priority=3)
async def prio_task(self: Any, key: str, value: Any = None) -> Any:
    await _log(key, f"{self.request.id}|{value}|{time.time()}|{os.getpid()}")
    return value


@shared_task(name="flow.routed", queue="fixed")
async def routed() -> None:
    return None


# ---------------------------------------------------------------- helpers
async def _log(key: str, line: str) -> None:
    broker = get_broker()
    await broker.redis.rpush(broker.key("test-log", key), line)


async def rows(key: str) -> list[list[str]]:
    broker = get_broker()
    return [r.decode().split("|") for r in await broker.redis.lrange(broker.key("test-log", key), 0, -1)]


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


async def wait_rows(key: str, count: int, timeout: float = 10) -> list[list[str]]:
    async def enough() -> bool:
        return len(await rows(key)) >= count

    await wait_until(enough, timeout, f"{count} rows in {key!r}")
    return await rows(key)


async def wait_state(result: AsyncResult, state: str, timeout: float = 5) -> None:
    async def reached() -> bool:
        return await result.state() == state

    await wait_until(reached, timeout, f"{result.id} to be {state}")


async def enqueue_all(sigs: list[Signature]) -> list[AsyncResult]:
    """Enqueue many calls in one transaction (so they are all ready at the same moment)."""
    plan = Plan()
    results = []
    for sig in sigs:
        results.append(sig.freeze())
        sig.plan_into([], Context(), plan)
    await plan.execute()
    return results


async def occupy(slots: int = 1) -> list[AsyncResult]:
    """Fill a worker's slots with jobs that run until :func:`release`, so new jobs queue up behind them."""
    gates = await enqueue_all([t.span.signature(("gate", 60, i), priority=0) for i in range(slots)])
    await wait_rows("gate", slots)
    return gates


async def release(gates: list[AsyncResult]) -> None:
    for gate in gates:
        await gate.revoke(terminate=True)


async def reconfigure(**overrides: Any) -> None:
    await get_broker().close()
    configure(get_settings(), **overrides)


async def cli(prefix: str, *args: str) -> str:
    """Run the operations CLI (``tasks-engine ... --app none``) against this test's key prefix."""
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "tasks-engine"),
        *args,
        "--app",
        "none",
        cwd=ROOT,
        env=worker_env(prefix),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, out.decode()
    return out.decode()


async def claimed_at(results: list[AsyncResult]) -> list[float]:
    """When each job was claimed to start (``date_started``: Redis's clock, read by the claim script), in s."""
    broker = get_broker()
    return [int(await broker.redis.hget(broker.result_key(r.id), "date_started")) / 1000 for r in results]


def max_in_window(starts: list[float], width: float = 1.0) -> int:
    """Most starts inside any closed window of ``width`` seconds."""
    ordered = sorted(starts)
    best, j = 0, 0
    for i, moment in enumerate(ordered):
        while ordered[j] < moment - width:
            j += 1
        best = max(best, i - j + 1)
    return best


async def count_claims(seconds: float, prefix: str) -> int:
    """Claim-script calls for this prefix seen by Redis MONITOR during ``seconds`` (busy polling shows here)."""
    broker = get_broker()
    sha = broker.scripts["claim"].sha
    if broker.cluster:  # MONITOR the primary that serves this app's slot
        node = broker.redis.get_node_from_key(broker.keys.active)  # type: ignore[attr-defined]
        client = Redis(host=node.host, port=node.port)
    else:
        client = Redis.from_url(REDIS_URL)
    seen = 0
    try:
        async with client.monitor() as monitor:
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                try:
                    command = await asyncio.wait_for(monitor.next_command(), left)
                except TimeoutError:
                    break
                text = command["command"]
                if text.lower().startswith("evalsha") and sha in text and prefix in text:
                    seen += 1
    finally:
        await client.aclose()
    return seen


# ---------------------------------------------------------------- rate limits
def test_rate_limit_grammar_and_import_time_errors_name_the_task() -> None:
    assert parse_rate_limit("10/m") == (10, 60, 1) and parse_rate_limit("10/m").emission_ms == 6000  # type: ignore[union-attr]
    assert parse_rate_limit("100/s").emission_ms == 10  # type: ignore[union-attr]
    assert parse_rate_limit("1000/h").emission_ms == 3600  # type: ignore[union-attr]
    assert parse_rate_limit(5).emission_ms == 200 and parse_rate_limit("5").emission_ms == 200  # type: ignore[union-attr]
    assert parse_rate_limit(2.5).emission_ms == 400  # type: ignore[union-attr]
    for unlimited in (0, "0", "0/m", None):
        assert parse_rate_limit(unlimited) is None
    declared = shared_task(name="flow.grammar_ok", rate_limit="10/m", rate_limit_burst=2)(lambda: None)
    assert declared.rate == (10, 60, 2)
    for bad in ("10/d", "ten/s", "-1", -1, "10/m/s", "1/", "/s", "", "1e3/s"):
        with pytest.raises(TaskDefinitionError, match=r"'flow.bad_rate'.*rate"):
            shared_task(name="flow.bad_rate", rate_limit=bad)(lambda: None)
    with pytest.raises(TaskDefinitionError, match=r"'flow.bad_burst'.*rate_limit_burst"):
        shared_task(name="flow.bad_burst", rate_limit="1/s", rate_limit_burst=0)(lambda: None)


def test_rate_limit_rejects_bool_and_nan_at_import() -> None:
    for bad in (True, float("nan")):
        with pytest.raises(TaskDefinitionError, match=r"'flow.bad_rate2'.*rate"):
            shared_task(name="flow.bad_rate2", rate_limit=bad)(lambda: None)


async def test_one_rate_limit_across_two_worker_processes(on_cluster) -> None:
    """2 worker processes, demo.limited at 20/s, 40 jobs queued at once: starts spaced per the limit."""
    rate, interval = 20, t.limited.rate.emission_ms / 1000  # type: ignore[union-attr]
    results = await enqueue_all([t.limited.s("rl", i) for i in range(40)])
    for r in results:  # get() waits on pub/sub: no polling traffic that would make Redis wake blocked clients early
        await r.get(timeout=15)
    log = await rows("rl")
    assert len({r[3] for r in log}) == 2, "both worker processes ran jobs"
    # The limit itself: the k-th claim (the instant a worker takes a job) never before k intervals, whichever process.
    claims = sorted(await claimed_at(results))
    for k, claim in enumerate(claims):
        assert claim >= claims[0] + k * interval - 0.001, (k, [round(c - claims[0], 3) for c in claims])
    assert max_in_window(claims) <= rate + 1
    # What the task code sees: start times spaced per the limit, no 1-s window over limit + burst,
    # the overall rate within 5%.
    starts = sorted(float(r[2]) for r in log)
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(starts)]
    assert statistics.median(gaps) == pytest.approx(interval, rel=0.15), gaps
    assert max_in_window(starts) <= rate + 1, gaps
    overall = (len(starts) - 1) / (starts[-1] - starts[0])
    assert rate * 0.95 <= overall <= rate * 1.05, (overall, gaps)
    infos = [await r.record() for r in results]
    assert {i["state"] for i in infos} == {states.SUCCESS}
    assert {i["retries"] for i in infos} == {0} and {i["delivered"] for i in infos} == {1}


async def test_rate_limit_window_holds_when_workers_wake_late(on_cluster) -> None:
    """Both worker processes are frozen for 0.5 s while slots fall due; when they wake they catch up
    on the missed slots (at twice the rate at most), but no 1-s window holds more than limit + burst."""
    _, procs = on_cluster
    rate, interval = 20, t.limited.rate.emission_ms / 1000  # type: ignore[union-attr]
    results = await enqueue_all([t.limited.s("late", i) for i in range(40)])
    await wait_rows("late", 6)
    try:
        for proc in procs:
            os.kill(proc.pid, signal.SIGSTOP)
        await asyncio.sleep(0.5)
    finally:
        for proc in procs:
            os.kill(proc.pid, signal.SIGCONT)
    await wait_rows("late", 40, timeout=10)
    # Claim times (Redis's clock): a job claimed just before the freeze only runs its body after it,
    # so body start times are not what the limiter can promise here.
    claims = sorted(await claimed_at(results))
    assert max_in_window(claims) <= rate + 1, [round(c - claims[0], 3) for c in claims]
    assert min(b - a for a, b in itertools.pairwise(claims)) >= interval / 2 - 0.001, "caught up in a burst"
    assert claims[-1] - claims[0] < 39 * interval + 0.5, "the missed slots were not lost for good"


async def test_over_limit_job_parks_without_slot_retry_or_polling(engine, prefix) -> None:
    """A job over its limit waits in Redis for its slot: the only worker slot stays free, no retry
    is counted, and the worker does not poll while it waits."""
    async with running_worker(max_jobs=1):
        first, parked = await enqueue_all([slow_limited.s("p", "first"), slow_limited.s("p", "parked")])
        unlimited = await t.record.delay("p", "unlimited")
        await wait_rows("p", 2, timeout=3)
        log = await rows("p")
        assert [r[1] for r in log] == ["first", "unlimited"]
        assert float(log[1][2]) - float(log[0][2]) < 0.5, "the parked job did not hold the only slot"
        info = await parked.record()
        assert (info["state"], info["retries"], info["delivered"]) == (states.PENDING, 0, 0)
        broker = get_broker()
        [first_claimed] = await claimed_at([first])
        slot = await broker.redis.zscore(broker.key("delayed"), parked.id)
        assert slot is not None and slot / 1000 == pytest.approx(first_claimed + 2.0, abs=0.002)
        claims = await count_claims(1.2, prefix)
        assert claims <= 4, f"{claims} claim calls in 1.2 s while only a parked job waits: busy polling"
        assert await parked.get(timeout=5) == "parked"
        [parked_claimed] = await claimed_at([parked])
        assert parked_claimed >= first_claimed + 2.0, "started before its slot"
        assert float((await rows("p"))[2][2]) >= first_claimed + 2.0
        info = await parked.record()
        assert (info["retries"], info["delivered"]) == (0, 1)
        assert await unlimited.get(timeout=1) == "unlimited" and await first.get(timeout=1) == "first"


async def test_burst_allows_that_many_at_once_then_the_rate(engine) -> None:
    async with running_worker():
        results = await enqueue_all([bursty.s("b", i) for i in range(7)])
        await wait_rows("b", 7, timeout=5)
    claims = sorted(await claimed_at(results))
    rel = [round(c - claims[0], 3) for c in claims]
    assert rel[2] < 0.05, f"burst of 3 not immediate: {rel}"
    for k in range(3, 7):  # then one every 250 ms: job k (0-based) at (k - 2) * 0.25 s, never earlier
        assert rel[k] >= (k - 2) * 0.25, rel
    assert rel[6] < 1.0 + 0.2, rel
    assert max_in_window(claims) <= 4 + 3


async def test_runtime_rate_limit_change_from_api_and_cli(on_cluster) -> None:
    prefix, _ = on_cluster
    await control.set_rate_limit("demo.limited", "1/m")
    results = await enqueue_all([t.limited.s("rt", i) for i in range(3)])
    await wait_rows("rt", 1)
    await asyncio.sleep(0.5)
    assert len(await rows("rt")) == 1, "the running worker applies the new limit: one a minute"
    broker = get_broker()
    assert await broker.redis.zcard(broker.key("delayed")) == 2
    out = await cli(prefix, "rate-limit", "demo.limited", "0")
    assert "demo.limited" in out
    await wait_rows("rt", 3, timeout=3)  # parked jobs were released at once, not at their old slots
    assert [await r.get(timeout=2) for r in results] == [0, 1, 2]
    assert await control.set_rate_limit("demo.limited", None) == 0  # back to the declared 20/s
    await enqueue_all([t.limited.s("rt2", i) for i in range(4)])
    starts = sorted(float(r[2]) for r in await wait_rows("rt2", 4))
    assert starts[-1] - starts[0] >= 3 * 0.05 - 0.02, starts
    with pytest.raises(ValueError, match=r"'demo.limited'.*invalid rate limit"):
        await control.set_rate_limit("demo.limited", "fast")


# ---------------------------------------------------------------- priority
async def test_priority_zero_starts_before_1000_ready_priority_nine_and_same_priority_is_fifo(engine) -> None:
    async with running_worker(max_jobs=1):
        gates = await occupy()
        await enqueue_all([t.record.signature(("order", i), priority=9) for i in range(1000)])
        await t.record.apply_async(("order", "urgent"), priority=0)
        await release(gates)
        log = await wait_rows("order", 101, timeout=15)
    values = [r[1] for r in log]
    assert values[0] == "urgent"
    assert values[1:101] == [str(i) for i in range(100)]


async def test_priority_from_call_task_and_default_setting(engine) -> None:
    await reconfigure(default_priority=8)
    async with running_worker(max_jobs=1):
        gates = await occupy()
        await t.record.delay("prio", "default-8")
        await prio_task.delay("prio", "task-3")
        await t.record.apply_async(("prio", "call-9"), priority=9)
        await prio_task.apply_async(("prio", "task-called-9"), priority=9)
        await t.record.apply_async(("prio", "call-0"), priority=0)
        await release(gates)
        log = await wait_rows("prio", 5, timeout=5)
    assert [r[1] for r in log] == ["call-0", "task-3", "default-8", "call-9", "task-called-9"]
    with pytest.raises(ValueError, match="priority"):
        await t.record.apply_async(("prio", "x"), priority=10)


async def test_due_deferred_job_takes_its_priority_place(engine) -> None:
    async with running_worker(max_jobs=1):
        gates = await occupy()
        queued_at = time.time()
        await t.record.apply_async(("d", "deferred-0"), countdown=0.3, priority=0)
        await enqueue_all([t.record.signature(("d", i), priority=9) for i in range(50)])
        await asyncio.sleep(queued_at + 0.4 - time.time())  # due while the worker is still busy
        await release(gates)
        log = await wait_rows("d", 51, timeout=10)
    assert [r[1] for r in log] == ["deferred-0", *(str(i) for i in range(50))]
    assert float(log[0][2]) >= queued_at + 0.3


# ---------------------------------------------------------------- countdown / eta / expires
async def test_countdown_and_eta_never_start_early_naive_eta_is_utc_and_countdown_wins(engine, worker) -> None:
    sent = time.time()
    by_countdown = await t.record.apply_async(("e", "countdown"), countdown=0.4)
    eta_aware = datetime.now(timezone(timedelta(hours=-5))) + timedelta(seconds=0.6)
    by_eta = await t.record.apply_async(("e", "aware"), eta=eta_aware)
    old_tz = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Shanghai"  # a naive eta must not be read as local time
    time.tzset()
    try:
        eta_naive = datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=0.5)
        by_naive = await t.record.apply_async(("e", "naive"), eta=eta_naive)
    finally:
        if old_tz is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old_tz
        time.tzset()
    both = await t.record.apply_async(("e", "countdown-wins"), countdown=0.2, eta=datetime.now(UTC) + timedelta(days=1))
    past = await t.record.apply_async(("e", "past-eta"), eta=datetime.now(UTC) - timedelta(hours=1))
    for r in (by_countdown, by_eta, by_naive, both, past):
        await r.get(timeout=5)
    started = {r[1]: float(r[2]) for r in await rows("e")}
    assert started["past-eta"] - sent < 0.3
    assert started["countdown-wins"] >= sent + 0.2 and started["countdown-wins"] - sent < 1.5
    assert started["countdown"] >= sent + 0.4
    assert started["aware"] >= eta_aware.timestamp()
    naive_as_utc = eta_naive.replace(tzinfo=UTC).timestamp()
    assert naive_as_utc <= started["naive"] < naive_as_utc + 1.0


async def test_expired_job_is_revoked_not_run(engine) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=0.2)
    by_seconds = await t.record.apply_async(("x", "seconds"), expires=0.2)
    by_datetime = await t.record.apply_async(("x", "datetime"), expires=soon)
    before_eta = await t.record.apply_async(("x", "expires-before-eta"), countdown=0.5, expires=0.2)
    fresh = await t.record.apply_async(("x", "fresh"), expires=60)
    await asyncio.sleep(0.3)
    async with running_worker():
        assert await fresh.get(timeout=5) == "fresh"
        for r in (by_seconds, by_datetime, before_eta):
            with pytest.raises(TaskRevokedError, match="expired"):
                await r.get(timeout=5)
            assert await r.state() == states.REVOKED
            assert await r.ready() and not await r.failed() and not await r.successful()
        # A rate-limited job that would expire before its slot waits without taking the slot.
        first, doomed, later = await enqueue_all(
            [
                limited_5.s("x5", "first"),
                limited_5.signature(("x5", "doomed"), expires=0.1),
                limited_5.s("x5", "later"),
            ]
        )
        with pytest.raises(TaskRevokedError):
            await doomed.get(timeout=3)
        await later.get(timeout=3)
    assert [r[1] for r in await rows("x")] == ["fresh"]
    log = await rows("x5")
    assert [r[1] for r in log] == ["first", "later"]
    assert float(log[1][2]) - float(log[0][2]) < 0.35, "the expired job used up a rate-limit slot"


# ---------------------------------------------------------------- revoke
async def test_revoke_queued_deferred_and_parked_jobs_never_run_and_ids_do_not_poison(engine) -> None:
    broker = get_broker()
    async with running_worker(max_jobs=1):
        gates = await occupy()
        queued = await t.record.delay("r", "queued")
        deferred = await t.record.apply_async(("r", "deferred"), countdown=0.3)
        first, parked = await enqueue_all([slow_limited.s("rp", "first"), slow_limited.s("rp", "parked")])
        await queued.revoke()
        await deferred.revoke()
        for r in (queued, deferred):
            assert await r.state() == states.REVOKED
            with pytest.raises(TaskRevokedError):
                await r.get(timeout=1)
        assert await broker.redis.zscore(broker.key("delayed"), deferred.id) is None
        await release(gates)
        await wait_rows("rp", 1, timeout=3)  # the limited task's first job runs, the next is parked

        async def is_parked() -> bool:  # once the worker, its slot free again, has claimed it
            return await broker.redis.zscore(broker.key("delayed"), parked.id) is not None

        await wait_until(is_parked, 1.5, "the second job parked until its slot")
        await parked.revoke()
        assert await parked.state() == states.REVOKED
        assert await broker.redis.zscore(broker.key("delayed"), parked.id) is None
        assert not await broker.redis.sismember(broker.key("rl-pass", "flow.slow_limited"), parked.id)
        await asyncio.sleep(0.5)  # past the deferred job's eta
        assert await rows("r") == []
        ttl = await broker.redis.ttl(broker.key("revoked", queued.id))
        assert 0 < ttl <= max(get_settings().result_expires, 3600), "revoke marks expire"
        again = await t.record.delay("r", "queued")  # same task and args, new id: runs normally
        assert await again.get(timeout=5) == "queued"
    assert [r[1] for r in await rows("r")] == ["queued"]
    assert [r[1] for r in await rows("rp")] == ["first"]


async def test_revoke_terminate_cancels_running_job_in_worker_process_within_1s(on_cluster) -> None:
    r = await t.span.delay("term", 10, "long")
    await wait_rows("term", 1)
    revoked_at = time.monotonic()
    await r.revoke(terminate=True)
    await wait_state(r, states.REVOKED, timeout=1.0)
    assert time.monotonic() - revoked_at < 1.0
    with pytest.raises(TaskRevokedError):
        await r.get(timeout=1)
    assert await (await t.add.delay(1, 2)).get(timeout=3) == 3  # the worker slot is free again
    assert [row[0] for row in await rows("term")] == ["start"]


async def test_revoke_chain_group_and_chord_remaining_steps_never_run(engine) -> None:
    async with running_worker(max_jobs=2):
        # chain with its first step running: terminate it, later steps never run
        steps = [t.span.si("c", 5, "s1"), t.record.si("c", "s2"), t.record.si("c", "s3")]
        running_chain = await chain(*steps).apply_async()
        await wait_rows("c", 1)
        await running_chain.revoke(terminate=True)
        await wait_state(running_chain, states.REVOKED, timeout=1)
        assert await running_chain.parent.state() == states.REVOKED  # type: ignore[union-attr]
        # chain still queued (both slots busy): revoke without terminate
        gates = await occupy(2)
        queued_chain = await chain(t.record.si("c2", "a"), t.record.si("c2", "b")).apply_async()
        await queued_chain.revoke()
        assert await queued_chain.state() == states.REVOKED
        assert await queued_chain.parent.state() == states.REVOKED  # type: ignore[union-attr]
        await release(gates)
        # group: two running, one queued
        grp = await group(t.span.si("g", 5, i) for i in range(3)).apply_async()
        await wait_rows("g", 2)
        await grp.revoke(terminate=True)
        for leaf in grp.results:
            await wait_state(leaf, states.REVOKED, timeout=1)  # type: ignore[arg-type]
        # chord: header running, body never dispatched
        body = await chord([t.span.si("h", 5, i) for i in range(2)])(t.record.si("ch", "body"))
        await wait_rows("h", 2)
        await body.revoke(terminate=True)
        assert isinstance(body.parent, GroupResult)
        for leaf in body.parent.results:
            await wait_state(leaf, states.REVOKED, timeout=1)  # type: ignore[arg-type]
        assert await body.state() == states.REVOKED
        await asyncio.sleep(0.5)
        assert await body.state() == states.REVOKED
    assert [r[0] for r in await rows("c")] == ["start"]
    assert await rows("c2") == [] and await rows("ch") == []
    assert {r[0] for r in await rows("g")} == {"start"} and len(await rows("g")) == 2
    assert {r[0] for r in await rows("h")} == {"start"}


async def test_revoke_matching_task_name_pattern_from_api_and_cli(engine, prefix) -> None:
    reports = [await send_task("report.daily", args=[i]) for i in range(3)]
    reports.append(await send_task("report.weekly", args=[1], countdown=60))
    keep = [await t.record.delay("keep", "a"), await send_task("reporting.other", args=[1])]
    assert await control.revoke_matching("report.*") == 4
    for r in reports:
        assert await r.state() == states.REVOKED
    assert [await r.state() for r in keep] == [states.PENDING, states.PENDING]
    later = [await send_task("report.monthly", args=[i]) for i in range(2)]
    out = await cli(prefix, "revoke-matching", "report.*")
    assert "revoked 2" in out
    for r in later:
        assert await r.state() == states.REVOKED
    async with running_worker():
        assert await keep[0].get(timeout=5) == "a"
    assert [row[1] for row in await rows("keep")] == ["a"]


# ---------------------------------------------------------------- routing and workers
async def test_routing_by_call_task_routes_setting_and_default_queue(engine) -> None:
    await reconfigure(default_queue="main", task_routes={"mail.*": "email", "report.*": "reports"})
    broker = get_broker()

    async def queue_of(r: AsyncResult) -> str:
        for queue in ("main", "email", "reports", "fixed", "urgent", "default"):
            if await broker.redis.zscore(broker.key("q", queue), r.id) is not None:
                return queue
        raise AssertionError(f"{r.id} is in no queue")

    assert await queue_of(await send_task("mail.welcome", args=[1])) == "email"
    assert await queue_of(await send_task("report.daily")) == "reports"
    assert await queue_of(await send_task("other.thing")) == "main"
    assert await queue_of(await routed.delay()) == "fixed"
    assert await queue_of(await routed.apply_async(queue="urgent")) == "urgent"
    assert await queue_of(await send_task("mail.welcome", args=[1], queue="urgent")) == "urgent"
    assert await queue_of(await send_task("other.thing", routing_key="urgent")) == "urgent"


async def test_worker_consumes_several_queues_with_one_concurrency_limit_and_status_shows_orphans(
    engine, spawn_worker, prefix
) -> None:
    spawn_worker("-Q", "default,email", "-j", "1")
    results = [
        await t.span.apply_async(("mq", 0.25, f"{q}-{i}"), queue=q) for i in range(2) for q in ("default", "email")
    ]
    orphan = await t.record.apply_async(("orphan", 1), queue="nowhere")
    for r in results:
        await r.get(timeout=5)
    log = await rows("mq")
    spans: dict[str, list[float]] = {}
    for kind, value, moment, _pid in log:
        spans.setdefault(value, []).append(float(moment))
    assert set(spans) == {"default-0", "email-0", "default-1", "email-1"}
    intervals = sorted(spans.values())
    for (_, end), (start, _) in zip(intervals, intervals[1:], strict=False):
        assert start >= end, "two jobs ran at once under a shared max_jobs=1"
    stats = {row["queue"]: row for row in await control.queue_stats()}
    assert stats["nowhere"]["ready"] == 1 and stats["nowhere"]["consumers"] == []
    assert len(stats["default"]["consumers"]) == 1 and stats["email"]["consumers"] == stats["default"]["consumers"]
    out = await cli(prefix, "status")
    orphan_line = next(line for line in out.splitlines() if "nowhere" in line)
    assert "nobody consumes" in orphan_line
    assert await orphan.state() == states.PENDING


@not_on_cluster
async def test_arq_worker_settings_runs_default_queue(engine, prefix, sync_client) -> None:
    proc = subprocess.Popen(
        [str(BIN / "arq"), "tests.test_flow_control.WorkerSettings"],
        cwd=ROOT,
        env=worker_env(prefix),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:

        async def registered() -> bool:
            assert proc.poll() is None, proc.stdout.read().decode()  # type: ignore[union-attr]
            return bool(list(sync_client.scan_iter(f"{{{prefix}}}:worker:*")))

        await wait_until(registered, 20, "the arq-hosted worker")
        assert await (await t.add.delay(2, 3)).get(timeout=5) == 5
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_deferred_jobs_live_in_redis_not_in_worker_memory(on_cluster) -> None:
    """20,000 jobs with an eta a day ahead: the workers' memory does not grow, Redis holds them
    (``bench/eta_memory.py`` measures 100,000)."""
    _, procs = on_cluster
    workers = [psutil.Process(p.pid) for p in procs]
    rss_before = [w.memory_info().rss for w in workers]
    broker = get_broker()
    eta = datetime.now(UTC) + timedelta(days=1)
    template = t.record.signature(("mem", "deferred"), eta=eta).to_enqueue([], Context())
    items = [  # the real wire message, copied under new ids (building 20,000 signatures is slow here)
        Enqueue(
            f"mem-{i:05d}",
            template.raw.replace(template.id.encode(), f"mem-{i:05d}".encode()),
            template.queue,
            template.priority,
            template.eta_ms,
        )
        for i in range(20_000)
    ]
    for start in range(0, len(items), 2_000):
        await broker.enqueue(items[start : start + 2_000])
    assert await broker.redis.zcard(broker.key("delayed")) == 20_000
    ready = await t.record.delay("mem", "now")  # the workers still claim at once
    assert await ready.get(timeout=5) == "now"
    await asyncio.sleep(1.0)
    grown = [w.memory_info().rss - before for w, before in zip(workers, rss_before, strict=True)]
    assert max(grown) < 2 * 1024 * 1024, f"worker RSS grew {[round(g / 1e6, 1) for g in grown]} MB"
    assert [r[1] for r in await rows("mem")] == ["now"]
    assert await AsyncResult("mem-00000").state() == states.PENDING
