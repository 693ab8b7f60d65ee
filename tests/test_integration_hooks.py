"""A user's own app, outside the package: worker start-up/shutdown hooks and the worker context,
under ``tasks-engine worker -A app`` and under ``arq app.WorkerSettings``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tasks_engine import worker_settings
from tasks_engine.exceptions import TaskDefinitionError
from tests.conftest import ROOT, worker_env

pytestmark = pytest.mark.slow

APP = '''
"""A user's app: a resource created on the worker's loop at start-up, closed after the last job."""
import asyncio
import os
from pathlib import Path

from tasks_engine import shared_task, worker_context, worker_settings

MARKS = Path(os.environ["HOOK_MARKS"])


async def on_startup(ctx):
    ctx["pool"] = {"greeting": "hello from the pool", "loop": id(asyncio.get_running_loop())}
    MARKS.joinpath("started").write_text("1")


def on_shutdown(ctx):  # sync hooks work too
    MARKS.joinpath("stopped").write_text(ctx["pool"]["greeting"])


@shared_task(name="userapp.greet")
async def greet(name: str) -> str:
    pool = worker_context()["pool"]
    assert pool["loop"] == id(asyncio.get_running_loop())  # created on the worker's own loop
    return f"{pool['greeting']}, {name}"


@shared_task(name="userapp.greet_bound", bind=True)
def greet_bound(self, name: str) -> str:  # a def task (thread pool) reaches it too
    return f"{self.worker_ctx['pool']['greeting']}, {name}"


WorkerSettings = worker_settings(on_startup=on_startup, on_shutdown=on_shutdown)
'''


@pytest.fixture
def user_app(tmp_path: Path) -> Path:
    app_dir = tmp_path / "userapp"
    app_dir.mkdir()
    (app_dir / "userapp.py").write_text(textwrap.dedent(APP))
    (tmp_path / "marks").mkdir()
    return app_dir


def _env(prefix: str, app_dir: Path) -> dict[str, str]:
    path = os.pathsep.join([str(app_dir), str(ROOT)])
    return worker_env(prefix, PYTHONPATH=path, HOOK_MARKS=str(app_dir.parent / "marks"))


async def _call(prefix: str, app_dir: Path, *names: str) -> list[str]:
    sys.path.insert(0, str(app_dir))
    try:
        os.environ["HOOK_MARKS"] = str(app_dir.parent / "marks")
        import userapp  # noqa: F401 - the client side registers the same tasks

        from tasks_engine import send_task

        results = [await send_task(name, ["ada"]) for name in names]
        return [await r.get(timeout=20) for r in results]
    finally:
        sys.path.remove(str(app_dir))


@pytest.mark.parametrize("runner", ["tasks-engine", "arq"])
async def test_hooks_run_in_addition_to_the_engine_and_tasks_see_the_context(
    engine, prefix, user_app, sync_client, runner
):
    if runner == "arq":
        argv = [sys.executable, "-m", "arq", "userapp.WorkerSettings"]
    else:
        argv = [sys.executable, "-m", "tasks_engine.cli", "worker", "-A", "userapp"]
    proc = subprocess.Popen(argv, cwd=user_app, env=_env(prefix, user_app), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)  # fmt: skip
    marks = user_app.parent / "marks"
    try:
        deadline = time.monotonic() + 30
        while not (marks / "started").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()[-3000:]  # type: ignore[union-attr]
            time.sleep(0.1)
        assert await _call(prefix, user_app, "userapp.greet", "userapp.greet_bound") == [
            "hello from the pool, ada",
            "hello from the pool, ada",
        ]
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out.decode()[-3000:]
    assert (marks / "stopped").read_text() == "hello from the pool"  # after the last job drained
    for key in sync_client.scan_iter(f"{{{prefix}}}:*"):
        sync_client.delete(key)


@pytest.mark.parametrize("setting", ["functions", "queue_name", "job_serializer", "startup"])
def test_arq_settings_that_would_break_the_engine_are_refused(setting):
    with pytest.raises(TaskDefinitionError, match=f"{setting} cannot be set"):
        worker_settings(**{setting: object()})


def test_worker_without_an_app_says_so(tmp_path, prefix):
    proc = subprocess.run([sys.executable, "-m", "tasks_engine.cli", "worker"], cwd=tmp_path,
                          env={**worker_env(prefix), "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=30, check=False)  # fmt: skip
    assert proc.returncode == 2 and "no app found" in proc.stderr


def test_worker_context_outside_a_worker_is_a_clear_error():
    from tasks_engine import worker_context

    with pytest.raises(RuntimeError, match="only available inside a task run by a worker"):
        worker_context()
