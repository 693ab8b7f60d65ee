"""An unmodified Celery app (the worker side of test_send_to_celery.py): its tasks report what Celery's
worker made of the message they were sent. Its keys live under ``CELERY_SEND_PREFIX`` on REDIS_URL."""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery

PREFIX = os.environ.get("CELERY_SEND_PREFIX", "celerysend")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("send_app", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    broker_transport_options={"global_keyprefix": PREFIX},
    result_backend_transport_options={"global_keyprefix": PREFIX},
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_track_started=True,
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
)


class LedgerError(Exception):
    """An exception class the sending process has never imported."""


@app.task(name="legacy.request", bind=True)
def request_fields(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    req = self.request
    info = req.delivery_info or {}
    return {
        "id": req.id,
        "args": list(req.args),
        "kwargs": req.kwargs,
        "retries": req.retries,
        "eta": req.eta,
        "expires": req.expires,
        "priority": info.get("priority"),
        "queue": info.get("routing_key"),
        "timelimit": list(req.timelimit) if req.timelimit else None,
        "root_id": req.root_id,
        "parent_id": req.parent_id,
        "started": time.time(),
    }


@app.task(name="legacy.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="legacy.fail")
def fail(kind: str, message: str) -> None:
    if kind == "value":
        raise ValueError(message)
    raise LedgerError(message)


@app.task(name="legacy.flaky", bind=True, max_retries=3)
def flaky(self: Any, fails: int) -> int:
    """Retries itself until it has been retried ``fails`` times; returns how many retries it saw."""
    if self.request.retries < fails:
        raise self.retry(countdown=0.3)
    return int(self.request.retries)
