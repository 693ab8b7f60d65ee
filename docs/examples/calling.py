"""Calling tasks: delay, apply_async and its options, apply (eager), send_task by name."""

from datetime import UTC, datetime, timedelta

from tasks_engine import send_task, shared_task


@shared_task(name="docs.send_email")
async def send_email_task(to_email: str, subject: str, content: str) -> dict[str, str]:
    return {"status": "success", "email": to_email, "message": "邮件发送成功"}


async def main() -> None:
    args = ["user@example.com", "主题", "内容"]
    now = await send_email_task.delay(*args)  # as soon as a worker is free
    later = await send_email_task.apply_async(args=args, countdown=1)  # not before 1 s from now
    at = await send_email_task.apply_async(args=args, eta=datetime.now(UTC) + timedelta(seconds=1))
    soon = await send_email_task.apply_async(args=args, expires=3600)  # REVOKED if not started within 1 h
    urgent = await send_email_task.apply_async(args=args, priority=0)  # 0 is the highest, 9 the lowest
    by_name = await send_task("docs.send_email", args=args)  # without importing the task's code
    for result in (now, later, at, soon, urgent, by_name):
        assert (await result.get(timeout=10))["status"] == "success"

    eager = await send_email_task.apply(args=args)  # runs here, now: no Redis, no worker
    assert (await eager.get())["email"] == "user@example.com"
    print("all sent")
