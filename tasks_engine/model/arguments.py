"""A task's arguments: binding against its signature, validation by type hints, and JSON both ways.

Checked when a call is made (so a bad call fails in the caller, naming the task and the argument)
and again when the worker runs it (JSON values become the annotated types, e.g. datetimes).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError

#: Nesting JSON can carry here (orjson stops at 255 levels, and the message wraps the arguments).
MAX_DEPTH = 250
_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


class ArgumentSpec:
    """The parameters of one task function (``self`` dropped for bound tasks)."""

    def __init__(self, task_name: str, fn: Callable[..., Any], bound: bool) -> None:
        self.task_name = task_name
        signature = inspect.signature(fn)
        params = list(signature.parameters.values())
        if bound:
            params = params[1:]
        self.signature = signature.replace(parameters=params)
        try:
            hints = typing.get_type_hints(fn)
        except Exception:  # noqa: BLE001 - unresolved forward refs: validate nothing rather than fail import
            hints = {}
        self._adapters: dict[str, TypeAdapter[Any]] = {
            p.name: TypeAdapter(hints[p.name]) for p in params if p.name in hints and hints[p.name] is not Any
        }
        self._kinds = {p.name: p.kind for p in params}
        # Positional-only calls of a plain signature (the common delay(a, b)) need no Signature.bind.
        positional = [p for p in params if p.kind in _POSITIONAL]
        plain = all(p.kind in _POSITIONAL or p.default is not inspect.Parameter.empty for p in params)
        self._arity = (
            (sum(p.default is inspect.Parameter.empty for p in positional), len(positional)) if plain else None
        )

    @property
    def names(self) -> list[str]:
        return list(self._kinds)

    def positional_count(self) -> tuple[int, bool]:
        """How many positional parameters, and whether ``*args`` takes more."""
        positional = [k for k in self._kinds.values() if k in _POSITIONAL]
        return len(positional), inspect.Parameter.VAR_POSITIONAL in self._kinds.values()

    def bind_check(self, args: list[Any], kwargs: dict[str, Any], role: str = "") -> None:
        if not kwargs and self._arity is not None and self._arity[0] <= len(args) <= self._arity[1]:
            return
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"task {self.task_name!r}{f' ({role})' if role else ''}: {exc}") from None

    def prepare(self, args: list[Any], kwargs: dict[str, Any], complete: bool) -> tuple[list[Any], dict[str, Any]]:
        """Validate against the type hints and return JSON-ready copies; errors name the task and argument.

        ``complete`` is False for partial signatures that still await a parent result.
        """
        if complete:
            self.bind_check(args, kwargs)
        names = self._positional_names(len(args))
        return (
            [self._to_json(name, value) for name, value in zip(names, args, strict=True)],
            {key: self._to_json(self._kw_name(key), v) for key, v in kwargs.items()},
        )

    def prepare_after_value(
        self, args: list[Any], kwargs: dict[str, Any], role: str
    ) -> tuple[list[Any], dict[str, Any]]:
        """Check a call's own args as they will sit after the value it receives first (header results,
        parent result), and return them JSON-ready."""
        try:
            self.signature.bind(None, *args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"task {self.task_name!r} ({role}): {exc}") from None
        names = self._positional_names(len(args) + 1)[1:]
        return (
            [self._to_json(name, value) for name, value in zip(names, args, strict=True)],
            {key: self._to_json(self._kw_name(key), value) for key, value in kwargs.items()},
        )

    def run_args(self, args: list[Any], kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        """Turn JSON values back into the annotated types (e.g. ISO strings into datetimes)."""
        self.bind_check(args, kwargs)
        if not self._adapters:
            return args, kwargs
        names = self._positional_names(len(args))
        return (
            [self._validate(name, value) for name, value in zip(names, args, strict=True)],
            {key: self._validate(self._kw_name(key), v) for key, v in kwargs.items()},
        )

    def _positional_names(self, count: int) -> list[str | None]:
        names: list[str | None] = []
        for name, kind in self._kinds.items():
            if kind in _POSITIONAL:
                names.append(name)
            elif kind is inspect.Parameter.VAR_POSITIONAL:
                names.extend([name] * max(0, count - len(names)))
                break
        names.extend([None] * max(0, count - len(names)))
        return names[:count]

    def _kw_name(self, key: str) -> str | None:
        if key in self._kinds:
            return key
        return next((n for n, k in self._kinds.items() if k is inspect.Parameter.VAR_KEYWORD), None)

    def _validate(self, name: str | None, value: Any) -> Any:
        adapter = self._adapters.get(name) if name else None
        if adapter is None or self._kinds.get(name or "") in _VARIADIC:
            return value
        try:
            return adapter.validate_python(value)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise TypeError(f"task {self.task_name!r}: argument {name!r}: {err['msg']} (got {value!r:.80})") from None

    def _to_json(self, name: str | None, value: Any) -> Any:
        adapter = self._adapters.get(name) if name else None
        try:
            if adapter is not None and self._kinds.get(name or "") not in _VARIADIC:
                return adapter.dump_python(self._validate(name, value), mode="json")
            orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
            return value
        except (TypeError, ValueError, PydanticSerializationError) as exc:
            if isinstance(exc, TypeError) and str(exc).startswith(f"task {self.task_name!r}"):
                raise
            if nested_too_deep(value):
                raise TypeError(too_deep_message(self.task_name, name or "?")) from None
            if not isinstance(exc, TypeError | PydanticSerializationError):
                raise
            raise TypeError(
                f"task {self.task_name!r}: argument {name or '?'!r} of type {type(value).__name__} is not "
                "JSON-serializable; pass IDs or plain data (str, int, float, bool, list, dict)"
            ) from None


def nested_too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether lists/dicts in ``value`` nest deeper than ``limit`` levels (iterative: no recursion limit)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, list | tuple | dict):
            if depth >= limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def too_deep_message(task_name: str, argument: str) -> str:
    return (
        f"task {task_name!r}: argument {argument!r} is nested deeper than {MAX_DEPTH} levels, more than a "
        "message can carry; flatten it or pass an ID"
    )
