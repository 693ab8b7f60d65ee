"""Application settings, and the class ``arq settings.WorkerSettings`` runs.

Values come from the environment (``TE_*``; plus plain ``REDIS_URL`` and ``DATABASE_URL``).
Defaults are the seed application's: time_limit 3600, soft 3000, max_retries 3, retry delay 60,
timezone Asia/Shanghai. The jobs' own fields (SMTP, database, reports, batch, maintenance) are
declared in :class:`jobs.config.JobsSettings`, so job code can read them without importing this
module (which configures the engine when imported).
"""

from __future__ import annotations

from pydantic import Field

from jobs.config import JobsSettings
from tasks_engine import configure, crontab, worker_settings
from tasks_engine.beat import configure_beat

EMAIL_QUEUE = "email"


class Settings(JobsSettings):
    task_time_limit: float | None = 3600
    task_soft_time_limit: float | None = 3000
    task_max_retries: int | None = 3
    task_default_retry_delay: float = 60
    timezone: str = "Asia/Shanghai"
    task_routes: dict[str, str] = Field(
        default_factory=lambda: {"admin.send_*": EMAIL_QUEUE, "jobs.email.*": EMAIL_QUEUE}
    )


settings = configure(Settings())

BEAT_SCHEDULE = {
    "cleanup-expired-results": {"task": "maintenance.cleanup_results", "schedule": crontab(hour=2, minute=0)},
    "cleanup-old-reports": {"task": "maintenance.cleanup_reports", "schedule": 300.0},
    "daily-task-summary": {
        "task": "maintenance.daily_summary",
        "schedule": crontab(hour=9, minute=0),
        "options": {"queue": "default", "expires": 3600},
    },
}

# Emails are routed to their own queue (so a slow SMTP server never holds up other work); this
# worker consumes both unless a deployment runs dedicated email workers (-Q email).
WorkerSettings = worker_settings(imports=["jobs"], queues=[settings.default_queue, EMAIL_QUEUE])
configure_beat(BEAT_SCHEDULE)
