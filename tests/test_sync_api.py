"""The blocking API (``delay_sync``, ``apply_async_sync``, ``send_task_sync``) from plain threads, beside a
running event loop, in a FastAPI ``def`` endpoint and after fork — against a real worker process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import fastapi
import httpx
import psutil
import pytest
import redis as sync_redis

from tasks_engine import SyncGroupResult, SyncResult, configure, group, send_task_sync, states
from tasks_engine.client import sync
from tasks_engine.core.config import EngineSettings
from tasks_engine.testing import always_eager
from tests.conftest import ROOT
from tests.sample_tasks import add, echo_request, fail, sleep


@pytest.fixture
def sync_engine(prefix: str, sync_client: sync_redis.Redis, spawn_worker: Callable[..., Any]) -> Iterator[None]:
    """This test's prefix, a real worker process, and the sync client closed afterwards."""
    configure(EngineSettings(key_prefix=prefix, lease_seconds=3, heartbeat_seconds=0.5, beat_enabled=False))
    spawn_worker()
    yield
    sync.shutdown()
    keys = list(sync_client.scan_iter(match=f"{{{prefix}}}:*", count=1000))
    if keys:
        sync_client.delete(*keys)


def test_delay_sync_returns_a_blocking_handle(sync_engine: None) -> None:
    result = add.delay_sync(2, 3)
    assert isinstance(result, SyncResult)
    assert result.get(timeout=10) == 5
    assert result.state == states.SUCCESS
    assert result.result == 5
    assert result.ready() and result.successful() and not result.failed()
    assert isinstance(result.id, str) and result.id

    failed = fail.apply_async_sync(("boom",))
    with pytest.raises(Exception, match="boom") as info:
        failed.get(timeout=10)
    assert failed.state == states.FAILURE and failed.failed()
    assert isinstance(failed.result, type(info.value))
    assert failed.get(timeout=10, propagate=False).args == info.value.args

    pending = sleep.apply_async_sync((5,), countdown=60)
    assert pending.state == states.PENDING and not pending.ready()
    with pytest.raises(TimeoutError):
        pending.get(timeout=0.3)


def test_canvas_and_send_task_sync(sync_engine: None) -> None:
    members = group(add.s(i, i) for i in range(5)).delay_sync()
    assert isinstance(members, SyncGroupResult)
    assert members.get(timeout=10) == [0, 2, 4, 6, 8]
    assert members.ready() and members.completed_count() == 5
    assert (add.s(1, 2) | add.s(10)).apply_async_sync().get(timeout=10) == 13
    assert add.s(4).delay_sync(5).get(timeout=10) == 9
    assert send_task_sync("demo.add", [20, 22]).get(timeout=10) == 42


def test_fifty_threads_share_the_client(sync_engine: None) -> None:
    per_thread = 20

    def work(n: int) -> list[int]:
        handles = [add.delay_sync(n, i) for i in range(per_thread)]
        return [h.get(timeout=30) for h in handles]

    with ThreadPoolExecutor(50) as pool:
        outcomes = list(pool.map(work, range(50)))
    assert outcomes == [[n + i for i in range(per_thread)] for n in range(50)]


def our_redis_connections(client: sync_redis.Redis, subscribed: bool = False) -> int:
    """Connections Redis lists (CLIENT LIST) whose peer is a socket of this process (``subscribed``:
    only those in pub/sub mode)."""
    ours = {(c.laddr.ip, c.laddr.port) for c in psutil.Process().net_connections("tcp") if c.raddr}
    count = 0
    for entry in client.client_list():
        host, _, port = entry["addr"].rpartition(":")
        if subscribed and not int(entry.get("sub", 0)):
            continue
        count += (host, int(port)) in ours
    return count


def test_connections_stay_bounded_over_a_thousand_calls(sync_engine: None, sync_client: sync_redis.Redis) -> None:
    before = our_redis_connections(sync_client)  # the test's own client
    add.delay_sync(0, 0).get(timeout=10)
    start = our_redis_connections(sync_client)

    def work(n: int) -> int:
        total = 0
        for i in range(125):
            total += add.delay_sync(n, i).get(timeout=30)
        return total

    with ThreadPoolExecutor(8) as pool:
        totals = list(pool.map(work, range(8)))
    assert totals == [125 * n + sum(range(125)) for n in range(8)]
    after = our_redis_connections(sync_client)
    # One pool for the whole process: a few connections in flight at once (8 threads), not one per call.
    assert after <= start + 12, (start, after)
    sync.shutdown()  # closes them (as at exit)
    assert our_redis_connections(sync_client) == before


