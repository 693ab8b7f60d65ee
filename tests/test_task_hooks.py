"""Celery's task handler methods (``@shared_task(base=MyTask)``) and signals, in a real worker process."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import orjson
import pytest

import tests.hooks_tasks as h
from tasks_engine import Task, shared_task, states
from tasks_engine.exceptions import TaskDefinitionError
from tasks_engine.signals import Signal
from tasks_engine.store import get_broker

pytestmark = pytest.mark.slow


async def hook_log() -> list[dict[str, Any]]:
    broker = get_broker()
    return [orjson.loads(e) for e in await broker.redis.lrange(broker.key("hook-log"), 0, -1)]


async def until(predicate: Any, timeout: float = 10) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        entries = await hook_log()
        if predicate(entries):
            return entries
        assert time.monotonic() < deadline, entries
        await asyncio.sleep(0.05)


def kinds(entries: list[dict[str, Any]], task: str) -> list[str]:
    return [e["kind"] for e in entries if e.get("task") == task]


@pytest.mark.serial  # timing-sensitive: runs alone after the parallel run
async def test_handlers_and_signals_on_success_failure_and_retry(engine, spawn_worker):
    proc = spawn_worker(imports="tests.hooks_tasks")
    assert await (await h.ok.delay("hi")).get(timeout=10) == "HI"
    failed = await h.fails.delay()
    with pytest.raises(ValueError):
        await failed.get(timeout=10)
    assert await (await h.retries_once.delay()).get(timeout=10) == "done"
    entries = await until(lambda es: kinds(es, "hooks.retries_once").count("task_postrun") == 2)
    assert kinds(entries, "hooks.ok") == ["task_prerun", "on_success", "task_success", "after_return", "task_postrun"]
    assert kinds(entries, "hooks.fails") == ["task_prerun", "on_failure", "task_failure", "after_return",
                                             "task_postrun"]  # fmt: skip
    success = next(e for e in entries if e["kind"] == "on_success")
    assert success["retval"] == "HI" and success["args"] == ["hi"]
    failure = next(e for e in entries if e["kind"] == "on_failure")
    assert failure["exc"] == "ValueError('boom')" and failure["task_id"] == failed.id and failure["has_einfo"]
    assert next(e for e in entries if e["kind"] == "task_postrun" and e["task"] == "hooks.fails")["state"] == "FAILURE"
    retry = [e for e in entries if e.get("task") == "hooks.retries_once"]
    assert [e["kind"] for e in retry][:3] == ["task_prerun", "on_retry", "task_retry"]
    assert next(e for e in retry if e["kind"] == "task_retry")["retries"] == 0
    # The failing receiver was logged; the job's outcome is its own error, not the receiver's.
    assert (await failed.record())["exc_type"] == "ValueError"
    assert any(e["kind"] == "worker_ready" for e in entries)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=15)
    assert any(e["kind"] == "worker_shutdown" for e in await hook_log())


async def test_a_failing_handler_does_not_change_the_outcome(engine, spawn_worker):
    spawn_worker(imports="tests.hooks_tasks")
    r = await h.ok.delay("explode-in-handler")
    assert await r.get(timeout=10) == "EXPLODE-IN-HANDLER"
    await until(lambda es: "task_postrun" in kinds(es, "hooks.ok"))
    assert await r.state() == states.SUCCESS


def test_base_must_be_a_task_subclass():
    with pytest.raises(TaskDefinitionError, match="base must be a subclass of tasks_engine.Task"):

        @shared_task(name="hooks.bad_base", base=dict)
        async def nope() -> None: ...


def test_base_class_instance_is_the_registered_task():
    assert isinstance(h.ok, h.AuditedTask) and isinstance(h.ok, Task)


async def test_signal_receivers_sync_async_sender_filter_and_errors():
    sig = Signal("custom", ("x",))
    seen: list[Any] = []

    @sig.connect
    def plain(sender: Any = None, x: int = 0, **kwargs: Any) -> int:
        seen.append(("plain", sender, x))
        return x + 1

    @sig.connect(sender="only-this")
    async def filtered(sender: Any = None, x: int = 0, **kwargs: Any) -> None:
        seen.append(("filtered", sender, x))

    @sig.connect
    def broken(**kwargs: Any) -> None:
        raise RuntimeError("receiver bug")

    results = await sig.send(sender="someone", x=1)
    assert seen == [("plain", "someone", 1)]
    assert results[0][1] == 2 and isinstance(results[1][1], RuntimeError)
    await sig.send(sender="only-this", x=2)
    assert ("filtered", "only-this", 2) in seen
    sig.disconnect(plain)
    assert plain not in sig.receivers
