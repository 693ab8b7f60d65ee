"""At-least-once delivery: make effects happen once, per task id or per effect."""

from typing import Any

from tasks_engine import shared_task

charges: dict[str, int] = {}
mails: list[str] = []


@shared_task(name="docs.charge", idempotent=True)  # the task id is the idempotency key
async def charge(order_id: str) -> str:
    charges[order_id] = charges.get(order_id, 0) + 1
    return "charged"


@shared_task(name="docs.notify", bind=True)
async def notify(self: Any, email: str) -> str:
    if not await self.effect_done("mail"):  # skipped when a killed delivery already sent it
        mails.append(email)
        await self.mark_effect_done("mail")
    return "notified"


async def main() -> None:
    first = await charge.apply_async(("order-1",), task_id="charge-order-1")
    assert await first.get(timeout=10) == "charged"
    again = await charge.apply_async(("order-1",), task_id="charge-order-1")  # sent again: not run again
    assert await again.get(timeout=10) == "charged"
    assert charges["order-1"] == 1
    assert await (await notify.delay("ada@example.com")).get(timeout=10) == "notified"
    assert mails == ["ada@example.com"]
