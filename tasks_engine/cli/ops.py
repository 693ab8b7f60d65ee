"""The operations commands of ``tasks-engine``: status, inspect, ping, dead letters, retry, call, purge.

Every command that prints data takes ``--json`` (one JSON document on stdout) and prints a table
otherwise (never a Python repr); log lines go to stderr. Exit codes, the same in every command:
0 done (a listing may be empty), 1 the ids, pattern, queues or filter given matched nothing (``ping``:
no healthy worker), 2 bad input, a bad setting or a refused confirmation, 3 Redis unreachable (one
line naming the redacted URL, never a traceback).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import re
import sys
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Annotated, Any, TypeVar

import orjson
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from tasks_engine.client import beat
from tasks_engine.client.results import AsyncResult
from tasks_engine.core.config import redacted_url, settings_error_message
from tasks_engine.core.logs import configure_logging
from tasks_engine.exceptions import REDIS_UNAVAILABLE, EngineConfigurationError, EngineConnectionError
from tasks_engine.ops import control
from tasks_engine.store import get_broker

T = TypeVar("T")
EXIT_EMPTY, EXIT_USAGE, EXIT_REDIS = 1, 2, 3
REDIS_GONE: tuple[type[BaseException], ...] = (*REDIS_UNAVAILABLE, EngineConnectionError)
console = Console()

AppOpt = Annotated[str | None, typer.Option("--app", "-A", help="settings module to import (default: ./settings.py)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")]
TaskOpt = Annotated[str | None, typer.Option("--task", "-t", help="only jobs of this task name")]


def load_app(app_module: str | None, imports: list[str]) -> ModuleType | None:
    """Import the application's settings module (configures the engine) and task modules; returns the
    app module (None with ``--app none`` or when there is no ./settings.py). It may define
    ``on_startup(ctx)`` / ``on_shutdown(ctx)`` hooks for ``tasks-engine worker``."""
    sys.path.insert(0, os.getcwd())
    module = app_module if app_module is not None else ("settings" if os.path.exists("settings.py") else None)
    app = importlib.import_module(module) if module and module != "none" else None
    for name in imports:
        importlib.import_module(name)
    return app


def run(app_module: str | None, op: Callable[[], Awaitable[T]]) -> T:
    """Load the app, run one operation against Redis and close the client; Redis away is exit code 3."""
    load_app(app_module, [])
    configure_logging()  # engine log lines to stderr, never into a command's output

    async def main() -> T:
        try:
            return await op()
        finally:
            await get_broker().close()

    try:
        return asyncio.run(main())
    except REDIS_GONE as exc:
        fail(f"Redis at {redacted_url()} is unreachable ({exc})", EXIT_REDIS)
    except (ValueError, EngineConfigurationError) as exc:
        fail(str(exc), EXIT_USAGE)
    raise AssertionError("unreachable")  # pragma: no cover


def fail(message: str, code: int) -> None:
    """One line on stderr, then the exit code (no traceback, no wrapping)."""
    print(f"tasks-engine: {' '.join(message.split())}", file=sys.stderr)
    raise typer.Exit(code)


def confirm(question: str) -> None:
    """Ask on the terminal; no (or no terminal to ask on) is exit 2 with nothing changed."""
    try:
        answered = typer.confirm(question, err=True)
    except typer.Abort:  # end of input: nobody to answer
        answered = False
    if not answered:
        fail("not confirmed, nothing changed (--yes skips the question)", EXIT_USAGE)


class Commands(TyperGroup):
    """The ``tasks-engine`` group: a bad configuration (settings read from the environment when the app
    is imported, or later) is one line and exit 2 in every subcommand, never a traceback."""

    def invoke(self, ctx: Any) -> Any:  # typer's own click Context
        try:
            return super().invoke(ctx)
        except ValidationError as exc:
            fail(settings_error_message(exc), EXIT_USAGE)
        except EngineConfigurationError as exc:
            fail(str(exc), EXIT_USAGE)


def emit(rows: Any, as_json: bool, columns: list[str] | None = None, title: str | None = None) -> None:
    """``--json``: one JSON document. Otherwise a table (``columns`` of ``rows``; a dict as field/value
    rows) or the text given: never a Python repr."""
    if as_json:
        sys.stdout.write(orjson.dumps(rows, default=str).decode() + "\n")
        return
    if isinstance(rows, str):
        console.print(rows, markup=False, highlight=False)
        return
    if columns is None and isinstance(rows, dict):
        columns, rows = ["field", "value"], [{"field": k, "value": v} for k, v in rows.items()]
    table = Table(*(columns or ["value"]), title=title)
    for row in rows:
        table.add_row(
            *(Text(_cell(row.get(c))) for c in columns or []) if isinstance(row, dict) else [Text(_cell(row))]
        )
    console.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        return ", ".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_cell(v)}" for k, v in value.items())
    if isinstance(value, bool | int | float):
        return str(value)
    return orjson.dumps(value, default=str).decode()


def parse_duration(text: str) -> float:
    """``90``, ``30s``, ``15m``, ``1h``, ``2d`` → seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match:
        raise typer.BadParameter(f"{text!r} is not a duration (e.g. 30s, 15m, 1h, 2d)")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def parse_json(text: str, kind: type, label: str) -> Any:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise typer.BadParameter(f"{label} is not JSON: {exc}") from None
    if not isinstance(value, kind):
        raise typer.BadParameter(f"{label} must be a JSON {kind.__name__}")
    return value


