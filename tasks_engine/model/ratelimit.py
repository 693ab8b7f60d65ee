"""Celery's rate-limit grammar (``"10/m"``) and the form the claim script applies it in."""

from __future__ import annotations

import math
import re
from typing import NamedTuple

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*([smh]))?\s*$")
_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}


class RateLimit(NamedTuple):
    """``count`` starts per ``period`` seconds across the whole cluster, ``burst`` at once."""

    count: float  # type: ignore[assignment]  # shadows tuple.count(); the name reads best here
    period: float
    burst: int = 1

    @property
    def emission_ms(self) -> int:
        return max(1, round(self.period * 1000 / self.count))

    def lua_value(self) -> list[int]:
        """(emission interval, burst tolerance) in ms, as the claim script expects."""
        return [self.emission_ms, self.emission_ms * max(0, self.burst - 1)]


def parse_rate_limit(value: str | float | None, burst: int = 1) -> RateLimit | None:
    """Celery's grammar: ``"10/m"``, ``"100/s"``, ``"1000/h"``, a plain number = per second, 0/None = off."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"invalid rate limit {value!r}")
    if isinstance(value, int | float):
        if value < 0 or not math.isfinite(value):
            raise ValueError(f"invalid rate limit {value!r}: must be a finite number, not negative")
        return RateLimit(float(value), 1.0, burst) if value else None
    match = _RATE.match(value)
    if not match:
        raise ValueError(f"invalid rate limit {value!r}: expected N, 'N/s', 'N/m' or 'N/h'")
    count = float(match.group(1))
    if count == 0:
        return None
    return RateLimit(count, _PERIODS[match.group(2) or "s"], burst)
