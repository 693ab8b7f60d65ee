"""The store: the only code that names a Redis key, holds Lua or talks to Redis (connections,
enqueue batching, the broker's claim/complete/housekeeping, read-only views, the idle-worker waiter).

Imports only ``core``; used by ``client``, ``runtime``, ``ops``, the dashboard and the entry points.
"""

from tasks_engine.store.broker import Broker, Duplicate, SyncHeartbeat, get_broker, loop_broker
from tasks_engine.store.connection import awaited
from tasks_engine.store.keys import Keys, beat_task_id
from tasks_engine.store.writes import ChordPart, ChordRecord, Completion, Enqueue, Writes

__all__ = [
    "Broker",
    "ChordPart",
    "ChordRecord",
    "Completion",
    "Duplicate",
    "Enqueue",
    "Keys",
    "SyncHeartbeat",
    "Writes",
    "awaited",
    "beat_task_id",
    "get_broker",
    "loop_broker",
]