def register(app: typer.Typer) -> None:
    """Add the operations commands to the ``tasks-engine`` application."""
    inspect = typer.Typer(help="What the cluster is doing: running, scheduled, queued jobs, workers.")
    dead = typer.Typer(help="Dead letters: messages that could not run (list, show, requeue, drop).")
    app.add_typer(inspect, name="inspect")
    app.add_typer(dead, name="dead")

    @app.command()
    def status(app_module: AppOpt = None, as_json: JsonOpt = False) -> None:
        """Queues (ready jobs, consumers), workers and their loops, periodic entries, dead letters."""

        async def gather() -> dict[str, Any]:
            return {"queues": await control.queue_stats(), "totals": await control.totals(),
                    "workers": await control.workers(), "periodic": beat.view()}  # fmt: skip

        data = run(app_module, gather)
        if as_json:
            emit(data, True)
            return
        table = Table("queue", "ready", "consumers")
        for row in data["queues"]:
            consumers = ", ".join(row["consumers"]) or "[red]nobody consumes this queue[/red]"
            table.add_row(row["queue"], str(row["ready"]), consumers)
        console.print(table)
        t = data["totals"]
        console.print(f"deferred: {t['deferred']}  running: {t['running']}  dead letters: {t['dead']}")
        wt = Table("worker", "queues", "running", "processed", "loops", "seen")
        for w in data["workers"]:
            failing = {k: v for k, v in (w.get("loops") or {}).items() if v != "ok"}
            health = "ok" if not failing else "[red]" + "; ".join(f"{k}: {v}" for k, v in failing.items()) + "[/red]"
            wt.add_row(w["id"], ",".join(w["queues"]), str(w["running"]), str(w["processed"]), health, w["seen"])
        console.print(wt)
        bt = Table("periodic entry", "task", "schedule", "next run")
        for e in data["periodic"]:
            bt.add_row(e["name"], e["task"], e["schedule"], e["next_run"])
        console.print(bt)

    @inspect.command("active")
    def inspect_active(app_module: AppOpt = None, as_json: JsonOpt = False) -> None:
        """Running jobs: id, task, args, worker, started, lease."""
        emit(
            run(app_module, control.active),
            as_json,
            ["id", "task", "args", "worker", "queue", "started", "lease_until"],
        )

    @inspect.command("scheduled")
    def inspect_scheduled(
        app_module: AppOpt = None, as_json: JsonOpt = False, limit: Annotated[int, typer.Option(min=1)] = 1000
    ) -> None:
        """Deferred jobs (countdown/eta, waiting retries, rate-limited), soonest first."""
        emit(run(app_module, lambda: control.scheduled(limit)), as_json, ["id", "task", "args", "queue", "due"])

    @inspect.command("reserved")
    def inspect_reserved(
        app_module: AppOpt = None, as_json: JsonOpt = False, limit: Annotated[int, typer.Option(min=1)] = 100
    ) -> None:
        """The next ready jobs of every queue (workers take jobs only as they start them)."""
        emit(run(app_module, lambda: control.reserved(limit)), as_json, ["id", "task", "args", "queue"])

    @inspect.command("registered")
    def inspect_registered(app_module: AppOpt = None, as_json: JsonOpt = False) -> None:
        """Task names each live worker has registered."""
        data = run(app_module, control.registered)
        rows = [{"worker": w, "tasks": ", ".join(names)} for w, names in data.items()]
        emit(data if as_json else rows, as_json, None if as_json else ["worker", "tasks"])

    @inspect.command("stats")
    def inspect_stats(app_module: AppOpt = None, as_json: JsonOpt = False) -> None:
        """Per worker: pid, host, processed, running, max_jobs, started, healthy."""
        cols = ["id", "pid", "host", "processed", "running", "max_jobs", "started", "healthy", "seen"]
        emit(run(app_module, control.workers), as_json, cols)

    @inspect.command("queues")
    def inspect_queues(app_module: AppOpt = None, as_json: JsonOpt = False) -> None:
        """Per queue: ready, deferred, age of the oldest ready job, consumers."""
        emit(
            run(app_module, control.queues), as_json, ["queue", "ready", "deferred", "oldest_age_seconds", "consumers"]
        )

    @inspect.command("workers")
    def inspect_workers(app_module: AppOpt = None, as_json: JsonOpt = False) -> None:
        """Live workers, their queues and loop health."""
        emit(run(app_module, control.workers), as_json, ["id", "queues", "running", "healthy", "loops", "seen"])

    @app.command()
    def ping(
        app_module: AppOpt = None,
        as_json: JsonOpt = False,
        queue: Annotated[str | None, typer.Option("--queue", "-Q", help="a worker must consume this queue")] = None,
    ) -> None:
        """Exit 0 when at least one live worker answers with all its loops healthy (a container probe)."""
        found = run(app_module, lambda: control.ping(queue))
        emit(
            [{"id": w["id"], "queues": w["queues"], "seen": w["seen"]} for w in found],
            as_json,
            ["id", "queues", "seen"],
        )
        if not found:
            raise typer.Exit(EXIT_EMPTY)

    @dead.command("list")
    def dead_list(app_module: AppOpt = None, as_json: JsonOpt = False, task: TaskOpt = None) -> None:
        """Dead letters, newest first."""
        rows = run(app_module, lambda: control.dead_letters(task))
        emit(rows if as_json else [{**r, "raw": None} for r in rows], as_json, ["id", "task", "reason", "at"])

    @dead.command("show")
    def dead_show(task_id: str, app_module: AppOpt = None, as_json: JsonOpt = False) -> None:
        """One dead letter with the message kept."""
        found = [e for e in run(app_module, control.dead_letters) if e.get("id") == task_id]
        if not found:
            fail(f"no dead letter {task_id!r}", EXIT_EMPTY)
        emit(found[0], as_json)

    def _targets(ids: list[str] | None, all_: bool, task: str | None, verb: str) -> list[str] | None:
        if not ids and not all_ and task is None:
            raise typer.BadParameter(f"give dead-letter ids, --task T, or --all to {verb} every dead letter")
        return ids or None

    @dead.command("requeue")
    def dead_requeue(
        ids: Annotated[list[str] | None, typer.Argument(help="dead-letter ids")] = None,
        all_: Annotated[bool, typer.Option("--all", help="every dead letter (with --task: of that task)")] = False,
        task: TaskOpt = None,
        app_module: AppOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Send dead letters' messages again (e.g. after deploying the task a worker lacked)."""
        targets = _targets(ids, all_, task, "requeue")
        requeued, problems = run(app_module, lambda: control.requeue_dead(targets, task))
        if as_json:
            emit({"requeued": requeued, "refused": problems}, True)
        else:
            console.print(f"requeued {requeued} dead letter(s)", highlight=False)
            for problem in problems:
                console.print(f"refused {problem}", markup=False, highlight=False)
        if not requeued:
            raise typer.Exit(EXIT_EMPTY)

    @dead.command("drop")
    def dead_drop(
        ids: Annotated[list[str] | None, typer.Argument(help="dead-letter ids")] = None,
        all_: Annotated[bool, typer.Option("--all", help="every dead letter (with --task: of that task)")] = False,
        task: TaskOpt = None,
        yes: YesOpt = False,
        app_module: AppOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Delete dead letters for good."""
        targets = _targets(ids, all_, task, "drop")
        if targets is None and not yes:
            confirm("Drop these dead letters for good?")
        dropped = run(app_module, lambda: control.drop_dead(targets, task))
        emit({"dropped": dropped} if as_json else f"dropped {dropped} dead letter(s)", as_json)
        if not dropped:
            raise typer.Exit(EXIT_EMPTY)

    @app.command()
    def retry(
        task_ids: Annotated[list[str], typer.Argument(help="ids of FAILURE jobs")],
        app_module: AppOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Send failed jobs again with their original arguments (new ids; the old record links to them)."""

        async def retry_known() -> list[tuple[str, str]]:
            missing = [i for i in task_ids if not await _recorded(i)]
            if missing:
                fail(f"no job recorded with id {', '.join(map(repr, missing))}", EXIT_EMPTY)
            return await control.retry(task_ids)

        pairs = run(app_module, retry_known)
        emit([{"failed": old, "retried_as": new} for old, new in pairs], as_json, ["failed", "retried_as"])

    @app.command("retry-failed")
    def retry_failed(
        task: TaskOpt = None,
        queue: Annotated[str | None, typer.Option("--queue", "-Q")] = None,
        since: Annotated[str | None, typer.Option(help="only failures this recent: 30m, 1h, 2d")] = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="list them, send nothing")] = False,
        app_module: AppOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Send again every job that failed for good (retries exhausted), filtered by task, queue and age."""
        seconds = parse_duration(since) if since else None
        if dry_run:
            rows = run(app_module, lambda: control.failed_jobs(task, queue, seconds))
            emit(rows, as_json, ["id", "task", "queue", "error", "date_done"])
            if not rows:
                raise typer.Exit(EXIT_EMPTY)
            return
        pairs = run(app_module, lambda: control.retry_failed(task, queue, seconds))
        emit([{"failed": old, "retried_as": new} for old, new in pairs], as_json, ["failed", "retried_as"])
        if not pairs:
            raise typer.Exit(EXIT_EMPTY)

    @app.command()
    def call(
        name: Annotated[str, typer.Argument(help="task name")],
        args: Annotated[str, typer.Option("--args", "-a", help="JSON list")] = "[]",
        kwargs: Annotated[str, typer.Option("--kwargs", "-k", help="JSON object")] = "{}",
        countdown: Annotated[float | None, typer.Option()] = None,
        queue: Annotated[str | None, typer.Option("--queue", "-Q")] = None,
        app_module: AppOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Send a task by name (Celery's ``celery call``); prints its id."""
        options: dict[str, Any] = {k: v for k, v in (("countdown", countdown), ("queue", queue)) if v is not None}
        arg_list, kw = parse_json(args, list, "--args"), parse_json(kwargs, dict, "--kwargs")
        task_id = run(app_module, lambda: control.call(name, arg_list, kw, **options))
        emit({"id": task_id} if as_json else task_id, as_json)

    @app.command()
    def purge(
        queue: Annotated[str | None, typer.Argument(help="a queue (or use -Q a,b)")] = None,
        queues: Annotated[str | None, typer.Option("--queues", "-Q", help="comma-separated queues")] = None,
        yes: YesOpt = False,
        app_module: AppOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Delete the ready jobs of queues (atomically per queue; deferred and running jobs stay)."""
        names = [q.strip() for q in ([queue] if queue else []) + (queues.split(",") if queues else []) if q.strip()]
        if not names:
            raise typer.BadParameter("name the queues to purge: QUEUE or -Q a,b")
        if not yes:
            confirm(f"Delete every ready job of {', '.join(names)}?")

        async def purge_all() -> dict[str, int]:
            return {name: await control.purge(name) for name in names}

        purged = run(app_module, purge_all)
        rows = [{"queue": name, "purged": count} for name, count in purged.items()]
        emit(purged if as_json else rows, as_json, None if as_json else ["queue", "purged"])
        if not any(purged.values()):  # an unknown queue and an empty one look alike: nothing was there
            raise typer.Exit(EXIT_EMPTY)

    @app.command("migrate-keys")
    def migrate_keys(
        dry_run: Annotated[bool, typer.Option("--dry-run", help="count only")] = False,
        app_module: AppOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Move this prefix's keys from the layout before hash tags (``te:…``) to ``{te}:…`` (workers stopped)."""
        emit(run(app_module, lambda: get_broker().migrate_legacy_keys(dry_run)), as_json)

    @app.command()
    def result(task_id: str, app_module: AppOpt = None, as_json: JsonOpt = False) -> None:
        """Show a task's result record (exit 1 when nothing is recorded under that id)."""

        async def lookup() -> dict[str, Any] | None:
            return await AsyncResult(task_id).record() if await _recorded(task_id) else None

        record = run(app_module, lookup)
        if record is None:
            fail(f"no job recorded with id {task_id!r}", EXIT_EMPTY)
        emit(record, as_json)


async def _recorded(task_id: str) -> bool:
    """Whether the store has a result record (of any state) for ``task_id``."""
    return bool(await get_broker().record(task_id))
