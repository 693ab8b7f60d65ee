"""``python -m tasks_engine …`` is ``tasks-engine …``."""

from tasks_engine.cli.main import app

app(prog_name="tasks-engine")
