"""The engine's structure as rules import-linter cannot state: one owner for Redis keys and Lua,
no import of the package root from inside, small modules.

The layers between subpackages are import-linter contracts in pyproject.toml (``lint-imports``,
run by scripts/test beside ruff and mypy).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tasks_engine"


def test_no_engine_module_imports_the_package_root() -> None:
    """``from tasks_engine import X`` in the engine would import everything (import-linter can't say it:
    the root package contains every layer). Only the root's own modules may; a module of a subpackage
    imports from where a name lives."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "tasks_engine" and node.level == 0:
                offenders += [
                    f"{path.relative_to(ROOT)}: {a.name}" for a in node.names if a.name not in {"signals", "version"}
                ]
    assert not offenders, "\n".join(offenders)


def test_the_root_holds_a_few_modules_and_each_subpackage_says_what_it_is() -> None:
    root_modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert root_modules == ["__init__.py", "__main__.py", "exceptions.py", "signals.py", "testing.py", "version.py"]
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "import" in doc.lower(), f"{init.relative_to(ROOT)}: say what it may import and who imports it"


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


def test_the_architecture_page_names_every_module_in_its_package_row() -> None:
    """docs/architecture.md's table lists each subpackage's modules: a module added or moved without
    saying what it owns fails here."""
    rows = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^\| `(\w+)/` \| ([^|]+) \|", (ROOT / "docs" / "architecture.md").read_text(), re.M)
    }
    missing = []
    for package in sorted(p.parent for p in PACKAGE.glob("*/__init__.py")):
        listed = set(re.findall(r"`([\w/*.]+)`", rows.get(package.name, "")))
        for module in package.glob("*.py"):
            if module.stem not in {"__init__", "__main__"} and module.stem not in listed:
                missing.append(f"{package.name}/{module.name}")
    assert not missing, f"add to docs/architecture.md's table: {missing}"
