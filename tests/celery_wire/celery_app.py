"""A plain Celery app for the wire tests: the producer in the test process and, for the mixed fleet, the
app of a real ``celery worker`` process. Configured by environment: ``CW_PREFIX`` (kombu's and the
result backend's global key prefix), ``CW_QUEUE``, ``CW_REDIS`` (broker and backend URL)."""

from __future__ import annotations

import os
from typing import Any

import redis
from celery import Celery


def make_app(prefix: str, url: str) -> Celery:
    app = Celery("cw", broker=url, backend=url, set_as_current=False)
    app.conf.update(
        broker_transport_options={"global_keyprefix": prefix, "visibility_timeout": 30},
        result_backend_transport_options={"global_keyprefix": prefix},
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_prefetch_multiplier=1,
        task_track_started=True,
    )
    return app


app = make_app(os.environ.get("CW_PREFIX", "cw-"), os.environ.get("CW_REDIS", "redis://127.0.0.1:6379/0"))
_redis = redis.Redis.from_url(os.environ.get("CW_REDIS", "redis://127.0.0.1:6379/0"))


@app.task(name="cw.count", bind=True)
def count(self: Any, key: str, seconds: float = 0.0) -> str:
    _redis.hincrby(key, self.request.id, 1)
    _redis.hincrby(key, "done", 1)
    _redis.hincrby(key, "by-celery", 1)
    return "celery"


@app.task(name="cw.add")
def add(x: int, y: int) -> int:
    return x + y
