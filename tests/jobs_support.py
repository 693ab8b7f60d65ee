"""Shared set-up for the jobs tests: application settings for one test, and its clean-up."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import redis as sync_redis

from jobs.config import JobsSettings
from jobs.db import dispose_engines
from tasks_engine import configure
from tasks_engine.store import get_broker

# Short leases and no beat: tests see crashes recovered quickly and nothing scheduled behind their back.
BASE: dict[str, object] = {
    "lease_seconds": 3,
    "heartbeat_seconds": 0.5,
    "shutdown_grace_seconds": 5,
    "beat_enabled": False,
}


def app_settings(prefix: str, tmp_path: Path, **values: object) -> JobsSettings:
    """Settings isolated to this test: its key prefix, a SQLite file and a reports folder in tmp_path."""
    merged = {
        **BASE,
        "key_prefix": prefix,
        "database_url": f"sqlite+aiosqlite:///{tmp_path / 'app.db'}",
        "reports_dir": tmp_path / "reports",
        **values,
    }
    return JobsSettings(**merged)  # type: ignore[arg-type]


async def close_broker() -> None:
    """Close this loop's Redis client (its result listener is stopped first by ``Broker.close``)."""
    await get_broker().close()


async def release(prefix: str, sync_client: sync_redis.Redis) -> None:
    """Dispose database engines, close Redis and delete the test's keys."""
    await dispose_engines()
    await close_broker()
    keys = list(sync_client.scan_iter(match=f"{{{prefix}}}:*", count=1000))
    if keys:
        sync_client.delete(*keys)


@contextlib.asynccontextmanager
async def configured(settings: JobsSettings, sync_client: sync_redis.Redis) -> AsyncIterator[JobsSettings]:
    """``settings`` installed for the block; afterwards everything of the test is released."""
    installed = configure(settings)
    assert isinstance(installed, JobsSettings)
    try:
        yield installed
    finally:
        await release(settings.key_prefix, sync_client)
