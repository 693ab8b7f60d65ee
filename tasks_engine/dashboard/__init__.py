"""The web dashboard: what Flower showed on port 5555, for this engine (``tasks-engine dashboard``).

It reads and acts only through ``ops`` (control, metrics) and below, never the worker runtime, and
only ``cli`` imports it. Its dependencies are the ``dashboard`` extra (Starlette, uvicorn, Jinja2), so
the package imports them only in :mod:`tasks_engine.dashboard.app`; importing this package costs nothing.
"""

from __future__ import annotations

from typing import Any


def main(*args: Any, **kwargs: Any) -> None:
    """See :func:`tasks_engine.dashboard.app.main`."""
    from tasks_engine.dashboard.app import main as serve

    serve(*args, **kwargs)
