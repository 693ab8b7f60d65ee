"""Who may look and who may act: basic auth or a bearer token, CSRF tokens for every POST, read-only mode.

Authentication is an ASGI middleware so that nothing — pages, ``/api/``, the event stream,
``/metrics`` — can be added later without it; only ``/healthz`` (no data) and the static files stay open.
CSRF uses a random cookie (``SameSite=Strict``, HttpOnly) and a token derived from it with a key that
lives only in this process: a page on another site can neither read the token nor compute it, and
a restart invalidates every old form (the next page load gets a fresh one). The cookie is ``Secure``
when the request came over HTTPS: ``scope["scheme"]``, which a proxy's X-Forwarded-Proto sets only
where the server was told to trust that proxy (``forwarded_allow_ips``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from http.cookies import SimpleCookie
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tasks_engine.dashboard.edge import HostPolicy
from tasks_engine.dashboard.settings import DashboardSettings

CSRF_COOKIE = "te_dashboard_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
OPEN_PATHS = ("/healthz", "/static/")
REALM = 'Basic realm="tasks_engine dashboard", charset="UTF-8"'


class Guard:
    """Checks credentials and hands out CSRF tokens; one per app (its key dies with the process)."""

    def __init__(self, settings: DashboardSettings, policy: HostPolicy) -> None:
        self.settings = settings
        self.policy = policy
        self._key = secrets.token_bytes(32)

    # ------------------------------------------------------------ authentication
    def authorized(self, headers: Headers) -> bool:
        s = self.settings
        if not s.has_credentials:
            return True
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and s.token is not None:
            return hmac.compare_digest(value.strip().encode(), s.token.get_secret_value().encode())
        if scheme.lower() == "basic" and s.username and s.password is not None:
            try:
                user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
            user_ok = hmac.compare_digest(user.encode(), s.username.encode())
            return hmac.compare_digest(password.encode(), s.password.get_secret_value().encode()) and user_ok
        return False

    # ------------------------------------------------------------ CSRF
    def token_for(self, cookie: str) -> str:
        return hmac.new(self._key, cookie.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, request: Request, submitted: str | None) -> bool:
        """The submitted token matches this browser's cookie, and the request comes from an allowed origin
        (never compared with the request's own Host, which a rebinding page chooses)."""
        cookie = request.cookies.get(CSRF_COOKIE)
        if not cookie or not submitted or not hmac.compare_digest(submitted, self.token_for(cookie)):
            return False
        origin = request.headers.get("origin")
        return origin is None or self.policy.origin_ok(request.scope, origin)


class AuthMiddleware:
    """401 with a basic-auth challenge unless the request carries valid credentials; sets the CSRF cookie."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        headers = Headers(scope=scope)
        if not path.startswith(OPEN_PATHS) and not self.guard.authorized(headers):
            await _unauthorized(send)
            return
        cookies: SimpleCookie = SimpleCookie()
        try:
            cookies.load(headers.get("cookie", ""))
        except Exception:  # noqa: BLE001 - a malformed Cookie header is treated as no cookie
            cookies = SimpleCookie()
        fresh = None if CSRF_COOKIE in cookies else secrets.token_urlsafe(32)
        state: dict[str, Any] = scope.setdefault("state", {})
        cookie = fresh or cookies[CSRF_COOKIE].value
        state["csrf_token"] = self.guard.token_for(cookie)
        if fresh is None:
            await self.app(scope, receive, send)
            return
        # The first request of a browser: its pages already embed the token of the cookie set here.
        others = [v for k, v in scope["headers"] if k == b"cookie"]
        merged = b"; ".join([*others, f"{CSRF_COOKIE}={fresh}".encode()])
        scope["headers"] = [*((k, v) for k, v in scope["headers"] if k != b"cookie"), (b"cookie", merged)]

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                value = f"{CSRF_COOKIE}={fresh}; Path=/; HttpOnly; SameSite=Strict"
                if scope.get("scheme") == "https":
                    value += "; Secure"
                message["headers"] = [*message.get("headers", []), (b"set-cookie", value.encode())]
            await send(message)

        await self.app(scope, receive, send_with_cookie)


async def _unauthorized(send: Send) -> None:
    body = b'{"error":"authentication required"}'
    await send({"type": "http.response.start", "status": 401, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"www-authenticate", REALM.encode()),
    ]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})
