"""The engine's logging in a host application: it never writes to stdout and never takes over the
host's root logger; a worker (which owns its process) sets the root logger up unless told not to."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import ROOT

CLIENT = """
import logging, sys
sys.path.insert(0, {root!r})
import tasks_engine
from tasks_engine.store import get_broker  # noqa: F401
import structlog
structlog.get_logger("tasks_engine.results").warning("engine warning from a client", detail=1)
print("the host's own output")
"""


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=30, check=False, cwd=ROOT)  # fmt: skip


def test_client_process_engine_lines_go_to_stderr_not_stdout():
    proc = run(CLIENT.format(root=str(ROOT)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "the host's own output\n"
    assert "engine warning from a client" in proc.stderr


def test_host_root_handlers_are_kept_and_receive_engine_lines():
    proc = run(f"""
        import logging, sys, io
        sys.path.insert(0, {str(ROOT)!r})
        captured = io.StringIO()
        logging.basicConfig(stream=captured, level=logging.INFO, format="HOST %(name)s %(message)s")
        root_handlers = list(logging.getLogger().handlers)
        import tasks_engine, structlog
        structlog.get_logger("tasks_engine.results").warning("seen by the host")
        assert logging.getLogger().handlers == root_handlers, "the engine replaced the host's handlers"
        print(captured.getvalue())
    """)
    assert proc.returncode == 0, proc.stderr
    assert "HOST tasks_engine.results" in proc.stdout and "seen by the host" in proc.stdout


def test_configure_logging_without_the_root_logger_leaves_the_host_alone():
    proc = run(f"""
        import logging, sys, io
        sys.path.insert(0, {str(ROOT)!r})
        logging.basicConfig(stream=io.StringIO(), level=logging.INFO)
        before = list(logging.getLogger().handlers)
        from tasks_engine import configure, EngineSettings
        from tasks_engine.core.logs import configure_logging
        configure_logging(configure(EngineSettings(log_configure_root=False)))
        assert logging.getLogger().handlers == before
        assert logging.getLogger("tasks_engine").handlers and not logging.getLogger("tasks_engine").propagate
        configure_logging(configure(EngineSettings(log_configure_root=True)))
        assert logging.getLogger().handlers != before  # a worker owns its process
        print("ok")
    """)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
