"""The README's first Python snippet runs as written: its code block is read out of README.md and run from
the repository's root, next to the two commands the README starts first (the bundled SMTP sink and
``arq settings.WorkerSettings``), and it must finish and print what its comments promise."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis as sync_redis

from jobs.sink import free_port, port_open
from tests.conftest import ROOT, worker_env

README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```$", re.S | re.M)


def first_block(language: str) -> str:
    return next(code for lang, code in BLOCK.findall(README) if lang == language)


def quickstart_commands() -> list[str]:
    """The commands of the bash block just before the first Python block, without their comments."""
    blocks = BLOCK.findall(README)
    index = next(i for i, (lang, _) in enumerate(blocks) if lang == "python")
    lang, code = blocks[index - 1]
    assert lang == "bash"
    return [line.split("#", 1)[0].strip() for line in code.splitlines() if line.strip()]


def test_the_first_snippet_is_the_guides_send_email_and_its_commands_start_the_sink_and_a_worker() -> None:
    code = first_block("python")
    assert "send_email_task.delay(" in code and "asyncio.run(main())" in code
    commands = quickstart_commands()
    assert commands[:2] == [".venv/bin/python -m jobs.sink", "arq settings.WorkerSettings"]


def test_the_first_snippet_runs_as_written_next_to_the_sink_and_the_worker(
    prefix: str, sync_client: sync_redis.Redis, tmp_path: Path
) -> None:
    port = free_port()
    env = worker_env(prefix, TE_SMTP_PORT=port, TE_SMTP_LOCAL_HOSTNAME="localhost")
    procs: list[subprocess.Popen[bytes]] = []
    logs = {name: tmp_path / f"{name}.log" for name in ("sink", "worker")}

    def start(name: str, argv: list[str]) -> None:
        with logs[name].open("wb") as log:
            procs.append(
                subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            )

    try:
        start("sink", [sys.executable, "-m", "jobs.sink"])  # the README's two commands, on this test's port/prefix
        start("worker", [sys.executable, "-m", "arq", "settings.WorkerSettings"])
        deadline = time.monotonic() + 30
        while not (port_open("127.0.0.1", port) and list(sync_client.scan_iter(f"{{{prefix}}}:worker:*"))):
            assert all(p.poll() is None for p in procs), {n: f.read_text()[-2000:] for n, f in logs.items()}
            assert time.monotonic() < deadline, {n: f.read_text()[-2000:] for n, f in logs.items()}
            time.sleep(0.1)
        run = subprocess.run(  # read from stdin, so the repository's root is on sys.path, as for quickstart.py
            [sys.executable, "-"],
            input=first_block("python"),
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=40,
            check=False,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        lines = run.stdout.splitlines()
        assert lines[0].startswith("SUCCESS {'status': 'success', 'email': 'user@example.com'"), run.stdout
        assert lines[1] == "PENDING", run.stdout
        deadline = time.monotonic() + 5
        while "received from" not in logs["sink"].read_text():
            assert time.monotonic() < deadline, logs["sink"].read_text()
            time.sleep(0.1)
        assert "for user@example.com: 主题" in logs["sink"].read_text(encoding="utf-8")
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        keys = list(sync_client.scan_iter(match=f"{{{prefix}}}:*", count=1000))
        if keys:
            sync_client.delete(*keys)
