"""Periodic jobs: Celery's beat_schedule and crontab; every worker may schedule, each tick runs once."""

from tasks_engine import configure_beat, crontab, shared_task


@shared_task(name="docs.cleanup")
async def scheduled_cleanup() -> dict[str, str]:
    return {"status": "completed"}


configure_beat(
    {
        "nightly-cleanup": {"task": "docs.cleanup", "schedule": crontab(hour=2, minute=0)},
        "every-ten-minutes": {"task": "docs.cleanup", "schedule": 600.0},  # seconds
    }
)


async def main() -> None:
    result = await scheduled_cleanup.delay()  # a periodic task is an ordinary task too
    assert await result.get(timeout=10) == {"status": "completed"}
