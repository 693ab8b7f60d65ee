"""Task ids: random for new calls, derived for steps that must get the same id when planned again."""

from __future__ import annotations

import uuid
from typing import Any


def new_id() -> str:
    return str(uuid.uuid4())


def derived_id(base: str, tag: str) -> str:
    """A stable id computed from another: re-planning the same step (a re-delivered parent) gives the same id."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"tasks-engine:{base}:{tag}"))


def own_id(options: dict[str, Any]) -> str:
    """The call's task id (``options["task_id"]``), assigned now if it has none (never overwritten)."""
    task_id = options.get("task_id")
    if task_id is None:
        task_id = options["task_id"] = new_id()
    return str(task_id)
