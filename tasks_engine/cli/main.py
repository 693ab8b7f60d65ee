"""``tasks-engine``: run workers (one process or a supervised pool) and operate a cluster."""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import subprocess
import sys
import time
from typing import Annotated, Any

import structlog
import typer
from rich.console import Console

from tasks_engine.cli import ops as cli_ops
from tasks_engine.cli.ops import load_app
from tasks_engine.core.config import configure, get_settings
from tasks_engine.core.logs import configure_logging
from tasks_engine.exceptions import EngineConfigurationError
from tasks_engine.integrations.embedded import ensure_redis
from tasks_engine.ops import control
from tasks_engine.runtime.worker import Worker
from tasks_engine.version import __version__

app = typer.Typer(
    help="Celery's task model on asyncio, arq and Redis.",
    no_args_is_help=True,
    cls=cli_ops.Commands,
    pretty_exceptions_show_locals=False,  # locals hold settings and URLs: never print them
)
console = Console()
cli_ops.register(app)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"tasks-engine {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_show_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """Celery's task model on asyncio, arq and Redis."""


def _run(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


AppOpt = cli_ops.AppOpt
ImportsOpt = Annotated[list[str] | None, typer.Option("--imports", "-I", help="task modules to import")]


@app.command()
def worker(
    app_module: AppOpt = None,
    imports: ImportsOpt = None,
    queues: Annotated[str | None, typer.Option("--queues", "-Q", help="comma-separated queues")] = None,
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", "-c", help="worker processes, kept alive by a supervisor")
    ] = None,
    max_jobs: Annotated[int | None, typer.Option("--max-jobs", "-j", help="concurrent jobs per process")] = None,
    max_tasks_per_child: Annotated[int | None, typer.Option(help="recycle a process after N jobs")] = None,
    max_memory_per_child: Annotated[int | None, typer.Option(help="recycle a process above this RSS (KiB)")] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="serve /metrics, /healthz, /readyz here (with -c N: port, port+1, …)")
    ] = None,
    metrics_host: Annotated[
        str | None, typer.Option(help="address the metrics port binds (default 0.0.0.0: every interface)")
    ] = None,
    beat: Annotated[bool, typer.Option(help="also schedule periodic jobs (safe on every worker)")] = True,
    child: Annotated[bool, typer.Option(hidden=True)] = False,
) -> None:
    """Run a worker. With ``-c N``, a supervisor keeps N worker processes alive and replaces any that exit."""
    if concurrency is not None and not child:
        _supervise(concurrency, sys.argv[1:])
        return
    app = load_app(app_module, imports or [])
    if app is None and not imports:
        typer.echo("tasks-engine worker: no app found (no ./settings.py): pass -A your_settings_module or "
                   "-I your.tasks.module, or it would run only the engine's built-in tasks", err=True)  # fmt: skip
        raise typer.Exit(2)
    overrides: dict[str, Any] = {}
    if max_tasks_per_child is not None:
        overrides["max_tasks_per_child"] = max_tasks_per_child
    if max_memory_per_child is not None:
        overrides["max_memory_per_child_kb"] = max_memory_per_child
    if metrics_host is not None:
        overrides["metrics_host"] = metrics_host
    if metrics_port is not None:
        overrides["metrics_port"] = metrics_port + int(os.environ.get("TASKS_ENGINE_CHILD_INDEX", "0"))
    if overrides:
        configure(get_settings(), **overrides)
    configure_logging()
    names = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    try:
        hooks = {name: getattr(app, name, None) for name in ("on_startup", "on_shutdown")}
        _run(Worker(queues=names, max_jobs=max_jobs, beat=beat, **hooks).run())
    except EngineConfigurationError as exc:
        typer.echo(f"tasks-engine worker: {exc}", err=True)
        raise typer.Exit(2) from None


QUICK_EXIT_SECONDS = 10.0  # a child that dies sooner than this after starting counts as a failed start
MAX_QUICK_EXITS = 5  # in a row, per slot: then the supervisor gives up (e.g. the app fails at import)


