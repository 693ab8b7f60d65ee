"""Group commit of completions: those that finish while a commit is in flight share the next MULTI.

One connection checkout, one socket write and one read for the whole batch instead of one each
per job; each completion's writes stay all-or-nothing inside the transaction. While Redis is
unreachable a batch is kept and retried (never dropped); a batch Redis refuses is redone one
completion at a time, so only the culprit fails.
"""

from __future__ import annotations

import asyncio

import structlog

from tasks_engine.core.clock import Backoff
from tasks_engine.exceptions import REDIS_UNAVAILABLE
from tasks_engine.store import Broker, Completion

log = structlog.get_logger("tasks_engine.worker")
BATCH = 500  # completions per MULTI at most


class CommitQueue:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._pending: list[tuple[Completion, asyncio.Future[str]]] = []
        self._writer: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._pending)

    async def submit(self, completion: Completion) -> str:
        """Queue one completion for the next group commit; once Redis has it, what the store did with it
        (``'ok'``, ``'stale'``: dropped, another worker holds the job; ``'final'``: already finished)."""
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending.append((completion, fut))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain(), name="commit")
        return await asyncio.shield(fut)  # a cancelled job still gets its result written

    async def _drain(self) -> None:
        while self._pending:
            batch = self._pending[:BATCH]
            del self._pending[:BATCH]
            completions = [c for c, _ in batch]
            try:
                outcomes = await self._commit(completions)
            except Exception:  # noqa: BLE001 - Redis refused the transaction: redo one by one
                outcomes = []
                for completion in completions:
                    try:
                        outcomes.extend(await self._commit([completion]))
                    except Exception as exc:  # noqa: BLE001 - reported to that job's caller
                        outcomes.append(exc)
            for (_, fut), outcome in zip(batch, outcomes, strict=True):
                if fut.done():
                    continue
                if isinstance(outcome, BaseException):
                    fut.set_exception(outcome)
                else:
                    fut.set_result(outcome)

    async def _commit(self, batch: list[Completion]) -> list[str | BaseException]:
        """Commit ``batch``; while Redis is unreachable, keep retrying what it has not taken yet. On a
        Cluster each completion is its own call, so an outage (a slot moving, a primary being elected)
        can refuse some of them and take the others: only the refused ones are sent again."""
        backoff = Backoff()
        outcomes: list[str | BaseException] = [RuntimeError("not committed")] * len(batch)
        todo = list(range(len(batch)))
        while True:
            error: BaseException
            try:
                replies = await self.broker.commit([batch[i] for i in todo])
            except REDIS_UNAVAILABLE as exc:
                error = exc
            else:
                for i, reply in zip(todo, replies, strict=True):
                    outcomes[i] = reply
                refused = [(i, r) for i, r in zip(todo, replies, strict=True) if isinstance(r, REDIS_UNAVAILABLE)]
                if not refused:
                    return outcomes
                todo, error = [i for i, _ in refused], refused[0][1]
            if not backoff.failing:
                log.error(
                    "redis unreachable: results buffered until it is back",
                    jobs=len(todo),
                    task_ids=[batch[i].task_id for i in todo[:10]],
                    error=str(error),
                )
            await asyncio.sleep(backoff.next())

    async def flush(self, timeout: float | None) -> None:
        """Wait for buffered completions (at shutdown: up to ``timeout``, then give up loudly; the
        leases of those jobs expire and they run again elsewhere)."""
        writer = self._writer
        if writer is None or writer.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(writer), timeout)
        except TimeoutError:
            log.error(
                "results still unwritten at shutdown (redis unreachable); their jobs will run again",
                jobs=len(self._pending),
            )
            writer.cancel()
