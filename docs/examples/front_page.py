from tasks_engine import chain, shared_task


@shared_task(name="docs.fetch_page", bind=True, max_retries=3, autoretry_for=(ConnectionError, TimeoutError),
             retry_backoff=True, retry_backoff_max=600, retry_jitter=True)  # fmt: skip
async def fetch(self, url: str) -> dict:
    return {"url": url, "attempt": self.request.retries + 1}  # your async HTTP call here


@shared_task(name="docs.count_chars")
async def count(page: dict) -> int:
    return len(page["url"])


async def main() -> None:  # in a FastAPI handler or any async service
    r = await fetch.delay("https://example.com")  # returns once the message is in Redis
    value = await r.get(timeout=10)  # woken by pub/sub, no polling
    print(await r.state(), value)  # SUCCESS {'url': 'https://example.com', 'attempt': 1}
    wf = await chain(fetch.s("https://example.com"), count.s()).delay()
    print(await wf.get(timeout=10))  # 19
