"""A FastAPI service that enqueues jobs and reports on them — the client side of tasks_engine.

    uvicorn examples.fastapi_app:app          # with a worker: tasks-engine worker -I examples.fastapi_app

The engine's client needs no start-up of its own (it connects on first use, per event loop); the
lifespan closes it, so the service shuts down without a dangling Redis connection or result listener.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field

from tasks_engine import AsyncResult, shared_task
from tasks_engine.store import get_broker


@shared_task(name="example.send_welcome", max_retries=3, autoretry_for=(ConnectionError,), retry_backoff=True)
async def send_welcome(email: str, name: str) -> dict[str, str]:
    """Stands in for the guide's send_email_task: returns what it 'sent'."""
    return {"status": "sent", "to": email, "subject": f"Welcome, {name}"}


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    yield
    await get_broker().close()  # the connection pool and the get() listener of this loop


app = FastAPI(title="tasks_engine example", lifespan=lifespan)


class Signup(BaseModel):
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    name: str = Field(min_length=1)


@app.post("/signups", status_code=202)
async def signup(body: Signup) -> dict[str, str]:
    result = await send_welcome.delay(body.email, body.name)
    return {"task_id": result.id}


@app.get("/tasks/{task_id}")
async def task_status(task_id: str) -> dict[str, Any]:
    """As Celery: an id nobody knows (yet) is PENDING."""
    record = await AsyncResult(task_id).record()
    return {"task_id": task_id, "state": record["state"], "result": record["result"], "error": record["exc_message"]}
