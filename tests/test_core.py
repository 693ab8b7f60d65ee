"""Issue 2: the Celery-shaped core API against a real Redis and a real worker."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from tasks_engine import (
    AsyncResult,
    EagerResult,
    MaxRetriesExceededError,
    TaskError,
    TaskRevokedError,
    send_task,
    shared_task,
    states,
)
from tasks_engine.exceptions import TaskDefinitionError
from tasks_engine.store import get_broker
from tests import sample_tasks as t


async def test_delay_get_state_info(worker):
    r = await t.add.delay(2, 3)
    assert isinstance(r, AsyncResult)
    assert await r.get(timeout=10) == 5
    assert await r.state() == states.SUCCESS
    assert await r.ready() and await r.successful() and not await r.failed()
    info = await r.record()
    assert info["state"] == "SUCCESS" and info["result"] == 5 and info["retries"] == 0
    assert info["date_done"] and info["worker"] == worker.id and info["task"] == "demo.add"
    assert await r.traceback() is None


async def test_apply_async_options_and_custom_id(worker):
    r = await t.add.apply_async(
        args=(2, 3), kwargs={}, countdown=0.2, expires=60, queue="default", priority=5, task_id="my-id"
    )
    assert r.id == "my-id"
    assert await r.state() == states.PENDING
    assert await r.get(timeout=10) == 5


async def test_failure_raises_original_exception_and_propagate_false(worker):
    r = await t.fail.delay()
    with pytest.raises(ValueError, match="boom"):
        await r.get(timeout=10)
    exc = await r.get(timeout=10, propagate=False)
    assert isinstance(exc, ValueError)
    assert await r.failed() and await r.ready() and not await r.successful()
    assert "ValueError: boom" in (await r.traceback() or "")
    info = await r.record()
    assert info["exc_type"] == "ValueError" and info["exc_message"] == "boom"


async def test_unimportable_exception_becomes_task_error(worker):
    broker = get_broker()
    await broker.redis.hset(
        broker.result_key("x1"),
        mapping={"state": "FAILURE", "exc_type": "GoneError", "exc_module": "no_such_module", "exc_message": "gone"},
    )
    with pytest.raises(TaskError, match="no_such_module.GoneError: gone"):
        await AsyncResult("x1").get(timeout=1)


async def test_get_timeout_is_builtin_timeout(engine):
    r = await t.add.delay(1, 1)  # no worker
    with pytest.raises(TimeoutError):
        await r.get(timeout=0.2)


async def test_unknown_id_is_pending(engine):
    assert await AsyncResult("does-not-exist").state() == "PENDING"


@pytest.mark.serial  # timing-sensitive: runs alone after the parallel run
async def test_get_wakes_within_10ms_of_finish(worker):
    r = await t.sleep.delay(0.3)
    await asyncio.sleep(0.05)
    await r.get(timeout=5)
    broker = get_broker()
    done = datetime.fromisoformat((await broker.redis.hget(broker.result_key(r.id), "date_done")).decode())
    lag = datetime.now(UTC) - done
    assert lag < timedelta(milliseconds=10), lag


async def test_get_inside_task_is_an_error(worker):
    @shared_task(name="test.get_inside")
    async def get_inside(task_id: str) -> None:
        await AsyncResult(task_id).get(timeout=1)

    r = await get_inside.delay("whatever")
    with pytest.raises(RuntimeError, match="Never call result.get"):
        await r.get(timeout=5)


async def test_send_task_by_name_and_unknown_name_fails_clearly(worker):
    r = await send_task("demo.add", args=[20, 22])
    assert await r.get(timeout=5) == 42
    bad = await send_task("nobody.knows", args=[1])
    with pytest.raises(Exception, match="not registered"):
        await bad.get(timeout=5)
    assert await bad.state() == states.FAILURE


async def test_non_json_argument_fails_in_delay_and_nothing_enqueued(engine):
    broker = get_broker()
    with pytest.raises(TypeError, match=r"demo.identity.*argument 'x'.*not JSON-serializable"):
        await t.identity.delay(object())
    assert await broker.redis.zcard(broker.key("q", "default")) == 0
    assert [k async for k in broker.redis.scan_iter(match=broker.key("msg", "*"))] == []


async def test_type_hint_mismatch_is_rejected_at_enqueue(engine):
    with pytest.raises(TypeError, match=r"demo.add.*argument 'y'"):
        await t.add.delay(1, "not a number")
    with pytest.raises(TypeError, match=r"demo.add.*missing a required argument"):
        await t.add.delay(1)


async def test_typed_args_round_trip(worker):
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert await (await t.when.delay(moment)).get(timeout=5) == moment.isoformat()


async def test_unserializable_result_is_a_clear_failure(worker):
    r = await t.not_json.delay()
    with pytest.raises(TypeError, match="cannot be serialized"):
        await r.get(timeout=5)


async def test_request_is_per_call_with_50_concurrent_bound_tasks(worker):
    results = [await t.echo_request.delay(0.05) for _ in range(50)]
    seen = [await r.get(timeout=10) for r in results]
    assert [s["id"] for s in seen] == [r.id for r in results]


async def test_update_state_progress_visible_in_info(worker):
    r = await t.progress.delay(3, 0.2)
    deadline = time.monotonic() + 5
    while True:
        info = await r.record()
        if info["state"] == "PROGRESS":
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert info["meta"]["total"] == 3
    assert await r.get(timeout=5) == 3


async def test_started_is_recorded(worker):
    r = await t.sleep.delay(0.5)
    deadline = time.monotonic() + 3
    while await r.state() != states.STARTED:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    assert (await r.record())["date_started"]
    await r.get(timeout=5)


async def test_ignore_result_stores_nothing(worker):
    @shared_task(name="test.ignored", ignore_result=True)
    async def ignored() -> int:
        return 1

    r = await ignored.delay()
    assert await r.get(timeout=1) is None
    await asyncio.sleep(0.3)
    broker = get_broker()
    assert not await broker.redis.exists(broker.result_key(r.id))


async def test_forget_and_revoke_queued(engine):
    r = await t.add.apply_async((1, 2), countdown=30)
    await r.revoke()
    assert await r.state() == states.REVOKED
    with pytest.raises(TaskRevokedError):
        await r.get(timeout=1)
    await r.forget()
    assert await r.state() == states.PENDING


async def test_result_expires_setting(engine, worker):
    r = await t.add.delay(1, 1)
    await r.get(timeout=5)
    broker = get_broker()
    ttl = await broker.redis.ttl(broker.result_key(r.id))
    assert 86_000 < ttl <= 86_400


async def test_apply_is_eager_and_direct_call_runs_body(engine):
    e = await t.add.apply(args=(2, 3))
    assert isinstance(e, EagerResult)
    assert await e.get() == 5 and await e.state() == "SUCCESS" and await e.successful()
    assert await t.add(2, 3) == 5
    failing = await t.fail.apply()
    assert await failing.failed()
    with pytest.raises(ValueError):
        await failing.get()


def test_options_validated_at_import_naming_the_task():
    with pytest.raises(TaskDefinitionError, match=r"'bad.opt'.*unknown option"):
        shared_task(name="bad.opt", colour="red")(lambda: None)
    with pytest.raises(TaskDefinitionError, match=r"'bad.rate'.*rate limit"):
        shared_task(name="bad.rate", rate_limit="10/fortnight")(lambda: None)
    with pytest.raises(TaskDefinitionError, match=r"'bad.limits'.*soft_time_limit"):
        shared_task(name="bad.limits", soft_time_limit=10, time_limit=5)(lambda: None)
    with pytest.raises(TaskDefinitionError, match=r"'bad.ser'"):
        shared_task(name="bad.ser", serializer="pickle")(lambda: None)


def test_all_guide_options_accepted_and_stored():
    @shared_task(
        name="custom.task_name",
        bind=True,
        max_retries=3,
        default_retry_delay=60,
        time_limit=300,
        soft_time_limit=240,
        autoretry_for=(Exception,),
        dont_autoretry_for=(ValueError,),
        retry_kwargs={"max_retries": 5},
        retry_backoff=True,
        retry_backoff_max=600,
        retry_jitter=True,
        rate_limit="10/m",
        ignore_result=False,
        serializer="json",
        compression="gzip",
        queue="admin",
        routing_key="admin.process_data",
        priority=3,
        expires=60,
        acks_late=True,
    )
    async def advanced(self, data: dict) -> dict:
        return data

    o = advanced.options
    got = (o.max_retries, o.time_limit, o.soft_time_limit, o.rate_limit, o.queue, o.priority)
    assert got == (3, 300, 240, "10/m", "admin", 3)
    assert o.autoretry_for == (Exception,) and o.compression == "gzip" and o.routing_key == "admin.process_data"


async def test_retry_then_max_retries(worker):
    @shared_task(name="test.always_retry", bind=True, max_retries=2)
    async def always_retry(self) -> None:
        raise self.retry(countdown=0.05)

    r = await always_retry.delay()
    with pytest.raises(MaxRetriesExceededError):
        await r.get(timeout=10)
    assert (await r.record())["retries"] == 2


async def test_structlog_lines_in_task_carry_task_context(worker, capsys):
    import logging

    from tasks_engine.core.logs import configure_logging

    configure_logging()
    r = await t.echo_request.delay()
    await r.get(timeout=5)
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if "inside task" in line)
    assert f"task_id={r.id}" in line and "task_name=demo.echo_request" in line and "retries=0" in line
    logging.getLogger().handlers.clear()


async def test_json_log_format_by_setting(worker, capsys):
    import json
    import logging

    from tasks_engine import get_settings
    from tasks_engine.core.logs import configure_logging

    configure_logging(get_settings().model_copy(update={"log_format": "json"}))
    try:
        r = await t.echo_request.delay()
        await r.get(timeout=5)
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
        inside = next(line for line in lines if line.get("event") == "inside task")
        assert inside["task_id"] == r.id and inside["task_name"] == "demo.echo_request" and inside["retries"] == 0
    finally:
        logging.getLogger().handlers.clear()


async def test_two_apps_share_one_redis_by_key_prefix(engine, spawn_worker, sync_client):
    """A worker of app A never takes app B's jobs: every key lives under the app's prefix."""
    from tasks_engine import configure
    from tasks_engine.store import get_broker as broker_of

    spawn_worker()  # app A's worker (this test's prefix)
    other = f"{engine.key_prefix}-b"
    r_a = await t.add.delay(1, 1)
    assert await r_a.get(timeout=10) == 2
    await broker_of().close()
    configure(engine, key_prefix=other)
    try:
        r_b = await t.add.delay(2, 2)
        await asyncio.sleep(1.0)
        assert await r_b.state() == states.PENDING  # nobody consumes app B's queue
        assert sync_client.zscore(f"{{{other}}}:q:default", r_b.id) is not None
    finally:
        await broker_of().close()
        for key in sync_client.scan_iter(f"{{{other}}}:*"):
            sync_client.delete(key)
        configure(engine)
