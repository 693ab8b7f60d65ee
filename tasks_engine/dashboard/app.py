"""The web dashboard (Flower's place, port 5555): overview, workers, tasks, periodic entries, dead letters.

Pages are rendered once and then kept live by ``/api/events`` (server-sent events: the page's JSON
snapshot every ``refresh_seconds``), so an operator watching a job sees it change without reloading.
Every read and action goes through :mod:`tasks_engine.ops.control`; nothing here spells a Redis key.

JSON API — the pages use exactly these; all need the dashboard's credentials when configured:

``GET  /api/overview``                    totals, queues (ready, deferred, oldest age, consumers), series
``GET  /api/workers``                     live workers: queues, running jobs, processed, loop health
``GET  /api/tasks?state=&name=&queue=``   running / scheduled / waiting / failed lists; ``state`` picks one,
                                          ``name`` is a substring or a glob (``report.*``), ``queue`` exact
``GET  /api/tasks/{id}``                  one job: state, args, result, traceback, retries, dates, meta, ids
``GET  /api/periodic``                    periodic entries with next and last run
``GET  /api/dead``                        dead letters, newest first
``GET  /api/events?page=…``               ``text/event-stream`` of the snapshot of ``page`` (overview, workers,
                                          tasks [+ filters], task [+ id], periodic, dead)
``POST /api/tasks/{id}/revoke``           ``terminate=1`` also cancels it where it runs
``POST /api/tasks/{id}/retry``            a FAILURE job sent again as a new job
``POST /api/dead/{id}/requeue``           a dead letter's message sent again
``POST /api/dead/{id}/drop``              a dead letter deleted
``POST /api/queues/{queue}/purge``        ``confirm=<queue>`` required: the ready jobs of the queue deleted
``GET  /metrics``                         Prometheus: the cluster exposition
``GET  /healthz``                         ``ok`` (open, no data)

A POST needs the CSRF token (form field ``csrf_token`` or header ``X-CSRF-Token``) and is refused
with 403 in read-only mode; with ``Accept: application/json`` it answers JSON, else 303 to the page.
Every route, ``/healthz`` and ``/static/`` included, first passes :mod:`tasks_engine.dashboard.edge`
(Host and Origin allow-list, security headers).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import orjson
import structlog
import uvicorn
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp

from tasks_engine.core.config import redacted_url
from tasks_engine.core.logs import configure_logging
from tasks_engine.dashboard import data
from tasks_engine.dashboard.edge import EdgeMiddleware, HostPolicy
from tasks_engine.dashboard.security import CSRF_FIELD, CSRF_HEADER, AuthMiddleware, Guard
from tasks_engine.dashboard.settings import DashboardConfigError, DashboardSettings, check_exposure, is_loopback
from tasks_engine.exceptions import REDIS_UNAVAILABLE
from tasks_engine.ops import control
from tasks_engine.ops.metrics import cluster_exposition, prometheus
from tasks_engine.store import get_broker

log = structlog.get_logger("tasks_engine.dashboard")
HERE = Path(__file__).resolve().parent
PAGES = ("overview", "workers", "tasks", "periodic", "dead")
MAX_FORM_BYTES = 64 * 1024
Operation = Callable[[Request, dict[str, str]], Awaitable[dict[str, Any]]]


def json_response(value: Any, status: int = 200) -> Response:
    body = orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS)
    return Response(body, status_code=status, media_type="application/json")


def embedded_json(value: Any) -> str:
    """JSON safe inside ``<script type="application/json">`` (no ``</script>`` can close it early)."""
    return orjson.dumps(value, default=str).decode().replace("<", "\\u003c")


class Dashboard:
    """The app's state: settings, the credential guard and the sampler behind the overview's charts."""

    def __init__(self, settings: DashboardSettings) -> None:
        self.settings = settings
        self.policy = HostPolicy(settings.host, settings.port, settings.allowed_hosts)
        self.guard = Guard(settings, self.policy)
        self.sampler = data.Sampler(settings.sample_seconds, settings.samples_kept)
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))

    # ------------------------------------------------------------ pages
    def page(self, request: Request, name: str, snapshot: dict[str, Any], **extra: Any) -> HTMLResponse:
        params = {k: v for k, v in request.query_params.items() if k != "notice"}
        context = {
            "page": name, "snapshot": snapshot, "snapshot_json": embedded_json(snapshot),
            "events_url": "/api/events?" + urlencode({**params, "page": name, **extra.get("event_params", {})}),
            "csrf": request.state.csrf_token, "read_only": self.settings.read_only,
            "notice": request.query_params.get("notice"), "redis": redacted_url(), **extra,
        }  # fmt: skip
        return self.templates.TemplateResponse(request, f"{name}.html", context)

    async def snap(self, page: str, params: dict[str, str]) -> dict[str, Any]:
        return await data.snapshot(page, params, self.sampler, self.settings.list_limit)

    async def overview_page(self, request: Request) -> Response:
        return self.page(request, "overview", await self.snap("overview", {}))

    async def workers_page(self, request: Request) -> Response:
        return self.page(request, "workers", await self.snap("workers", {}))

    async def tasks_page(self, request: Request) -> Response:
        params = dict(request.query_params)
        return self.page(request, "tasks", await self.snap("tasks", params), sections=data.SECTIONS)

    async def task_page(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        snapshot = await self.snap("task", {"id": task_id})
        return self.page(request, "task", snapshot, task_id=task_id, event_params={"id": task_id})

    async def periodic_page(self, request: Request) -> Response:
        return self.page(request, "periodic", await self.snap("periodic", {}))

    async def dead_page(self, request: Request) -> Response:
        return self.page(request, "dead", await self.snap("dead", {}))

    async def purge_page(self, request: Request) -> Response:
        """The confirmation step: purging cannot be undone, so the operator types the queue's name."""
        queue = request.path_params["queue"]
        row = next((q for q in await control.queues() if q["queue"] == queue), None)
        return self.page(request, "purge", {"totals": await control.totals()}, queue=queue, row=row)

    # ------------------------------------------------------------ JSON reads
    async def api_overview(self, request: Request) -> Response:
        return json_response(await data.overview(self.sampler))

    async def api_workers(self, request: Request) -> Response:
        return json_response(await data.workers())

    async def api_tasks(self, request: Request) -> Response:
        q = request.query_params
        lists = await data.task_lists(q.get("state"), q.get("name"), q.get("queue"), self.settings.list_limit)
        return json_response(lists)

    async def api_task(self, request: Request) -> Response:
        found = await data.task(request.path_params["task_id"])
        return json_response(found, 200 if found["exists"] else 404)

    async def api_periodic(self, request: Request) -> Response:
        return json_response(await data.periodic())

    async def api_dead(self, request: Request) -> Response:
        return json_response(await data.dead(self.settings.list_limit))

    async def metrics(self, request: Request) -> Response:
        _, content_type, body = prometheus(await cluster_exposition())
        return Response(body, media_type=content_type)

    async def healthz(self, request: Request) -> Response:
        return Response("ok\n", media_type="text/plain")

    async def events(self, request: Request) -> Response:
        """Server-sent events: one ``data:`` line of the page's snapshot per period; ``problem`` events
        while Redis is away (the page keeps its last data and says so)."""
        params = dict(request.query_params)
        page = params.pop("page", "overview")

        async def stream() -> AsyncIterator[bytes]:
            yield b"retry: 2000\n\n"
            while True:
                try:
                    yield b"data: " + orjson.dumps(await self.snap(page, params), default=str) + b"\n\n"
                except REDIS_UNAVAILABLE as exc:
                    yield b"event: problem\ndata: " + orjson.dumps({"error": f"redis unavailable: {exc}"}) + b"\n\n"
                await asyncio.sleep(self.settings.refresh_seconds)

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    # ------------------------------------------------------------ actions
    def action(self, name: str, op: Operation) -> Any:
        async def endpoint(request: Request) -> Response:
            return await self.act(request, name, op)

        return endpoint

    async def act(self, request: Request, name: str, op: Operation) -> Response:
        """Read-only, then CSRF, then the operation; a ValueError from the engine is the operator's 400."""
        wants_json = "application/json" in request.headers.get("accept", "")
        if self.settings.read_only:
            return self.refuse(request, wants_json, 403, "read-only dashboard: actions are disabled")
        form = await read_form(request)
        if not self.guard.csrf_ok(request, request.headers.get(CSRF_HEADER) or form.get(CSRF_FIELD)):
            log.warning("dashboard action refused: bad CSRF token", action=name, path=request.url.path)
            return self.refuse(request, wants_json, 403, "CSRF token missing or invalid: reload the page")
        try:
            outcome = await op(request, form)
        except ValueError as exc:
            return self.refuse(request, wants_json, 400, str(exc))
        log.info("dashboard action", action=name, **{k: v for k, v in outcome.items() if k != "message"})
        if wants_json:
            return json_response({"ok": True, **outcome})
        return RedirectResponse(_back(request, form, outcome["message"]), status_code=303)

    def refuse(self, request: Request, wants_json: bool, status: int, message: str) -> Response:
        if wants_json or (
            request.url.path.startswith("/api/") and "text/html" not in request.headers.get("accept", "")
        ):
            return json_response({"ok": False, "error": message}, status)
        return HTMLResponse(f"<!doctype html><title>{status}</title><p>{_escape(message)}</p>", status)

    @staticmethod
    async def revoke(request: Request, form: dict[str, str]) -> dict[str, Any]:
        task_id = request.path_params["task_id"]
        terminate = form.get("terminate", "") in ("1", "true", "on", "yes")
        waiting = await control.revoke([task_id], terminate=terminate)
        how = "terminated" if terminate else "revoked"
        return {"message": f"{task_id} {how}" + (" (it was waiting)" if waiting else ""), "id": task_id,
                "terminate": terminate, "waiting": waiting}  # fmt: skip

    @staticmethod
    async def retry(request: Request, form: dict[str, str]) -> dict[str, Any]:
        task_id = request.path_params["task_id"]
        ((_, new_id),) = await control.retry([task_id])
        return {"message": f"{task_id} sent again as {new_id}", "id": task_id, "new_id": new_id}

    @staticmethod
    async def requeue_dead(request: Request, form: dict[str, str]) -> dict[str, Any]:
        task_id = request.path_params["task_id"]
        requeued, problems = await control.requeue_dead(ids=[task_id])
        if not requeued:
            raise ValueError(problems[0] if problems else f"no dead letter {task_id}")
        return {"message": f"dead letter {task_id} sent again", "id": task_id, "requeued": requeued}

    @staticmethod
    async def drop_dead(request: Request, form: dict[str, str]) -> dict[str, Any]:
        task_id = request.path_params["task_id"]
        dropped = await control.drop_dead(ids=[task_id])
        if not dropped:
            raise ValueError(f"no dead letter {task_id}")
        return {"message": f"dead letter {task_id} dropped", "id": task_id, "dropped": dropped}

    @staticmethod
    async def purge(request: Request, form: dict[str, str]) -> dict[str, Any]:
        queue = request.path_params["queue"]
        if form.get("confirm") != queue:
            raise ValueError(f"to purge, confirm with the queue's name ({queue!r})")
        removed = await control.purge(queue)
        return {"message": f"purged {removed} ready job(s) from {queue}", "queue": queue, "removed": removed}

    # ------------------------------------------------------------ the app
    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        sampling = asyncio.create_task(self.sampler.run(), name="dashboard-sampler")
        try:
            yield
        finally:
            sampling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampling
            await get_broker().close()

    def app(self) -> Starlette:
        routes = [
            Route("/", self.overview_page), Route("/workers", self.workers_page), Route("/tasks", self.tasks_page),
            Route("/tasks/{task_id:path}", self.task_page), Route("/periodic", self.periodic_page),
            Route("/dead", self.dead_page), Route("/queues/{queue:path}/purge", self.purge_page),
            Route("/api/overview", self.api_overview), Route("/api/workers", self.api_workers),
            Route("/api/tasks", self.api_tasks), Route("/api/periodic", self.api_periodic),
            Route("/api/dead", self.api_dead), Route("/api/events", self.events),
            Route("/api/tasks/{task_id:path}/revoke", self.action("revoke", self.revoke), methods=["POST"]),
            Route("/api/tasks/{task_id:path}/retry", self.action("retry", self.retry), methods=["POST"]),
            Route("/api/dead/{task_id:path}/requeue", self.action("requeue", self.requeue_dead), methods=["POST"]),
            Route("/api/dead/{task_id:path}/drop", self.action("drop", self.drop_dead), methods=["POST"]),
            Route("/api/queues/{queue:path}/purge", self.action("purge", self.purge), methods=["POST"]),
            Route("/api/tasks/{task_id:path}", self.api_task),
            Route("/metrics", self.metrics), Route("/healthz", self.healthz),
            Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        ]  # fmt: skip
        handlers: dict[Any, Any] = dict.fromkeys(REDIS_UNAVAILABLE, self.redis_down)
        app = DashboardApp(self.policy, routes=routes, lifespan=self.lifespan, exception_handlers=handlers)
        app.add_middleware(AuthMiddleware, guard=self.guard)
        return app

    async def redis_down(self, request: Request, exc: Exception) -> Response:
        log.warning("dashboard request failed: redis unavailable", path=request.url.path, error=str(exc))
        message = f"Redis at {redacted_url()} is unavailable ({exc})"
        return self.refuse(request, request.url.path.startswith("/api/"), 503, message)


