"""A worker under a tracer (coverage.py here; a debugger or profiler likewise) keeps running sync
tasks. Each sync task used to end with ``PyThreadState_SetAsyncExc(thread, NULL)``, which leaves
CPython 3.11's async-exception flag set with nothing to deliver; with a trace function installed
every thread then spins at its next call and the worker hangs for good (issue 24)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tasks_engine import send_task
from tests.conftest import ROOT, worker_env

pytestmark = pytest.mark.slow


async def test_a_worker_under_coverage_runs_sync_tasks_and_their_soft_limits(engine, prefix, tmp_path, sync_client):
    before = set(sync_client.scan_iter(f"{{{prefix}}}:worker:*"))
    argv = [sys.executable, "-m", "coverage", "run", f"--data-file={tmp_path / '.coverage'}",
            "-m", "tasks_engine.cli", "worker", "--app", "none", "-I", "tests.tracer_tasks"]  # fmt: skip
    with open(tmp_path / "worker.log", "wb") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, env=worker_env(prefix), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not set(sync_client.scan_iter(f"{{{prefix}}}:worker:*")) - before:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
            time.sleep(0.1)
        for n in range(3):  # the hang came right after the first sync task: later ones never ran
            assert await (await send_task("tracer.sync_add", [n, 1])).get(timeout=15) == n + 1
        for _ in range(2):  # the interrupt path: the soft limit raised in the thread, then taken back
            assert await (await send_task("tracer.sync_soft")).get(timeout=15) == "interrupted"
        assert await (await send_task("tracer.sync_add", [2, 2])).get(timeout=15) == 4
        proc.terminate()
        assert proc.wait(timeout=30) == 0, (tmp_path / "worker.log").read_text()  # a hung one ignores SIGTERM
    finally:
        proc.kill()
        proc.wait()


HUNG = """
import signal, time

def test_hangs_where_no_python_code_runs():
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])  # pytest-timeout's alarm never gets through
    time.sleep(60)
"""


def test_a_hung_test_ends_the_run_within_its_timeout_with_every_thread_s_stack(tmp_path):
    """The project's pytest settings, with their timeouts scaled down: a hang pytest-timeout can't break
    is ended by faulthandler's watchdog instead of holding CI until its own limit."""
    (tmp_path / "test_hung.py").write_text(HUNG)
    started = time.monotonic()
    argv = [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path),
            "-p", "no:cacheprovider", "-o", "timeout=1", "-o", "faulthandler_timeout=3", "test_hung.py"]  # fmt: skip
    proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=50, check=False)
    assert proc.returncode != 0 and time.monotonic() - started < 40, proc.stdout + proc.stderr
    assert "Timeout" in proc.stderr and "test_hangs_where_no_python_code_runs" in proc.stderr, proc.stderr
