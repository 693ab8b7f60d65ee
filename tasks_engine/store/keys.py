"""Every Redis key and channel the engine uses, in one place. Nothing outside ``store/`` spells one.

Layout under ``{<prefix>}`` (``{te}`` by default, so two apps can share one Redis). The braces are a
Redis Cluster hash tag: every key of one app hashes to one slot, so each script's keys live on one
node (on a single Redis the braces are just characters). Until 0.x the keys had no braces; see the
README's migration note and ``tasks-engine migrate-keys``.

Every script receives ``STATIC_KEYS`` as its declared ``KEYS`` (see ``scripts.py``); the per-job keys
a script finds while it runs (the ids it pops from a queue) carry the same hash tag.

``seq``                 counter: enqueue sequence, the FIFO part of a queue score.
``q:<queue>``           zset of ready job ids, score = priority * 1e12 + seq: the lowest score is the
                        best priority and, within it, the oldest job. Readiness is not in this score
                        (unlike arq, where one score means both "runnable at" and "order").
``delayed``             zset of deferred job ids, score = runnable-at (ms).
``dq``                  hash id -> ``queue|score``: where a deferred job goes when due (its place kept).
``msg:<id>``            the JSON message; no TTL, so a countdown of days is safe.
``active``              zset id -> lease deadline (ms).
``inflight``            hash id -> ``queue|score|worker`` of every running job.
``res:<id>``            hash: the result record (state, result, traceback, retries, delivered, …).
``group:<id>``          JSON tree of a group's member ids (``GroupResult.save``/``restore``).
``chord:<id>``          chord state (total, count, body, on_error, failed, dispatched);
                        ``chord:<id>:done`` set of parts counted, ``chord:<id>:r`` hash index -> result.
``wake:<queue>``        list pushed on enqueue; idle workers block on it (BLPOP) instead of polling.
``done``                pub/sub channel: a finished job's id, so ``get()`` wakes at once.
``control``             pub/sub channel: broadcast commands to workers (``terminate``).
``revoked:<id>``        revoke mark, expires with the result record (no id stays poisoned).
``done-result:<id>``    see ``idempotent_key``: the stored value of an idempotent task's success.
``effect:<id>:<name>``  ``mark_effect_done`` markers of one job.
``rl:<task>``           GCRA theoretical arrival time of a rate-limited task (cluster-wide).
``rl-pass:<task>``      set of jobs parked in ``delayed`` until their reserved slot.
``rl-log:<task>``       zset of the task's starts in the last second (caps late catch-up).
``rate-limits``         hash task -> limit set at runtime (wins over the declared one).
``worker:<id>``         a live worker's heartbeat (JSON), expiring after the lease.
``idle:<queue>``        zset worker id -> when (Redis ms) its claim found nothing: workers a new job may be
                        handed to directly (registrations older than 3 s are not used).
``idle-info``           hash worker id -> ``lease_ms|<queues, one per line>`` of each idle registration.
``handoff:<worker>``    list of jobs handed to that idle worker, already leased to it:
                        ``id\ndelivered\nhanded-at ms\nmessage``; the worker blocks on it with its wake lists.
``rl-tasks``            set of the task names workers declared a rate limit for (never handed off).
``beat:<entry>:<tick>`` claim of one periodic tick (SET NX): one job per tick cluster-wide.
``beat-last:<entry>``   the last tick sent (ms), for catching up after downtime.
``dead``                list of dead letters (JSON), newest first, capped.
``failed``              zset id -> time (ms) of jobs that failed for good: the last 10,000 within the TTL.
``slot-guard``          never written: declared by every script (see ``STATIC_KEYS``).
``jobs:…``              the application's own keys (``Keys.app``), under the same prefix.
``arq``, ``arq:health-check``  arq's own queue and health key under ``arq settings.WorkerSettings``.
"""

from __future__ import annotations

from dataclasses import dataclass

