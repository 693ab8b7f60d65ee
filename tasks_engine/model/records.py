"""The result record's format: how an exception is stored and rebuilt, and how a record is read."""

from __future__ import annotations

import sys
import traceback as tb_module
from typing import Any

import structlog

from tasks_engine.core.codec import dumps, loads
from tasks_engine.exceptions import TaskError

log = structlog.get_logger("tasks_engine.records")
EXCEPTION_FIELDS = ("exc_type", "exc_module", "exc_message", "exc_args", "traceback")


def exception_fields(exc: BaseException, traceback: str | None = None) -> dict[str, Any]:
    """How an exception is stored: type, module, message, JSON-able args and the traceback text."""
    try:
        args = dumps(list(exc.args)).decode()
    except TypeError:
        args = dumps([str(exc)]).decode()
    return {
        "exc_type": type(exc).__qualname__,
        "exc_module": type(exc).__module__,
        "exc_message": str(exc),
        "exc_args": args,
        "traceback": traceback if traceback is not None else "".join(tb_module.format_exception(exc)),
    }


def rebuild_exception(record: dict[str, Any]) -> Exception:
    """The stored exception as its own class when that class is already imported here."""
    name = record.get("exc_type") or "Exception"
    module = record.get("exc_module") or "builtins"
    message = record.get("exc_message") or ""
    cls: Any = sys.modules[module] if module in sys.modules else None
    for part in name.split("."):
        cls = getattr(cls, part, None) if cls is not None else None
    # Only Exception subclasses: a record naming SystemExit or KeyboardInterrupt (forged, or a task that
    # called sys.exit()) must not make ``get()`` end the caller's process.
    if isinstance(cls, type) and issubclass(cls, Exception):
        raw_args = record.get("exc_args")
        args = loads(raw_args) if raw_args else [message]
        try:
            return cls(*args) if isinstance(args, list) else cls(message)
        except Exception:  # noqa: BLE001 - a class whose __init__ wants other args
            try:
                return cls(message)
            except Exception as exc:  # noqa: BLE001 - fall back to TaskError below
                log.debug("cannot rebuild exception", exc_type=name, error=str(exc))
    return TaskError(f"{module}.{name}" if module != "builtins" else name, message)


def parse_record(raw: dict[bytes, bytes]) -> dict[str, Any]:
    record: dict[str, Any] = {k.decode(): v.decode() for k, v in raw.items()}
    for key in ("result", "meta"):
        if key in record:
            record[key] = loads(record[key])
    for key in ("retries", "delivered"):
        if key in record:
            record[key] = int(record[key])
    return record
