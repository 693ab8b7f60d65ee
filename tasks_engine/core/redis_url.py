"""Where Redis is: one server, a Sentinel-watched primary or a Cluster, read from one URL.

Forms (``rediss`` instead of ``redis`` for TLS in each):

- ``redis://[user:password@]host:6379/<db>`` (and ``unix://``): one server, as redis-py reads it.
- ``redis+sentinel://[user:password@]host1:26379,host2:26379/<master-name>/<db>``: the primary that
  the sentinels name; the user and password are the data nodes' (``?sentinel_password=`` for the
  sentinels themselves, when they require one).
- ``redis+cluster://[user:password@]host:7000[,host:7001…]/``: a Redis Cluster (db 0 only), or a plain
  ``redis://`` URL with ``TE_REDIS_CLUSTER=true``.

Parsing is pure so a bad URL is refused when the settings are read, naming the part that is wrong.
Error messages quote only the scheme and host names, never the URL itself: its userinfo (user name,
password, or a lone token redis-py reads as the user name) and ``?…password=`` options are secrets,
and :func:`redacted` / :func:`shows_secret` are the one place that knows where they sit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

Mode = Literal["single", "sentinel", "cluster"]
SENTINEL_PORT = 26379
REDIS_PORT = 6379


class RedisURLError(ValueError):
    """A ``REDIS_URL`` that names no usable Redis."""


@dataclass(frozen=True)
class RedisTarget:
    mode: Mode
    url: str  # as given (the single-server form is handed to redis-py as it is)
    hosts: tuple[tuple[str, int], ...] = ()
    master: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    options: dict[str, str] = field(default_factory=dict)  # query options (ssl_ca_certs=…, sentinel_password=…)


def _hosts(netloc: str, default_port: int, url_kind: str) -> tuple[tuple[str, int], ...]:
    hosts = []
    for part in netloc.split(","):
        host, _, port = part.strip().rpartition(":") if ":" in part else (part.strip(), "", "")
        host = host.strip("[]")
        if not host:
            raise RedisURLError(f"{url_kind} URL: a host name is empty")
        try:
            number = int(port) if port else default_port
        except ValueError:
            raise RedisURLError(f"{url_kind} URL: the port of {host!r} is not a number") from None
        if not 0 < number < 65536:
            raise RedisURLError(f"{url_kind} URL: port {number} of {host!r} is out of range")
        hosts.append((host, number))
    return tuple(hosts)


def parse_redis_url(url: str, cluster: bool = False) -> RedisTarget:
    """Read ``url`` (see the module docstring); ``cluster`` is ``TE_REDIS_CLUSTER`` for a plain URL."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise RedisURLError(
            "REDIS_URL must start with redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://"
        )
    base, plus, topology = scheme.lower().partition("+")
    if base not in ("redis", "rediss", "unix") or (plus and topology not in ("sentinel", "cluster")):
        raise RedisURLError(f"REDIS_URL scheme {scheme[:24]!r} is not one of redis, rediss, unix, redis+sentinel, "
                            "rediss+sentinel, redis+cluster, rediss+cluster")  # fmt: skip
    if base == "unix" and (plus or cluster):
        raise RedisURLError("a unix:// socket names one server: it cannot be a Sentinel or Cluster URL")
    mode: Mode = "sentinel" if topology == "sentinel" else "cluster" if topology == "cluster" or cluster else "single"
    if mode == "single":
        if base != "unix":
            _check_single(url, base)
        return RedisTarget(mode="single", url=url, tls=base == "rediss")
    parts = urlsplit(f"redis://{rest}")
    userinfo, at, netloc = parts.netloc.rpartition("@")
    if not at:
        netloc, userinfo = parts.netloc, ""
    username, colon, password = userinfo.partition(":")
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    kind = f"{base}+{mode}"
    path = [p for p in parts.path.split("/") if p]
    master, db = "", 0
    if mode == "sentinel":
        if not path:
            raise RedisURLError(f"{kind} URL needs the master's name: {kind}://host:26379/<master-name>/<db>")
        master = unquote(path[0])
        db_text = path[1] if len(path) > 1 else options.pop("db", "0")
    else:
        db_text = path[0] if path else options.pop("db", "0")
    try:
        db = int(db_text)
    except ValueError:
        raise RedisURLError(f"{kind} URL: the database is not a number") from None
    if mode == "cluster" and db != 0:
        raise RedisURLError(f"{kind} URL: Redis Cluster has database 0 only, not {db}")
    return RedisTarget(
        mode=mode,
        url=url,
        hosts=_hosts(netloc, SENTINEL_PORT if mode == "sentinel" else REDIS_PORT, kind),
        master=master,
        db=db,
        username=unquote(username) or None,
        password=unquote(password) if colon else None,
        tls=base == "rediss",
        options=options,
    )


