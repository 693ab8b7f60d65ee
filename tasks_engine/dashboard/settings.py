"""The dashboard's own settings (``TE_DASHBOARD_*``), apart from the engine's: a worker never needs them."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tasks_engine.dashboard.edge import check_allowed_host


class DashboardSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TE_DASHBOARD_", extra="ignore", env_file=None)

    host: str = Field(default="127.0.0.1", description="Address to bind; beyond loopback, credentials are required.")
    port: int = Field(default=5555, ge=0, le=65535, description="Flower's port, so bookmarks keep working.")
    username: str | None = Field(default=None, description="Basic-auth user (with password).")
    password: SecretStr | None = Field(default=None, description="Basic-auth password (with username).")
    token: SecretStr | None = Field(default=None, description="Bearer token accepted instead of basic auth.")
    read_only: bool = Field(default=False, description="Hide and refuse every action (revoke, retry, purge, ...).")
    refresh_seconds: float = Field(default=1.0, gt=0, le=60, description="How often /api/events pushes a snapshot.")
    sample_seconds: float = Field(default=3.0, gt=0, le=300, description="How often the overview's series samples.")
    samples_kept: int = Field(default=200, ge=2, le=10_000, description="Samples kept in memory (the chart's width).")
    list_limit: int = Field(default=200, ge=1, le=10_000, description="Rows of each task list and dead letters.")
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names served besides loopback (comma-separated; name, name:port or *.domain).",
    )
    forwarded_allow_ips: str | None = Field(
        default=None,
        description="Proxies whose X-Forwarded-Proto/-For are believed (uvicorn's setting; unset: nobody's).",
    )

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        """``a.example.com, b.example.com`` from the environment; each entry checked here, at the boundary."""
        if isinstance(value, str):
            value = [h for h in value.split(",") if h.strip()]
        if isinstance(value, (list, tuple)):
            return [check_allowed_host(str(h)) for h in value]
        return value

    @property
    def has_credentials(self) -> bool:
        return bool(self.token) or bool(self.username and self.password)


class DashboardConfigError(ValueError):
    """The dashboard would be unsafe or unusable as configured (e.g. open on a public address)."""


def is_loopback(host: str) -> bool:
    """Only loopback counts as private: a LAN address is reachable by every machine on the LAN."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name may resolve anywhere


def check_exposure(settings: DashboardSettings) -> None:
    """Refuse to serve actions to anyone who can reach the port: credentials first, or stay on loopback."""
    if bool(settings.username) != bool(settings.password):
        raise DashboardConfigError("set both TE_DASHBOARD_USERNAME and TE_DASHBOARD_PASSWORD (or neither)")
    if not is_loopback(settings.host) and not settings.has_credentials:
        raise DashboardConfigError(
            f"refusing to serve the dashboard on {settings.host} without credentials: set "
            "TE_DASHBOARD_USERNAME and TE_DASHBOARD_PASSWORD, or TE_DASHBOARD_TOKEN, or bind 127.0.0.1"
        )
