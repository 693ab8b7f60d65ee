"""The store: the only code that names a Redis key or holds Lua (see :mod:`tasks_engine.store.keys`)."""

from tasks_engine.store.broker import Broker, SyncHeartbeat, get_broker, loop_broker
from tasks_engine.store.connection import awaited
from tasks_engine.store.keys import Keys, beat_task_id
from tasks_engine.store.writes import ChordPart, ChordRecord, Completion, Enqueue, Writes

__all__ = [
    "Broker",
    "ChordPart",
    "ChordRecord",
    "Completion",
    "Enqueue",
    "Keys",
    "SyncHeartbeat",
    "Writes",
    "awaited",
    "beat_task_id",
    "get_broker",
    "loop_broker",
]
