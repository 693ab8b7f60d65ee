"""Demo data: ``python -m jobs.seed --users 50 --orders 1000`` (uses DATABASE_URL, SQLite by default).

Deterministic (fixed random seed), so tests know which orders are invalid: every
``invalid_every``-th order has a non-positive amount, and every 10th user is inactive (their
orders are refused by the batch job too).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from jobs.config import JobsSettings, job_settings
from jobs.db import create_schema, dispose_engines, get_engine, is_sqlite, orders, users

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
GIVEN = ["伟", "芳", "娜", "秀英", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "涛", "明", "超", "霞"]
CURRENCIES = ["CNY", "CNY", "CNY", "USD", "EUR"]
INSERT_CHUNK = 5000


def user_is_active(user_id: int) -> bool:
    return user_id % 10 != 0


def order_is_valid(order_id: int, users_count: int, invalid_every: int) -> bool:
    """What the batch job will decide for a seeded order (used by tests and the demo)."""
    user_id = (order_id - 1) % users_count + 1
    return order_id % invalid_every != 0 and user_is_active(user_id)


async def seed(
    users_count: int = 50,
    orders_count: int = 500,
    *,
    invalid_every: int = 20,
    settings: JobsSettings | None = None,
) -> dict[str, Any]:
    """Create the tables and replace their rows with demo data; returns counts (ids are 1..n in both tables)."""
    settings = settings or job_settings()
    if users_count < 1:
        raise ValueError("need at least one user")
    await create_schema(settings)
    engine = get_engine(settings)
    rng = random.Random(42)
    now = datetime.now(UTC).replace(microsecond=0)
    async with engine.begin() as conn:
        await conn.execute(delete(orders))
        await conn.execute(delete(users))
        await conn.execute(
            users.insert(),
            [
                {
                    "id": i,
                    "name": f"{SURNAMES[i % len(SURNAMES)]}{GIVEN[i % len(GIVEN)]}{i}",
                    "email": f"user{i}@example.com",
                    "active": user_is_active(i),
                    "created_at": now - timedelta(days=60, minutes=i),
                }
                for i in range(1, users_count + 1)
            ],
        )
    invalid = 0
    columns = ("id", "user_id", "amount_cents", "currency", "status", "process_count", "created_at")
    sqlite = is_sqlite(settings)
    for start in range(1, orders_count + 1, INSERT_CHUNK):
        batch: list[tuple[Any, ...]] = []
        for i in range(start, min(start + INSERT_CHUNK, orders_count + 1)):
            amount = 100 + int(rng.random() * 500_000) if i % invalid_every else -int(rng.random() * 5_000)
            invalid += 0 if order_is_valid(i, users_count, invalid_every) else 1
            created = now - timedelta(seconds=int(rng.random() * 30 * 86_400))
            # SQLite: SQLAlchemy's own DATETIME text format, so reads through the Table parse it back.
            batch.append(
                (
                    i,
                    (i - 1) % users_count + 1,
                    amount,
                    CURRENCIES[i % len(CURRENCIES)],
                    "pending",
                    0,
                    created.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f") if sqlite else created,
                )
            )
        async with engine.begin() as conn:  # one transaction per chunk keeps SQLite's journal small
            await _bulk_insert(conn, columns, batch, None if sqlite else settings.database_schema)
    return {
        "users": users_count,
        "orders": orders_count,
        "invalid_orders": invalid,
        "database": make_url(settings.database_url).render_as_string(hide_password=True),
    }


async def _bulk_insert(
    conn: AsyncConnection, columns: tuple[str, ...], rows: list[tuple[Any, ...]], schema: str | None
) -> None:
    """The driver's own bulk path (SQLite executemany, PostgreSQL COPY): per-row SQLAlchemy
    parameter processing would make seeding 100k rows take many seconds."""
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    if conn.dialect.name == "sqlite":
        marks = ", ".join("?" * len(columns))
        await driver.executemany(f"INSERT INTO orders ({', '.join(columns)}) VALUES ({marks})", rows)  # noqa: S608
    else:
        await driver.copy_records_to_table("orders", records=rows, columns=list(columns), schema_name=schema)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jobs.seed", description="Create demo users and orders.")
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--orders", type=int, default=500)
    parser.add_argument("--invalid-every", type=int, default=20, help="every Nth order has an invalid amount")
    parser.add_argument("--database-url", default=None, help="default: DATABASE_URL or sqlite+aiosqlite:///var/app.db")
    args = parser.parse_args(argv)
    settings = job_settings()
    if args.database_url:
        settings = settings.model_copy(update={"database_url": args.database_url})

    async def run() -> dict[str, Any]:
        try:
            return await seed(args.users, args.orders, invalid_every=args.invalid_every, settings=settings)
        finally:
            await dispose_engines()

    print(json.dumps(asyncio.run(run()), ensure_ascii=False))


if __name__ == "__main__":
    main()
