"""The module paths of the flat layout before the subpackages (``tasks_engine.config``,
``tasks_engine.worker``, …), kept importable for code written against them.

Each old path is an alias of its new module (the same module object, so classes and registries are
shared), resolved lazily on first import: importing ``tasks_engine`` loads nothing more because of it.
Type checkers only see the new paths.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

#: old module name (under ``tasks_engine.``) -> its home now
MOVED: dict[str, str] = {
    "arguments": "model.arguments",
    "arq_bridge": "integrations.arq_bridge",
    "beat": "client.beat",
    "builtins": "runtime.builtins",
    "canvas": "client.canvas",
    "cli_ops": "cli.ops",
    "clock": "core.clock",
    "codec": "core.codec",
    "commit": "runtime.commit",
    "completion": "runtime.completion",
    "config": "core.config",
    "context": "core.context",
    "control": "ops.control",
    "delivery": "runtime.delivery",
    "eager": "client.eager",
    "embedded": "integrations.embedded",
    "ids": "core.ids",
    "logs": "core.logs",
    "messages": "model.messages",
    "metrics": "ops.metrics",
    "plan": "client.plan",
    "ratelimit": "model.ratelimit",
    "records": "model.records",
    "redis_url": "core.redis_url",
    "registry": "model.registry",
    "results": "client.results",
    "retries": "model.retries",
    "schedules": "model.schedules",
    "signature": "client.signature",
    "states": "model.states",
    "supervision": "runtime.supervision",
    "task": "client.task",
    "timelimits": "execution.timelimits",
    "tracing": "core.tracing",
    "validation": "model.validation",
    "worker": "runtime.worker",
}
# Not aliased: ``tasks_engine.cli`` and ``tasks_engine.execution`` are package names now
# (the console script and ``python -m tasks_engine`` are unchanged).


class LegacyPathFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers ``import tasks_engine.<old>`` with the module at its new path."""

    def __init__(self, package: str) -> None:
        self.package = package
        self.targets = {f"{package}.{old}": f"{package}.{new}" for old, new in MOVED.items()}

    def find_spec(
        self, fullname: str, path: object = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.targets:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.targets[spec.name])

    def exec_module(self, module: ModuleType) -> None:
        """The module ran at its new path already."""


def install(package: str) -> None:
    if not any(isinstance(f, LegacyPathFinder) for f in sys.meta_path):
        sys.meta_path.append(LegacyPathFinder(package))
