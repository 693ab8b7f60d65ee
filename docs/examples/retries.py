"""Retries: automatic on listed errors with backoff and jitter, or by hand with self.retry()."""

from typing import Any

from tasks_engine import shared_task

calls: dict[str, int] = {}


@shared_task(name="docs.fetch", bind=True, max_retries=3, autoretry_for=(ConnectionError, TimeoutError),
             retry_backoff=0.1, retry_backoff_max=1, retry_jitter=False)  # fmt: skip
async def fetch(self: Any, url: str) -> str:
    calls[url] = calls.get(url, 0) + 1
    if calls[url] < 3:
        raise ConnectionError("the server went away")  # retried at once: it is listed in autoretry_for
    return f"{url} after {self.request.retries} retries"


@shared_task(name="docs.robust", bind=True, max_retries=2, default_retry_delay=0.1)
async def robust_task(self: Any, data: dict[str, Any]) -> dict[str, Any]:
    if not data:
        raise ValueError("输入数据无效")  # a business error: not retried, the job fails at once
    try:
        if data.get("flaky"):
            raise ConnectionError("network down")
        return data
    except ConnectionError as exc:
        raise self.retry(exc=exc, countdown=0.1) from exc  # a network error: try again later


async def main() -> None:
    assert await (await fetch.delay("https://example.com")).get(timeout=15) == "https://example.com after 2 retries"
    gave_up = await robust_task.delay({"flaky": True})
    try:
        await gave_up.get(timeout=15)
    except ConnectionError:  # after max_retries, the last error is the job's
        print("gave up after", (await gave_up.record())["retries"], "retries")
    else:
        raise AssertionError("max_retries should have ended it")
