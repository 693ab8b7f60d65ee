"""Checked by mypy in tests/test_typing.py: exactly the lines marked with an error comment are reported."""
# ruff: noqa: E501
# fmt: off

from __future__ import annotations

from typing import Any

from tasks_engine import shared_task


@shared_task
async def add(x: int, y: int) -> int:
    return x + y


@shared_task(name="typing.report", max_retries=2)
def report(name: str, *, rows: int = 10) -> dict[str, int]:
    return {name: rows}


@shared_task(bind=True)
async def bound(self: Any, key: str) -> str:
    return key


async def use() -> None:
    r = await add.delay(1, 2)
    total: int = await r.get(timeout=5)
    await add.delay(1, "x")  # error: Argument 2 to "delay" of "Task" has incompatible type "str"; expected "int"
    await add.delay(1)  # error: Missing positional argument "y" in call to "delay" of "Task"
    wrong: str = await r.get()  # error: Incompatible types in assignment (expression has type "int", variable has type "str")
    rows = await (await report.delay("users", rows=3)).get()
    rows["users"] + 1
    await report.delay("users", rows="many")  # error: Argument "rows" to "delay" of "Task" has incompatible type "str"; expected "int"
    await bound.delay("k")
    await bound.delay(1)  # error: Argument 1 to "delay" of "Task" has incompatible type "int"; expected "str"
    add.si(1, 2)
    add.si(1, 2, 3)  # error: Too many arguments for "si" of "Task"
    del total, wrong


def use_sync() -> None:
    total: int = add.delay_sync(1, 2).get(timeout=5)
    add.delay_sync(1, "x")  # error: Argument 2 to "delay_sync" of "Task" has incompatible type "str"; expected "int"
    wrong: str = add.delay_sync(1, 2).get()  # error: Incompatible types in assignment (expression has type "int", variable has type "str")
    del total, wrong
