"""Redis clients for one server, a Sentinel-watched primary or a Cluster (see :mod:`tasks_engine.core.redis_url`).

Sentinel: redis-py's Sentinel pools ask the sentinels for the primary on every new connection, so a
client carries on after a failover without a restart; a demoted primary's ``READONLY`` reply closes the
connection and counts as an outage (``REDIS_UNAVAILABLE``) like a refused connection.

Cluster: redis-py's ``RedisCluster`` routes every command and script by its keys (all of one app's keys
share one hash tag, so one slot). Pub/sub is not keyed: a Cluster forwards a ``PUBLISH`` to every node,
so subscribers use a plain connection to any one node, the next one after a failure.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable
from typing import Any, TypeVar, cast

import redis as sync_redis
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.cluster import ClusterNode as SyncClusterNode
from redis.cluster import RedisCluster as SyncRedisCluster
from redis.sentinel import Sentinel as SyncSentinel

from tasks_engine.core.config import EngineSettings
from tasks_engine.core.redis_url import RedisTarget
from tasks_engine.exceptions import REDIS_UNAVAILABLE

AsyncClient = Redis | RedisCluster
SyncClient = sync_redis.Redis | SyncRedisCluster

T = TypeVar("T")
_TLS_OPTIONS = ("ssl_keyfile", "ssl_certfile", "ssl_cert_reqs", "ssl_ca_certs", "ssl_check_hostname")


def awaited(value: Awaitable[T] | T) -> Awaitable[T]:
    """redis-py types its asyncio commands as "awaitable or value"; on our async client it is awaitable."""
    return cast("Awaitable[T]", value)


def _tls(target: RedisTarget) -> dict[str, Any]:
    if not target.tls:
        return {}
    opts: dict[str, Any] = {"ssl": True}
    for name in _TLS_OPTIONS:
        if name in target.options:
            value = target.options[name]
            opts[name] = value.lower() in ("1", "true", "yes") if name == "ssl_check_hostname" else value
    return opts


def _auth(target: RedisTarget) -> dict[str, Any]:
    return {"username": target.username, "password": target.password}


def _sentinel_kwargs(target: RedisTarget, timeouts: dict[str, Any]) -> dict[str, Any]:
    """How to reach the sentinels themselves: their own password if given, the same TLS and timeouts."""
    password = target.options.get("sentinel_password")
    return {**timeouts, **_tls(target), **({"password": password} if password else {})}


def async_client(settings: EngineSettings, **options: Any) -> AsyncClient:
    """The asyncio client for ``settings.redis_url`` (``options`` are redis-py connection options)."""
    target = settings.redis_target
    timeouts = {k: v for k, v in options.items() if k.startswith("socket_")}
    if target.mode == "sentinel":
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(target.hosts), sentinel_kwargs=_sentinel_kwargs(target, timeouts), **_tls(target), **options
        )
        return cast("Redis", sentinel.master_for(target.master, db=target.db, **_auth(target)))
    if target.mode == "cluster":
        hosts = target.hosts or _single_host(target)
        options.pop("max_connections", None)  # per node in a cluster: the default (unbounded) is right
        nodes = [ClusterNode(h, p) for h, p in hosts]
        return cast("RedisCluster", RedisCluster(startup_nodes=nodes, **_auth(target), **_tls(target), **options))
    return cast("Redis", Redis.from_url(target.url, **options))


def sync_client(settings: EngineSettings, socket_timeout: float) -> SyncClient:
    """A blocking client for threads (the heartbeat) and command-line reads."""
    target = settings.redis_target
    if target.mode == "sentinel":
        sentinel = SyncSentinel(  # type: ignore[no-untyped-call]
            list(target.hosts),
            sentinel_kwargs=_sentinel_kwargs(target, {"socket_timeout": socket_timeout}),
            socket_timeout=socket_timeout,
            **_tls(target),
        )
        master = sentinel.master_for(target.master, db=target.db, **_auth(target))  # type: ignore[no-untyped-call]
        return cast("sync_redis.Redis", master)
    if target.mode == "cluster":
        hosts = target.hosts or _single_host(target)
        nodes = [SyncClusterNode(h, p) for h, p in hosts]  # type: ignore[no-untyped-call]
        cluster = SyncRedisCluster(startup_nodes=nodes, socket_timeout=socket_timeout, **_auth(target), **_tls(target))
        return cast("SyncRedisCluster", cluster)
    return sync_redis.Redis.from_url(target.url, socket_timeout=socket_timeout)


def _single_host(target: RedisTarget) -> tuple[tuple[str, int], ...]:
    """The node of a plain ``redis://`` URL given with ``TE_REDIS_CLUSTER=true``."""
    opts = sync_redis.connection.parse_url(target.url)  # type: ignore[no-untyped-call]
    return ((str(opts.get("host", "localhost")), int(opts.get("port", 6379))),)


class PubSubSource:
    """Where subscriptions connect: the client itself, or for a Cluster one node after another."""

    def __init__(self, client: AsyncClient, settings: EngineSettings) -> None:
        self.client = client
        self.settings = settings
        target = settings.redis_target
        self._nodes = itertools.cycle(target.hosts or _single_host(target)) if target.mode == "cluster" else None
        self._node_clients: list[Redis] = []
        self._publisher: Redis | None = None

    def __call__(self) -> Redis:
        if self._nodes is None:
            assert isinstance(self.client, Redis)
            return self.client
        host, port = next(self._nodes)
        target = self.settings.redis_target
        node = Redis(host=host, port=port, socket_connect_timeout=5, **_auth(target), **_tls(target))
        self._node_clients.append(node)
        return node

    async def publish(self, channel: str, data: bytes | str) -> None:
        """``PUBLISH`` (a Cluster has no routing for it: any node forwards it to all)."""
        if self._nodes is None:
            assert isinstance(self.client, Redis)
            await self.client.publish(channel, data)
            return
        if self._publisher is None:
            self._publisher = self()
        try:
            await self._publisher.publish(channel, data)
        except REDIS_UNAVAILABLE:
            self._publisher = self()  # that node is away: the next one, once
            await self._publisher.publish(channel, data)

    async def close(self) -> None:
        for node in self._node_clients:
            await node.aclose()
        self._node_clients.clear()
