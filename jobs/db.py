"""The application's tables and one SQLAlchemy async engine per event loop and database URL.

SQLite (``sqlite+aiosqlite``) is the default; PostgreSQL (``postgresql+asyncpg``) when
``DATABASE_URL`` says so, optionally inside ``database_schema`` (schema_translate_map, so the
same Table objects serve every schema).
"""

from __future__ import annotations

import asyncio
import weakref
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    event,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from jobs.config import JobsSettings, job_settings

metadata = MetaData()

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False),
    Column("email", String(254), nullable=False),
    Column("active", Boolean, nullable=False, default=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

orders = Table(
    "orders",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("amount_cents", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("status", String(16), nullable=False, default="pending"),
    Column("tax_cents", BigInteger),
    Column("total_cents", BigInteger),
    Column("error", String(200)),
    Column("process_count", Integer, nullable=False, default=0),
    Column("processed_by", String(64)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("processed_at", DateTime(timezone=True)),
    Index("ix_orders_status", "status"),
)

_engines: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str | None], AsyncEngine]] = (
    weakref.WeakKeyDictionary()
)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL: readers (a long report) never block writers (batch jobs); busy_timeout: writers queue up.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=15000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def is_sqlite(settings: JobsSettings | None = None) -> bool:
    return make_url((settings or job_settings()).database_url).get_backend_name() == "sqlite"


def get_engine(settings: JobsSettings | None = None) -> AsyncEngine:
    """The engine for the running loop (asyncpg/aiosqlite connections cannot cross loops)."""
    settings = settings or job_settings()
    url = make_url(settings.database_url)
    schema = None if url.get_backend_name() == "sqlite" else settings.database_schema
    per_loop = _engines.setdefault(asyncio.get_running_loop(), {})
    key = (settings.database_url, schema)
    engine = per_loop.get(key)
    if engine is None:
        options: dict[str, Any] = {}
        if schema:
            options["schema_translate_map"] = {None: schema}
        if url.get_backend_name() == "sqlite":
            database = url.database or ""
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            engine = create_async_engine(url, execution_options=options, connect_args={"timeout": 15})
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            engine = create_async_engine(url, execution_options=options, pool_size=10, max_overflow=10)
        per_loop[key] = engine
    return engine


async def dispose_engines() -> None:
    """Close the pools of the running loop (end of a demo or a test)."""
    per_loop = _engines.pop(asyncio.get_running_loop(), {})
    for engine in per_loop.values():
        await engine.dispose()


async def create_schema(settings: JobsSettings | None = None) -> None:
    settings = settings or job_settings()
    engine = get_engine(settings)
    async with engine.begin() as conn:
        if settings.database_schema and not is_sqlite(settings):
            await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{settings.database_schema}"'))
        await conn.run_sync(metadata.create_all)
