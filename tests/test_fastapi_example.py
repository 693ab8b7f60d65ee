"""The FastAPI example (examples/fastapi_app.py): enqueue from a handler, read the status, close the
client in the lifespan — over HTTP with httpx, against a real worker."""

from __future__ import annotations

import asyncio

from tests.conftest import skip_or_fail_in_ci

try:
    import fastapi  # noqa: F401
    import httpx
except ImportError as exc:
    skip_or_fail_in_ci(
        f"the FastAPI example needs fastapi and httpx (the test extra has them): {exc}", allow_module_level=True
    )

from examples.fastapi_app import app, lifespan  # noqa: E402
from tasks_engine.store import get_broker  # noqa: E402


async def test_enqueue_then_status_over_http(worker):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        created = await client.post("/signups", json={"email": "ada@example.com", "name": "Ada"})
        assert created.status_code == 202
        task_id = created.json()["task_id"]
        for _ in range(100):
            status = (await client.get(f"/tasks/{task_id}")).json()
            if status["state"] == "SUCCESS":
                break
            await asyncio.sleep(0.05)
        assert status == {"task_id": task_id, "state": "SUCCESS", "error": None,
                          "result": {"status": "sent", "to": "ada@example.com", "subject": "Welcome, Ada"}}  # fmt: skip
        assert (await client.post("/signups", json={"email": "not an email", "name": "x"})).status_code == 422
        assert (await client.get("/tasks/no-such-task")).json()["state"] == "PENDING"  # as Celery


async def test_lifespan_closes_the_client(engine, sync_client):
    broker = get_broker()
    async with lifespan(app):
        connection_id = await broker.redis.client_id()
        assert connection_id in {int(c["id"]) for c in sync_client.client_list()}
    assert connection_id not in {int(c["id"]) for c in sync_client.client_list()}