def _child_argv(argv: list[str]) -> list[str]:
    """The worker's own arguments without ``-c N`` / ``--concurrency N``."""
    cleaned: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a in ("-c", "--concurrency"):
            skip = True
        elif not (a.startswith("--concurrency=") or (a.startswith("-c") and a[2:].isdigit())):
            cleaned.append(a)
    return cleaned


def _supervise(count: int, argv: list[str]) -> None:
    """Keep ``count`` children running; a child that exits (recycled or crashed) is replaced.

    A child that keeps dying right after it starts is restarted with a growing delay, and after
    ``MAX_QUICK_EXITS`` such exits in a row the supervisor stops them all and exits non-zero: a
    worker that cannot even import its app must not crash-loop forever."""
    configure_logging()
    log = structlog.get_logger("tasks_engine.supervisor")
    command = [sys.executable, "-m", "tasks_engine.cli.main", *_child_argv(argv), "--child"]
    children: list[subprocess.Popen[bytes]] = []
    started: list[float] = []
    quick_exits = [0] * count
    due: dict[int, float] = {}  # slot -> monotonic time of its delayed restart
    stopping = {"count": 0}

    def forward(signum: int, _frame: Any) -> None:
        stopping["count"] += 1
        for proc in children:
            if proc.poll() is None:
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)

    def start_child(index: int) -> subprocess.Popen[bytes]:
        # The index tells a child which metrics port is its own (--metrics-port + index).
        env = {**os.environ, "TASKS_ENGINE_CHILD_INDEX": str(index)}
        return subprocess.Popen(command, env=env)  # noqa: S603 - our own argv

    for index in range(count):
        children.append(start_child(index))
        started.append(time.monotonic())
    log.info("supervisor started", processes=count, pids=[p.pid for p in children])
    while True:
        time.sleep(0.2)
        for index, proc in enumerate(children):
            code = proc.poll()
            if code is None or stopping["count"]:
                continue
            if index not in due:
                quick = time.monotonic() - started[index] < QUICK_EXIT_SECONDS
                quick_exits[index] = quick_exits[index] + 1 if quick else 0
                if quick_exits[index] >= MAX_QUICK_EXITS:
                    log.error("worker processes keep failing right after start; giving up", code=code,
                              attempts=quick_exits[index])  # fmt: skip
                    forward(signal.SIGTERM, None)
                    for other in children:
                        other.wait()
                    raise typer.Exit(1)
                delay = min(10.0, 0.25 * 2 ** quick_exits[index]) if quick else 0.0
                log.info("worker process exited; starting a replacement", pid=proc.pid, code=code, delay=delay)
                due[index] = time.monotonic() + delay
            if time.monotonic() >= due[index]:
                del due[index]
                children[index] = start_child(index)
                started[index] = time.monotonic()
        if stopping["count"] and all(p.poll() is not None for p in children):
            return


@app.command()
def revoke(
    task_ids: Annotated[list[str], typer.Argument(help="task ids")],
    terminate: Annotated[bool, typer.Option(help="also cancel if running")] = False,
    app_module: AppOpt = None,
    as_json: cli_ops.JsonOpt = False,
) -> None:
    """Revoke jobs by id."""
    removed = cli_ops.run(app_module, lambda: control.revoke(task_ids, terminate=terminate))
    if as_json:
        cli_ops.emit({"revoked": len(task_ids), "waiting": removed}, True)
    else:
        console.print(f"revoked {len(task_ids)} id(s); {removed} were waiting and will never run")


@app.command("revoke-matching")
def revoke_matching(pattern: str, app_module: AppOpt = None, as_json: cli_ops.JsonOpt = False) -> None:
    """Drop every queued or deferred job whose task name matches a glob (e.g. 'report.*')."""
    count = cli_ops.run(app_module, lambda: control.revoke_matching(pattern))
    if as_json:
        cli_ops.emit({"revoked": count, "pattern": pattern}, True)
    else:
        console.print(f"revoked {count} queued job(s) matching {pattern!r}", markup=False, highlight=False)
    if not count:
        raise typer.Exit(cli_ops.EXIT_EMPTY)


