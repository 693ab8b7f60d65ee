"""Fixtures for the Celery wire tests: a real Celery producer app and tasks_engine workers consuming its
queue, isolated per test by a queue name and a key prefix on both sides (kombu's and the backend's)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis as sync_redis
from celery import Celery

import tests.celery_wire.engine_tasks  # noqa: F401 - registers the cw.* tasks in this process
from tasks_engine import configure
from tasks_engine.core.config import EngineSettings
from tests.celery_wire.celery_app import make_app
from tests.conftest import REDIS_URL, running_worker


@dataclass
class Wire:
    app: Celery
    queue: str
    celery_prefix: str
    settings: EngineSettings

    def env(self) -> dict[str, str]:
        """The environment of a tasks_engine worker process consuming this queue."""
        return {
            "TE_CELERY_QUEUES": self.queue,
            "TE_CELERY_TRANSPORT_PREFIX": self.celery_prefix,
            "TE_CELERY_RESULT_PREFIX": self.celery_prefix,
            "TE_CELERY_VISIBILITY_TIMEOUT": "30",
        }

    def send(self, name: str, *args: Any, **options: Any) -> Any:
        return self.app.send_task(name, args=args, queue=self.queue, **options)


@pytest.fixture
def wire(engine: EngineSettings, sync_client: sync_redis.Redis) -> Iterator[Wire]:
    celery_prefix = f"{engine.key_prefix}-"
    queue = f"cwq-{uuid.uuid4().hex[:8]}"
    settings = configure(
        engine,
        celery_queues=[queue],
        celery_transport_prefix=celery_prefix,
        celery_result_prefix=celery_prefix,
        celery_visibility_timeout=30.0,
    )
    app = make_app(celery_prefix, REDIS_URL)
    yield Wire(app, queue, celery_prefix, settings)
    app.close()
    keys = list(sync_client.scan_iter(match=f"{celery_prefix}*", count=1000))
    if keys:
        sync_client.delete(*keys)


#: A tasks_engine worker in this event loop; it consumes the wire's Celery queue (from the settings).
engine_worker = running_worker
