"""Issue 8: periodic jobs run exactly once per tick across worker processes, missed ticks once."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest

from tasks_engine import configure, crontab, get_settings
from tasks_engine.client.beat import Beat, add_entry, entries, view
from tasks_engine.exceptions import TaskDefinitionError
from tasks_engine.store import get_broker
from tests.conftest import ROOT, not_on_cluster, worker_env
from tests.topology import data_server, free_port, wait_until

pytestmark = pytest.mark.slow


async def beat_log(label: str) -> list[str]:
    broker = get_broker()
    return [e.decode() for e in await broker.redis.lrange(broker.key("beat-log", label), 0, -1)]


async def test_every_tick_exactly_once_across_three_workers(engine, spawn_worker):
    env = {"TE_BEAT_ENABLED": "true", "BEAT_TEST_EVERY_SECOND": "1"}
    for _ in range(3):
        spawn_worker(env=env, imports="tests.beat_tasks")
    await asyncio.sleep(20)
    runs = await beat_log("second")
    ticks = [int(r.split("|")[0].rsplit(":", 1)[1]) for r in runs]
    assert len(ticks) == len(set(ticks)), "a tick ran twice"
    ordered = sorted(ticks)
    assert len(ordered) >= 17
    assert all(b - a == 1000 for a, b in zip(ordered, ordered[1:])), "a tick is missing"


async def test_missed_tick_runs_once_at_start_up_never_a_backlog(engine, spawn_worker):
    broker = get_broker()
    ten_hours_ago = int((time.time() - 36_000) * 1000)
    await broker.redis.set(broker.key("beat-last", "hourly-decorated"), ten_hours_ago)
    env = {"TE_BEAT_ENABLED": "true"}
    spawn_worker(env=env, imports="tests.beat_tasks")
    spawn_worker(env=env, imports="tests.beat_tasks")
    await asyncio.sleep(3)
    runs = await beat_log("hourly")
    assert len(runs) == 1, runs
    tick_ms = int(runs[0].split("|")[0].rsplit(":", 1)[1])
    assert tick_ms == (int(time.time()) // 3600) * 3600 * 1000  # the most recent hour boundary


async def test_missed_tick_skipped_when_configured(engine, spawn_worker):
    broker = get_broker()
    await broker.redis.set(broker.key("beat-last", "hourly-decorated"), int((time.time() - 7200) * 1000))
    spawn_worker(env={"TE_BEAT_ENABLED": "true", "TE_BEAT_RUN_MISSED": "false"}, imports="tests.beat_tasks")
    await asyncio.sleep(2.5)
    assert await beat_log("hourly") == []


async def test_first_start_does_not_invent_a_missed_tick(engine, spawn_worker):
    spawn_worker(env={"TE_BEAT_ENABLED": "true"}, imports="tests.beat_tasks")
    await asyncio.sleep(2.5)
    assert await beat_log("hourly") == []
    broker = get_broker()
    assert await broker.redis.get(broker.key("beat-last", "hourly-decorated")) is not None


async def test_periodic_runs_are_ordinary_tasks_with_results_and_routing(engine, worker):
    import tests.beat_tasks  # noqa: F401 - registers beat.hourly

    entry = add_entry(
        "routed",
        {
            "task": "beat.hourly",
            "schedule": 60,
            "args": ["routed"],
            "options": {"queue": "default", "priority": 1, "expires": 30},
        },
    )
    try:
        tick = datetime(2026, 1, 1, 2, 0, tzinfo=UTC)
        assert await Beat("test").fire(entry, tick) is True
        assert await Beat("other").fire(entry, tick) is False  # the same tick is claimed once
        from tasks_engine import AsyncResult

        r = AsyncResult(f"beat:routed:{int(tick.timestamp() * 1000)}")
        assert await r.get(timeout=5) == "routed"
        assert (await r.record())["task"] == "beat.hourly"
    finally:
        entries.pop("routed", None)


def test_invalid_entries_fail_at_import_naming_the_entry():
    with pytest.raises(TaskDefinitionError, match="beat entry 'nightly'.*hour"):
        add_entry("nightly", {"task": "x", "schedule": "0 25 * * *"})
    with pytest.raises(Exception, match="hour"):
        crontab(hour=25)
    with pytest.raises(TaskDefinitionError, match="beat entry 'typo'.*unknown keys"):
        add_entry("typo", {"task": "x", "schedule": 5, "kwarg": {}})
    with pytest.raises(TaskDefinitionError, match="beat entry 'zero'"):
        add_entry("zero", {"task": "x", "schedule": 0})


def test_view_lists_entries_with_next_run_in_the_configured_timezone():
    configure(get_settings(), timezone="Asia/Shanghai")
    try:
        add_entry("cleanup", {"task": "maintenance.cleanup_results", "schedule": crontab(hour=2, minute=0)})
        row = next(e for e in view() if e["name"] == "cleanup")
        nxt = datetime.fromisoformat(row["next_run"])
        assert (nxt.hour, nxt.minute) == (2, 0) and nxt.utcoffset().total_seconds() == 8 * 3600
    finally:
        entries.pop("cleanup", None)
        configure(get_settings(), timezone="UTC")


@not_on_cluster
def test_arq_worker_settings_runs_the_jobs_packages_periodic_entries(prefix, sync_client, tmp_path):
    """`arq settings.WorkerSettings` from the repository root schedules settings.BEAT_SCHEDULE."""
    long_ago = int((time.time() - 3 * 86_400) * 1000)
    sync_client.set(f"{{{prefix}}}:beat-last:cleanup-old-reports", long_ago)
    env = worker_env(
        prefix,
        TE_BEAT_ENABLED="true",
        TE_REPORTS_DIR=str(tmp_path / "reports"),
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/app.db",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "arq", "settings.WorkerSettings"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        found = []
        while time.monotonic() < deadline and not found:
            found = [k.decode() for k in sync_client.scan_iter(f"{{{prefix}}}:res:beat:cleanup-old-reports:*")]
            time.sleep(0.2)
        assert found, "the jobs package's periodic entry did not run under arq"
        state_deadline = time.monotonic() + 15
        while sync_client.hget(found[0], "state") != b"SUCCESS":
            assert time.monotonic() < state_deadline, sync_client.hgetall(found[0])
            time.sleep(0.2)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out.decode()[-2000:]
    for key in sync_client.scan_iter(f"{{{prefix}}}:*"):
        sync_client.delete(key)


async def test_beat_backs_off_while_redis_is_out_of_memory_and_logs_the_outage_once(prefix, tmp_path):
    """A transient OOM (every write refused): beat used to retry its due tick every 5 ms, ~500 lines in
    3 s. Now it backs off, says so once, and once more with the count of tries when Redis is back."""
    server = data_server(tmp_path / "redis", free_port(), "--maxmemory-policy", "noeviction").start()
    client = server.client()
    env = worker_env(prefix, REDIS_URL=f"redis://127.0.0.1:{server.port}/0", TE_BEAT_ENABLED="true",
                     BEAT_TEST_EVERY_SECOND="1")  # fmt: skip
    ticks = f"{{{prefix}}}:beat-log:second"
    argv = [sys.executable, "-m", "tasks_engine.cli", "worker", "--app", "none", "-I", "tests.beat_tasks"]
    with open(tmp_path / "worker.log", "wb") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: client.llen(ticks) >= 1, 20, "a first tick")
        client.config_set("maxmemory", 1)  # every write now fails with OOM
        await asyncio.sleep(3)
        client.config_set("maxmemory", 0)
        after_outage = client.llen(ticks)
        wait_until(lambda: client.llen(ticks) > after_outage, 15, "ticks again after the outage")
    finally:
        proc.kill()
        proc.wait()
        server.stop()
    lines = (tmp_path / "worker.log").read_text().splitlines()
    beat_lines = [line for line in lines if "[tasks_engine.beat]" in line and "periodic job sent" not in line]
    assert sum("beat cannot reach redis" in line for line in beat_lines) == 1, beat_lines
    (back,) = [line for line in beat_lines if "beat reached redis again" in line]
    tries = int(back.split("failed_tries=")[1].split()[0])
    assert 2 <= tries <= 12, back  # 0.1 s doubling up to 5 s over ~3 s: about 5
    assert len(beat_lines) == 2, beat_lines
