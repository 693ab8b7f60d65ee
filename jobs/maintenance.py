"""Periodic housekeeping (scheduled in ``settings.BEAT_SCHEDULE``).

* ``maintenance.cleanup_results``: result records already expire by TTL, so this sweeps what TTLs
  do not cover — dead letters past their retention, result records left without a TTL by jobs
  that can never finish (their message is gone), chord bookkeeping keys whose chord is gone, and
  messages no queue refers to any more (moved to the dead letters, not silently dropped).
* ``maintenance.cleanup_reports``: report files older than ``report_retention_days`` and
  ``.part`` files left by crashed report jobs.
* ``maintenance.daily_summary``: the task summary report mailed to the admin (a chain:
  ``admin.generate_report`` → ``admin.send_report_email``).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from jobs.config import job_settings
from jobs.email import send_report_email
from jobs.reports import generate_report_task
from tasks_engine import Task, chain, shared_task
from tasks_engine.broker import get_broker
from tasks_engine.messages import loads
from tasks_engine.results import now_iso

log = structlog.get_logger("jobs.maintenance")

# Atomic per id: a message is orphaned when no ready queue, the deferred set or the running set
# holds its id. Checked and moved in one script, so a job moving between those sets (claim,
# requeue, retry) is never mistaken for an orphan.
ORPHAN_LUA = """
-- ARGV: prefix, now_iso, ids...
local p = ARGV[1]
local moved = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local msg = redis.call('get', p .. ':msg:' .. id)
  if msg then
    local q = string.match(msg, '"queue":"(.-)"')
    local queued = q and redis.call('zscore', p .. ':q:' .. q, id)
    local waiting = redis.call('zscore', p .. ':delayed', id) or redis.call('zscore', p .. ':active', id)
    if not queued and not waiting then
      redis.call('lpush', p .. ':dead', cjson.encode({id = id, reason = 'orphaned message: in no queue', at = ARGV[2],
        raw = string.sub(msg, 1, 4096)}))
      redis.call('del', p .. ':msg:' .. id)
      moved[#moved + 1] = id
    end
  end
end
return moved
"""


def _parse_time(value: Any) -> datetime | None:
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@shared_task(name="maintenance.cleanup_results")
async def cleanup_results() -> dict[str, int]:
    """定时清理: sweep what result TTLs leave behind (see the module docstring)."""
    settings = job_settings()
    broker = get_broker()
    redis = broker.redis
    dead_key = broker.key("dead")
    cutoff = datetime.now(UTC) - timedelta(days=settings.dead_letter_retention_days)

    # 1. Dead letters are pushed on the left, so the oldest sit at the right end: pop while too old.
    dead_trimmed = 0
    while True:
        last = await redis.lindex(dead_key, -1)
        if last is None:
            break
        try:
            at = _parse_time(loads(last).get("at"))
        except ValueError:
            at = None
        if at is not None and at >= cutoff:
            break
        await redis.lrem(dead_key, -1, last)  # not RPOP: never drop an entry pushed meanwhile
        dead_trimmed += 1

    # 2. Messages no queue refers to: moved to the dead letters for inspection.
    orphan_script = redis.register_script(ORPHAN_LUA)
    orphans = 0
    msg_prefix = broker.key("msg", "")
    batch: list[str] = []
    async for key in redis.scan_iter(match=broker.key("msg", "*"), count=1000):
        batch.append(key.decode()[len(msg_prefix):])
        if len(batch) >= 200:
            orphans += len(await orphan_script(args=[broker.prefix, now_iso(), *batch]))
            batch.clear()
    if batch:
        orphans += len(await orphan_script(args=[broker.prefix, now_iso(), *batch]))

    # 3. Result records without a TTL whose job can no longer finish (no message left): give them
    #    the normal result lifetime instead of keeping them forever.
    stale_results = 0
    res_prefix = broker.key("res", "")
    keys: list[bytes] = []

    async def expire_stale() -> int:
        async with redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.ttl(key)
                pipe.exists(broker.key("msg", key.decode()[len(res_prefix):]))
            answers = await pipe.execute()
        stale = [key for key, ttl, alive in zip(keys, answers[::2], answers[1::2], strict=True)
                 if ttl == -1 and not alive]
        if stale:
            async with redis.pipeline(transaction=False) as pipe:
                for key in stale:
                    pipe.expire(key, settings.result_expires)
                await pipe.execute()
        keys.clear()
        return len(stale)

    async for key in redis.scan_iter(match=broker.key("res", "*"), count=1000):
        keys.append(key)
        if len(keys) >= 500:
            stale_results += await expire_stale()
    stale_results += await expire_stale()

    # 4. Chord bookkeeping (``chord:<id>:done`` / ``:r``) outliving its chord record.
    chord_keys = 0
    for suffix in ("done", "r"):
        async for key in redis.scan_iter(match=broker.key("chord", "*", suffix), count=1000):
            parent = key.decode().rsplit(":", 1)[0]
            if not await redis.exists(parent):
                chord_keys += await redis.delete(key)

    result = {"dead_letters_trimmed": dead_trimmed, "orphaned_messages": orphans,
              "stale_results_expiring": stale_results, "chord_keys_deleted": chord_keys,
              "dead_letters_left": int(await redis.llen(dead_key))}
    log.info("results cleanup done", **result)
    return result


@shared_task(name="maintenance.cleanup_reports")
async def cleanup_reports() -> dict[str, int]:
    """定时清理: report files past ``report_retention_days``; ``.part`` leftovers of crashed jobs."""
    settings = job_settings()
    directory = settings.reports_dir
    now = time.time()
    keep_after = now - settings.report_retention_days * 86_400
    part_keep_after = now - settings.report_stale_part_hours * 3600
    deleted = kept = freed = 0
    if directory.is_dir():
        for path in directory.iterdir():
            if not path.is_file() or path.is_symlink():
                continue
            stat = path.stat()
            limit = part_keep_after if path.name.endswith(".part") else keep_after
            if stat.st_mtime < limit:
                path.unlink(missing_ok=True)
                deleted += 1
                freed += stat.st_size
            else:
                kept += 1
    result = {"deleted": deleted, "bytes_freed": freed, "kept": kept}
    log.info("reports cleanup done", directory=str(directory), **result)
    return result


@shared_task(name="maintenance.daily_summary", bind=True)
async def daily_summary(self: Task, to_email: str | None = None, hours: float | None = None) -> dict[str, Any]:
    """Start the chain task-summary report → email to the admin; returns the ids to follow it."""
    settings = job_settings()
    to_email = to_email or settings.admin_email
    hours = hours or settings.summary_hours
    day = datetime.now(ZoneInfo(settings.timezone)).strftime("%Y-%m-%d")
    workflow = chain(
        generate_report_task.si("task_summary", {"hours": hours, "format": "csv"}),
        send_report_email.s(to_email, f"每日任务汇总 {day}（最近 {hours:g} 小时）"),
    )
    result = await workflow.apply_async()
    log.info("daily summary started", report_id=result.parent.id, email_id=result.id, to=to_email)
    return {"report_id": result.parent.id, "email_id": result.id, "to": to_email}

