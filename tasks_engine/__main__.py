"""``python -m tasks_engine …`` is ``tasks-engine …``."""

from tasks_engine.cli import app

app(prog_name="tasks-engine")
