"""What the dashboard tests share: a dashboard process per test (``python -m tasks_engine.dashboard``,
on a free port, for the test's key prefix) and raw HTTP requests with exactly the headers given.
Registered as a plugin by tests/conftest.py, so the ``dashboard`` fixture needs no import."""

from __future__ import annotations

import http.client
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, worker_env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Reply:
    def __init__(self, resp: http.client.HTTPResponse) -> None:
        self.status = resp.status
        self.headers = {k.lower(): v for k, v in resp.getheaders()}
        self.cookies = [v for k, v in resp.getheaders() if k.lower() == "set-cookie"]
        stream = "text/event-stream" in self.headers.get("content-type", "")
        self.body = resp.read1(200) if stream else resp.read()  # an event stream never ends


def call(
    port: int, method: str, path: str, headers: dict[str, str | None] | None = None, body: str = "", tls: bool = False
) -> Reply:
    """One raw request to 127.0.0.1:port with exactly these headers (``Host`` too; ``Host: None``: none sent)."""
    if tls:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        conn: http.client.HTTPConnection = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    sent = {k: v for k, v in (headers or {}).items() if v is not None}
    try:
        if "Host" in (headers or {}) and "Host" not in sent:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for k, v in {**sent, "Content-Length": str(len(body.encode()))}.items():
                conn.putheader(k, v)
            conn.endheaders(body.encode() or None)
        else:
            conn.request(method, path, body.encode() or None, sent)
        return Reply(conn.getresponse())
    finally:
        conn.close()


@pytest.fixture
def dashboard(prefix: str, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Start ``python -m tasks_engine.dashboard`` (or ``argv``) for this test's prefix; returns its base URL."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str, host: str = "127.0.0.1", argv: list[str] | None = None, tls: bool = False,
              env: dict[str, str] | None = None, **settings: Any) -> str:  # fmt: skip
        port = free_port()
        full_env = worker_env(prefix, TE_DASHBOARD_REFRESH_SECONDS="0.5", TE_DASHBOARD_SAMPLE_SECONDS="0.5",
                              **{f"TE_DASHBOARD_{k.upper()}": v for k, v in settings.items()})  # fmt: skip
        full_env.update(env or {})
        command = argv or [sys.executable, "-m", "tasks_engine.dashboard", "--host", host]
        log_path = tmp_path / f"dashboard-{len(procs)}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([*command, "--port", str(port), *args], cwd=ROOT, env=full_env, stdout=log,
                                stderr=subprocess.STDOUT)  # fmt: skip
        procs.append(proc)
        deadline = time.monotonic() + 20
        while True:
            try:
                if call(port, "GET", "/healthz", tls=tls).status == 200:
                    return f"http{'s' if tls else ''}://127.0.0.1:{port}"
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dashboard did not start: {log_path.read_text()}")
            time.sleep(0.1)

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
