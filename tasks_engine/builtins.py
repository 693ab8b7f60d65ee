"""Tasks the engine itself needs (``chunks`` runs a starmap over one chunk inside a worker)."""

from __future__ import annotations

from typing import Any

from tasks_engine.task import get_task, shared_task


@shared_task(name="tasks_engine.starmap")
async def starmap(task_name: str, items: list[list[Any]]) -> list[Any]:
    """Call ``task_name`` once per argument list, in this worker, and return the results in order."""
    task = get_task(task_name)
    return [await task(*args) for args in items]
