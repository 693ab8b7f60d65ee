"""structlog set-up: readable console lines for people, JSON lines when ``log_format=json``.

Lines logged inside a task carry ``task_id``, ``task_name`` and ``retries`` (bound through
contextvars by the worker), whichever logger the task uses — stdlib ``logging`` included.
"""

from __future__ import annotations

import logging
import sys

import structlog

from tasks_engine.config import EngineSettings, get_settings


def configure_logging(settings: EngineSettings | None = None) -> None:
    settings = settings or get_settings()
    level = getattr(logging, settings.log_level.upper(), logging.INFO)
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if settings.log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared, processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer]
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("asyncio", "arq"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
