"""The public surface of ``tasks_engine``: what user code imports, by name and by kind, from the same
paths as before the subpackages, and the entry points users start it by."""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import re
import subprocess
import sys
import types
from importlib import metadata
from pathlib import Path

import pytest

import tasks_engine
from tasks_engine import exceptions
from tasks_engine.client import beat as client_beat
from tasks_engine.client import canvas, celery_task, results, sync, task
from tasks_engine.core import legacy_paths
from tasks_engine.model import schedules
from tasks_engine.runtime import worker as runtime_worker

ROOT = Path(__file__).resolve().parent.parent

EXPECTED = {
    "AsyncResult": (type, results.AsyncResult),
    "CeleryResult": (type, celery_task.CeleryResult),
    "CeleryTask": (type, celery_task.CeleryTask),
    "ChordError": (type, exceptions.ChordError),
    "EagerResult": (type, results.EagerResult),
    "EngineSettings": (type, None),
    "GroupResult": (type, results.GroupResult),
    "MaxRetriesExceededError": (type, exceptions.MaxRetriesExceededError),
    "NotRegistered": (type, exceptions.NotRegistered),
    "Retry": (type, exceptions.Retry),
    "Signature": (type, canvas.Signature),
    "SoftTimeLimitExceeded": (type, exceptions.SoftTimeLimitExceeded),
    "SyncGroupResult": (type, sync.SyncGroupResult),
    "SyncResult": (type, sync.SyncResult),
    "Task": (type, task.Task),
    "TaskError": (type, exceptions.TaskError),
    "TaskRevokedError": (type, exceptions.TaskRevokedError),
    "TimeLimitExceeded": (type, exceptions.TimeLimitExceeded),
    "celery_task": ("function", celery_task.celery_task),
    "chain": ("function", canvas.chain),
    "chord": ("function", canvas.chord),
    "configure": ("function", None),
    "configure_beat": ("function", None),
    "EngineConnectionError": (type, exceptions.EngineConnectionError),
    "worker_context": ("function", None),
    "crontab": (type, schedules.crontab),
    "get_settings": ("function", None),
    "group": (type, canvas.group),
    "send_task": ("coroutine function", None),
    "send_task_sync": ("function", None),
    "shared_task": ("function", task.shared_task),
    "signature": ("function", canvas.signature),
    "states": ("module", None),
    "worker_settings": ("function", None),
}


def kind(value: object) -> object:
    if isinstance(value, types.ModuleType):
        return "module"
    if inspect.iscoroutinefunction(value):
        return "coroutine function"
    if inspect.isfunction(value):
        return "function"
    return type if isinstance(value, type) else repr(type(value))


def test_all_is_exactly_the_public_surface() -> None:
    assert sorted(tasks_engine.__all__) == sorted(EXPECTED)


def test_each_public_name_is_what_it_was() -> None:
    for name, (expected_kind, same_as) in EXPECTED.items():
        value = getattr(tasks_engine, name)
        assert kind(value) == expected_kind, name
        if same_as is not None:
            assert value is same_as, name


def test_exceptions_keep_their_stored_module_and_celery_bases() -> None:
    # Result records name the exception by module and class: moving one would break stored records.
    for name in (
        "ChordError",
        "MaxRetriesExceededError",
        "NotRegistered",
        "Retry",
        "SoftTimeLimitExceeded",
        "TaskError",
        "TaskRevokedError",
        "TimeLimitExceeded",
    ):
        assert getattr(tasks_engine, name).__module__ == "tasks_engine.exceptions"
    assert issubclass(tasks_engine.NotRegistered, KeyError)


def test_engine_task_names_are_stable() -> None:
    from tasks_engine.model.registry import registry

    for name in ("tasks_engine.starmap", "tasks_engine.collect", "tasks_engine.chord_unwind"):
        assert name in registry  # registered by importing tasks_engine alone


def test_old_import_paths_of_the_public_modules_still_work() -> None:
    from tasks_engine.beat import configure_beat, periodic
    from tasks_engine.canvas import Signature, chain, chord, group, signature
    from tasks_engine.config import EngineSettings, get_settings
    from tasks_engine.results import AsyncResult, GroupResult
    from tasks_engine.task import Task, shared_task
    from tasks_engine.worker import Worker

    assert configure_beat is tasks_engine.configure_beat and periodic is client_beat.periodic
    assert (Signature, chain, chord, group, signature) == (
        canvas.Signature, canvas.chain, canvas.chord, canvas.group, canvas.signature
    )  # fmt: skip
    assert EngineSettings is tasks_engine.EngineSettings and get_settings is tasks_engine.get_settings
    assert (AsyncResult, GroupResult, Task, shared_task) == (
        results.AsyncResult, results.GroupResult, task.Task, task.shared_task
    )  # fmt: skip
    assert Worker is runtime_worker.Worker


def test_every_old_module_path_is_the_moved_module_itself() -> None:
    for old, new in legacy_paths.MOVED.items():
        assert importlib.import_module(f"tasks_engine.{old}") is importlib.import_module(f"tasks_engine.{new}"), old


def import_lines(path: Path) -> list[str]:
    """Every ``import``/``from`` statement naming tasks_engine in a Python file or a README code block."""
    text = path.read_text()
    if path.suffix == ".md":
        text = "\n".join(re.findall(r"```python\n(.*?)```", text, re.S))
    tree = ast.parse(text)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tasks_engine"):
            found.append(f"from {node.module} import {', '.join(a.name for a in node.names)}")
        elif isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.startswith("tasks_engine")]
    return found


USER_FILES = ["README.md", "settings.py", *(f"examples/{p.name}" for p in (ROOT / "examples").glob("*.py")),
              *(f"jobs/{p.name}" for p in (ROOT / "jobs").glob("*.py"))]  # fmt: skip


def test_what_the_readme_examples_jobs_and_settings_import_still_imports_without_a_warning() -> None:
    lines = sorted({line for name in USER_FILES for line in import_lines(ROOT / name)})
    assert len(lines) > 10  # the scan found them
    code = "\n".join(lines)
    subprocess.run([sys.executable, "-W", "error", "-c", code], cwd=ROOT, check=True, timeout=60)


@pytest.mark.parametrize(
    "argv",
    [
        ["tasks-engine", "--version"],
        [sys.executable, "-m", "tasks_engine", "--version"],
        [sys.executable, "-m", "tasks_engine.cli", "--version"],
        [sys.executable, "-m", "tasks_engine.dashboard", "--help"],
        [sys.executable, "-c", "import settings; print(settings.WorkerSettings.functions)"],
    ],
    ids=["console-script", "python-m", "python-m-cli", "python-m-dashboard", "arq-settings"],
)
def test_entry_points_start_without_a_warning(argv: list[str]) -> None:
    if argv[0] == "tasks-engine":
        argv = [str(Path(sys.executable).with_name("tasks-engine")), *argv[1:]]
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr, proc.stderr
    assert proc.stdout.strip()


def test_the_pytest_plugin_is_registered_under_its_path() -> None:
    entry = [e for e in metadata.entry_points(group="pytest11") if e.name == "tasks_engine"]
    assert [e.value for e in entry] == ["tasks_engine.testing"]
    plugin = entry[0].load()
    assert callable(plugin.tasks_engine_worker) and callable(plugin.tasks_engine_eager)
