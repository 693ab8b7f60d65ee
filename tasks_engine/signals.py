"""Celery's signals, with Celery's names and arguments: ``task_prerun``, ``task_postrun``, ``task_success``,
``task_failure``, ``task_retry``, ``worker_ready``, ``worker_shutdown``.

    from tasks_engine.signals import task_failure

    @task_failure.connect
    def report(sender=None, task_id=None, exception=None, **kwargs): ...

Receivers may be plain functions or coroutines; ``sender`` filters by task (or task name). A receiver
that raises is logged and skipped: a signal never fails the task or stops the worker.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger("tasks_engine.signals")
Receiver = Callable[..., Any]


class Signal:
    """A named hook point; ``send`` calls every connected receiver with ``sender`` and keyword arguments."""

    def __init__(self, name: str, arguments: tuple[str, ...]) -> None:
        self.name = name
        self.arguments = arguments
        self._receivers: list[tuple[Receiver, Any]] = []

    def __repr__(self) -> str:
        return f"<Signal: {self.name} providing {', '.join(self.arguments)}>"

    def connect(self, receiver: Receiver | None = None, *, sender: Any = None) -> Any:
        """``@signal.connect``, ``@signal.connect(sender=task)`` or ``signal.connect(fn)``."""

        def register(fn: Receiver) -> Receiver:
            if all(fn is not r for r, _ in self._receivers):
                self._receivers.append((fn, sender))
            return fn

        return register(receiver) if receiver is not None else register

    def disconnect(self, receiver: Receiver) -> None:
        self._receivers = [(r, s) for r, s in self._receivers if r is not receiver]

    @property
    def receivers(self) -> list[Receiver]:
        return [r for r, _ in self._receivers]

    async def send(self, sender: Any = None, **kwargs: Any) -> list[tuple[Receiver, Any]]:
        """Call each receiver (awaiting coroutines); returns ``(receiver, result or exception)`` pairs."""
        out: list[tuple[Receiver, Any]] = []
        for receiver, only in list(self._receivers):
            if only is not None and not _matches(only, sender):
                continue
            try:
                result = receiver(sender=sender, signal=self, **kwargs)
                if inspect.isawaitable(result):
                    result = await result
            except Exception as exc:  # a receiver's bug is logged, never the task's failure
                log.exception("signal receiver failed", signal=self.name, receiver=getattr(receiver, "__name__", "?"))
                result = exc
            out.append((receiver, result))
        return out


def _matches(only: Any, sender: Any) -> bool:
    if only is sender:
        return True
    name = getattr(sender, "name", sender)
    return bool(only == name or getattr(only, "name", None) == name)


task_prerun = Signal("task_prerun", ("task_id", "task", "args", "kwargs"))
task_postrun = Signal("task_postrun", ("task_id", "task", "args", "kwargs", "retval", "state"))
task_success = Signal("task_success", ("result",))
task_failure = Signal("task_failure", ("task_id", "exception", "args", "kwargs", "traceback", "einfo"))
task_retry = Signal("task_retry", ("request", "reason", "einfo"))
worker_ready = Signal("worker_ready", ())
worker_shutdown = Signal("worker_shutdown", ())
