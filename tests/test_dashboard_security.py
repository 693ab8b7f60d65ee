"""The dashboard's perimeter over real HTTP: Host and Origin allow-list (DNS rebinding), security headers,
``Secure`` cookies over HTTPS (direct TLS, or a proxy only when trusted). No browser needed; the pages
under the Content-Security-Policy in a real Chromium are in ``tests/test_dashboard.py``.

Every check runs over the routes the Starlette app really has, enumerated here, so a route added later
is covered without touching this file.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest
from starlette.routing import Mount, Route

from tasks_engine import states
from tasks_engine.dashboard.app import HERE, create_app
from tasks_engine.dashboard.settings import DashboardSettings
from tasks_engine.store import get_broker
from tests import sample_tasks as t
from tests.conftest import ROOT, worker_env
from tests.dashboard_support import Reply, call, free_port

TOKEN = "tok-security-123456"
EVIL = "rebind.evil.example"
HEADERS = ("content-security-policy", "x-frame-options", "x-content-type-options", "referrer-policy")


def routes() -> list[tuple[str, str]]:
    """(method, path) of every route of the real app, path parameters filled in; plus an unknown path."""
    found: list[tuple[str, str]] = []
    for route in create_app(DashboardSettings()).routes:
        if isinstance(route, Mount):
            found.append(("GET", route.path + "/dashboard.js"))
        elif isinstance(route, Route):
            path = re.sub(r"\{[^}]+\}", "x", route.path)
            found.extend(
                (m, path + ("?page=overview" if path == "/api/events" else ""))
                for m in sorted(route.methods or {"GET"})
                if m != "HEAD"
            )
        else:
            raise AssertionError(f"a new kind of route, {route!r}: send it a request here too")
    assert len(found) >= 20 and any(m == "POST" for m, _ in found)  # the enumeration saw the app's routes
    return [*found, ("GET", "/no-such-page")]


ROUTES = routes()


def port_of(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


def csrf_session(port: int, host: str | None = None, **headers: str) -> tuple[str, str]:
    """(cookie header, token) as a browser holds them after loading a page."""
    page = call(port, "GET", "/", {"Host": host or f"127.0.0.1:{port}", **headers})
    assert page.status == 200, page.body
    cookie = page.cookies[0].split(";", 1)[0]
    token = re.search(rb'name="csrf-token" content="([0-9a-f]+)"', page.body).group(1).decode()  # type: ignore[union-attr]
    return cookie, token


# ---------------------------------------------------------------- DNS rebinding: Host and Origin
@pytest.mark.parametrize("auth", ["no credentials", "token"])
async def test_every_route_refuses_a_host_that_is_not_allowed(engine, dashboard, auth):
    waiting = await t.add.apply_async((1, 2), queue="nobody-consumes")
    base = dashboard(**({"token": TOKEN} if auth == "token" else {}))
    port = port_of(base)
    creds = {"Authorization": f"Bearer {TOKEN}"} if auth == "token" else {}
    cookie, token = csrf_session(port, **creds)
    forged = [f"{EVIL}:{port}", EVIL, f"127.0.0.1.{EVIL}:{port}", f"localhost.{EVIL}:{port}",
              f"{EVIL}:{port}@127.0.0.1", "127.0.0.1:1", None]  # fmt: skip
    for method, path in ROUTES:
        real = path.replace("/x/", f"/{waiting.id}/")
        for host in forged:
            for extra in ({}, creds):
                headers = {"Host": host, "Cookie": cookie, "X-CSRF-Token": token, "Accept": "application/json",
                           "Content-Type": "application/x-www-form-urlencoded", **extra}  # fmt: skip
                # (no body without a Host: uvicorn closes at once, and unread bytes would reset the connection)
                body = f"csrf_token={token}&confirm=nobody-consumes" if host else ""
                reply = call(port, method, real, headers, body)
                assert reply.status == 400, (method, path, host, reply.status, reply.body[:200])
                # (no Host at all: uvicorn itself refuses the HTTP/1.1 request before the app sees it)
                refusal = b"invalid Host header" if host else b"Invalid HTTP request"
                assert reply.body.startswith(refusal), (method, path, host, reply.body[:200])
                assert reply.headers["content-type"].startswith("text/plain") and not reply.cookies
    assert await waiting.state() == states.PENDING  # no revoke went through
    assert await get_broker().ready_count("nobody-consumes") == 1  # no purge either
    reply = call(port, "GET", "/api/tasks?state=waiting", {"Host": f"127.0.0.1:{port}", **creds})
    assert reply.status == 200 and waiting.id.encode() in reply.body  # the same request with its real Host


@pytest.mark.parametrize("auth", ["no credentials", "token"])
async def test_every_route_refuses_an_origin_that_is_not_allowed(engine, dashboard, auth):
    waiting = await t.add.apply_async((1, 2), queue="nobody-consumes")
    base = dashboard(**({"token": TOKEN} if auth == "token" else {}))
    port = port_of(base)
    creds = {"Authorization": f"Bearer {TOKEN}"} if auth == "token" else {}
    cookie, token = csrf_session(port, **creds)
    for method, path in ROUTES:
        real = path.replace("/x/", f"/{waiting.id}/")
        for origin in (f"http://{EVIL}:{port}", f"https://{EVIL}", "null", f"http://127.0.0.1:{port + 1}",
                       f"http://localhost.{EVIL}:{port}"):  # fmt: skip
            for extra in ({}, creds):
                # the request's Host is an allowed one: the rebinding page's Origin no longer equals it
                headers = {"Host": f"127.0.0.1:{port}", "Origin": origin, "Cookie": cookie, "X-CSRF-Token": token,
                           "Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded",
                           **extra}  # fmt: skip
                reply = call(port, method, real, headers, f"csrf_token={token}&confirm=nobody-consumes")
                assert reply.status == 403, (method, path, origin, reply.status, reply.body[:200])
                assert reply.body == b"cross-origin request refused\n", (method, path, origin)
    assert await waiting.state() == states.PENDING
    assert await get_broker().ready_count("nobody-consumes") == 1
    reply = call(port, "GET", "/api/tasks?state=waiting", {"Host": f"localhost:{port}", **creds})
    assert waiting.id.encode() in reply.body


async def test_allowed_hosts_and_same_origin_posts_still_work(engine, dashboard):
    first = await t.add.apply_async((1, 1), queue="nobody-consumes")
    second = await t.add.apply_async((2, 2), queue="nobody-consumes")
    base = dashboard(allowed_hosts="dash.example.com, *.corp.example")
    port = port_of(base)
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", f"LocalHost:{port}",
                 "dash.example.com", "dash.example.com:443", "ops.corp.example"):  # fmt: skip
        reply = call(port, "GET", "/api/tasks?state=waiting", {"Host": host})
        assert reply.status == 200 and first.id.encode() in reply.body, host
    assert call(port, "GET", "/", {"Host": "corp.example"}).status == 400  # *.domain: its subdomains only

    cookie, token = csrf_session(port)  # a browser on http://127.0.0.1:port: Chromium sends its Origin
    headers = {"Host": f"127.0.0.1:{port}", "Origin": f"http://127.0.0.1:{port}", "Cookie": cookie,
               "Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded"}  # fmt: skip
    assert call(port, "POST", f"/api/tasks/{first.id}/revoke", headers, "csrf_token=bad").status == 403
    reply = call(port, "POST", f"/api/tasks/{first.id}/revoke", headers, f"csrf_token={token}")
    assert reply.status == 200 and b'"ok":true' in reply.body
    assert await first.state() == states.REVOKED

    # Behind a reverse proxy for https://dash.example.com: the public name as Host and as Origin.
    cookie, token = csrf_session(port, "dash.example.com")
    headers = {**headers, "Host": "dash.example.com", "Origin": "https://dash.example.com", "Cookie": cookie}
    reply = call(port, "POST", f"/api/tasks/{second.id}/revoke", headers, f"csrf_token={token}")
    assert reply.status == 200, reply.body
    assert await second.state() == states.REVOKED


def test_a_bad_allowed_hosts_value_is_one_line_naming_the_setting(prefix):
    for command in ([sys.executable, "-m", "tasks_engine.dashboard"], [sys.executable, "-m", "tasks_engine.cli",
                                                                       "dashboard"]):  # fmt: skip
        proc = subprocess.run([*command, "--port", str(free_port())], cwd=ROOT, capture_output=True, timeout=60,
                              env=worker_env(prefix, TE_DASHBOARD_ALLOWED_HOSTS="ok.example, bad host/x"))  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.decode().strip().splitlines()
        assert len(lines) == 1 and "TE_DASHBOARD_ALLOWED_HOSTS" in lines[0] and "'bad host/x'" in lines[0], lines


def test_the_cli_takes_allowed_hosts_and_the_proxy_setting(dashboard):
    cli = [sys.executable, "-m", "tasks_engine.cli", "dashboard", "--host", "127.0.0.1"]
    base = dashboard("--allowed-host", "dash.example.com", "--forwarded-allow-ips", "127.0.0.1", argv=cli)
    port = port_of(base)
    assert call(port, "GET", "/", {"Host": "dash.example.com"}).status == 200
    assert call(port, "GET", "/", {"Host": EVIL}).status == 400
    secure = call(port, "GET", "/", {"Host": "dash.example.com", "X-Forwarded-Proto": "https"})
    assert secure.cookies and secure.cookies[0].endswith("; Secure")


# ---------------------------------------------------------------- security headers
def assert_security_headers(reply: Reply, what: object) -> None:
    for name in HEADERS:
        assert name in reply.headers, (what, reply.status, name)
    csp = reply.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp, what
    assert reply.headers["x-frame-options"] == "DENY" and reply.headers["x-content-type-options"] == "nosniff"
    assert reply.headers["referrer-policy"] == "same-origin"


async def test_every_response_carries_the_security_headers(engine, dashboard):
    waiting = await t.add.apply_async((1, 2), queue="nobody-consumes")
    base = dashboard()
    port = port_of(base)
    ok = {"Host": f"127.0.0.1:{port}"}
    seen: set[int] = set()
    for method, path in ROUTES:  # pages, /api/, /metrics, /healthz, static, 404, POSTs refused for CSRF
        reply = call(port, method, path, {**ok, "Accept": "application/json"})
        assert_security_headers(reply, (method, path))
        seen.add(reply.status)
    assert {200, 403, 404} <= seen
    assert_security_headers(call(port, "GET", "/", {"Host": EVIL}), "bad host")
    assert_security_headers(call(port, "GET", "/", {**ok, "Origin": "null"}), "bad origin")
    cookie, token = csrf_session(port)
    form = {**ok, "Cookie": cookie, "Referer": base + "/tasks", "Content-Type": "application/x-www-form-urlencoded"}
    redirect = call(port, "POST", f"/api/tasks/{waiting.id}/revoke", form, f"csrf_token={token}")
    assert redirect.status == 303 and redirect.headers["location"].startswith("/tasks?notice=")
    assert_security_headers(redirect, "redirect")

    protected = dashboard(token=TOKEN)
    unauthorized = call(port_of(protected), "GET", "/api/tasks", {"Host": f"127.0.0.1:{port_of(protected)}"})
    assert unauthorized.status == 401
    assert_security_headers(unauthorized, "401")

    redis_down = dashboard(env={"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    for path in ("/", "/api/tasks"):
        reply = call(port_of(redis_down), "GET", path, {"Host": f"127.0.0.1:{port_of(redis_down)}"})
        assert reply.status == 503, reply.body
        assert_security_headers(reply, f"503 {path}")


async def test_an_unhandled_error_carries_the_security_headers_too():
    """A 500 comes from Starlette's outermost error handler: the headers are added outside it."""
    app = create_app(DashboardSettings())

    async def boom(request: Any) -> Any:
        raise RuntimeError("a bug in a page")

    app.router.routes.insert(0, Route("/boom", boom))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:5555") as client:
        reply = await client.get("/boom")
    assert reply.status_code == 500
    for name in HEADERS:
        assert name in reply.headers, name
    assert "a bug in a page" not in reply.text