class DashboardApp(Starlette):
    """Starlette with :class:`EdgeMiddleware` outside even its error handler (a 500 carries the headers)."""

    def __init__(self, policy: HostPolicy, **kwargs: Any) -> None:
        self.policy = policy
        super().__init__(**kwargs)

    def build_middleware_stack(self) -> ASGIApp:
        return EdgeMiddleware(super().build_middleware_stack(), self.policy)


async def read_form(request: Request) -> dict[str, str]:
    """A small urlencoded or JSON body, read without python-multipart (the pages send urlencoded)."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return {}
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            value = orjson.loads(body or b"{}")
        except orjson.JSONDecodeError:
            return {}
        return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}
    return {k: v[-1] for k, v in parse_qs(body.decode(errors="replace"), keep_blank_values=True).items()}


def _back(request: Request, form: dict[str, str], notice: str) -> str:
    """Where a plain form post returns: its ``next`` (a local path only) or the referring page."""
    target = form.get("next") or request.headers.get("referer", "/")
    if "://" in target:
        target = "/" + target.split("://", 1)[1].partition("/")[2]
    if not target.startswith("/") or target.startswith("//"):
        target = "/"
    base = target.split("?", 1)[0]
    return f"{base}?notice={quote(notice)}"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def load_settings(**overrides: Any) -> DashboardSettings:
    """``TE_DASHBOARD_*`` with overrides; a bad value is a :class:`DashboardConfigError` naming the setting
    (pydantic's own message would echo the input, and a password is an input)."""
    try:
        return DashboardSettings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"TE_DASHBOARD_{'_'.join(str(p) for p in e['loc'][:1]).upper()}: {e['msg']}" for e in exc.errors()
        )
        raise DashboardConfigError(problems) from None


