"""The ``tasks-engine`` command (``main``: worker, beat, dashboard, metrics, demo) and its operations
subcommands (``ops``).

The top layer: it may import every other subpackage, and nothing imports it but ``tasks_engine.__main__``.
"""

from tasks_engine.cli.main import app  # the console script's entry point, `tasks_engine.cli:app` as before

__all__ = ["app"]
