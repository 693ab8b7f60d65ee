"""The engine's structure as rules: layers import only downward, no cycles, one owner for Redis.

Every import counts — module level, inside functions and under ``TYPE_CHECKING`` — because a
function-level import is still a dependency, only a hidden one.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tasks_engine"

# Lower layers never import higher ones. Within a layer imports are allowed, as long as there is no cycle.
LAYERS: dict[str, int] = {
    # L0: settings, time, JSON, errors, states, logging (no engine imports but each other)
    "config": 0,
    "clock": 0,
    "codec": 0,
    "exceptions": 0,
    "states": 0,
    "logs": 0,
    "ids": 0,
    "context": 0,
    "version": 0,
    "embedded": 0,
    "redis_url": 0,
    # L1: the vocabulary: messages, arguments, task definitions and routing, grammars, record format
    "arguments": 1,
    "validation": 1,
    "registry": 1,
    "ratelimit": 1,
    "retries": 1,
    "schedules": 1,
    "messages": 1,
    "records": 1,
    "signals": 1,
    "tracing": 1,
    # L2: the store, the only code that talks to Redis
    "store": 2,
    # L3: running one attempt, results, planning, the canvas, the client-facing Task
    "timelimits": 3,
    "results": 3,
    "execution": 3,
    "plan": 3,
    "eager": 3,
    "signature": 3,
    "canvas": 3,
    "task": 3,
    # L4: completion decision, engine tasks, beat, operations, the worker
    "completion": 4,
    "supervision": 4,
    "metrics": 4,
    "commit": 4,
    "delivery": 4,
    "builtins": 4,
    "beat": 4,
    "control": 4,
    "worker": 4,
    # L5: entry points
    "arq_bridge": 5,
    "cli_ops": 5,
    "testing": 5,
    "dashboard": 5,
    "cli": 5,
    "__init__": 5,
    "__main__": 5,
}


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def layer_of(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return LAYERS["__init__"]
    return LAYERS[parts[1]]


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Engine modules imported anywhere in ``path`` (``from a import b`` counts ``a.b`` when it is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names
            ]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name.startswith("tasks_engine"):
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(path, known) - {name} for name, path in mods.items()}


def test_every_module_has_a_layer() -> None:
    for name in modules():
        layer_of(name)  # KeyError names a module that was added without a layer


def test_imports_only_go_down() -> None:
    upward = []
    for name, deps in graph().items():
        if name == "tasks_engine":
            continue
        for dep in deps:
            if dep == "tasks_engine" or layer_of(dep) > layer_of(name):
                upward.append(f"{name} (L{layer_of(name)}) imports {dep} (L{layer_of(dep)})")
    assert not upward, "\n".join(sorted(upward))


def test_no_import_cycle() -> None:
    g = graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(g.get(node, ())):
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_no_private_names_cross_modules() -> None:
    offenders = []
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "jobs").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tasks_engine"):
                offenders += [
                    f"{path.relative_to(ROOT)}: {a.name} from {node.module}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert not offenders, "\n".join(offenders)


LUA_MARKERS = re.compile(r"redis\.call\(|redis\.pcall\(|KEYS\[\d\]|ARGV\[\d\]")


@pytest.mark.parametrize("tree", ["tasks_engine", "jobs"])
def test_no_lua_outside_the_store_files(tree: str) -> None:
    holders = [str(p.relative_to(ROOT)) for p in (ROOT / tree).rglob("*.py") if LUA_MARKERS.search(p.read_text())]
    assert not holders, f"Lua belongs in tasks_engine/store/lua/*.lua: {holders}"


KEY_FRAGMENT = re.compile(
    r"(?:^|[:}])(?:q|msg|res|chord|wake|revoked|rl|rl-pass|rl-log|effect|group|beat|beat-last|worker|dq|seq)"
    r"(?::[^\s]|:$)"
)


def test_keys_are_spelled_only_in_the_store() -> None:
    """No key name is built outside store/: no ``.key(...)`` calls, no ``"res:"``-like literals."""
    spelled = []
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "jobs").rglob("*.py")]:
        if "store" in path.relative_to(ROOT).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "key":
                spelled.append(f"{where} calls .key(...)")
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and KEY_FRAGMENT.search(node.value):
                spelled.append(f"{where} spells {node.value!r}")
    assert not spelled, "\n".join(spelled)


def test_modules_stay_small() -> None:
    big = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 500}
    assert not big, f"over 500 lines: {big}"


def test_lua_scripts_ship_as_package_data() -> None:
    from tasks_engine.store.scripts import SCRIPTS, lua

    on_disk = {p.stem for p in (PACKAGE / "store" / "lua").glob("*.lua")} - {"lib", "keys"}
    assert on_disk == set(SCRIPTS)
    assert "local function te_enqueue" in lua("enqueue")  # the shared library is prepended
    assert "local function te_enqueue" not in lua("purge")  # only where a script asks for it
