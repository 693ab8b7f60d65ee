"""Every code example of the documentation site runs, against a real Redis and a real worker.

The pages include these files (``docs/examples/*.py``, pymdownx.snippets), so an example that stops
working fails here before a reader finds out. Getting started runs as the page says: a
``tasks-engine worker -A getting_started`` process and ``python getting_started.py`` beside it; the
Celery migration likewise: an unchanged Celery producer (``celery_app.py``) served by a ``celery worker``,
then also by a ``tasks-engine worker -A migrating`` consuming Celery's queues, then by it alone, and a
moved producer (``migrating.py``).
The others run their ``main()`` against a worker in this test's loop; ``testing.py`` is run by
pytest itself, with the plugin's ``tasks_engine_worker`` fixture.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tasks_engine import EngineSettings, configure
from tests.conftest import ROOT, running_worker, worker_env

EXAMPLES = ROOT / "docs" / "examples"
WITH_WORKER = ["front_page", "options", "calling", "results", "retries", "time_limits", "rate_limits", "canvas",
               "periodic", "idempotency", "service", "sync_calls"]  # fmt: skip
_loaded: dict[str, ModuleType] = {}


def example(name: str) -> ModuleType:
    """Import ``docs/examples/<name>.py`` once (its tasks register by name, like any app module)."""
    if name not in _loaded:
        spec = importlib.util.spec_from_file_location(f"docs_examples.{name}", EXAMPLES / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        _loaded[name] = module
    return _loaded[name]


@pytest.fixture(scope="module", autouse=True)
def _forget_the_example_schedule() -> Iterator[None]:
    """periodic.py's entries must not fire in later tests' in-process beat."""
    yield
    from tasks_engine.client import beat

    for name in ("nightly-cleanup", "every-ten-minutes"):
        beat.entries.pop(name, None)


def test_every_example_file_is_run_by_a_test() -> None:
    files = {p.stem for p in EXAMPLES.glob("*.py")}
    assert files == {*WITH_WORKER, "getting_started", "testing", "celery_app", "migrating"}, (
        "add the new example to this module"
    )


@pytest.mark.parametrize("name", WITH_WORKER)
async def test_example_runs_against_a_real_worker(name: str, engine: EngineSettings) -> None:
    module = example(name)
    hooks = {"on_startup": module.on_startup, "on_shutdown": module.on_shutdown} if name == "service" else {}
    async with running_worker(**hooks):
        await module.main()


async def test_service_example_tasks_see_what_on_startup_made(engine: EngineSettings) -> None:
    module = example("service")
    async with running_worker(on_startup=module.on_startup, on_shutdown=module.on_shutdown):
        assert await (await module.sync_user.delay(1)).get(timeout=10) == "user 1 synced via the pool"


def test_periodic_example_registers_its_entries() -> None:
    from tasks_engine.client import beat

    example("periodic")
    names = {entry["name"] for entry in beat.view()}
    assert {"nightly-cleanup", "every-ten-minutes"} <= names


def test_testing_examples_pass_under_pytest() -> None:
    """As a user runs them: pytest with the plugin the package registers (the real-worker fixture)."""
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLES / "testing.py")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 passed" in run.stdout, run.stdout


def test_getting_started_as_the_page_says(prefix: str, sync_client) -> None:  # type: ignore[no-untyped-def]
    env = worker_env(prefix)
    worker = subprocess.Popen(
        [sys.executable, "-m", "tasks_engine.cli", "worker", "-A", "getting_started"],
        cwd=EXAMPLES, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not list(sync_client.scan_iter(f"{{{prefix}}}:worker:*")):
            assert worker.poll() is None, worker.stderr.read().decode() if worker.stderr else ""
            assert time.monotonic() < deadline, "the worker never announced itself"
            time.sleep(0.1)
        sent = subprocess.run(
            [sys.executable, "getting_started.py"], cwd=EXAMPLES, env=env, capture_output=True, text=True, timeout=30
        )
        assert sent.returncode == 0, sent.stderr
        lines = sent.stdout.splitlines()
        assert lines[0].startswith("sent ") and lines[1:] == ["5", "SUCCESS"], sent.stdout
    finally:
        worker.terminate()
        worker.wait(15)
    configure(EngineSettings())


def wait_for_worker(worker: subprocess.Popen[bytes], sync_client, prefix: str, log: Path) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 20
    while not list(sync_client.scan_iter(f"{{{prefix}}}:worker:*")):
        assert worker.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.1)


def run_example(script: str, env: dict[str, str]) -> list[str]:
    sent = subprocess.run([sys.executable, script], cwd=EXAMPLES, env=env, capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0, f"{script}: {sent.stderr[-2000:]}"
    return sent.stdout.splitlines()


def test_celery_migration_as_the_page_says(prefix: str, sync_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The page's steps with real processes: today a ``celery worker -A celery_app`` serves the unchanged
    producer; step 2 adds a tasks_engine worker on the same queues (the producer's results read the same);
    step 4 stops the Celery worker: the tasks_engine worker alone serves the Celery producer, and the moved
    producer of step 3 (``migrating.py``, native jobs) too."""
    celery_prefix = f"{prefix}-celery-"
    env = worker_env(
        prefix,
        CELERY_KEY_PREFIX=celery_prefix,  # the Celery app's global_keyprefix, and the worker's settings for it
        TE_CELERY_TRANSPORT_PREFIX=celery_prefix,
        TE_CELERY_RESULT_PREFIX=celery_prefix,
        TE_CELERY_QUEUES="celery,admin",
        TE_CELERY_VISIBILITY_TIMEOUT=7200,
    )
    expected = ["success", "{'processed': 2}", "SUCCESS"]
    celery_log, engine_log = tmp_path / "celery.log", tmp_path / "engine.log"
    with celery_log.open("wb") as out:
        celery = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "--pool", "solo", "-Q", "celery,admin",
             "-n", f"{prefix}@%h", "--without-mingle", "--without-gossip", "--without-heartbeat", "-l", "INFO"],
            cwd=EXAMPLES, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    engine: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + 30
        while b" ready." not in celery_log.read_bytes():
            assert celery.poll() is None and time.monotonic() < deadline, celery_log.read_text()[-2000:]
            time.sleep(0.1)
        assert run_example("celery_app.py", env) == expected  # today: only Celery's worker serves the queues
        assert celery_log.read_text().count("succeeded in") == 2, celery_log.read_text()[-2000:]
        with engine_log.open("wb") as out:
            engine = subprocess.Popen(
                [sys.executable, "-m", "tasks_engine.cli", "worker", "-A", "migrating", "-Q", "default,admin"],
                cwd=EXAMPLES, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        wait_for_worker(engine, sync_client, prefix, engine_log)
        assert run_example("celery_app.py", env) == expected  # step 2: either worker takes each message
        celery.terminate()  # step 4: a warm shutdown of the Celery worker
        assert celery.wait(30) == 0, celery_log.read_text()[-2000:]
        assert run_example("celery_app.py", env) == expected  # the tasks_engine worker alone
        assert run_example("migrating.py", env) == expected  # step 3's moved producer: native jobs
        assert sync_client.llen(f"{celery_prefix}celery") == 0 and sync_client.llen(f"{celery_prefix}admin") == 0
        assert not sync_client.hlen(f"{celery_prefix}unacked"), "a Celery message was never acknowledged"
    finally:
        for proc in (engine, celery):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(15)
        keys = list(sync_client.scan_iter(match=f"{celery_prefix}*", count=1000))
        if keys:
            sync_client.delete(*keys)
    configure(EngineSettings())
