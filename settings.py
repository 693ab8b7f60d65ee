"""Application settings, and the class ``arq settings.WorkerSettings`` runs.

Values come from the environment (``TE_*``; plus plain ``REDIS_URL`` and ``DATABASE_URL``).
Defaults are the seed application's: time_limit 3600, soft 3000, max_retries 3, retry delay 60,
timezone Asia/Shanghai.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr

from tasks_engine import EngineSettings, configure, crontab, worker_settings
from tasks_engine.beat import configure_beat


class Settings(EngineSettings):
    task_time_limit: float | None = 3600
    task_soft_time_limit: float | None = 3000
    task_max_retries: int | None = 3
    task_default_retry_delay: float = 60
    timezone: str = "Asia/Shanghai"
    task_routes: dict[str, str] = Field(default_factory=lambda: {"admin.send_*": "email", "jobs.email.*": "email"})

    # SMTP (jobs/email.py). The password is a SecretStr: it never prints in logs or reprs.
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 8025
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from_address: str = "noreply@example.com"
    smtp_from_name: str = "Py Small Admin"
    smtp_timeout: float = 10.0
    smtp_security: str = Field(default="auto", description="auto (465 TLS, 587 STARTTLS, else plain), tls, starttls, none")
    admin_email: str = "admin@example.com"

    # Database and reports (jobs/reports.py).
    database_url: str = Field(
        default="sqlite+aiosqlite:///var/app.db", validation_alias=AliasChoices("DATABASE_URL", "TE_DATABASE_URL")
    )
    reports_dir: Path = Path("var/reports")
    report_retention_days: int = 7


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

WorkerSettings = worker_settings(imports=["jobs"], queue=settings.default_queue)
configure_beat(BEAT_SCHEDULE)