@app.command("rate-limit")
def rate_limit(
    task: str,
    rate: str,
    burst: Annotated[int, typer.Option(min=1, help="starts allowed at once before the rate applies")] = 1,
    app_module: AppOpt = None,
    as_json: cli_ops.JsonOpt = False,
) -> None:
    """Set a task's cluster-wide rate limit now ('10/m', '5/s', '0' = unlimited, 'default' = as declared)."""
    released = cli_ops.run(app_module, lambda: control.set_rate_limit(task, None if rate == "default" else rate, burst))
    if as_json:
        cli_ops.emit({"task": task, "rate": rate, "burst": burst, "released": released}, True)
    else:
        console.print(f"rate limit of {task!r} set to {rate} (burst {burst}); {released} parked job(s) re-planned")


@app.command()
def metrics(
    port: Annotated[int, typer.Option(help="port to serve the cluster's /metrics on")] = 9808,
    host: Annotated[
        str, typer.Option(help="address to bind (default every interface; 127.0.0.1: this host only)")
    ] = "0.0.0.0",
    app_module: AppOpt = None,
) -> None:
    """Serve cluster-wide Prometheus metrics (queues, oldest job age, consumers, dead letters) from Redis."""
    try:
        from tasks_engine.ops.metrics import cluster_exposition, prometheus, serve
    except ImportError:
        typer.echo("tasks-engine metrics: prometheus_client is missing: pip install 'tasks-engine[metrics]'", err=True)
        raise typer.Exit(2) from None
    load_app(app_module, [])
    configure_logging()

    async def scrape() -> tuple[int, str, bytes]:
        return prometheus(await cluster_exposition())

    async def main() -> None:
        server = await serve(host, port, {"/metrics": scrape})
        console.print(f"cluster metrics on http://{host}:{port}/metrics", highlight=False)
        async with server:
            await server.serve_forever()

    _run(main())


@app.command()
def dashboard(
    port: Annotated[int | None, typer.Option(help="port (default 5555)")] = None,
    host: Annotated[str | None, typer.Option(help="address (default 127.0.0.1)")] = None,
    read_only: Annotated[bool | None, typer.Option("--read-only/--read-write")] = None,
    allowed_host: Annotated[
        list[str] | None, typer.Option(help="Host name browsers use besides loopback (repeat)")
    ] = None,
    forwarded_allow_ips: Annotated[
        str | None, typer.Option(help="proxies whose X-Forwarded-Proto is trusted (e.g. 127.0.0.1)")
    ] = None,
    app_module: AppOpt = None,
    imports: ImportsOpt = None,
) -> None:
    """Serve the web dashboard (Flower's place); credentials come from TE_DASHBOARD_* settings."""
    load_app(app_module, imports or [])
    try:  # the optional `dashboard` extra
        from tasks_engine.dashboard.app import main
        from tasks_engine.dashboard.settings import DashboardConfigError
    except ImportError as exc:
        typer.echo(f"tasks-engine dashboard: {exc}: pip install 'tasks-engine[dashboard]'", err=True)
        raise typer.Exit(2) from None
    try:
        main(host, port, read_only=read_only, allowed_hosts=allowed_host, forwarded_allow_ips=forwarded_allow_ips)
    except DashboardConfigError as exc:
        typer.echo(f"tasks-engine dashboard: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command("redis")
def redis_up() -> None:
    """Start an embedded Redis at REDIS_URL if nothing answers there."""

    console.print(f"Redis answers at {ensure_redis()}")


@app.command()
def demo(app_module: AppOpt = None) -> None:
    """Start Redis if needed, a worker, enqueue the demo jobs and print each result with its state."""

    ensure_redis()
    load_app(app_module, [])
    demo_module = importlib.import_module("jobs.demo")
    _run(demo_module.main())


if __name__ == "__main__":
    app()