def create_app(settings: DashboardSettings | None = None) -> Starlette:
    """The ASGI app (also for running under another server, e.g. ``uvicorn --factory`` with TLS); refuses
    unsafe exposure like :func:`main`. Proxy headers are then the server's business (its own trust list)."""
    settings = settings or load_settings()
    check_exposure(settings)
    return Dashboard(settings).app()


def main(
    host: str | None = None,
    port: int | None = None,
    *,
    username: str | None = None,
    password: str | None = None,
    token: str | None = None,
    read_only: bool | None = None,
    imports: Sequence[str] = (),
    allowed_hosts: Sequence[str] | None = None,
    forwarded_allow_ips: str | None = None,
) -> None:
    """Serve the dashboard until interrupted. Arguments override ``TE_DASHBOARD_*``; ``imports`` are the
    app's modules (their beat schedule is what the periodic page shows).

    Raises :class:`DashboardConfigError` before binding anything when the exposure is unsafe."""
    import importlib

    overrides: dict[str, Any] = {"host": host, "port": port, "username": username, "password": password,
                                 "token": token, "read_only": read_only, "allowed_hosts": allowed_hosts,
                                 "forwarded_allow_ips": forwarded_allow_ips}  # fmt: skip
    settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    check_exposure(settings)
    for name in imports:
        importlib.import_module(name)
    configure_logging()
    app = Dashboard(settings).app()
    auth = "token" if settings.token else "basic" if settings.has_credentials else "none (loopback only)"
    log.info("dashboard serving", url=f"http://{settings.host}:{settings.port}/", auth=auth,
             read_only=settings.read_only, redis=redacted_url(), allowed_hosts=settings.allowed_hosts,
             forwarded_allow_ips=settings.forwarded_allow_ips)  # fmt: skip
    if not settings.allowed_hosts and not is_loopback(settings.host):
        log.warning("dashboard answers only its loopback names and bound address: set TE_DASHBOARD_ALLOWED_HOSTS "
                    "to the name browsers use", host=settings.host)  # fmt: skip
    trusted = settings.forwarded_allow_ips  # uvicorn would trust 127.0.0.1's X-Forwarded-* by default
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                            timeout_graceful_shutdown=1, lifespan="on", proxy_headers=bool(trusted),
                            forwarded_allow_ips=trusted)  # fmt: skip
    uvicorn.Server(config).run()


__all__ = ["Dashboard", "DashboardConfigError", "DashboardSettings", "create_app", "main"]
