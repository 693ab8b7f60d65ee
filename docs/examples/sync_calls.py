"""Calling tasks from sync code (Django/Flask views, FastAPI ``def`` endpoints, scripts, threads)."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

from tasks_engine import send_task_sync, shared_task


@shared_task(name="docs.make_thumbnail")
async def make_thumbnail(image_id: int, size: int = 128) -> str:
    return f"thumb-{image_id}-{size}.png"


def view(image_id: int) -> str:
    """What a sync web view does: no event loop, no await."""
    handle = make_thumbnail.delay_sync(image_id)  # returns once the message is in Redis
    by_name = send_task_sync("docs.make_thumbnail", args=[image_id], kwargs={"size": 64})
    assert by_name.get(timeout=10) == f"thumb-{image_id}-64.png"
    return handle.get(timeout=10)  # blocks this thread only; handle.state, handle.ready() too


async def main() -> None:
    # The example's own process runs an event loop, so the sync calls run in threads, as a WSGI
    # server's threads would: they share one client and its connections.
    with ThreadPoolExecutor(max_workers=8) as pool:
        names = await asyncio.gather(*(asyncio.get_running_loop().run_in_executor(pool, view, i) for i in range(16)))
    assert names[3] == "thumb-3-128.png"
    print("16 sync calls done")
