"""The engine's Lua scripts, kept as package data in ``store/lua/``.

A script whose first line is ``-- uses: lib`` gets ``lib.lua`` (the shared enqueue helper) put in
front of it when loaded, so the helper is written once and every script runs it the same way.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

_LIB_MARK = "-- uses: lib"


@cache
def lua(name: str) -> str:
    """The source of ``lua/<name>.lua``, with the shared library prepended when it asks for it."""
    text = resources.files("tasks_engine.store").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")
    if text.startswith(_LIB_MARK):
        return lua("lib") + text[len(_LIB_MARK) :]
    return text


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
)
