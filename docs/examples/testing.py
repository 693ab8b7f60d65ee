"""Testing tasks: call them directly, switch on eager mode, or run a real worker in the test."""

from typing import Any

from tasks_engine import AsyncResult, shared_task
from tasks_engine.testing import always_eager


@shared_task(name="docs.welcome_mail")
def send_email_task(to_email: str, subject: str) -> dict[str, str]:  # a plain def task
    return {"status": "sent", "to": to_email}


async def signup(email: str) -> AsyncResult[Any]:  # the code under test, e.g. a FastAPI handler
    return await send_email_task.delay(email, "Welcome")


def test_send_email_task() -> None:
    result = send_email_task("ada@example.com", "Welcome")  # called directly: its return value
    assert result["status"] == "sent"


async def test_signup_sends_the_welcome_mail() -> None:
    with always_eager():  # delay()/apply_async()/canvas run in this process, no Redis
        result = await signup("ada@example.com")  # its .delay() runs the task right here
    assert (await result.get())["status"] == "sent"


async def test_signup_with_a_real_worker(tasks_engine_worker: object) -> None:  # the pytest plugin's fixture
    result = await signup("ada@example.com")  # a real message through Redis, run by the worker
    assert (await result.get(timeout=10))["to"] == "ada@example.com"
