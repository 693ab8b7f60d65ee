"""structlog set-up: readable console lines for people, JSON lines when ``log_format=json``.

Lines logged inside a task carry ``task_id``, ``task_name`` and ``retries`` (bound through
contextvars by the worker), whichever logger the task uses — stdlib ``logging`` included.

Who owns what: a worker (or the CLI) owns its process and sets up the root logger
(:func:`configure_logging`; ``log_configure_root=false`` keeps it to the engine's own loggers). In a
host application — a web service that enqueues jobs — importing the engine touches nothing of the
host's logging: engine lines go through stdlib ``logging`` (``tasks_engine.*`` loggers) to whatever
handlers the host has, and to stderr when it has none, never to stdout.

Each event is printed once, in the chosen format: :func:`configure_logging` takes down the stderr
fallback that the import put on the engine's logger (with both, every warning came out twice, once
in plain text), and under arq's CLI the engine's handler prints arq's own lines too
(:func:`adopt_arq_cli_logging`).
"""

from __future__ import annotations

import logging
import sys

import structlog

from tasks_engine.core.config import EngineSettings, get_settings

SHARED: list[structlog.types.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]
FALLBACK = "tasks_engine.fallback"  # the name of the handler route_to_stdlib() adds
ARQ_LOGGERS = ("arq.worker", "arq.jobs", "arq.connections", "arq.utils")  # the loggers arq's modules log to


def route_to_stdlib() -> None:
    """At import: unless the host already configured structlog, send structlog lines (the engine's) to
    stdlib ``logging`` — structlog's own default prints to stdout, which a CLI's output must not get.
    With no handler anywhere, the engine's own logger gets one on stderr (warnings and errors)."""
    if not structlog.is_configured():
        _to_stdlib(cache=False)
    engine = logging.getLogger("tasks_engine")
    if not logging.getLogger().handlers and not engine.handlers:
        fallback = _handler(structlog.dev.ConsoleRenderer(colors=False))
        fallback.setLevel(logging.WARNING)
        fallback.set_name(FALLBACK)
        fallback.addFilter(_without_root_handlers)  # a host that sets up logging later gets each line once
        engine.addHandler(fallback)


def _without_root_handlers(_record: logging.LogRecord) -> bool:
    return not logging.getLogger().handlers


def _to_stdlib(cache: bool) -> None:
    """structlog lines become stdlib ``logging`` records, formatted by the handlers' ProcessorFormatter."""
    structlog.configure(
        processors=[
            *SHARED,
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=cache,
    )


def _handler(renderer: structlog.types.Processor) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=SHARED, processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer]
        )
    )
    return handler


def configure_logging(settings: EngineSettings | None = None) -> None:
    """For a process the engine owns (a worker, the CLI): console or JSON lines on stderr, at ``log_level``,
    on the root logger — or only on the engine's loggers with ``log_configure_root=false``."""
    settings = settings or get_settings()
    level = getattr(logging, settings.log_level.upper(), logging.INFO)
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if settings.log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    _to_stdlib(cache=True)
    handler = _handler(renderer)
    target = logging.getLogger() if settings.log_configure_root else logging.getLogger("tasks_engine")
    target.handlers[:] = [handler]
    target.setLevel(level)
    engine = logging.getLogger("tasks_engine")
    # The import's stderr fallback would print each warning a second time (in plain text).
    engine.handlers[:] = [h for h in engine.handlers if h.get_name() != FALLBACK]
    if not settings.log_configure_root:
        target.propagate = False  # the host's root handlers would print the same line again
    for noisy in ("asyncio", "arq"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    arq = logging.getLogger("arq")
    if settings.log_configure_root and arq.handlers:
        arq.propagate = False  # arq's own handlers (arq's --custom-log-dict) print its lines: not the root's too
    _ARQ_FILTER.threshold = max(level, logging.WARNING)


class _ArqThroughEngine(logging.Filter):
    """On arq's module loggers in a worker launched by arq's CLI. That CLI sets up arq's logger with its
    own handler and format (``dictConfig``) after importing the settings module, so arq's lines would
    come out in arq's format besides the engine's. A logger's filters survive ``dictConfig``: this one
    hands arq's records at or above ``threshold`` to the root's handlers (the engine's) and stops them,
    so none reaches arq's own handler."""

    def __init__(self) -> None:
        super().__init__()
        self.threshold = logging.WARNING

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= self.threshold:
            logging.getLogger().handle(record)
        return False


_ARQ_FILTER = _ArqThroughEngine()


def adopt_arq_cli_logging() -> None:
    """Called by ``worker_settings()``: when arq's CLI is the launcher, this process is an engine worker,
    so its logging is set up now (not at start-up, after arq's first lines) and arq's lines go through
    the engine's handler. Without arq's CLI (a client importing the settings module) it does nothing."""
    if "arq.cli" not in sys.modules or any(arg.startswith("--custom-log-dict") for arg in sys.argv):
        return  # not arq's CLI, or the user set up arq's logging with their own dictConfig
    settings = get_settings()
    if not settings.log_configure_root:
        return  # the host sets up the root logger (e.g. with arq's --custom-log-dict): arq's lines are its own
    configure_logging(settings)
    for name in ARQ_LOGGERS:
        arq_logger = logging.getLogger(name)
        if _ARQ_FILTER not in arq_logger.filters:
            arq_logger.addFilter(_ARQ_FILTER)
