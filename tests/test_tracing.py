"""OpenTelemetry: a producer span per message sent, whose context travels in the message's
``traceparent`` header, and a consumer span per attempt in the worker (the SDK's in-memory exporter)."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import skip_or_fail_in_ci

try:
    import opentelemetry.sdk  # noqa: F401 - the SDK is the test extra's, the engine needs only the API
except ImportError as exc:
    skip_or_fail_in_ci(f"opentelemetry-sdk is not installed (the test extra has it): {exc}", allow_module_level=True)

from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

from tests import sample_tasks as t  # noqa: E402

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def tracer_provider() -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)


async def test_spans_link_the_call_to_its_run_in_the_worker(worker):
    EXPORTER.clear()
    with trace.get_tracer("the-web-app").start_as_current_span("POST /orders") as request_span:
        r = await t.add.delay(2, 3)
        failed = await t.fail.delay()
    assert await r.get(timeout=10) == 5
    with pytest.raises(ValueError):
        await failed.get(timeout=10)
    await asyncio.sleep(0.2)
    spans = {(s.name, s.attributes.get("messaging.message.id")): s for s in EXPORTER.get_finished_spans()}
    send, run = spans[("send demo.add", r.id)], spans[("run demo.add", r.id)]
    assert send.kind is SpanKind.PRODUCER and run.kind is SpanKind.CONSUMER
    assert send.parent.span_id == request_span.get_span_context().span_id  # the app's request → send
    assert run.context.trace_id == send.context.trace_id and run.parent.span_id == send.context.span_id
    assert (
        run.attributes["tasks_engine.client.task"] == "demo.add" and run.attributes["tasks_engine.state"] == "SUCCESS"
    )
    assert run.attributes["tasks_engine.model.retries"] == 0
    bad = spans[("run demo.fail", failed.id)]
    assert bad.attributes["tasks_engine.state"] == "FAILURE" and bad.status.status_code is StatusCode.ERROR
    assert any(e.name == "exception" for e in bad.events)
    info = await r.record()
    assert info["state"] == "SUCCESS"
