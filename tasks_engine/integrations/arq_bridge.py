"""``arq settings.WorkerSettings``: arq's CLI hosts the tasks_engine worker.

arq's own Worker polls, reads one queue, has no priorities, dies on Redis errors and never renews
its leases, so the jobs are run by :class:`tasks_engine.runtime.worker.Worker`, started from arq's
``on_startup`` and drained from ``on_shutdown``. arq keeps what it is good at here: the CLI,
``--check`` health key, signal handling. Its own queue gets one no-op function (arq requires one)
and a JSON serializer, so nothing in the process ever unpickles.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

from arq.connections import RedisSettings
from pydantic import ValidationError
from redis.connection import parse_url

from tasks_engine.core.config import get_settings, settings_error_message
from tasks_engine.core.context import Hook
from tasks_engine.core.logs import adopt_arq_cli_logging, configure_logging
from tasks_engine.core.redis_url import parse_redis_url
from tasks_engine.exceptions import EngineConfigurationError, TaskDefinitionError
from tasks_engine.model.messages import arq_job_deserializer, arq_job_serializer
from tasks_engine.runtime.worker import Worker
from tasks_engine.store.keys import Keys

#: arq settings the engine sets itself: overriding one would leave a worker that runs no job.
ENGINE_OWNED = frozenset({
    "functions", "queue_name", "job_serializer", "job_deserializer", "startup", "shutdown", "cron_jobs",
    "handle_signals", "health_check_key",
})  # fmt: skip


def arq_redis_settings(url: str, cluster: bool = False) -> RedisSettings:
    """arq's ``RedisSettings`` for ``url``, parsed by redis-py: arq's own ``from_dsn`` drops the ``ssl_*``
    query options (so a private CA cannot be trusted) and does not unquote the username and password.
    A Sentinel URL becomes arq's ``RedisSettings(sentinel=True, …)``; arq has no Cluster client."""
    target = parse_redis_url(url, cluster=cluster)
    if target.mode == "cluster":
        raise EngineConfigurationError(
            "arq's CLI cannot run on a Redis Cluster (arq has no Cluster client): "
            "start workers with `tasks-engine worker` instead"
        )
    if target.mode == "sentinel":
        return RedisSettings(
            host=list(target.hosts),
            sentinel=True,
            sentinel_master=target.master,
            database=target.db,
            username=target.username,
            password=target.password,
            ssl=target.tls,
        )
    scheme = url.partition("://")[0]
    opts: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
    return RedisSettings(
        host=opts.get("host", "localhost"),
        port=opts.get("port", 6379),
        database=opts.get("db", 0),
        username=opts.get("username"),
        password=opts.get("password"),
        unix_socket_path=opts.get("path"),
        ssl=scheme == "rediss",
        ssl_keyfile=opts.get("ssl_keyfile"),
        ssl_certfile=opts.get("ssl_certfile"),
        ssl_cert_reqs=opts.get("ssl_cert_reqs", "required"),
        ssl_ca_certs=opts.get("ssl_ca_certs"),
        ssl_ca_data=opts.get("ssl_ca_data"),
        ssl_check_hostname=opts.get("ssl_check_hostname", False),
    )


def _under_arq_cli() -> bool:
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    return argv0.name == "arq" or (argv0.name == "__main__.py" and argv0.parent.name == "arq")


def _configuration_errors_in_one_line(
    kind: type[BaseException], exc: BaseException, tb: TracebackType | None, previous: Any = sys.excepthook
) -> None:
    """arq's CLI imports the settings module itself and lets any error out as a traceback (exit 1); a bad
    setting (e.g. ``REDIS_URL``) is one line and exit 2 here, as under ``tasks-engine``."""
    if isinstance(exc, ValidationError | EngineConfigurationError):
        message = settings_error_message(exc) if isinstance(exc, ValidationError) else str(exc)
        sys.stdout.flush()
        sys.stderr.write(f"arq: {' '.join(message.split())}\n")
        sys.stderr.flush()
        os._exit(2)  # an excepthook cannot choose the exit code otherwise; nothing has started yet
    previous(kind, exc, tb)


if _under_arq_cli():
    sys.excepthook = _configuration_errors_in_one_line


async def _arq_ping(ctx: dict[str, Any]) -> str:
    """arq needs at least one function; this one answers health probes sent through arq itself."""
    return "pong"


def worker_settings(
    imports: list[str] | None = None,
    queue: str | None = None,
    queues: list[str] | None = None,
    max_jobs: int | None = None,
    on_startup: Hook | None = None,
    on_shutdown: Hook | None = None,
    **extra: Any,
) -> type:
    """A class arq's CLI runs: ``WorkerSettings = worker_settings(imports=["jobs"], queue="default")``.

    ``on_startup(ctx)`` / ``on_shutdown(ctx)`` run *in addition to* the engine's own start-up and
    shutdown: before the first job, after the last one drained; ``ctx`` is the worker context tasks
    read with :func:`tasks_engine.worker_context`. Other arq settings pass through, except those the
    engine relies on (refused with the reason)."""
    refused = sorted(set(extra) & ENGINE_OWNED)
    if refused:
        raise TaskDefinitionError(
            f"worker_settings(): {', '.join(refused)} cannot be set: the engine runs the jobs itself and needs "
            "arq's own queue, serializer and hooks as it sets them (use on_startup/on_shutdown, queues, max_jobs)"
        )
    adopt_arq_cli_logging()  # under arq's CLI: the engine's format for arq's lines too, from the first one
    for module in imports or []:
        importlib.import_module(module)
    settings = get_settings()
    consumed = queues or [queue or settings.default_queue]
    keys = Keys(settings.key_prefix)

    async def engine_startup(ctx: dict[str, Any]) -> None:
        configure_logging()
        worker = Worker(queues=consumed, max_jobs=max_jobs, on_startup=on_startup, on_shutdown=on_shutdown)
        arq_main = asyncio.current_task()
        ctx["tasks_engine_worker"] = worker
        await worker.start(handle_signals=False)
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            worker.handle_signal(signum)

            async def finish_arq() -> None:
                await worker.wait_stopped()
                if arq_main is not None and not arq_main.done():
                    arq_main.cancel()

            if worker.signals_received == 1:
                worker.spawn(finish_arq())

        for sig in (signal.SIGINT, signal.SIGTERM):  # replaces arq's handler: we drain first
            loop.add_signal_handler(sig, on_signal, sig)

    async def engine_shutdown(ctx: dict[str, Any]) -> None:
        worker = ctx.get("tasks_engine_worker")
        if worker is not None and not worker.stopped:
            await worker.stop()

    attrs: dict[str, Any] = {
        "functions": [_arq_ping],
        "on_startup": engine_startup,
        "on_shutdown": engine_shutdown,
        "redis_settings": arq_redis_settings(settings.redis_url.get_secret_value(), settings.redis_cluster),
        "queue_name": keys.arq_queue,
        "health_check_key": keys.arq_health,
        # arq writes this key every interval with a TTL one second longer: short, so `arq ... --check`
        # fails within seconds of the worker process dying (arq's default keeps it an hour).
        "health_check_interval": max(2, int(settings.lease_seconds)),
        "job_serializer": arq_job_serializer,
        "job_deserializer": arq_job_deserializer,
        "poll_delay": 1.0,
        "max_jobs": 1,
        "handle_signals": True,
        **extra,
    }
    return type("WorkerSettings", (), attrs)
