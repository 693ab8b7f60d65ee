"""Task ids: random for new calls, derived for steps that must get the same id when planned again."""

from __future__ import annotations

import os
import threading
import uuid
from typing import Any

_POOL_IDS = 256  # ids' worth of random bytes read from the OS at once (one getrandom call, not 256)
_pool = bytearray()
_pool_lock = threading.Lock()


def _forget_pool() -> None:
    global _pool_lock
    _pool_lock = threading.Lock()  # a thread of the parent may have held it at the fork
    _pool.clear()  # a forked child must not hand out the ids its parent will


os.register_at_fork(after_in_child=_forget_pool)


def new_id() -> str:
    """A random (version 4) UUID as text, as ``str(uuid.uuid4())`` gives, without the UUID object:
    every ``delay()`` makes one. The bytes are ``os.urandom``'s, read ahead for a few hundred ids."""
    with _pool_lock:  # threads (sync tasks, the blocking API) must never take the same bytes
        if not _pool:
            _pool.extend(os.urandom(16 * _POOL_IDS))
        raw = _pool[-16:]
        del _pool[-16:]
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
