"""The store's side of Celery's wire format: claiming from kombu's Redis lists, taking messages over
into the engine's queues, restoring lost ones, writing Celery result records.

A Celery message goes through two atomic steps (``lua/celery_claim.lua``, ``lua/celery_accept.lua``):

1. *claim*: off the right end of the queue's priority lists (best step first) and into kombu's
   ``unacked`` hash + ``unacked_index`` zset, in one script. kombu's own consumer does BRPOP and then
   HSET, so a crash between the two loses the message; here there is no such moment.
2. *accept*: off kombu's books and into the engine's queue as an engine message (or a dead letter with
   its Celery FAILURE record), in one script, and only if the unacked entry is still there.

From then on the engine's lease protects the job: a worker that dies (even SIGKILL) has its job
requeued by the other workers when the lease expires, and it runs again (at-least-once, like Celery's
``acks_late``). So a job is in kombu's unacked set only for the milliseconds between the two steps,
not while it runs: a Celery worker's restore of old unacked messages can never re-push a job we are
running. If we die between the two steps, the entry stays in ``unacked`` and goes back to its queue
after ``visibility_timeout``: by kombu's restore in a Celery worker, or by :meth:`CeleryStore.restore`
(same rule, under kombu's ``unacked_mutex``; both remove the entry in one transaction with the push, so
an entry is never restored twice). The rule kombu itself imposes stays true for Celery workers on the
same queue: ``visibility_timeout`` must exceed their longest task.

Celery's keys are not under the engine's hash tag: this works on one Redis server (as kombu's Redis
transport does), not on a Cluster.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tasks_engine.core.clock import now_iso, now_ms
from tasks_engine.core.config import EngineSettings
from tasks_engine.store.broker import Broker
from tasks_engine.store.celery_keys import SEPARATOR, CeleryKeys

MUTEX_SECONDS = 300  # kombu's unacked_mutex_expire


@dataclass(frozen=True)
class Claimed:
    tag: str
    raw: bytes
    queue: str


@dataclass(frozen=True)
class TakeOver:
    """What :meth:`CeleryStore.accept` does with one claimed message: enqueue ``packed`` (an engine
    message, ``Enqueue.packed()``), or dead-letter ``dead`` and write Celery record ``record`` at ``result_key``."""

    tag: str
    packed: bytes = b""
    dead: bytes = b""
    result_key: str = ""
    record: str = ""


class CeleryStore:
    """Celery's queues and result records on the broker's Redis."""

    def __init__(self, broker: Broker, settings: EngineSettings) -> None:
        self.broker = broker
        self.settings = settings
        self.keys = CeleryKeys(settings.celery_transport_prefix, settings.celery_result_prefix)

    def _run(self, name: str, args: Sequence[Any]) -> Any:
        return self.broker.run(name, args)

    async def claim(self, queues: Sequence[str], count: int) -> list[Claimed]:
        """Up to ``count`` messages (fewer by the jobs already waiting in these queues on the engine's side)."""
        native: list[str] = []
        for queue in queues:
            native += [self.broker.keys.queue(queue), queue]
        lists: list[str] = []
        for queue in queues:
            for key in self.keys.queues_by_priority(queue):
                lists += [key, queue]
        k = self.keys
        args = [
            self.broker.base,
            count,
            repr(time.time()),
            now_iso(),
            k.unacked,
            k.unacked_index,
            *native,
            "--",
            *lists,
        ]
        rows = await self._run("celery_claim", args)
        return [Claimed(tag.decode(errors="replace"), raw, queue.decode()) for tag, raw, queue in rows]

    async def accept(self, items: Sequence[TakeOver]) -> list[bool]:
        """Take claimed messages over (see the module docstring); False for one restored meanwhile."""
        if not items:
            return []
        k = self.keys
        args: list[Any] = [self.broker.base, now_ms(), k.unacked, k.unacked_index, self.settings.celery_result_expires]
        for item in items:
            kind = "job" if item.packed else "dead"
            args += [item.tag, kind, item.packed or item.dead, item.result_key, item.record]
        return [bool(flag) for flag in await self._run("celery_accept", args)]

    async def restore(self, limit: int = 1000) -> int:
        """Put back entries of kombu's unacked set older than ``celery_visibility_timeout``; -1 when kombu's
        lock is held (a Celery worker is restoring right now)."""
        k = self.keys
        ceiling = time.time() - self.settings.celery_visibility_timeout
        args = [
            k.unacked, k.unacked_index, k.unacked_mutex, uuid.uuid4().hex, MUTEX_SECONDS, repr(ceiling), limit,
            k.binding(""), k.transport_prefix, SEPARATOR,
        ]  # fmt: skip
        return int(await self._run("celery_restore", args))

    async def store_result(self, task_id: str, record: str) -> bool:
        """Write (and publish) a Celery result record unless a SUCCESS is stored already."""
        key = self.keys.result(task_id)
        return bool(await self._run("celery_result", [key, record, self.settings.celery_result_expires]))