class InlineCode(HTMLParser):
    """Collects what a Content-Security-Policy without 'unsafe-inline' would block in a template."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        for name, value in attrs:
            if name.startswith("on") or name == "style" or "javascript:" in (value or "").lower():
                self.problems.append(f"<{tag} {name}=...>")
        if tag == "script" and "src" not in names and names.get("type") != "application/json":
            self.problems.append("inline <script>")
        if tag == "style":
            self.problems.append("inline <style>")
        if tag in ("iframe", "object", "embed"):
            self.problems.append(f"<{tag}>")


def test_the_templates_and_script_have_no_inline_code():
    templates = sorted((HERE / "templates").glob("*.html"))
    assert len(templates) >= 8
    for path in templates:
        parser = InlineCode()
        parser.feed(path.read_text())
        assert parser.problems == [], (path.name, parser.problems)
    script = (HERE / "static" / "dashboard.js").read_text()
    assert not re.search(r"\bon[a-z]+\s*=\s*[\"']|\beval\(|new Function\(|javascript:", script)
    assert not re.search(r"\bstyle\s*=\s*[\"']|setAttribute\(\s*[\"']style", script)  # inline styles: refused too


# ---------------------------------------------------------------- Secure cookies
def csrf_cookie(reply: Reply) -> str:
    (cookie,) = [c for c in reply.cookies if c.startswith("te_dashboard_csrf=")]
    return cookie


def test_the_cookie_is_secure_only_over_https_or_behind_a_trusted_proxy(dashboard, tmp_path):
    plain = dashboard()
    port = port_of(plain)
    ok = {"Host": f"127.0.0.1:{port}"}
    assert "Secure" not in csrf_cookie(call(port, "GET", "/", ok))
    # Untrusted (nothing configured): a client saying X-Forwarded-Proto: https changes nothing.
    assert "Secure" not in csrf_cookie(call(port, "GET", "/", {**ok, "X-Forwarded-Proto": "https"}))

    proxied = dashboard(forwarded_allow_ips="127.0.0.1")
    port = port_of(proxied)
    ok = {"Host": f"127.0.0.1:{port}"}
    assert csrf_cookie(call(port, "GET", "/", {**ok, "X-Forwarded-Proto": "https"})).endswith("; Secure")
    assert "Secure" not in csrf_cookie(call(port, "GET", "/", ok))  # the proxy's plain-http side stays plain
    other = dashboard(forwarded_allow_ips="10.1.2.3")  # another proxy's address: 127.0.0.1 is not believed
    port = port_of(other)
    assert "Secure" not in csrf_cookie(
        call(port, "GET", "/", {"Host": f"127.0.0.1:{port}", "X-Forwarded-Proto": "https"})
    )

    # HTTPS directly: the app under uvicorn with a certificate.
    assert shutil.which("openssl"), "the openssl CLI makes the test certificate"
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1"], check=True,
                   capture_output=True, timeout=30)  # fmt: skip
    uvicorn_cmd = [sys.executable, "-m", "uvicorn", "--factory", "tasks_engine.dashboard.app:create_app",
                   "--host", "127.0.0.1", "--ssl-keyfile", str(key), "--ssl-certfile", str(cert)]  # fmt: skip
    direct = dashboard(argv=uvicorn_cmd, tls=True)
    port = port_of(direct)
    reply = call(port, "GET", "/", {"Host": f"127.0.0.1:{port}"}, tls=True)
    assert reply.status == 200 and csrf_cookie(reply).endswith("; Secure")
    assert_security_headers(reply, "https")


def test_allowed_hosts_entries_are_checked_where_they_are_read():
    good = ["dash.example.com", "dash.example.com:8443", "*.corp.example", "10.0.0.5", "[::1]:5555", "*", " Up.Case "]
    assert DashboardSettings(allowed_hosts=good).allowed_hosts[-1] == "up.case"
    for bad in ("*.", "*foo.example", "a.*.example", "host:99999", "host:port", "[::1", "a:b:c", "x/y", " ", ":80"):
        with pytest.raises(ValueError, match="allowed_hosts"):
            DashboardSettings(allowed_hosts=[bad])
