"""Celery's retry arithmetic: exponential backoff with a cap, then full jitter."""

from __future__ import annotations

import random


def backoff_countdown(factor: int, retries: int, maximum: int, full_jitter: bool) -> int:
    """Seconds before retry number ``retries + 1``: ``min(maximum, factor * 2**retries)``, jittered.

    ``retries`` is the request's count of earlier retries (0 on the first failure). The cap applies
    before the jitter, so the jittered value is uniform over the integers ``0..capped``; a negative
    cap gives 0 (Celery clamps the same way).
    """
    countdown = int(min(maximum, factor * 2 ** max(0, retries)))
    if full_jitter:
        countdown = random.randrange(countdown + 1) if countdown >= 0 else 0
    return max(0, countdown)


def backoff_factor(retry_backoff: bool | float) -> int:
    """The whole-number factor of ``retry_backoff`` as Celery applies it: ``int(max(1.0, float(x)))``.

    ``True`` is 1; a float is floored after the ``max`` (0.1 and 1.9 → 1, 2.5 → 2); any number below 1
    (negative included) is 1. A false value (``False``, 0, 0.0) means no backoff and is not passed here.
    """
    return int(max(1.0, float(retry_backoff)))


def matches(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> bool:
    return bool(kinds) and isinstance(exc, kinds)
