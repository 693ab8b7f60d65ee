"""The public surface of ``tasks_engine``: what user code imports, by name and by kind."""

from __future__ import annotations

import inspect
import types

import tasks_engine
from tasks_engine import canvas, exceptions, results, schedules, task

EXPECTED = {
    "AsyncResult": (type, results.AsyncResult),
    "ChordError": (type, exceptions.ChordError),
    "EagerResult": (type, results.EagerResult),
    "EngineSettings": (type, None),
    "GroupResult": (type, results.GroupResult),
    "MaxRetriesExceededError": (type, exceptions.MaxRetriesExceededError),
    "NotRegistered": (type, exceptions.NotRegistered),
    "Retry": (type, exceptions.Retry),
    "Signature": (type, canvas.Signature),
    "SoftTimeLimitExceeded": (type, exceptions.SoftTimeLimitExceeded),
    "Task": (type, task.Task),
    "TaskError": (type, exceptions.TaskError),
    "TaskRevokedError": (type, exceptions.TaskRevokedError),
    "TimeLimitExceeded": (type, exceptions.TimeLimitExceeded),
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
    from tasks_engine.registry import registry

    for name in ("tasks_engine.starmap", "tasks_engine.collect", "tasks_engine.chord_unwind"):
        assert name in registry  # registered by importing tasks_engine alone


def test_old_import_paths_of_the_public_modules_still_work() -> None:
    from tasks_engine.beat import configure_beat, periodic
    from tasks_engine.canvas import Signature, chain, chord, group, signature
    from tasks_engine.results import AsyncResult, GroupResult
    from tasks_engine.task import Task, shared_task

    assert all(
        (
            configure_beat,
            periodic,
            Signature,
            chain,
            chord,
            group,
            signature,
            AsyncResult,
            GroupResult,
            Task,
            shared_task,
        )
    )
