"""OpenTelemetry, when ``opentelemetry-api`` is installed (``pip install tasks-engine[otel]``).

A producer span per message sent (its context travels in the message's ``traceparent`` header), and
a consumer span per attempt in the worker, child of the producer's, with the task's name, id,
retries and final state. Without the package (or without an SDK configured) this costs nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # the optional extra is not installed
    trace = None  # type: ignore[assignment]

TRACER_NAME = "tasks_engine"


_NO_SDK = (trace.ProxyTracerProvider, trace.NoOpTracerProvider) if trace is not None else ()
_sdk_seen = False  # OpenTelemetry sets its global provider once: once a real one is seen, it stays


def tracing_active() -> bool:
    """True once an SDK tracer provider is installed: until then spans are skipped, not just no-ops."""
    global _sdk_seen
    if _sdk_seen or trace is None:
        return _sdk_seen
    _sdk_seen = not isinstance(trace.get_tracer_provider(), _NO_SDK)
    return _sdk_seen


#: What :func:`sending_span` gives while no SDK is installed: nothing to enter or leave.
NO_SPAN = nullcontext()


def sending_span(task: str, task_id: str, queue: str, headers: dict[str, Any]) -> AbstractContextManager[None]:
    """:func:`producer_span` once an SDK is installed, else :data:`NO_SPAN` (every send asks)."""
    return producer_span(task, task_id, queue, headers) if tracing_active() else NO_SPAN


@contextmanager
def producer_span(task: str, task_id: str, queue: str, headers: dict[str, Any]) -> Iterator[None]:
    """Around building one message: the span's context is written into ``headers`` (W3C ``traceparent``)."""
    if not tracing_active():
        yield
        return
    tracer = trace.get_tracer(TRACER_NAME)
    attributes = {"messaging.system": "tasks_engine", "messaging.destination.name": queue,
                  "messaging.message.id": task_id, "tasks_engine.client.task": task}  # fmt: skip
    with tracer.start_as_current_span(f"send {task}", kind=SpanKind.PRODUCER, attributes=attributes):
        propagate.inject(headers)
        yield


def _no_outcome(state: str, exc: BaseException | None = None) -> None:
    """What a span-less attempt records of its outcome: nothing."""


NO_RUN_SPAN = nullcontext(_no_outcome)


def running_span(task: str, task_id: str, retries: int, headers: dict[str, Any]) -> AbstractContextManager[Any]:
    """:func:`consumer_span` once an SDK is installed, else :data:`NO_RUN_SPAN` (every attempt asks)."""
    return consumer_span(task, task_id, retries, headers) if tracing_active() else NO_RUN_SPAN


@contextmanager
def consumer_span(task: str, task_id: str, retries: int, headers: dict[str, Any]) -> Iterator[Any]:
    """Around one attempt in the worker; yields a callable that records the outcome's state."""
    if not tracing_active():
        yield lambda state, exc=None: None
        return
    tracer = trace.get_tracer(TRACER_NAME)
    parent = propagate.extract({k: v for k, v in headers.items() if isinstance(v, str)})
    attributes: dict[str, str | int] = {"messaging.system": "tasks_engine", "messaging.message.id": task_id,
                                        "tasks_engine.client.task": task,
                  "tasks_engine.model.retries": retries}  # fmt: skip
    with tracer.start_as_current_span(f"run {task}", context=parent, kind=SpanKind.CONSUMER,
                                      attributes=attributes) as span:  # fmt: skip

        def outcome(state: str, exc: BaseException | None = None) -> None:
            span.set_attribute("tasks_engine.state", state)
            if exc is not None and state == "FAILURE":
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))

        yield outcome
