"""The README backs its claims with test ids (``tests/test_x.py::test_y``): each one it cites must exist,
so a renamed or deleted test can't leave a claim citing nothing, and every line of "Known limits" and
"Where we differ from Celery and arq on purpose" cites at least one."""

from __future__ import annotations

import ast
import re
from functools import cache

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
CITATION = re.compile(r"\b(tests/[\w/]+\.py)::(\w+)")
CITED_SECTIONS = ("## Where we differ from Celery and arq on purpose", "## Known limits")


@cache
def defined_tests(path: str) -> frozenset[str]:
    """The test functions a file defines, at module level or in a class (as pytest collects them)."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        names |= {f"{cls.name}::{n.name}" for n in cls.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    return frozenset(n for n in names if n.startswith("test") or "::test" in n)


def section(heading: str) -> str:
    start = README.index(heading + "\n")
    end = README.find("\n## ", start + len(heading))
    return README[start : end if end != -1 else len(README)]


def bullets(text: str) -> list[str]:
    """The list items of a section, each with its continuation lines."""
    items: list[str] = []
    for line in text.splitlines():
        if line.startswith("- "):
            items.append(line)
        elif line.startswith("  ") and items:
            items[-1] += " " + line.strip()
    return items


def test_every_test_id_the_readme_cites_exists() -> None:
    cited = CITATION.findall(README)
    assert len(cited) >= 40, "the README's citations were not found"
    missing = [
        f"{path}::{name}"
        for path, name in cited
        if not (ROOT / path).is_file() or name not in defined_tests(path) or not name.startswith("test")
    ]
    assert not missing, f"the README cites tests that do not exist: {missing}"


def test_every_known_limit_and_difference_cites_a_test() -> None:
    for heading in CITED_SECTIONS:
        items = bullets(section(heading))
        assert len(items) >= 5, heading
        uncited = [item[:90] for item in items if not CITATION.search(item)]
        assert not uncited, f"{heading}: lines without a test: {uncited}"


def test_the_stale_limits_are_gone() -> None:
    """Compression works (tests/celery_compat/test_tasks.py::test_compression_saves_space_in_redis) and a
    group's link fires once (tests/celery_compat/test_canvas.py::test_callback_called_by_group)."""
    limits = section("## Known limits")
    assert "not compressed" not in limits
    assert "group.link" not in limits


def test_the_checker_sees_a_missing_test() -> None:
    """The existence check can fail: a made-up name in a real file, and a real name, are told apart."""
    assert "test_every_test_id_the_readme_cites_exists" in defined_tests("tests/test_readme_citations.py")
    assert "test_no_such_test" not in defined_tests("tests/test_readme_citations.py")