def test_from_a_thread_while_the_main_thread_runs_a_loop(sync_engine: None) -> None:
    async def main() -> tuple[float, str]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        running = asyncio.create_task(ticker())
        value = await asyncio.to_thread(lambda: sleep.delay_sync(0.3).get(timeout=10))
        with pytest.raises(RuntimeError, match="await") as info:
            add.delay_sync(1, 1)
        running.cancel()
        assert ticks > 5  # the loop kept running while the thread waited
        return value, str(info.value)

    value, error = asyncio.run(main())
    assert value == 0.3
    assert "running event loop" in error and "await task.delay" in error


def test_blocking_reads_refuse_a_running_loop(sync_engine: None) -> None:
    handle = add.delay_sync(1, 2)

    async def main() -> None:
        with pytest.raises(RuntimeError, match="await"):
            handle.get(timeout=5)
        with pytest.raises(RuntimeError, match="await"):
            _ = handle.state

    asyncio.run(main())
    assert handle.get(timeout=10) == 3


async def test_inside_a_fastapi_def_endpoint(sync_engine: None) -> None:
    app = fastapi.FastAPI()

    @app.get("/add")
    def add_endpoint(x: int, y: int) -> dict[str, Any]:  # a `def` endpoint: FastAPI runs it in a thread
        result = add.delay_sync(x, y)
        return {"id": result.id, "value": result.get(timeout=10), "thread": threading.get_ident()}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        replies = await asyncio.gather(*(client.get("/add", params={"x": i, "y": 1}) for i in range(10)))
    assert [r.json()["value"] for r in replies] == [i + 1 for i in range(10)]
    assert all(r.json()["thread"] != threading.get_ident() for r in replies)


def test_after_fork_the_child_gets_its_own_client(sync_engine: None) -> None:
    assert add.delay_sync(1, 1).get(timeout=10) == 2  # the parent's loop thread exists before the fork
    parent_loop = sync._loop_thread().loop
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: must not use (or wait on) the parent's loop thread, which does not exist here
        code = 1
        try:
            fresh = sync._loop_thread().loop is not parent_loop
            value = add.delay_sync(20, 1).get(timeout=10)
            os.write(write, f"{fresh} {value}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        reported = pipe.read()
    assert os.waitstatus_to_exitcode(status) == 0
    assert reported == "True 21"
    assert add.delay_sync(2, 2).get(timeout=10) == 4  # and the parent's client still works


def test_bad_arguments_raise_synchronously_naming_the_task(sync_engine: None) -> None:
    with pytest.raises(TypeError, match="demo.add"):
        add.delay_sync(1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"demo\.add.*bogus"):
        add.apply_async_sync((1, 2), bogus=True)
    with pytest.raises(ValueError, match=r"demo\.add.*priority"):
        add.apply_async_sync((1, 2), priority=42)
    with pytest.raises(TypeError, match="demo.echo_request"):
        echo_request.delay_sync(object())  # type: ignore[arg-type]


def test_a_script_exits_promptly_and_quietly(prefix: str, sync_client: sync_redis.Redis) -> None:
    """At exit the loop thread closes its client, even with a thread still blocked in get()."""
    script = f"""
import threading
from tasks_engine import configure
from tasks_engine.core.config import EngineSettings
from tasks_engine.testing import always_eager
from tests.sample_tasks import add, sleep
configure(EngineSettings(key_prefix={prefix!r}, beat_enabled=False))
print(add.delay_sync(1, 2).state)
waiting = sleep.delay_sync(60)   # no worker: this get() would wait a minute
threading.Thread(target=waiting.get, daemon=True).start()
"""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-X", "dev", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "PENDING"
    assert done.stderr == ""  # dev mode: no unclosed-resource warning, no "Task was destroyed", no traceback
    assert time.monotonic() - started < 15
    keys = list(sync_client.scan_iter(match=f"{{{prefix}}}:*", count=1000))
    if keys:
        sync_client.delete(*keys)


def test_always_eager_and_the_callers_context_reach_the_loop_thread(prefix: str, sync_client: sync_redis.Redis) -> None:
    """Context variables of the calling thread (here always_eager) travel with the call: no worker runs."""
    configure(EngineSettings(key_prefix=prefix, beat_enabled=False))
    try:
        with always_eager():
            result = add.delay_sync(2, 2)
            assert result.get(timeout=1) == 4 and result.state == states.SUCCESS
        with pytest.raises(TimeoutError):  # outside the block: sent to Redis, where no worker listens
            add.delay_sync(2, 2).get(timeout=0.2)
    finally:
        sync.shutdown()
        keys = list(sync_client.scan_iter(match=f"{{{prefix}}}:*", count=1000))
        if keys:
            sync_client.delete(*keys)


@pytest.mark.extended
def test_the_sync_benchmark_runs() -> None:
    """bench/sync_delay.py at tiny sizes (its figures are in bench/README.md)."""
    done = subprocess.run(
        [sys.executable, "bench/sync_delay.py", "--calls", "80", "--rounds", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("ratio sync/async") == 2
