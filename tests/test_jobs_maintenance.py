"""Issue 9, maintenance: cleanup of results and report files, the daily summary chain (report → email) and
the beat schedule of settings.py, through real workers, Redis and an SMTP server."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from jobs.config import JobsSettings
from jobs.email import send_email_task
from jobs.maintenance import cleanup_reports, cleanup_results, daily_summary
from jobs.sink import SmtpSink, free_port
from tasks_engine import AsyncResult, send_task, states
from tasks_engine.core.codec import dumps
from tasks_engine.runtime.worker import Worker
from tasks_engine.store import get_broker
from tests import jobs_support as support
from tests.conftest import running_worker, worker_env

ROOT = Path(__file__).resolve().parent.parent


def app_settings(prefix: str, tmp_path: Path, **overrides: object) -> JobsSettings:
    """This module's settings: the shared test settings plus what its jobs need."""
    values: dict[str, object] = {
        "task_routes": {"admin.send_*": "email"},
        "smtp_port": free_port(),
        "smtp_local_hostname": "localhost",
        "admin_email": "boss@example.com",
    }
    return support.app_settings(prefix, tmp_path, **{**values, **overrides})


@pytest.fixture
async def app(prefix, sync_client, tmp_path) -> AsyncIterator[JobsSettings]:
    async with support.configured(app_settings(prefix, tmp_path), sync_client) as settings:
        yield settings


@pytest.fixture
async def app_worker(app) -> AsyncIterator[Worker]:
    async with running_worker(queues=["default", "email"]) as worker:
        yield worker


@pytest.fixture
def sink(app) -> Iterator[SmtpSink]:
    with SmtpSink(port=app.smtp_port) as s:
        yield s


async def test_cleanup_results_sweeps_what_ttls_leave(app, app_worker, sync_client, prefix):
    broker = get_broker()
    redis = broker.redis
    old = (datetime.now(UTC) - timedelta(days=30)).isoformat()
    # Two dead letters from a month ago (oldest at the right end, as LPUSH leaves them) …
    for n in (1, 2):
        await redis.lpush(broker.key("dead"), dumps({"id": f"old-{n}", "reason": "unknown task", "at": old}))
    # … and a fresh one, made the real way: a job for a task no worker knows.
    unknown = await send_task("nobody.knows", args=[1])
    with pytest.raises(Exception, match="not registered"):
        await unknown.get(timeout=10)
    # Jobs that are legitimately waiting: in a queue nobody consumes, and deferred for an hour.
    waiting = await send_task("admin.generate_report", args=["users", {}], queue="nobody-consumes-this")
    deferred = await send_task("admin.generate_report", args=["users", {}], countdown=3600)
    # Leftovers no TTL covers: a message in no queue, a result record without TTL whose job is gone,
    # chord bookkeeping whose chord record is gone (next to a live chord that must stay).
    orphan_id = str(uuid.uuid4())
    await redis.set(
        broker.key("msg", orphan_id), dumps({"id": orphan_id, "task": "admin.send_email", "queue": "email"})
    )
    await redis.hset(broker.result_key("stale"), mapping={"state": "STARTED", "task": "admin.send_email"})
    await redis.sadd(broker.key("chord", "gone", "done"), "t1")
    await redis.hset(broker.key("chord", "gone", "r"), "0", "1")
    await redis.hset(broker.key("chord", "live"), mapping={"total": 2, "count": 1})
    await redis.sadd(broker.key("chord", "live", "done"), "t2")

    result = await (await cleanup_results.delay()).get(timeout=15)

    assert result["dead_letters_trimmed"] == 2 and result["orphaned_messages"] == 1
    assert result["stale_results_expiring"] >= 1 and result["chord_keys_deleted"] == 2
    dead = [e.decode() for e in await redis.lrange(broker.key("dead"), 0, -1)]
    assert len(dead) == 2 and orphan_id in dead[0] and unknown.id in dead[1]  # the fresh ones stay
    assert not await redis.exists(broker.key("msg", orphan_id))
    assert await redis.exists(broker.key("msg", waiting.id)) and await redis.exists(broker.key("msg", deferred.id))
    assert await waiting.state() == states.PENDING
    assert 0 < await redis.ttl(broker.result_key("stale")) <= app.result_expires
    assert not await redis.exists(broker.key("chord", "gone", "done"), broker.key("chord", "gone", "r"))
    assert await redis.exists(broker.key("chord", "live"), broker.key("chord", "live", "done")) == 2


