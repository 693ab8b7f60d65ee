"""The Celery app being moved, as it runs today: the guide's two tasks and their queues, unchanged.

Its producer, also unchanged, sends one job of each and reads the results with Celery's AsyncResult:
    python celery_app.py
Whichever worker takes a message, Celery's or tasks_engine's, the result reads the same.
"""

import os

from celery import Celery
from celery.result import AsyncResult

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("CELERY_KEY_PREFIX", "")  # kombu's global_keyprefix, if your app sets one

app = Celery("admin", broker=REDIS_URL, backend=REDIS_URL)  # broker and backend: one Redis, one database
app.conf.update(
    task_serializer="json",  # tasks_engine reads JSON messages only, never pickle
    accept_content=["json"],
    result_serializer="json",
    task_track_started=True,
    broker_transport_options={"global_keyprefix": PREFIX, "visibility_timeout": 7200},  # > longest task and countdown
    result_backend_transport_options={"global_keyprefix": PREFIX},
    broker_connection_retry_on_startup=True,
)


@app.task(name="admin.send_email")
def send_email_task(to_email: str, subject: str, content: str) -> dict[str, str]:
    return {"status": "success", "email": to_email, "message": "邮件发送成功"}


@app.task(name="admin.process_data", queue="admin")
def admin_task(data: dict[str, int]) -> dict[str, int]:
    return {"processed": len(data)}


def main() -> None:
    sent = send_email_task.delay("user@example.com", "主题", "内容")
    routed = admin_task.delay({"a": 1, "b": 2})  # to the "admin" queue
    print(AsyncResult(sent.id, app=app).get(timeout=10)["status"])  # success
    print(AsyncResult(routed.id, app=app).get(timeout=10))  # {'processed': 2}
    print(AsyncResult(sent.id, app=app).status)  # SUCCESS


if __name__ == "__main__":
    main()
