"""What the engine asks the store to write, as plain data (built by the planner and the completion step)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass(frozen=True)
class Enqueue:
    """One message to place: ready now, or deferred to ``eta_ms``; ``nx`` skips ids already known."""

    id: str
    raw: bytes
    queue: str
    priority: int
    eta_ms: int = 0
    nx: bool = False

    def packed(self) -> bytes:
        """The one argument ``enqueue.lua`` reads for this message: its fields, a line each, then the
        message (ids and queue names hold no control characters, see validation.py). One argument
        instead of six: packing the command is most of the client's cost per ``delay()``."""
        return f"{self.id}\n{self.queue}\n{self.priority}\n{self.eta_ms}\n{1 if self.nx else 0}\n".encode() + self.raw

    def stored(self) -> list[Any]:
        """The form kept inside a chord record until the chord fires (always ``nx``)."""
        return [self.id, self.raw.decode(), self.queue, str(self.priority), str(self.eta_ms), "1"]

    def stored_nx(self) -> list[Any]:
        """As :meth:`stored`, keeping this enqueue's own ``nx``."""
        return [self.id, self.raw.decode(), self.queue, str(self.priority), str(self.eta_ms), "1" if self.nx else "0"]


@dataclass
class ChordRecord:
    """A chord waiting for its header: ``total`` parts, then ``body`` is enqueued (or ``on_error``)."""

    id: str
    total: int
    body: list[Enqueue]
    on_error: list[Enqueue]


@dataclass(frozen=True)
class ChordPart:
    """One header part reporting to its chord: a result (``ok``) or a failure description."""

    chord_id: str
    task_id: str
    index: int
    ok: bool
    result_json: str = "null"
    error_text: str = ""
    traceback: str = ""


@dataclass
class Writes:
    """A plan: messages, chord records and group trees written together in one transaction."""

    enqueues: list[Enqueue] = field(default_factory=list)
    chords: list[ChordRecord] = field(default_factory=list)
    groups: list[tuple[str, bytes]] = field(default_factory=list)  # (group id, JSON tree)

    def __bool__(self) -> bool:
        return bool(self.enqueues or self.chords or self.groups)

    def fields(
        self, later: list[tuple[str, dict[str, Any]]] | None = None, parts: list[ChordPart] | None = None
    ) -> dict[str, Any]:
        """The plan part of the JSON ``te_apply`` in ``lua/lib.lua`` reads."""
        return {
            "later": [[i, _strings(r)] for i, r in later or ()],
            "chords": [
                [ch.id, ch.total, _json([e.stored() for e in ch.body]), _json([e.stored() for e in ch.on_error])]
                for ch in self.chords
            ],
            "groups": [[g, tree.decode()] for g, tree in self.groups],
            "enqueues": [e.stored_nx() for e in self.enqueues],
            "parts": [
                [c.chord_id, c.task_id, c.index, "1" if c.ok else "0", c.result_json, c.error_text, c.traceback]
                for c in parts or ()
            ],
        }

    def payload(
        self, later: list[tuple[str, dict[str, Any]]] | None = None, parts: list[ChordPart] | None = None
    ) -> bytes:
        """The JSON ``lua/plan.lua`` reads: this plan, steps that will never run, chord parts."""
        return orjson.dumps(self.fields(later, parts))


@dataclass
class Completion:
    """Everything that finishing one delivery writes, in one transaction with its acknowledgement.

    ``record`` is merged into the result hash (None: the result is not kept and the hash is deleted);
    ``final`` deletes the message and announces the id on the ``done`` channel; ``failed_later`` are
    result records of steps that will never run (they are marked revoked so they never start).
    ``token`` is the delivery it finishes (the ``delivered`` count its claim returned) and ``worker``
    the lease holder: the store drops the completion when either no longer matches (a stale worker).
    """

    task_id: str
    record: dict[str, Any] | None
    final: bool
    clear_exception: bool = False
    failed_later: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    writes: Writes = field(default_factory=Writes)
    chord_parts: list[ChordPart] = field(default_factory=list)
    idempotent_value: str | None = None
    dead_letter: bytes | None = None
    token: int | None = None
    worker: str = ""
    failed: bool = False  # a FAILURE for good: indexed under ``failed`` (findable by time)
    celery: list[list[Any]] = field(default_factory=list)  # a Celery-sent job's writes (runtime/celery_finish.py)

    def payload(self) -> bytes:
        """The JSON ``lua/complete.lua`` reads (every record value as a string)."""

        return orjson.dumps(
            {
                "id": self.task_id,
                "token": self.token,
                "worker": self.worker,
                "record": None if self.record is None else _strings(self.record),
                "clear": self.clear_exception,
                "final": self.final,
                **self.writes.fields(self.failed_later, self.chord_parts),
                "idempotent": self.idempotent_value,
                "dead": None if self.dead_letter is None else self.dead_letter.decode(errors="replace"),
                "failed": self.failed,
                "celery": self.celery or None,
            }
        )


def _strings(record: dict[str, Any]) -> dict[str, str]:
    """A record as the scripts store it: every value a string."""
    return {k: v if isinstance(v, str) else str(v) for k, v in record.items()}


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()