async def test_cleanup_reports_deletes_old_files_only(app, app_worker):
    reports = app.reports_dir
    reports.mkdir(parents=True)
    now = time.time()
    ages = {"old.csv": 10 * 86_400, "recent.xlsx": 86_400, "crashed.csv.part": 7 * 3600, "running.csv.part": 60}
    for name, age in ages.items():
        (reports / name).write_bytes(b"x" * 100)
        os.utime(reports / name, (now - age, now - age))
    (reports / "subdir").mkdir()
    result = await (await cleanup_reports.delay()).get(timeout=10)
    assert result == {"deleted": 2, "bytes_freed": 200, "kept": 2}
    assert sorted(p.name for p in reports.iterdir()) == ["recent.xlsx", "running.csv.part", "subdir"]


async def test_daily_summary_is_a_report_mailed_to_the_admin(app, app_worker, sink):
    ok = [await send_email_task.delay(f"u{i}@example.com", "你好", "<p>内容</p>") for i in range(2)]
    bad = await send_email_task.delay("broken-address", "你好", "<p>内容</p>")
    for r in ok:
        await r.get(timeout=10)
    with pytest.raises(ValueError):
        await bad.get(timeout=10)

    started = await (await daily_summary.delay()).get(timeout=10)
    email_result = await AsyncResult(started["email_id"]).get(timeout=20)
    report = await AsyncResult(started["report_id"]).get(timeout=1)
    assert email_result["status"] == "success" and email_result["attached"]
    assert report["report_type"] == "task_summary" and Path(report["path"]).exists()
    assert (await AsyncResult(started["email_id"]).record())["parent_id"] == started["report_id"]  # a chain

    [mail] = sink.handler.to("boss@example.com")
    msg = mail.message
    assert msg["Subject"].startswith("每日任务汇总")
    assert "admin.send_email" in msg.get_body(preferencelist=("html",)).get_content()
    [attachment] = list(msg.iter_attachments())
    assert attachment.get_filename() == Path(report["path"]).name
    rows = list(csv.reader(io.StringIO(attachment.get_content().lstrip("\ufeff"))))
    header, body = rows[0], {r[0]: dict(zip(rows[0], r, strict=True)) for r in rows[1:]}
    assert header[:2] == ["任务", "合计"]
    assert body["admin.send_email"]["SUCCESS"] == "2" and body["admin.send_email"]["FAILURE"] == "1"


async def test_beat_schedule_in_settings_runs_the_maintenance_jobs(prefix, sync_client, tmp_path):
    """The real ``tasks-engine worker`` with ./settings.py (beat on): ticks missed while no worker ran are run
    once at start-up, so all three entries of BEAT_SCHEDULE fire — and the daily summary reaches the admin."""
    port = free_port()
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "ancient.csv").write_text("x")
    os.utime(reports / "ancient.csv", (time.time() - 30 * 86_400,) * 2)
    for entry in ("cleanup-expired-results", "cleanup-old-reports", "daily-task-summary"):
        sync_client.set(f"{{{prefix}}}:beat-last:{entry}", 0)  # last run: long ago
    env = worker_env(
        prefix,
        TE_BEAT_ENABLED="true",
        TE_SMTP_PORT=port,
        TE_SMTP_LOCAL_HOSTNAME="localhost",
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'app.db'}",
        TE_REPORTS_DIR=reports,
        TE_ADMIN_EMAIL="boss@example.com",
    )
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
    with SmtpSink(port=port) as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tasks_engine.cli", "worker", "-Q", "default,email"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 40
            while not sink.handler.to("boss@example.com"):
                assert proc.poll() is None, (tmp_path / "worker.log").read_text()
                assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
                time.sleep(0.1)
            fired = {}
            while len(fired) < 3 and time.monotonic() < deadline:
                for key in sync_client.scan_iter(match=f"{{{prefix}}}:res:beat:*"):
                    state = sync_client.hget(key, "state")
                    if state == b"SUCCESS":
                        fired[key.decode().split(":")[3]] = key
                time.sleep(0.1)
        finally:
            proc.terminate()
            proc.wait(timeout=20)
            log.close()
    assert set(fired) == {"cleanup-expired-results", "cleanup-old-reports", "daily-task-summary"}
    assert not (reports / "ancient.csv").exists()
    assert sink.handler.to("boss@example.com")[0].message["Subject"].startswith("每日任务汇总")
    keys = list(sync_client.scan_iter(match=f"{{{prefix}}}:*", count=1000))
    if keys:
        sync_client.delete(*keys)
