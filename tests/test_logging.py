"""The engine's logging in a host application: it never writes to stdout and never takes over the
host's root logger; a worker (which owns its process) sets the root logger up unless told not to."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tasks_engine import send_task
from tests.conftest import ROOT, not_on_cluster, worker_env

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


def test_a_host_that_sets_up_logging_after_the_import_gets_each_engine_line_once():
    proc = run(f"""
        import logging, sys
        sys.path.insert(0, {str(ROOT)!r})
        import tasks_engine, structlog
        logging.basicConfig(stream=sys.stderr, format="HOST %(message)s")
        structlog.get_logger("tasks_engine.results").warning("once please")
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("once please") == 1, proc.stderr


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


LOGGING_APP = '''
"""A user's app whose tasks log: each event must come out once, in the chosen format, on stderr."""
import logging

import structlog

from tasks_engine import shared_task, worker_settings


@shared_task(name="logapp.warn")
async def warn(n: int) -> int:
    structlog.get_logger("logapp").warning("structlog warning from a task", n=n)
    logging.getLogger("logapp.std").warning("stdlib warning from a task %s", n)
    logging.getLogger("arq.jobs").warning("a warning on one of arq's own loggers")
    return n


@shared_task(name="logapp.fail", max_retries=0)
async def fail(n: int) -> int:
    raise ValueError(f"boom {n}")


WorkerSettings = worker_settings()

CUSTOM_LOG = {  # for arq's --custom-log-dict
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"custom": {"class": "logging.StreamHandler", "formatter": "custom"}},
    "formatters": {"custom": {"format": "CUSTOM %(message)s"}},
    "loggers": {"arq": {"handlers": ["custom"], "level": "INFO"}},
}
'''

EVENTS = ("structlog warning from a task", "stdlib warning from a task 1", "a warning on one of arq's own loggers",
          "task failed", "worker starting")  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("log_format", ["console", "json"])
@pytest.mark.parametrize("runner", ["tasks-engine", pytest.param("arq", marks=not_on_cluster)])
async def test_a_worker_prints_each_event_once_in_the_chosen_format_on_stderr(
    engine, prefix, tmp_path, sync_client, runner, log_format
):
    (tmp_path / "logapp.py").write_text(LOGGING_APP)
    if runner == "arq":
        argv = [sys.executable, "-m", "arq", "logapp.WorkerSettings"]
    else:
        argv = [sys.executable, "-m", "tasks_engine.cli", "worker", "-A", "logapp"]
    env = worker_env(prefix, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]), TE_LOG_FORMAT=log_format)
    with open(tmp_path / "out", "wb") as out, open(tmp_path / "err", "wb") as err:
        proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=out, stderr=err)
    try:
        assert await (await send_task("logapp.warn", [1])).get(timeout=20) == 1
        with pytest.raises(ValueError, match="boom 2"):
            await (await send_task("logapp.fail", [2])).get(timeout=20)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        for key in sync_client.scan_iter(f"{{{prefix}}}:*"):
            sync_client.delete(key)
    assert (tmp_path / "out").read_text() == ""  # engine lines never on stdout
    lines = (tmp_path / "err").read_text().splitlines()
    for event in EVENTS:
        assert sum(event in line for line in lines) == 1, (event, lines)
    if log_format == "json":
        for line in lines:
            json.loads(line)  # every line, arq's own included
    else:
        assert not any(line.startswith("{") for line in lines), lines


@not_on_cluster
async def test_arq_custom_log_dict_is_left_to_the_user(engine, prefix, tmp_path, sync_client):
    (tmp_path / "logapp.py").write_text(LOGGING_APP)
    argv = [sys.executable, "-m", "arq", "logapp.WorkerSettings", "--custom-log-dict", "logapp.CUSTOM_LOG"]
    env = worker_env(prefix, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert await (await send_task("logapp.warn", [1])).get(timeout=20) == 1
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
        for key in sync_client.scan_iter(f"{{{prefix}}}:*"):
            sync_client.delete(key)
    lines = err.decode().splitlines()
    assert any(line.startswith("CUSTOM Starting worker") for line in lines), lines  # arq's own line, its way
    assert sum("a warning on one of arq's own loggers" in line for line in lines) == 1, lines
