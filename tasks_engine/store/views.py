"""Reads (and the small writes next to them) on result records, groups, effects and cluster state.

A mixin of :class:`tasks_engine.store.broker.Broker`; it needs ``redis``, ``keys`` and ``settings``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import TYPE_CHECKING, Any, cast

from redis.exceptions import ResponseError

from tasks_engine.core.codec import dumps, loads

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from tasks_engine.core.config import EngineSettings
    from tasks_engine.store.batching import ReadBatcher
    from tasks_engine.store.keys import Keys


class Views:
    redis: Redis
    keys: Keys
    settings: EngineSettings
    cluster: bool  # a Redis Cluster has no MULTI across commands (each one is atomic by itself)
    record_reads: ReadBatcher  # over fetch_records

    # ------------------------------------------------------------ result records
    async def record(self, task_id: str) -> dict[bytes, bytes]:
        """The result hash; empty while there is none — or while something not ours sits under its key
        (the worker replaces that with a proper record when it claims the job). Concurrent reads share
        one pipeline (``record_reads``)."""
        try:
            return cast("dict[bytes, bytes]", await self.record_reads.read(task_id))
        except ResponseError as exc:
            if not str(exc).startswith("WRONGTYPE"):
                raise
            return {}

    async def fetch_records(self, task_ids: Sequence[str]) -> list[Any]:
        """The result hashes of ``task_ids`` in one round trip; an error stands for its own id only."""
        if len(task_ids) == 1:
            try:
                return [await cast("Awaitable[dict[bytes, bytes]]", self.redis.hgetall(self.keys.result(task_ids[0])))]
            except ResponseError as exc:
                return [exc]
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hgetall(self.keys.result(task_id))
            return await pipe.execute(raise_on_error=False)

    async def record_field(self, task_id: str, name: str) -> str | None:
        try:
            raw = await cast("Awaitable[bytes | None]", self.redis.hget(self.keys.result(task_id), name))
        except ResponseError as exc:
            if not str(exc).startswith("WRONGTYPE"):
                raise
            return None
        return raw.decode() if raw else None

    async def record_states(self, task_ids: Sequence[str]) -> list[str | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hget(self.keys.result(task_id), "state")
            raw = await pipe.execute()
        return [r.decode() if r else None for r in raw]

    async def store_state(self, task_id: str, state: str, meta: Any) -> None:
        key = self.keys.result(task_id)
        async with self.redis.pipeline(transaction=not self.cluster) as pipe:
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

    # ------------------------------------------------------------ inspection (the operations CLI)
    async def _messages(self, ids: Sequence[str]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for start in range(0, len(ids), 500):
            out += await self.redis.mget([self.keys.message(i) for i in ids[start : start + 500]])
        return out

    async def running_jobs(self) -> list[dict[str, Any]]:
        """Every leased job: id, queue, worker, lease deadline (ms), its message and start time (ms)."""
        inflight = await cast("Awaitable[dict[bytes, bytes]]", self.redis.hgetall(self.keys.inflight))
        ids = [k.decode(errors="replace") for k in inflight]
        raws = await self._messages(ids)
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.zscore(self.keys.active, task_id)
                pipe.hget(self.keys.result(task_id), "date_started")
            answers = await pipe.execute(raise_on_error=False)
        out = []
        for index, (raw_id, info) in enumerate(inflight.items()):
            place = info.decode(errors="replace").rsplit("|", 2)  # queue|score|worker, read from the right
            lease, started = answers[2 * index], answers[2 * index + 1]
            out.append({
                "id": raw_id.decode(errors="replace"), "queue": place[0] if len(place) == 3 else "?",
                "worker": place[-1], "lease_deadline_ms": int(lease) if isinstance(lease, float) else None,
                "started_ms": int(started) if isinstance(started, bytes) and started.isdigit() else None,
                "message": raws[index],
            })  # fmt: skip
        return out

    async def scheduled_jobs(self, limit: int) -> list[dict[str, Any]]:
        """Deferred jobs (countdown, eta, retries waiting, rate-limited), soonest first: id, due (ms), queue."""
        due = await self.redis.zrange(self.keys.delayed, 0, limit - 1, withscores=True)
        ids = [i.decode(errors="replace") for i, _ in due]
        raws = await self._messages(ids)
        places = (
            await cast("Awaitable[list[bytes | None]]", self.redis.hmget(self.keys.deferred_places, ids)) if ids else []
        )
        return [
            {"id": task_id, "due_ms": int(score), "queue": (place or b"?|").decode(errors="replace").rsplit("|", 1)[0],
             "message": raw}
            for (task_id, (_, score), raw, place) in zip(ids, due, raws, places, strict=True)
        ]  # fmt: skip

    async def ready_jobs(self, queue: str, limit: int) -> list[dict[str, Any]]:
        """The next jobs a worker will take from ``queue``, in order."""
        ids = [i.decode(errors="replace") for i in await self.redis.zrange(self.keys.queue(queue), 0, limit - 1)]
        raws = await self._messages(ids)
        return [{"id": i, "queue": queue, "message": raw} for i, raw in zip(ids, raws, strict=True)]

    async def oldest_ready_ms(self, queue: str) -> int | None:
        """When the longest-waiting ready job of ``queue`` was sent (the first of each priority band)."""
        heads = []
        for priority in range(10):
            low, high = priority * 1_000_000_000_000, (priority + 1) * 1_000_000_000_000 - 1
            heads += await self.redis.zrangebyscore(self.keys.queue(queue), low, high, start=0, num=1)
        oldest = None
        for raw in await self._messages([h.decode(errors="replace") for h in heads]):
            sent = _sent_at(raw)
            if sent is not None and (oldest is None or sent < oldest):
                oldest = sent
        return oldest

    async def deferred_by_queue(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        async for _, place in self.redis.hscan_iter(self.keys.deferred_places, count=1000):
            queue = place.decode(errors="replace").rsplit("|", 1)[0]
            counts[queue] = counts.get(queue, 0) + 1
        return counts

    # ------------------------------------------------------------ dead letters and failed jobs
    async def dead_letters(self, limit: int = 10_000) -> list[tuple[bytes, dict[str, Any]]]:
        """Dead letters, newest first: the stored entry (to remove it exactly) and its fields."""
        out = []
        for raw in await cast("Awaitable[list[bytes]]", self.redis.lrange(self.keys.dead, 0, limit - 1)):
            try:
                entry = loads(raw)
            except ValueError:
                entry = {
                    "id": None,
                    "reason": "unreadable dead-letter entry",
                    "raw": raw[:200].decode(errors="replace"),
                }
            out.append((raw, entry if isinstance(entry, dict) else {"raw": str(entry)}))
        return out

    async def drop_dead(self, entries: Sequence[bytes]) -> int:
        removed = 0
        for raw in entries:
            removed += int(await cast("Awaitable[int]", self.redis.lrem(self.keys.dead, 1, raw)))  # type: ignore[arg-type]
        return removed

    async def failed_since(self, since_ms: int) -> list[str]:
        """Ids of jobs that failed for good since ``since_ms``, oldest first (the bounded ``failed`` index)."""
        found = await self.redis.zrangebyscore(self.keys.failed, since_ms, "+inf")
        return [i.decode() for i in found]

    async def mark_retried(self, old_id: str, new_id: str) -> None:
        await cast("Awaitable[int]", self.redis.hset(self.keys.result(old_id), "retried_as", new_id))


def _sent_at(raw: bytes | None) -> int | None:
    """``sent_at`` (ms) of a message, read without decoding it whole."""
    if not raw:
        return None
    marker = raw.rfind(b'"sent_at":')
    if marker < 0:
        return None
    digits = raw[marker + 10 :].split(b"}", 1)[0].split(b",", 1)[0]
    try:
        return int(float(digits) * 1000)
    except ValueError:
        return None
