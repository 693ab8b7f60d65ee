"""Wall-clock helpers in the units the store uses, and one backoff policy for every retry loop."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime


def now_ms() -> int:
    return int(time.time() * 1000)


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def ms_to_iso(value: object) -> str | None:
    if value is None or value == "":
        return None
    return datetime.fromtimestamp(int(str(value)) / 1000, UTC).isoformat()


@dataclass
class Backoff:
    """Exponential backoff: ``first``, doubling up to ``maximum``; ``reset()`` after a success."""

    first: float = 0.1
    maximum: float = 5.0
    current: float = 0.0

    def next(self) -> float:
        self.current = self.first if self.current == 0 else min(self.current * 2, self.maximum)
        return self.current

    def reset(self) -> None:
        self.current = 0.0

    @property
    def failing(self) -> bool:
        """True after a ``next()`` without a ``reset()`` since."""
        return self.current != 0
