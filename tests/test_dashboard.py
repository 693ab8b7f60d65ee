"""The web dashboard, end to end: a real Redis, real worker processes, the dashboard as its own process
(``python -m tasks_engine.dashboard``) and a real headless Chromium (Debian's, driven by Playwright).

Chromium comes from ``scripts/ensure-chromium``; without it the module is skipped — except in CI
(``CI=true``), where a missing browser is a failure, not a skip. ``UPDATE_SCREENSHOTS=1`` also writes
the overview to ``docs/screenshots/overview.png``.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import tests.containment_tasks as bad
from tasks_engine import AsyncResult, send_task, states
from tasks_engine.ops import control
from tasks_engine.store import get_broker
from tests import sample_tasks as t
from tests.conftest import ROOT, skip_or_fail_in_ci, worker_env
from tests.dashboard_support import free_port

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
if CHROMIUM is None:
    skip_or_fail_in_ci(
        "no chromium found: run scripts/ensure-chromium (Debian's chromium + playwright)", allow_module_level=True
    )
from playwright.async_api import Browser, Page, async_playwright, expect  # noqa: E402

pytestmark = pytest.mark.slow
IMPORTS = "tests.containment_tasks"
SCREENSHOT = ROOT / "docs" / "screenshots" / "overview.png"
USER, PASSWORD, TOKEN = "ops", "s3cret-pass", "tok-123456"


async def wait_for(predicate: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


def request(
    url: str, method: str = "GET", data: bytes | None = None, headers: dict[str, str] | None = None, opener: Any = None
) -> tuple[int, dict[str, str], str]:
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with (opener or urllib.request.build_opener()).open(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


class Session:
    """A browser-like HTTP client: keeps the CSRF cookie and reads the token from a page."""

    def __init__(self, base: str, headers: dict[str, str] | None = None) -> None:
        self.base = base
        self.headers = headers or {}
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        status, _, page = self.get("/")
        assert status == 200, page
        self.token = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page).group(1)  # type: ignore[union-attr]

    def get(self, path: str) -> tuple[int, dict[str, str], str]:
        return request(self.base + path, headers=self.headers, opener=self.opener)

    def post(self, path: str, body: str = "", **headers: str) -> tuple[int, dict[str, str], str]:
        all_headers = {"Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded",
                       **self.headers, **headers}  # fmt: skip
        return request(self.base + path, "POST", body.encode(), all_headers, self.opener)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    assert CHROMIUM is not None, "CI=true: chromium must be installed (scripts/ensure-chromium)"
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        await chromium.close()


async def new_page(browser: Browser, **options: Any) -> Page:
    context = await browser.new_context(viewport={"width": 1360, "height": 900}, **options)
    page = await context.new_page()
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))  # the "drop?" confirm
    return page


async def live(page: Page) -> None:
    """The page has received at least one snapshot from ``/api/events`` since it loaded. (Polled from here:
    ``wait_for_function`` evaluates its predicate with ``eval`` in the page, which the CSP refuses.)"""
    deadline = time.monotonic() + 10
    while not await page.evaluate("window.dashboardUpdates > 0"):
        assert time.monotonic() < deadline, "no update from /api/events in 10 s"
        await asyncio.sleep(0.1)


async def state_is(result: AsyncResult, state: str) -> bool:
    return await result.state() == state


async def dead_count(n: int) -> bool:
    return len(await control.dead_letters()) == n


# ---------------------------------------------------------------- pages, filters, screenshot
async def test_every_page_loads_and_the_task_list_filters(engine, spawn_worker, dashboard, browser, tmp_path):
    spawn_worker(imports=IMPORTS)
    running = await bad.slow_step.delay("dash-pages", 30.0)
    later = await t.add.apply_async((1, 2), countdown=300)
    waiting = await t.add.apply_async((3, 4), queue="nobody-consumes")
    failed = await bad.fail_once.delay("dash-pages-fail", 7)
    await wait_for(lambda: state_is(failed, states.FAILURE), 15)
    await wait_for(lambda: state_is(running, states.STARTED), 15)
    base = dashboard("-I", "tests.beat_tasks")
    page = await new_page(browser)

    await page.goto(base + "/")
    for burst in range(8):  # something for the charts: a burst of jobs every half second, some failing
        await asyncio.gather(*(t.add.delay(i, i) for i in range(10 + 5 * burst)))
        if burst % 3 == 1:
            await bad.fail_once.delay(f"dash-pages-burst-{burst}", burst)
        await asyncio.sleep(0.5)
    row = page.locator("tbody[data-rows=queues] tr", has_text="nobody-consumes")
    await expect(row).to_contain_text("nobody consumes")
    await expect(page.locator("tbody[data-rows=queues] tr", has_text="default")).to_contain_text("1 (")
    await expect(page.locator("svg[data-chart=throughput] polyline")).to_have_count(1)
    await expect(page.locator("svg[data-chart=throughput]")).to_contain_text("max")
    await page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)
    assert (tmp_path / "overview.png").stat().st_size > 10_000
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "overview.png", SCREENSHOT)

    await page.goto(base + "/workers")
    worker_row = page.locator("tbody[data-rows=workers] tr").first
    await expect(worker_row).to_contain_text("healthy")
    await expect(worker_row.locator(f"a[href='/tasks/{running.id}']")).to_have_count(1)

    await page.goto(base + "/tasks")
    for section, task_id in (("running", running.id), ("scheduled", later.id), ("waiting", waiting.id),
                             ("failed", failed.id)):  # fmt: skip
        await expect(page.locator(f"#{section} tbody")).to_contain_text(task_id)
    await page.select_option("select[name=state]", "failed")
    await page.click("#filters button[type=submit]")
    await page.wait_for_url("**/tasks?state=failed*")
    await expect(page.locator("#failed tbody")).to_contain_text(failed.id)
    await expect(page.locator("#running")).to_have_count(0)
    await page.goto(base + "/tasks")
    await page.fill("input[name=name]", "slow_step")
    await page.click("#filters button[type=submit]")
    await expect(page.locator("#running tbody")).to_contain_text(running.id)
    await expect(page.locator("#waiting tbody")).not_to_contain_text(waiting.id)
    await page.goto(base + "/tasks?queue=nobody-consumes")
    await live(page)
    await expect(page.locator("#waiting tbody")).to_contain_text(waiting.id)
    await expect(page.locator("#scheduled tbody")).to_contain_text("Nothing deferred")

    await page.goto(f"{base}/tasks/{failed.id}")
    await expect(page.locator("#task-state")).to_have_text("FAILURE")
    await expect(page.locator("#task-traceback")).to_contain_text("first run fails")
    await expect(page.locator("#task-args")).to_contain_text('["dash-pages-fail", 7]')
    await expect(page.locator("main")).to_contain_text(failed.id)  # its root is itself
    await expect(page.get_by_role("button", name="terminate")).to_have_count(0)  # finished: nothing to revoke
    await expect(page.get_by_role("button", name="retry")).to_be_visible()
    await page.screenshot(path=str(tmp_path / "task.png"), full_page=True)

    await page.goto(f"{base}/tasks/{waiting.id}")  # not finished: read from its message, where it waits
    await expect(page.locator("#task-args")).to_contain_text("[3, 4]")
    await expect(page.locator("main")).to_contain_text("waiting")

    await page.goto(base + "/periodic")
    entry = page.locator("tbody[data-rows=periodic] tr", has_text="hourly-decorated")
    await expect(entry).to_contain_text("beat.hourly")
    await page.goto(base + "/dead")
    await expect(page.locator("tbody[data-rows=dead]")).to_contain_text("No dead letter")

    status, headers, body = request(base + "/metrics")
    assert status == 200 and 'tasks_engine_queue_ready{queue="nobody-consumes"} 1.0' in body
    status, _, body = request(base + "/api/tasks?state=waiting")
    assert status == 200 and waiting.id in body and running.id not in body


async def test_the_pages_run_under_the_content_security_policy(engine, spawn_worker, dashboard, browser):
    """Every page with its script, its live updates and an action, while the browser enforces the CSP
    (a violation is reported by the page, and the script would not have run); no page can be framed."""
    spawn_worker(imports=IMPORTS)
    failed = await bad.fail_once.delay("dash-csp", 1)
    await wait_for(lambda: state_is(failed, states.FAILURE), 15)
    await t.add.apply_async((1, 1), queue="nobody-consumes")
    base = dashboard()
    page = await new_page(browser)
    await page.add_init_script(
        "window.cspViolations = [];"
        "document.addEventListener('securitypolicyviolation', (e) => window.cspViolations.push(e.violatedDirective));"
    )
    console: list[str] = []
    page.on("console", lambda msg: console.append(msg.text) if msg.type in ("error", "warning") else None)
    for path in ("/", "/workers", "/tasks", f"/tasks/{failed.id}", "/periodic", "/dead",
                 "/queues/nobody-consumes/purge"):  # fmt: skip
        response = await page.goto(base + path)
        assert response is not None and "script-src 'self'" in response.headers["content-security-policy"]
        await live(page)  # the script ran and /api/events reached it
        assert await page.evaluate("window.cspViolations") == [], path
    await page.goto(f"{base}/tasks?state=failed")
    await live(page)
    await page.locator("#failed tr", has_text=failed.id).get_by_role("button", name="retry").click()
    await expect(page.locator("#notice")).to_contain_text("sent again")  # an action posted by the script
    assert await page.evaluate("window.cspViolations") == []
    assert not [line for line in console if "Content Security Policy" in line], console

    framing = await new_page(browser)
    await framing.set_content(f'<iframe id="f" src="{base}/"></iframe>')
    await framing.wait_for_timeout(1000)
    frame = await (await framing.query_selector("#f")).content_frame()  # type: ignore[union-attr]
    assert frame is not None and await frame.query_selector("#live") is None  # refused: frame-ancestors 'none'


# ---------------------------------------------------------------- actions, live
async def test_terminate_a_running_job_from_its_page_and_watch_it_change_live(engine, spawn_worker, dashboard,
                                                                              browser):  # fmt: skip
    spawn_worker(imports=IMPORTS)
    running = await bad.slow_step.delay("dash-terminate", 60.0)
    await wait_for(lambda: state_is(running, states.STARTED), 15)
    base = dashboard()
    page = await new_page(browser)
    await page.goto(f"{base}/tasks/{running.id}")
    await expect(page.locator("#task-state")).to_have_text("STARTED")
    await expect(page.get_by_role("button", name="retry")).to_have_count(0)  # not failed: nothing to retry
    await live(page)
    await page.evaluate("window.notReloaded = true")
    await page.get_by_role("button", name="terminate").click()
    await expect(page.locator("#task-state")).to_have_text("REVOKED", timeout=15_000)
    assert await page.evaluate("window.notReloaded") is True  # the change came over /api/events
    await expect(page.locator("#notice")).to_contain_text("terminated")
    assert await running.state() == states.REVOKED
    await wait_for(lambda: _not_running(running.id), 10)


async def _not_running(task_id: str) -> bool:
    return all(j["id"] != task_id for j in await control.active())


async def test_requeue_and_drop_dead_letters(engine, spawn_worker, dashboard, browser):
    lacking = spawn_worker()  # only tests.sample_tasks: bad.pid is unknown to it
    requeued = await send_task("bad.pid")
    dropped = await send_task("bad.pid")
    await wait_for(lambda: dead_count(2), 15)
    lacking.kill()
    lacking.wait()
    spawn_worker(imports=IMPORTS)  # now the task is deployed
    base = dashboard()
    page = await new_page(browser)
    await page.goto(base + "/dead")
    rows = page.locator("tbody[data-rows=dead] tr")
    await expect(rows).to_have_count(2)
    await expect(rows.first).to_contain_text("not registered")
    await live(page)
    await rows.filter(has_text=requeued.id).get_by_role("button", name="requeue").click()
    await expect(rows).to_have_count(1, timeout=10_000)
    assert isinstance(await requeued.get(timeout=15), int)  # ran this time
    await rows.filter(has_text=dropped.id).get_by_role("button", name="drop").click()  # confirm accepted
    await expect(page.locator("tbody[data-rows=dead]")).to_contain_text("No dead letter", timeout=10_000)
    assert await control.dead_letters() == []
    assert await dropped.state() != states.SUCCESS


async def test_retry_a_failed_job_and_purge_a_queue_after_confirmation(engine, spawn_worker, dashboard, browser):
    spawn_worker(imports=IMPORTS)
    failed = await bad.fail_once.delay("dash-retry", 5)
    await wait_for(lambda: state_is(failed, states.FAILURE), 15)
    for i in range(3):
        await t.add.apply_async((i, i), queue="nobody-consumes")
    base = dashboard()
    page = await new_page(browser)

    await page.goto(base + "/tasks?state=failed")
    await live(page)
    await page.locator("#failed tr", has_text=failed.id).get_by_role("button", name="retry").click()
    await expect(page.locator("#failed tbody")).not_to_contain_text(failed.id, timeout=10_000)
    new_id = await failed.record()  # the old record points to the new job
    retried_as = await get_broker().record_field(failed.id, "retried_as")
    assert retried_as and new_id["state"] == states.FAILURE
    assert await AsyncResult(retried_as).get(timeout=15) == 5

    await page.goto(base + "/")
    await page.locator("tbody[data-rows=queues] tr", has_text="nobody-consumes").get_by_text("purge…").click()
    await page.wait_for_url("**/queues/nobody-consumes/purge")
    await expect(page.locator("main")).to_contain_text("3")
    await page.get_by_role("button", name="Purge nobody-consumes").click()  # not confirmed: refused
    await expect(page.locator("#notice")).to_contain_text("confirm with the queue's name")
    assert await get_broker().ready_count("nobody-consumes") == 3
    await page.fill("#purge-confirm", "nobody-consumes")
    await page.get_by_role("button", name="Purge nobody-consumes").click()
    await page.wait_for_url(re.compile(r".*/\?notice=.*"))
    await expect(page.locator("#notice")).to_contain_text("purged 3 ready job(s) from nobody-consumes")
    assert await get_broker().ready_count("nobody-consumes") == 0


# ---------------------------------------------------------------- security
async def test_credentials_are_required_when_configured(engine, dashboard, browser):
    base = dashboard(host="0.0.0.0", username=USER, password=PASSWORD, token=TOKEN)  # allowed: credentials set
    for path in ("/", "/tasks", "/api/overview", "/api/events", "/metrics", "/api/tasks/x/revoke"):
        status, headers, _ = request(base + path)
        assert status == 401, path
        assert headers["www-authenticate"].startswith("Basic")
    assert request(base + "/healthz")[0] == 200  # no data there
    wrong = {"Authorization": "Basic " + _b64(f"{USER}:nope")}
    assert request(base + "/", headers=wrong)[0] == 401
    assert request(base + "/", headers={"Authorization": "Bearer wrong"})[0] == 401
    assert request(base + "/api/overview", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
    assert request(base + "/metrics", headers={"Authorization": "Basic " + _b64(f"{USER}:{PASSWORD}")})[0] == 200

    anonymous = await new_page(browser)  # (navigating there, Chromium gives up: ERR_INVALID_AUTH_CREDENTIALS)
    assert (await anonymous.request.get(base + "/")).status == 401
    page = await new_page(browser, http_credentials={"username": USER, "password": PASSWORD})
    await page.goto(base + "/")
    await live(page)  # the event stream is authenticated too
    await expect(page.locator("#live")).to_have_text("live")


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


async def test_read_only_hides_and_refuses_actions(engine, spawn_worker, dashboard, browser):
    spawn_worker(imports=IMPORTS)
    running = await bad.slow_step.delay("dash-ro", 30.0)
    failed = await bad.fail_once.delay("dash-ro-fail", 1)
    await wait_for(lambda: state_is(running, states.STARTED), 15)
    await wait_for(lambda: state_is(failed, states.FAILURE), 15)
    await t.add.apply_async((1, 1), queue="nobody-consumes")
    base = dashboard(read_only="true")
    page = await new_page(browser)
    await page.goto(base + "/tasks")
    await expect(page.locator("#read-only")).to_be_visible()
    await expect(page.locator("#running tbody")).to_contain_text(running.id)
    await expect(page.locator("#failed tbody")).to_contain_text(failed.id)
    assert await page.locator("button").count() == 1  # only the filter's own button
    await page.goto(f"{base}/tasks/{running.id}")
    await expect(page.get_by_role("button", name="terminate")).to_have_count(0)
    await page.goto(base + "/")
    await expect(page.locator("tbody[data-rows=queues]")).to_contain_text("nobody-consumes")
    await expect(page.get_by_text("purge…")).to_have_count(0)

    session = Session(base)
    status, _, body = session.post(f"/api/tasks/{running.id}/revoke", f"terminate=1&csrf_token={session.token}")
    assert status == 403 and "read-only" in body
    assert session.post(f"/api/tasks/{failed.id}/retry", f"csrf_token={session.token}")[0] == 403
    assert (
        session.post("/api/queues/nobody-consumes/purge", f"confirm=nobody-consumes&csrf_token={session.token}")[0]
        == 403
    )
    assert await running.state() == states.STARTED
    assert await get_broker().ready_count("nobody-consumes") == 1


async def test_a_post_without_the_csrf_token_is_refused(engine, dashboard):
    await t.add.apply_async((1, 1), queue="nobody-consumes")
    waiting = await t.add.apply_async((2, 2), queue="nobody-consumes")
    base = dashboard()
    session = Session(base)
    path = f"/api/tasks/{waiting.id}/revoke"
    assert session.post(path)[0] == 403  # no token at all
    assert session.post(path, "csrf_token=" + "0" * 64)[0] == 403  # a guessed one
    status, _, body = request(base + path, "POST", f"csrf_token={session.token}".encode(),
                              {"Accept": "application/json"})  # fmt: skip
    assert status == 403 and "CSRF" in body  # the token without this browser's cookie
    assert session.post(path, f"csrf_token={session.token}", Origin="http://evil.example")[0] == 403
    assert await waiting.state() == states.PENDING
    status, _, body = session.post(path, f"csrf_token={session.token}")
    assert status == 200 and '"ok":true' in body
    assert await waiting.state() == states.REVOKED
    status, _, body = session.post("/api/queues/nobody-consumes/purge", "", **{"X-CSRF-Token": session.token})
    assert status == 400 and "confirm" in body  # the header works; the confirmation is still needed


async def test_it_refuses_to_serve_beyond_loopback_without_credentials(engine, prefix):
    from tasks_engine.dashboard.app import main
    from tasks_engine.dashboard.settings import DashboardConfigError

    port = free_port()
    for host in ("0.0.0.0", "::", "192.168.1.20", "dashboard.example.com"):
        with pytest.raises(DashboardConfigError, match="without credentials"):
            main(host, port)
    with pytest.raises(DashboardConfigError, match="both"):
        main("127.0.0.1", port, username="ops")
    proc = subprocess.run(
        [sys.executable, "-m", "tasks_engine.dashboard", "--host", "0.0.0.0", "--port", str(port)],
        cwd=ROOT, env=worker_env(prefix), capture_output=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 2 and b"refusing to serve the dashboard on 0.0.0.0" in proc.stderr
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0  # nothing was bound