DEAD_LETTERS_KEPT = 10_000
#: Names of the keys every script declares (``KEYS[1..n]``), in this order (``lua/keys.lua``).
#: The last, ``slot-guard``, is never written: declaring a key that never exists makes a Cluster refuse
#: every script (TRYAGAIN) while the app's slot is being migrated, when some of its keys are already on
#: the new node and some not yet, so no script runs on half of the app's keys and leaves half its
#: writes behind. Clients retry TRYAGAIN; the app waits out the move (README: Scale-out).
STATIC_KEYS = ("seq", "delayed", "dq", "active", "inflight", "dead", "failed", "rate-limits", "idle-info", "rl-tasks",
               "slot-guard")  # fmt: skip


def beat_task_id(entry: str, tick_ms: int) -> str:
    """The job id of one periodic tick (``beat:<entry>:<tick ms>``): the same on every worker."""
    return f"beat:{entry}:{tick_ms}"


@dataclass(frozen=True)
class Keys:
    """Key names for one prefix. Lua scripts receive ``base`` and build the same per-job names."""

    prefix: str

    @property
    def base(self) -> str:
        """``{<prefix>}``: the hash tag every key of this app starts with."""
        return f"{{{self.prefix}}}"

    def _k(self, *parts: str) -> str:
        return ":".join((self.base, *parts))

    @property
    def static(self) -> list[str]:
        """The keys every script declares, in the order ``lua/keys.lua`` names them."""
        return [self._k(name) for name in STATIC_KEYS]

    @property
    def everything(self) -> str:
        """A SCAN pattern matching every key of this app."""
        return self._k("*")

    def legacy(self) -> str:
        """A SCAN pattern for the keys of the layout before hash tags (``<prefix>:…``)."""
        return f"{self.prefix}:*"

    def queue(self, queue: str) -> str:
        return self._k("q", queue)

    def wake(self, queue: str) -> str:
        return self._k("wake", queue)

    def message(self, task_id: str) -> str:
        return self._k("msg", task_id)

    def result(self, task_id: str) -> str:
        return self._k("res", task_id)

    def group(self, group_id: str) -> str:
        return self._k("group", group_id)

    def chord(self, chord_id: str) -> str:
        return self._k("chord", chord_id)

    def revoked(self, task_id: str) -> str:
        return self._k("revoked", task_id)

    def idempotent(self, task_id: str) -> str:
        # Spelled "done:<id>" since the first release; kept so stored markers stay valid.
        return self._k("done", task_id)

    def effect(self, task_id: str, name: str) -> str:
        return self._k("effect", task_id, name)

    def worker(self, worker_id: str) -> str:
        return self._k("worker", worker_id)

    def handoff(self, worker_id: str) -> str:
        return self._k("handoff", worker_id)

    def beat_claim(self, entry: str, tick_ms: int) -> str:
        return self._k("beat", entry, str(tick_ms))

    def beat_last(self, entry: str) -> str:
        return self._k("beat-last", entry)

    def app(self, *parts: str) -> str:
        """A key for the application's own data (``jobs:…``), cleaned up with the prefix."""
        return self._k("jobs", *parts)

    @property
    def delayed(self) -> str:
        return self._k("delayed")

    @property
    def deferred_places(self) -> str:
        return self._k("dq")

    @property
    def active(self) -> str:
        return self._k("active")

    @property
    def inflight(self) -> str:
        return self._k("inflight")

    @property
    def dead(self) -> str:
        return self._k("dead")

    @property
    def failed(self) -> str:
        return self._k("failed")

    @property
    def done_channel(self) -> str:
        return self._k("done")

    @property
    def control_channel(self) -> str:
        return self._k("control")

    @property
    def arq_queue(self) -> str:
        """arq's own queue under ``arq settings.WorkerSettings`` (it only ever holds health probes)."""
        return self._k("arq")

    @property
    def arq_health(self) -> str:
        return self._k("arq", "health-check")

    # Patterns for scans.
    def pattern(self, kind: str, *rest: str) -> str:
        return self._k(kind, "*", *rest)

    def strip(self, kind: str, key: bytes | str) -> str:
        """The id part of a ``<prefix>:<kind>:<id>`` key."""
        text = key.decode() if isinstance(key, bytes) else key
        return text[len(self._k(kind, "")) :]
