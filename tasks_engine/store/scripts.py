"""The engine's Lua scripts, kept as package data in ``store/lua/``.

Every script gets ``keys.lua`` (the names of its declared ``KEYS``) put in front of it, and a script
whose first line is ``-- uses: lib`` gets ``lib.lua`` (the shared helpers) too, so each is written once
and every script runs it the same way.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

_LIB_MARK = "-- uses: lib"


@cache
def _source(name: str) -> str:
    return resources.files("tasks_engine.store").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


@cache
def lua(name: str) -> str:
    """The source of ``lua/<name>.lua`` as loaded: the key names, the library when it asks for it."""
    text = _source(name)
    if text.startswith(_LIB_MARK):
        text = _source("lib") + text[len(_LIB_MARK) :]
    return _source("keys") + text


SCRIPTS = (
    "enqueue",
    "claim",
    "requeue",
    "revoke",
    "chord_part",
    "beat_tick",
    "replan_rate_limit",
    "sweep_orphans",
    "purge",
    "complete",
    "renew",
    "quarantine",
    "dead_requeue",
    "plan",
    "idle_leave",
    "celery_claim",
    "celery_accept",
    "celery_restore",
    "celery_result",
)
