"""What result TTLs leave behind, and the move to the hash-tagged key layout: run by the application's
housekeeping (``jobs/maintenance.py``) and ``tasks-engine migrate-keys``.

A mixin of :class:`tasks_engine.store.broker.Broker`; it needs ``redis``, ``keys``, ``settings`` and ``run``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tasks_engine.core.clock import now_iso
from tasks_engine.core.codec import loads
from tasks_engine.exceptions import EngineConfigurationError
from tasks_engine.store.connection import awaited

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from tasks_engine.core.config import EngineSettings
    from tasks_engine.store.keys import Keys


class Housekeeping:
    redis: Redis
    keys: Keys
    settings: EngineSettings
    cluster: bool
    base: str
    prefix: str

    def run(self, name: str, args: Sequence[Any], client: Any = None, extra_keys: Sequence[str] = ()) -> Any:
        raise NotImplementedError  # Broker's

    async def sweep(self, dead_letters_before: datetime | None = None) -> dict[str, int]:
        """What result TTLs leave behind: dead letters older than ``dead_letters_before``,
        messages no queue refers to (moved to the dead letters), result records without a TTL whose job
        can no longer finish, and chord bookkeeping whose chord is gone."""
        r, k = self.redis, self.keys
        dead_trimmed = 0
        while dead_letters_before is not None:  # oldest entries sit at the right end
            last = await awaited(r.lindex(k.dead, -1))
            if last is None:
                break
            at = _entry_time(last)
            if at is not None and at >= dead_letters_before:
                break
            await awaited(r.lrem(k.dead, -1, last))  # not RPOP: never drop an entry pushed meanwhile
            dead_trimmed += 1
        orphans = 0
        batch: list[str] = []
        async for key in r.scan_iter(match=k.pattern("msg"), count=1000):
            batch.append(k.strip("msg", key))
            if len(batch) >= 200:
                orphans += len(await self.run("sweep_orphans", args=[self.base, now_iso(), *batch]))
                batch.clear()
        if batch:
            orphans += len(await self.run("sweep_orphans", args=[self.base, now_iso(), *batch]))
        stale = 0
        keys: list[bytes] = []

        async def expire_stale() -> int:
            async with r.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.ttl(key)
                    pipe.exists(k.message(k.strip("res", key)))
                answers = await pipe.execute()
            found = [
                key
                for key, ttl, alive in zip(keys, answers[::2], answers[1::2], strict=True)
                if ttl == -1 and not alive
            ]
            if found:
                async with r.pipeline(transaction=False) as pipe:
                    for key in found:
                        pipe.expire(key, self.settings.result_expires)
                    await pipe.execute()
            keys.clear()
            return len(found)

        async for key in r.scan_iter(match=k.pattern("res"), count=1000):
            keys.append(key)
            if len(keys) >= 500:
                stale += await expire_stale()
        stale += await expire_stale()
        chord_keys = 0
        for suffix in ("done", "r"):
            async for key in r.scan_iter(match=k.pattern("chord", suffix), count=1000):
                parent = key.decode().rsplit(":", 1)[0]
                if not await r.exists(parent):
                    chord_keys += await r.delete(key)
        return {
            "dead_letters_trimmed": dead_trimmed,
            "orphaned_messages": orphans,
            "stale_results_expiring": stale,
            "chord_keys_deleted": chord_keys,
            "dead_letters_left": int(await awaited(r.llen(k.dead))),
        }

    async def migrate_legacy_keys(self, dry_run: bool = False) -> dict[str, int]:
        """Rename the keys of the layout before hash tags (``<prefix>:…``) to ``{<prefix>}:…``; a key whose
        new name is taken is left as it is and counted. Run it with the workers stopped."""
        if self.cluster:
            raise EngineConfigurationError("migrate-keys runs on the single Redis the old layout lived on")
        renamed = conflicts = 0
        head = len(self.prefix) + 1
        async for key in self.redis.scan_iter(match=self.keys.legacy(), count=1000):
            new = f"{self.base}:{key.decode(errors='surrogateescape')[head:]}"
            if dry_run:
                taken = bool(await self.redis.exists(new))
            else:
                taken = not await self.redis.renamenx(key, new)
            conflicts += taken
            renamed += not taken
        return {"renamed" if not dry_run else "would_rename": renamed, "conflicts": conflicts}


def _entry_time(raw: bytes | str) -> datetime | None:
    """When a dead letter was written (entries without a readable time count as old)."""
    try:
        moment = datetime.fromisoformat(str(loads(raw).get("at")))
    except (ValueError, AttributeError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
