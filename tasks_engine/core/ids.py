"""Task ids: random for new calls, derived for steps that must get the same id when planned again."""

from __future__ import annotations

import os
import uuid
from typing import Any


def new_id() -> str:
    """A random (version 4) UUID as text, as ``str(uuid.uuid4())`` gives, without the UUID object:
    every ``delay()`` makes one."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def derived_id(base: str, tag: str) -> str:
    """A stable id computed from another: re-planning the same step (a re-delivered parent) gives the same id."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"tasks-engine:{base}:{tag}"))


def own_id(options: dict[str, Any]) -> str:
    """The call's task id (``options["task_id"]``), assigned now if it has none (never overwritten)."""
    task_id = options.get("task_id")
    if task_id is None:
        task_id = options["task_id"] = new_id()
    return str(task_id)
