"""What every request meets first: the Host and Origin allow-list, then the security headers.

DNS rebinding is why the Host is checked: a page on ``rebind.evil.example`` whose name is made to
resolve to 127.0.0.1 talks to the dashboard as its own origin, so neither CORS nor an Origin-equals-Host
test stops it. Only the names the operator chose (the loopback names with the port the request came
in on, the bound address, ``allowed_hosts``) are served; an ``Origin`` must name one of them too.
The headers are added here, outside Starlette's own error handling, so that 401s, 404s, 500s,
redirects, static files and ``/metrics`` carry them like the pages.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

import structlog
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger("tasks_engine.dashboard")
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
WILDCARD_BINDS = ("", "0.0.0.0", "::", "[::]")
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
# The page loads only its own stylesheet and script; the snapshot is a JSON data block, not a script.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),  # the form fallback returns to its Referer: same origin only
)


def split_host(value: str) -> tuple[str, int | None] | None:
    """``"Example.com:5555"`` → ``("example.com", 5555)``; ``"[::1]"`` → ``("[::1]", None)``; None if malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        name, bracket, rest = value.partition("]")
        name += bracket
        if not bracket:
            return None
    else:
        name, _, port_text = value.partition(":")
        rest = value[len(name) :]
        if ":" in port_text or "[" in name or "]" in name:
            return None  # an unbracketed IPv6 address or garbage
    if rest and not (rest.startswith(":") and rest[1:].isdigit() and int(rest[1:]) <= 65535):
        return None
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789-.*_[]:")
    if not name or not set(name) <= allowed:
        return None
    return name, int(rest[1:]) if rest else None


def check_allowed_host(entry: str) -> str:
    """An ``allowed_hosts`` entry: ``name``, ``name:port``, ``*.domain`` or ``*`` (anything; not advised)."""
    entry = entry.strip().lower()
    if entry == "*":
        return entry
    parsed = split_host(entry)
    name = parsed[0] if parsed else ""
    wildcard_ok = "*" not in name or (name.startswith("*.") and len(name) > 2 and "*" not in name[1:])
    if not name or not wildcard_ok or name.strip("[]:.") == "":
        raise ValueError(f"allowed_hosts: {entry!r} is not a host name, host:port or *.domain")
    return entry


class HostPolicy:
    """Which ``Host`` and ``Origin`` values the dashboard answers (see the module docstring)."""

    def __init__(self, bound_host: str, bound_port: int, allowed_hosts: Sequence[str]) -> None:
        self.bound_port = bound_port
        bound = bound_host.strip().lower()
        if ":" in bound and not bound.startswith("["):
            bound = f"[{bound}]"
        self.bound = () if bound in WILDCARD_BINDS or bound in LOOPBACK_NAMES else (bound,)
        entries = [check_allowed_host(h) for h in allowed_hosts]
        self.extra = tuple(("*", None) if e == "*" else split_host(e) or ("", None) for e in entries)

    def entries(self, scope: Scope) -> Iterable[tuple[str, int | None]]:
        """The loopback names and bound address with the port the request came in on, then ``allowed_hosts``."""
        server = scope.get("server")
        port = int(server[1]) if server and server[1] is not None else self.bound_port
        for name in (*LOOPBACK_NAMES, *self.bound):
            yield name, port
        yield from self.extra

    def allows(self, scope: Scope, netloc: str, scheme: str) -> bool:
        parsed = split_host(netloc)
        if parsed is None:
            return False
        name, port = parsed
        if "*" in name:
            return False
        port = port if port is not None else DEFAULT_PORTS.get(scheme)
        for allowed_name, allowed_port in self.entries(scope):
            if allowed_name == "*":
                return True
            if allowed_name.startswith("*."):
                name_ok = name.endswith(allowed_name[1:]) and len(name) > len(allowed_name) - 1
            else:
                name_ok = name == allowed_name
            if name_ok and allowed_port in (None, port):
                return True
        return False

    def host_ok(self, scope: Scope, host: str | None) -> bool:
        return host is not None and self.allows(scope, host, str(scope.get("scheme", "http")))

    def origin_ok(self, scope: Scope, origin: str) -> bool:
        """An ``Origin`` header (``null`` or anything not naming an allowed host is refused)."""
        try:
            parts = urlsplit(origin)
        except ValueError:
            return False
        return parts.scheme in ("http", "https") and self.allows(scope, parts.netloc, parts.scheme)


class EdgeMiddleware:
    """400 for a Host not allowed, 403 for an Origin not allowed (plain text, no data); headers on all."""

    def __init__(self, app: ASGIApp, policy: HostPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        headers = Headers(scope=scope)
        host, origin = headers.get("host"), headers.get("origin")
        if not self.policy.host_ok(scope, host):
            log.warning("dashboard request refused: Host not allowed", host=(host or "")[:100], path=scope["path"])
            await refuse(send_with_headers, 400, b"invalid Host header: add it to TE_DASHBOARD_ALLOWED_HOSTS\n")
            return
        if origin is not None and not self.policy.origin_ok(scope, origin):
            log.warning("dashboard request refused: Origin not allowed", origin=origin[:100], path=scope["path"])
            await refuse(send_with_headers, 403, b"cross-origin request refused\n")
            return
        await self.app(scope, receive, send_with_headers)


async def refuse(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
    ]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})
