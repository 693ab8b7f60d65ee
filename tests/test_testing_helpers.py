"""The testing helpers a user's test suite relies on: ``always_eager`` (Celery's ``task_always_eager``)
and the pytest plugin's ``tasks_engine_worker`` fixture (a real worker, a key prefix of its own)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis as sync_redis

from tasks_engine import EagerResult, EngineConnectionError, EngineSettings, chain, configure, shared_task
from tasks_engine.testing import always_eager
from tests import sample_tasks as t


@shared_task(name="testing.send_email")
def send_email_task(to: str, subject: str) -> dict[str, Any]:
    """The guide's task: a plain ``def`` that returns a status dict."""
    return {"status": "sent", "to": to, "subject": subject}


@shared_task(name="testing.signup")
async def signup(email: str) -> dict[str, Any]:
    """Code under test that enqueues from inside a task."""
    sent = await send_email_task.delay(email, "welcome")
    return await sent.get()


@pytest.fixture
def no_redis(prefix: str) -> Any:
    """Settings pointing at a Redis that does not exist: anything that needs one fails at once."""
    settings = configure(EngineSettings(redis_url="redis://127.0.0.1:1/0", key_prefix=prefix))
    yield settings
    configure(EngineSettings())


def test_the_guides_direct_call_test():
    result = send_email_task("ada@example.com", "hi")
    assert result["status"] == "sent"


async def test_always_eager_runs_delay_chains_and_nested_delays_without_redis(no_redis):
    with always_eager():
        r = await send_email_task.delay("ada@example.com", "hi")
        assert isinstance(r, EagerResult) and (await r.get())["status"] == "sent"
        assert await (await signup.delay("bob@example.com")).get() == {
            "status": "sent", "to": "bob@example.com", "subject": "welcome"}  # fmt: skip
        assert await (await chain(t.add.s(1, 2), t.add.s(10)).apply_async()).get() == 13
        with pytest.raises(ValueError, match="boom"):
            await (await t.fail.delay()).get()
    with pytest.raises(EngineConnectionError):  # outside the block, a real enqueue
        await t.add.delay(1, 2)


async def test_the_setting_switches_it_on_too(prefix):
    configure(EngineSettings(redis_url="redis://127.0.0.1:1/0", key_prefix=prefix, task_always_eager=True))
    try:
        assert await (await t.add.delay(2, 2)).get() == 4
        with always_eager(False):  # the switch wins over the setting
            with pytest.raises(EngineConnectionError):
                await t.add.delay(1, 2)
    finally:
        configure(EngineSettings())


@pytest.fixture
def keys_left_after(sync_client: sync_redis.Redis) -> Iterator[list[str]]:
    """Set up before ``tasks_engine_worker`` when listed first, so torn down after it: what its prefix
    still holds in Redis once the plugin's fixture has cleaned up."""
    prefixes: list[str] = []
    yield prefixes
    left = [k for p in prefixes for k in sync_client.scan_iter(f"{{{p}}}:*")]
    assert not left, f"the plugin's worker fixture left {len(left)} keys: {left[:5]}"


async def test_the_plugins_worker_fixture_runs_real_jobs_and_cleans_up(
    keys_left_after, tasks_engine_worker, sync_client
):
    prefix = tasks_engine_worker.settings.key_prefix
    keys_left_after.append(prefix)
    assert prefix.startswith("test-")
    r = await t.add.delay(20, 22)
    assert not isinstance(r, EagerResult)
    assert await r.get(timeout=10) == 42
    assert list(sync_client.scan_iter(f"{{{prefix}}}:*"))  # there is something to clean up


def test_eager_fixture(tasks_engine_eager):
    from tasks_engine.core.context import eager_override

    assert eager_override.get() is True


def test_option_errors_read_as_sentences_naming_the_task_and_field():
    from tasks_engine.exceptions import TaskDefinitionError

    with pytest.raises(TaskDefinitionError) as raised:

        @shared_task(name="testing.bad_options", rate_limit="fast", autoretry_for=[3])
        async def bad() -> None: ...

    text = str(raised.value)
    assert text.startswith("task 'testing.bad_options': ") and "Value error" not in text
    assert "autoretry_for: 3 is not an exception class" in text and "rate_limit: invalid rate limit 'fast'" in text
