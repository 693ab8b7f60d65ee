"""Checks at the boundary (a call, a retry): names and numbers the store and its scripts can carry.

Each error names the task and the field, so a bad call fails in the caller with a sentence, not
later in a worker (or, worse, in a Lua script that every worker runs).
"""

from __future__ import annotations

import math
import re
from typing import Any

MAX_NAME = 256
MAX_SECONDS = 10 * 366 * 86_400.0  # ten years: further than any countdown or expiry makes sense
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_name(task: str, field: str, value: Any, forbidden: str = "") -> str:
    """A queue name, task name or id: a non-empty string without control characters (nor ``forbidden``)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"task {task!r}: {field} must be a non-empty string, got {value!r}")
    if len(value) > MAX_NAME:
        raise ValueError(f"task {task!r}: {field} is {len(value)} characters long, over {MAX_NAME}")
    bad = _CONTROL.search(value) or next((c for c in forbidden if c in value), None)
    if bad:
        char = bad.group() if isinstance(bad, re.Match) else bad
        raise ValueError(f"task {task!r}: {field} {value!r} must not contain {char!r}")
    return value


#: Task and queue names already accepted (an app has a few, checked on every send); bounded.
_accepted: set[tuple[str, str]] = set()


def _remember(kind: str, value: str) -> str:
    if len(_accepted) >= 4096:
        _accepted.clear()
    _accepted.add((kind, value))
    return value


def check_queue(task: str, value: Any) -> str:
    # '|' separates the queue from the score in the store's bookkeeping.
    if isinstance(value, str) and ("queue", value) in _accepted:
        return value
    return _remember("queue", check_name(task, "queue", value, forbidden="|"))


def check_task_name(value: Any) -> str:
    # A quote or backslash would be escaped in the JSON message, where Lua reads the name back.
    if isinstance(value, str) and ("name", value) in _accepted:
        return value
    return _remember("name", check_name(str(value), "name", value, forbidden='"\\'))


def check_seconds(task: str, field: str, value: Any, allow_negative: bool = True) -> float:
    """A number of seconds: an int or float (not a bool), finite, at most ten years."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"task {task!r}: {field} must be a number of seconds, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"task {task!r}: {field} must be a finite number of seconds, got {value!r}")
    if abs(number) > MAX_SECONDS or (number < 0 and not allow_negative):
        raise ValueError(f"task {task!r}: {field}={value!r} is out of range (0 to {MAX_SECONDS:.0f} seconds)")
    return number


def check_count(task: str, field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"task {task!r}: {field} must be a whole number >= 0, got {value!r}")
    return value
