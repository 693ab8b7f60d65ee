"""Testing helpers: Celery's ``task_always_eager`` as a switch, and a pytest plugin with a real worker.

    from tasks_engine.testing import always_eager

    async def test_signup_sends_mail():
        with always_eager():                      # delay()/apply_async()/canvas run in-process, no Redis
            result = await signup("ada@example.com")   # code under test that calls .delay()
        assert await result.get() == {"status": "sent"}

The plugin (registered as ``tasks_engine`` for pytest, needs pytest-asyncio) gives two fixtures:
``tasks_engine_eager`` (the switch, for a whole test) and ``tasks_engine_worker`` — a real worker on
this test's event loop, on the Redis at ``REDIS_URL`` (an embedded one is started when none answers),
under a key prefix of its own that is deleted afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import pytest

from tasks_engine.core.config import configure, get_settings
from tasks_engine.core.context import eager_override
from tasks_engine.integrations.embedded import ensure_redis
from tasks_engine.runtime.worker import Worker
from tasks_engine.store import get_broker


@contextmanager
def always_eager(enabled: bool = True) -> Iterator[None]:
    """Within the block, ``delay``/``apply_async``/canvas run in this process with Celery's eager
    semantics (retries at once, callbacks in-process, results as :class:`EagerResult`)."""
    token = eager_override.set(enabled)
    try:
        yield
    finally:
        eager_override.reset(token)


@pytest.fixture
def tasks_engine_eager() -> Iterator[None]:
    with always_eager():
        yield


@pytest.fixture
async def tasks_engine_worker() -> AsyncIterator[Worker]:
    """A real worker (in this test's loop) on a key prefix of its own; its keys are deleted afterwards."""
    base = get_settings()
    ensure_redis(base.redis_url.get_secret_value())
    settings = configure(base, key_prefix=f"test-{uuid.uuid4().hex[:10]}", beat_enabled=False)
    worker = Worker(settings=settings, beat=False)
    await worker.start(handle_signals=False)
    try:
        yield worker
    finally:
        await worker.stop(grace=5)
        broker = get_broker()
        keys = [key async for key in broker.redis.scan_iter(match=broker.keys.everything, count=1000)]
        if keys:
            await broker.redis.delete(*keys)
        await broker.close()
        configure(base)


__all__ = ["always_eager", "tasks_engine_eager", "tasks_engine_worker"]
