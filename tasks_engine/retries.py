"""Celery's retry arithmetic: exponential backoff with a cap, then full jitter."""

from __future__ import annotations

import random


def backoff_countdown(factor: int, retries: int, maximum: int, full_jitter: bool) -> int:
    """Seconds before retry number ``retries + 1``: ``min(maximum, factor * 2**retries)``, jittered.

    ``retries`` is the request's count of earlier retries (0 on the first failure). The cap applies
    before the jitter, so the jittered value is uniform over the integers ``0..capped``.
    """
    countdown = int(min(maximum, factor * 2 ** max(0, retries)))
    if full_jitter:
        countdown = random.randrange(countdown + 1)
    return max(0, countdown)


def backoff_factor(retry_backoff: bool | int) -> int:
    """``True`` means factor 1, an int is the factor itself (Celery: ``int(max(1.0, float(x)))``)."""
    return int(max(1.0, float(retry_backoff)))


def matches(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> bool:
    return bool(kinds) and isinstance(exc, kinds)
