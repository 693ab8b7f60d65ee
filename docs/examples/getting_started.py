"""Getting started: one task, a worker, a result.

Start a worker in one terminal, next to this file:   tasks-engine worker -A getting_started
then send the job from another:                       python getting_started.py
"""

import asyncio

from tasks_engine import shared_task


@shared_task(name="docs.add")  # an explicit name: the sender runs this file as __main__
async def add(x: int, y: int) -> int:
    return x + y


async def main() -> None:
    result = await add.delay(2, 3)  # returns once the message is in Redis
    print("sent", result.id)
    print(await result.get(timeout=10))  # 5, once a worker ran it
    print(await result.state())  # SUCCESS


if __name__ == "__main__":
    asyncio.run(main())
