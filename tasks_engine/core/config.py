"""Engine settings: read once from the environment (``TE_*`` plus plain ``REDIS_URL``).

The application's ``settings.py`` subclasses :class:`EngineSettings` to add its own fields
and calls :func:`configure` so the engine sees the same values.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tasks_engine.core.redis_url import RedisTarget, RedisURLError, parse_redis_url, redacted, shows_secret


class EngineSettings(BaseSettings):
    # pydantic quotes the input in its errors (``input_value=``): here that is the environment, URLs
    # with passwords and the signing key among it. Errors name the variable and the reason only.
    model_config = SettingsConfigDict(env_prefix="TE_", extra="ignore", env_file=None, hide_input_in_errors=True)

    redis_url: SecretStr = Field(
        default=SecretStr("redis://127.0.0.1:6379/0"),
        validation_alias=AliasChoices("REDIS_URL", "TE_REDIS_URL"),
        description="Redis DSN (redis://, rediss:// for TLS, redis+sentinel://, redis+cluster://: see redis_url.py).",
    )
    redis_cluster: bool = Field(default=False, description="A plain redis:// URL names a node of a Redis Cluster.")
    replica_acks: int = Field(
        default=0,
        ge=0,
        description="delay() and completions return only once this many replicas have the write (WAIT).",
    )
    replica_ack_timeout: float = Field(default=2.0, gt=0, description="Seconds to wait for replica_acks replicas.")
    key_prefix: str = Field(
        default="te",
        description="Prefix of every key: lets apps share a Redis. Keys live under the hash tag {<prefix>}.",
    )
    redis_socket_timeout: float = Field(
        default=10.0, gt=0, description="Seconds any one Redis command may take before it counts as an outage."
    )
    default_queue: str = Field(default="default", description="Queue of a task that names none (and no route matches).")
    default_priority: int = Field(default=5, ge=0, le=9, description="Priority of a call that sets none; 0 runs first.")
    result_expires: int = Field(default=86_400, description="Seconds a result record is kept.")
    task_routes: dict[str, str] = Field(default_factory=dict, description="glob -> queue")
    # Task defaults (the seed application's values are set in settings.py).
    task_time_limit: float | None = Field(default=None, description="Hard limit (s) of a task that sets none.")
    task_soft_time_limit: float | None = Field(
        default=None, description="Soft limit (s) of a task that sets none: SoftTimeLimitExceeded is raised in it."
    )
    task_max_retries: int | None = Field(default=3, description="max_retries of a task that sets none; None: no limit.")
    task_default_retry_delay: float = Field(
        default=180.0, description="Countdown (s) of retry() without one, as Celery's default_retry_delay."
    )
    max_payload_bytes: int = Field(default=1_000_000, description="Largest accepted message.")
    task_always_eager: bool = Field(
        default=False, description="Celery's switch: delay()/apply_async() run in-process (tests), no Redis."
    )
    # Worker.
    max_jobs: int = Field(default=50, description="Jobs one worker process runs at once (its concurrency).")
    lease_seconds: float = Field(default=10.0, gt=0, description="A dead worker's jobs return after this.")
    max_deliveries: int = Field(
        default=5, ge=1, description="Deliveries of one attempt that never finish before it is dead-lettered."
    )
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="Serve /metrics, /healthz and /readyz on this port (worker)."
    )
    metrics_host: str = Field(
        default="0.0.0.0", description="Address metrics_port binds: every interface unless set (127.0.0.1: local)."
    )
    allow_eviction: bool = Field(
        default=False, description="Start even if Redis may evict keys (maxmemory-policy other than noeviction)."
    )
    heartbeat_seconds: float = Field(default=2.0, description="How often a worker renews its leases and heartbeat.")
    shutdown_grace_seconds: float = Field(
        default=30.0, description="On SIGTERM, running jobs get this long to finish before they are put back."
    )
    blocked_loop_seconds: float = Field(default=1.0, description="Warn when the loop stalls longer.")
    max_tasks_per_child: int | None = Field(
        default=None, description="A supervised worker process is replaced after this many jobs."
    )
    max_memory_per_child_kb: int | None = Field(
        default=None, description="A supervised worker process is replaced once its RSS passes this (KiB)."
    )
    enqueue_wait_seconds: float = Field(
        default=0.0, description="How long delay() retries while Redis is unreachable before raising."
    )
    # Periodic jobs.
    timezone: str = Field(default="UTC", description="Time zone of crontab schedules (an IANA name).")
    beat_enabled: bool = Field(default=True, description="Workers schedule the periodic jobs (each tick runs once).")
    beat_run_missed: bool = Field(
        default=True, description="A tick missed while no worker ran runs once at start-up (never a backlog)."
    )
    # Logging and security.
    log_format: Literal["console", "json"] = Field(default="console", description="console (text) or json lines.")
    log_level: str = Field(default="INFO", description="Level of the engine's log lines.")
    log_configure_root: bool = Field(
        default=True, description="A worker sets up the root logger; false: only the engine's own loggers."
    )
    signing_key: SecretStr | None = Field(
        default=None, description="HMAC key; when set, unsigned messages are rejected."
    )
    signing_max_age: int | None = Field(
        default=None,
        gt=0,
        description="Seconds a signed message stays valid after it is sent (or due); None: "
        "result_expires. A replay later than that is refused.",
    )
    # Celery's wire format (README: "Celery wire format"; runtime/celery_consumer.py). Off by default.
    celery_queues: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Celery queues a worker consumes (kombu's Redis transport on this Redis); env: comma-separated.",
    )
    celery_transport_prefix: str = Field(default="", description="kombu's transport_options global_keyprefix.")
    celery_visibility_timeout: float = Field(
        default=3600.0, gt=0, description="kombu's visibility_timeout: must exceed the longest task of a Celery worker."
    )
    celery_result_prefix: str = Field(default="", description="The result backend's global_keyprefix.")
    celery_result_expires: int = Field(default=86_400, ge=1, description="Celery's result_expires (seconds).")
    celery_default_queue: str = Field(default="celery", description="Where a Celery step without a queue goes.")

    @field_validator("celery_queues", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [q.strip() for q in value.split(",") if q.strip()]
        return value

    @field_validator("key_prefix")
    @classmethod
    def _prefix_fits_a_hash_tag(cls, value: str) -> str:
        if not value or any(c in value for c in "{}*?[]\\ ") or any(ord(c) < 33 for c in value):
            raise ValueError(
                f"key_prefix {value!r} must be non-empty, without braces, spaces or glob characters "
                "(the engine puts it in a hash tag {<prefix>} itself)"
            )
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url_parses(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        try:
            parse_redis_url(url)
        except RedisURLError as exc:
            raise ValueError(url_error_message(exc, url)) from None
        return value

    @model_validator(mode="after")
    def _redis_url_is_readable(self) -> EngineSettings:
        target = self.redis_target
        if self.replica_acks and target.mode == "cluster":
            raise ValueError("replica_acks is not supported on Redis Cluster (WAIT would not reach the key's primary)")
        return self

    @property
    def redis_target(self) -> RedisTarget:
        """Where Redis is (one server, Sentinel or Cluster), parsed from ``redis_url``."""
        url = self.redis_url.get_secret_value()
        try:
            return parse_redis_url(url, cluster=self.redis_cluster)
        except RedisURLError as exc:
            raise ValueError(url_error_message(exc, url)) from None


def url_error_message(exc: RedisURLError, url: str) -> str:
    """The parser's reason, unless it would show a piece of the URL's credentials (a malformed URL can
    put a password where a host name or port is expected): then a reason that quotes nothing."""
    message = str(exc)
    if shows_secret(message, url):
        return "REDIS_URL is not a usable Redis URL (details withheld: they would show part of its credentials)"
    return message


def settings_error_message(exc: ValidationError) -> str:
    """A settings ``ValidationError`` as one line: each variable and what is wrong with it (no input)."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False, include_context=False):
        where = ".".join(str(part) for part in error["loc"])
        reason = error["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {reason}" if where and not reason.startswith(where) else reason)
    return f"invalid settings ({exc.title}): " + "; ".join(problems)


_settings: EngineSettings | None = None


def get_settings() -> EngineSettings:
    """The active settings; built from the environment on first use."""
    global _settings
    if _settings is None:
        _settings = EngineSettings()
    return _settings


def configure(settings: EngineSettings | None = None, **overrides: Any) -> EngineSettings:
    """Install ``settings`` (or the current ones with ``overrides``) for this process."""
    global _settings
    base = settings or get_settings()
    _settings = base.model_copy(update=overrides) if overrides else base
    # Clients made for the old settings are replaced on next use: the store compares identities.
    return _settings


def redacted_url(settings: EngineSettings | None = None) -> str:
    """The Redis URL fit for logs: its userinfo (whatever its form) and password options are ``***``."""
    return redacted((settings or get_settings()).redis_url.get_secret_value())
