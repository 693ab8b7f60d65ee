"""The jobs' settings: SMTP, database, reports, batch and maintenance knobs.

They live here, not in ``settings.py``, so the job modules can read them without importing the
application's ``settings`` module (importing it reconfigures the engine as a side effect).
``settings.Settings`` subclasses :class:`JobsSettings`; a worker started with ``--app none``
builds one from the environment (``TE_*`` plus ``DATABASE_URL``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from tasks_engine.config import EngineSettings, get_settings


class JobsSettings(EngineSettings):
    # populate_by_name: tests and code may pass ``database_url=`` although the env name is DATABASE_URL.
    model_config = SettingsConfigDict(env_prefix="TE_", extra="ignore", env_file=None, populate_by_name=True)

    # SMTP. The password is a SecretStr: its repr is masked and it is only unwrapped for the login.
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 8025
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from_address: str = "noreply@example.com"
    smtp_from_name: str = "Py Small Admin"
    smtp_timeout: float = Field(default=10.0, gt=0)
    smtp_security: Literal["auto", "tls", "starttls", "none"] = Field(
        default="auto", description="auto: implicit TLS on 465, STARTTLS on 587, plain otherwise (local sinks)"
    )
    smtp_validate_certs: bool = True
    smtp_cert_bundle: str | None = Field(default=None, description="CA file for a private SMTP server's certificate")
    smtp_local_hostname: str | None = Field(default=None, description="EHLO name; default: this host's FQDN")
    smtp_max_retries: int = Field(default=5, ge=0, description="retries of a transient SMTP failure")
    smtp_retry_backoff_max: int = Field(default=600, ge=1, description="cap (s) of the exponential retry backoff")
    smtp_retry_jitter: bool = True
    admin_email: str = "admin@example.com"

    # Database (SQLAlchemy async URL) and reports.
    database_url: str = Field(  # repr=False: the URL may carry the database password
        default="sqlite+aiosqlite:///var/app.db",
        validation_alias=AliasChoices("DATABASE_URL", "TE_DATABASE_URL"),
        repr=False,
    )
    database_schema: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$", description="PostgreSQL schema of the app tables"
    )
    reports_dir: Path = Path("var/reports")
    report_retention_days: float = 7
    report_stale_part_hours: float = Field(default=6, description="leftover .part files of crashed reports")
    report_fetch_rows: int = Field(default=2000, ge=1, description="rows fetched per round trip while streaming")

    # Batch processing.
    batch_concurrency: int = Field(default=8, ge=1, description="items processed at once inside one batch job")
    batch_item_delay: float = Field(default=0.0, ge=0, description="pause after each item, to spare the database")
    batch_chunk_size: int = Field(default=500, ge=1, description="items per job when fanning out a big list")

    # Maintenance.
    dead_letter_retention_days: float = 7
    summary_hours: float = Field(default=24, gt=0, description="window of the daily task summary")


_fallback: tuple[EngineSettings, JobsSettings] | None = None


def job_settings() -> JobsSettings:
    """The active settings when they are app settings, else JobsSettings read from the environment."""
    global _fallback
    current = get_settings()
    if isinstance(current, JobsSettings):
        return current
    if _fallback is None or _fallback[0] is not current:
        _fallback = (current, JobsSettings())
    return _fallback[1]
