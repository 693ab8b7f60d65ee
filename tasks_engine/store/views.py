"""Reads (and the small writes next to them) on result records, groups, effects and cluster state.

A mixin of :class:`tasks_engine.store.broker.Broker`; it needs ``redis``, ``keys`` and ``settings``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import TYPE_CHECKING, Any, cast

from tasks_engine.codec import dumps, loads

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from tasks_engine.config import EngineSettings
    from tasks_engine.store.keys import Keys


class Views:
    redis: Redis
    keys: Keys
    settings: EngineSettings

    # ------------------------------------------------------------ result records
    async def record(self, task_id: str) -> dict[bytes, bytes]:
        return await cast("Awaitable[dict[bytes, bytes]]", self.redis.hgetall(self.keys.result(task_id)))

    async def record_field(self, task_id: str, name: str) -> str | None:
        raw = await cast("Awaitable[bytes | None]", self.redis.hget(self.keys.result(task_id), name))
        return raw.decode() if raw else None

    async def record_states(self, task_ids: Sequence[str]) -> list[str | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hget(self.keys.result(task_id), "state")
            raw = await pipe.execute()
        return [r.decode() if r else None for r in raw]

    async def store_state(self, task_id: str, state: str, meta: Any) -> None:
        key = self.keys.result(task_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"state": state, "meta": dumps(meta).decode()})
            pipe.expire(key, self.settings.result_expires)
            await pipe.execute()

    async def forget(self, task_ids: Sequence[str]) -> None:
        if task_ids:
            await self.redis.delete(*(self.keys.result(i) for i in task_ids))

    async def iter_records(self, fields: Sequence[str], batch: int = 500) -> AsyncIterator[list[list[bytes | None]]]:
        """Every result record's ``fields``, a batch at a time (for reports over all jobs)."""
        keys: list[bytes] = []

        async def fetch() -> list[list[bytes | None]]:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hmget(key.decode(), list(fields))
                rows = await pipe.execute()
            keys.clear()
            return cast("list[list[bytes | None]]", rows)

        async for key in self.redis.scan_iter(match=self.keys.pattern("res"), count=1000):
            keys.append(key)
            if len(keys) >= batch:
                yield await fetch()
        if keys:
            yield await fetch()

    # ------------------------------------------------------------ groups and effects
    async def save_group(self, group_id: str, tree: bytes) -> None:
        await self.redis.set(self.keys.group(group_id), tree, ex=self.settings.result_expires)

    async def restore_group(self, group_id: str) -> Any:
        return loads(await self.redis.get(self.keys.group(group_id)))

    async def forget_group(self, group_id: str) -> None:
        await self.redis.delete(self.keys.group(group_id))

    async def effect_done(self, task_id: str, name: str) -> bool:
        return bool(await self.redis.exists(self.keys.effect(task_id, name)))

    async def mark_effect_done(self, task_id: str, name: str) -> None:
        await self.redis.set(self.keys.effect(task_id, name), "1", ex=self.settings.result_expires)

    # ------------------------------------------------------------ cluster state
    async def queued_messages(self, queues: Sequence[str]) -> list[tuple[str, str, str]]:
        """(queue or 'delayed', task id, task name) of every waiting job."""
        out: list[tuple[str, str, str]] = []
        sources = [(q, self.keys.queue(q)) for q in queues] + [("delayed", self.keys.delayed)]
        for label, key in sources:
            ids = [i.decode() for i in await self.redis.zrange(key, 0, -1)]
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                raws = await self.redis.mget([self.keys.message(i) for i in chunk])
                for task_id, raw in zip(chunk, raws, strict=True):
                    if raw is None:
                        continue
                    text = raw.decode(errors="replace")
                    marker = text.find('"task":"')
                    name = text[marker + 8 : text.find('"', marker + 8)] if marker >= 0 else "?"
                    out.append((label, task_id, name))
        return out

    async def queue_names(self) -> set[str]:
        """Queues that hold ready jobs now."""
        return {self.keys.strip("q", k) async for k in self.redis.scan_iter(match=self.keys.pattern("q"), count=500)}

    async def ready_count(self, queue: str) -> int:
        return int(await self.redis.zcard(self.keys.queue(queue)))

    async def workers(self) -> list[dict[str, Any]]:
        """Live workers' heartbeats (each expires after the lease)."""
        out = []
        async for key in self.redis.scan_iter(match=self.keys.pattern("worker"), count=200):
            raw = await self.redis.get(key)
            if raw is not None:
                out.append(loads(raw))
        return sorted(out, key=lambda w: str(w.get("id")))

    async def totals(self) -> dict[str, int]:
        """Deferred, running and dead-lettered job counts."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self.keys.delayed)
            pipe.zcard(self.keys.active)
            pipe.llen(self.keys.dead)
            deferred, running, dead = await pipe.execute()
        return {"deferred": int(deferred), "running": int(running), "dead": int(dead)}
