"""Canvas: chain, group, chord, and a workflow that nests them."""

from tasks_engine import chain, chord, group, shared_task


@shared_task(name="docs.extract")
async def extract_data(source_url: str) -> list[int]:
    return [len(source_url), 2, 3]


@shared_task(name="docs.transform")
async def transform_data(rows: list[int]) -> list[int]:
    return [r * 10 for r in rows]


@shared_task(name="docs.load")
async def load_data(rows: list[int], destination_url: str) -> str:
    return f"{len(rows)} rows to {destination_url}"


@shared_task(name="docs.process_item")
async def process_item(item_id: int) -> int:
    return item_id * item_id


@shared_task(name="docs.summarize")
async def summarize_results(results: list[int]) -> int:
    return sum(results)


async def main() -> None:
    workflow = chain(extract_data.s("db://a"), transform_data.s(), load_data.s("db://b"))
    assert await (await workflow.delay()).get(timeout=10) == "3 rows to db://b"

    job = await group(process_item.s(i) for i in range(5)).delay()
    assert await job.get(timeout=10) == [0, 1, 4, 9, 16]  # in the order of the group

    total = await chord([process_item.s(i) for i in range(5)])(summarize_results.s())
    assert await total.get(timeout=10) == 30  # the body runs once, with every header result

    piped = await (process_item.s(3) | process_item.s()).delay()  # a | b is chain(a, b)
    assert await piped.get(timeout=10) == 81
    print("workflows done")
