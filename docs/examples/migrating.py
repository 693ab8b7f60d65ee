"""The same two tasks ported to tasks_engine, under the names Celery's producers send.

A worker that runs them from tasks_engine's queues and from Celery's, beside the Celery workers:
    TE_CELERY_QUEUES=celery,admin TE_CELERY_VISIBILITY_TIMEOUT=7200 tasks-engine worker -A migrating -Q default,admin
A producer moved to tasks_engine (an async service):
    python migrating.py
"""

import asyncio

from tasks_engine import shared_task


@shared_task(name="admin.send_email")  # the name Celery's messages carry
async def send_email_task(to_email: str, subject: str, content: str) -> dict[str, str]:
    return {"status": "success", "email": to_email, "message": "邮件发送成功"}


@shared_task(name="admin.process_data", queue="admin")
async def admin_task(data: dict[str, int]) -> dict[str, int]:
    return {"processed": len(data)}


async def main() -> None:
    sent = await send_email_task.delay("user@example.com", "主题", "内容")
    routed = await admin_task.delay({"a": 1, "b": 2})  # to tasks_engine's "admin" queue
    print((await sent.get(timeout=10))["status"])  # success
    print(await routed.get(timeout=10))  # {'processed': 2}
    print(await sent.state())  # SUCCESS


if __name__ == "__main__":
    asyncio.run(main())
