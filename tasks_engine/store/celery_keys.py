"""The Redis keys Celery and kombu use, for speaking Celery's wire format on a shared Redis.

These are not the engine's keys: kombu's Redis transport and Celery's Redis result backend own them,
so the names and separators must match theirs exactly (checked against the installed celery/kombu by
the interop tests, never by reading these constants back). Both sides may prepend a global key prefix
(kombu ``transport_options.global_keyprefix``; the result backend's ``global_keyprefix``, to which
Celery appends ``_`` unless it already ends in one of ``:_-.``).

``<queue>``                       list of task envelopes, priority 0 (LPUSH by producers, consumed from the right)
``<queue>\\x06\\x16<step>``         the same for priority steps 3, 6, 9 (a lower step is consumed first)
``unacked``                       hash delivery tag -> JSON ``[envelope, exchange, routing_key]`` of delivered,
                                  not yet acked messages (restored by kombu after the visibility timeout)
``unacked_index``                 zset delivery tag -> delivery time (s)
``unacked_mutex``                 kombu's lock around its restore of old unacked messages
``_kombu.binding.<exchange>``     set of ``<routing_key>\\x06\\x16<pattern>\\x06\\x16<queue>`` bindings
``celery-task-meta-<id>``         JSON result record (also the pub/sub channel ``get()`` listens on)
``celery-taskset-meta-<gid>``     a saved group; ``.j`` / ``.t`` / ``.s`` the native chord's counters
"""

from __future__ import annotations

from bisect import bisect
from dataclasses import dataclass

#: kombu's Redis transport: priority steps, and the separator of a priority sub-queue's name
PRIORITY_STEPS = (0, 3, 6, 9)
SEPARATOR = "\x06\x16"


def priority_step(priority: int) -> int:
    """The step a message's priority falls in (kombu maps 0-2 to 0, 3-5 to 3, 6-8 to 6, 9+ to 9)."""
    return PRIORITY_STEPS[max(bisect(PRIORITY_STEPS, priority) - 1, 0)]


def result_prefix(global_keyprefix: str) -> str:
    """Celery's rule for the result backend's global prefix."""
    if global_keyprefix and global_keyprefix[-1] not in ":_-.":
        return global_keyprefix + "_"
    return global_keyprefix


@dataclass(frozen=True)
class CeleryKeys:
    """Key names of one Celery app on this Redis (``transport_prefix``: kombu's global_keyprefix;
    ``backend_prefix``: the result backend's, as configured, before Celery's ``_`` rule)."""

    transport_prefix: str = ""
    backend_prefix: str = ""

    def queue(self, name: str, priority: int = 0) -> str:
        step = priority_step(priority)
        return f"{self.transport_prefix}{name}{SEPARATOR}{step}" if step else f"{self.transport_prefix}{name}"

    def queues_by_priority(self, name: str) -> list[str]:
        """The lists of one queue, best priority first (the order kombu's BRPOP uses)."""
        return [self.queue(name, step) for step in PRIORITY_STEPS]

    @property
    def unacked(self) -> str:
        return f"{self.transport_prefix}unacked"

    @property
    def unacked_index(self) -> str:
        return f"{self.transport_prefix}unacked_index"

    @property
    def unacked_mutex(self) -> str:
        return f"{self.transport_prefix}unacked_mutex"

    def binding(self, exchange: str) -> str:
        return f"{self.transport_prefix}_kombu.binding.{exchange}"

    def binding_member(self, routing_key: str, queue: str, pattern: str = "") -> str:
        return f"{routing_key}{SEPARATOR}{pattern}{SEPARATOR}{queue}"

    def result(self, task_id: str) -> str:
        return f"{result_prefix(self.backend_prefix)}celery-task-meta-{task_id}"

    def group(self, group_id: str) -> str:
        return f"{result_prefix(self.backend_prefix)}celery-taskset-meta-{group_id}"

    def chord_results(self, group_id: str) -> str:
        return f"{self.group(group_id)}.j"

    def chord_extra(self, group_id: str) -> str:
        return f"{self.group(group_id)}.t"

    def chord_size(self, group_id: str) -> str:
        return f"{self.group(group_id)}.s"
