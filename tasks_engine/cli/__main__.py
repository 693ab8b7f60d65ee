"""``python -m tasks_engine.cli …`` (the path before the subpackages) is ``tasks-engine …`` too."""

from tasks_engine.cli.main import app

app(prog_name="tasks-engine")
