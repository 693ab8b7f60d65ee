"""Where Redis is: one server, a Sentinel-watched primary or a Cluster, read from one URL.

Forms (``rediss`` instead of ``redis`` for TLS in each):

- ``redis://[user:password@]host:6379/<db>`` (and ``unix://``): one server, as redis-py reads it.
- ``redis+sentinel://[user:password@]host1:26379,host2:26379/<master-name>/<db>``: the primary that
  the sentinels name; the user and password are the data nodes' (``?sentinel_password=`` for the
  sentinels themselves, when they require one).
- ``redis+cluster://[user:password@]host:7000[,host:7001…]/``: a Redis Cluster (db 0 only), or a plain
  ``redis://`` URL with ``TE_REDIS_CLUSTER=true``.

Parsing is pure so a bad URL is refused when the settings are read, naming the part that is wrong.
"""

from __future__ import annotations

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
            raise RedisURLError(f"{url_kind} URL: empty host in {netloc!r}")
        try:
            number = int(port) if port else default_port
        except ValueError:
            raise RedisURLError(f"{url_kind} URL: port {port!r} of {host!r} is not a number") from None
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
        raise RedisURLError(f"REDIS_URL scheme {scheme!r} is not one of redis, rediss, unix, redis+sentinel, "
                            "rediss+sentinel, redis+cluster, rediss+cluster")  # fmt: skip
    if base == "unix" and (plus or cluster):
        raise RedisURLError("a unix:// socket names one server: it cannot be a Sentinel or Cluster URL")
    mode: Mode = "sentinel" if topology == "sentinel" else "cluster" if topology == "cluster" or cluster else "single"
    if mode == "single":
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
        raise RedisURLError(f"{kind} URL: database {db_text!r} is not a number") from None
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
