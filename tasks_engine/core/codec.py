"""JSON for everything the engine stores: orjson, refusing values JSON cannot carry (NaN, ±Infinity)."""

from __future__ import annotations

import math
from typing import Any

import orjson


def non_finite_path(value: Any, path: str) -> str | None:
    """Where in ``value`` a NaN/Infinity float sits (``path[1]['k']``), or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = non_finite_path(item, f"{path}[{key!r}]")
        if found is not None:
            return found
    return None


def dumps(value: Any) -> bytes:
    """JSON for results and metadata; raises ``TypeError`` for values JSON cannot carry (NaN included)."""
    out = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    if b"null" in out:  # orjson writes NaN/Infinity as null: look closer only then
        found = non_finite_path(value, "value")
        if found is not None:
            raise TypeError(f"{found} is NaN or Infinity, which JSON cannot carry")
    return out


def loads(raw: bytes | str | None) -> Any:
    return None if raw is None or raw == b"" or raw == "" else orjson.loads(raw)