def _check_single(url: str, base: str) -> None:
    """What redis-py would refuse only when it connects (with a traceback quoting the URL's parts)."""
    parts = urlsplit(url)
    try:
        _ = parts.port
    except ValueError:
        host = parts.hostname or ""
        raise RedisURLError(f"{base} URL: the port of {host!r} is not a number from 0 to 65535") from None
    db_text = unquote(parts.path).replace("/", "")
    if db_text and not db_text.isdigit():
        raise RedisURLError(f"{base} URL: the database (the path after the host) is not a number")


def _query_secrets(query: str) -> list[str]:
    """Values of ``…password=`` options, with any ``&``-pieces that follow them (an unescaped ``&``)."""
    found: list[str] = []
    in_secret = False
    for part in query.split("&"):
        key, eq, value = part.partition("=")
        if eq:
            in_secret = key.lower().endswith("password")
            if in_secret:
                found.append(value)
        elif in_secret:
            found.append(part)
    return found


def _mask_query(query: str) -> str:
    out: list[str] = []
    in_secret = False
    for part in query.split("&"):
        key, eq, _ = part.partition("=")
        if eq:
            in_secret = key.lower().endswith("password")
            out.append(f"{key}=***" if in_secret else part)
        elif not in_secret:
            out.append(part)
    return "&".join(out)


def _split(url: str) -> tuple[str, str, str, str]:
    """``(scheme, userinfo, host_and_path, query)``. The userinfo is everything before the URL's last
    ``@`` (so an unescaped ``/``, ``?`` or ``@`` in a password still counts as the password's), unless that
    ``@`` sits in a ``key=value`` option of the query."""
    scheme, _, rest = url.partition("://")
    userinfo, at, after = rest.rpartition("@")
    if not at or "=" in userinfo.partition("?")[2]:
        authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
        userinfo, at, host = authority.rpartition("@")
        after = host + rest[len(authority) :]
    location, _, query = after.partition("?")
    return scheme, userinfo, location, query


def secrets_in(url: str) -> list[str]:
    """Every piece of ``url`` that is a secret: the userinfo whatever its form (``user:password``,
    ``:password``, a lone token), its parts, and the values of ``…password=`` options."""
    _, userinfo, _, query = _split(url)
    pieces = [userinfo, *userinfo.split(":"), *_query_secrets(query)]
    pieces += [unquote(p) for p in pieces]
    return sorted({p for p in pieces if p}, key=len, reverse=True)


def redacted(url: str) -> str:
    """``url`` fit for a log line or an error: the userinfo becomes ``***``, and so do password options."""
    if "://" not in url:
        return "<not a URL>"
    scheme, userinfo, location, query = _split(url)
    shown = f"{scheme}://{'***@' if userinfo else ''}{location}{'?' + _mask_query(query) if query else ''}"
    return f"{scheme[:24]}://***" if shows_secret(shown, url) else shown


SECRET_PIECE = 6  # no run this long of a secret may appear in output (shorter ones match by chance)


def shows_secret(text: str, url: str) -> bool:
    """Whether ``text`` holds a secret of ``url`` or any run of ``SECRET_PIECE`` characters of one."""
    for secret in secrets_in(url):
        if len(secret) <= SECRET_PIECE:
            if len(secret) >= 3 and secret in text:
                return True
        elif any(secret[i : i + SECRET_PIECE] in text for i in range(len(secret) - SECRET_PIECE + 1)):
            return True
    return False
