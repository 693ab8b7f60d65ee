"""The documentation backs its claims with test ids (``tests/test_x.py::test_y``): each one the README
or a page of the site cites must exist, so a renamed or deleted test can't leave a claim citing
nothing, and every line of docs/differences.md ("On purpose" and "Known limits") cites at least one."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

from tests.conftest import ROOT

CITATION = re.compile(r"\b(tests/[\w/]+\.py)::(\w+)")
DIFFERENCES = ROOT / "docs" / "differences.md"
CITED_SECTIONS = ("## On purpose", "## Known limits")
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


@cache
def defined_tests(path: str) -> frozenset[str]:
    """The test functions a file defines, at module level or in a class (as pytest collects them)."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        names |= {f"{cls.name}::{n.name}" for n in cls.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    return frozenset(n for n in names if n.startswith("test") or "::test" in n)


def section(heading: str, text: str | None = None) -> str:
    """One ``## `` section of docs/differences.md (or of ``text``), its ``###`` parts included."""
    text = DIFFERENCES.read_text(encoding="utf-8") if text is None else text
    start = text.index(heading + "\n")
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end != -1 else len(text)]


def bullets(text: str) -> list[str]:
    """The list items of a section, each with its continuation lines."""
    items: list[str] = []
    for line in text.splitlines():
        if line.startswith("- "):
            items.append(line)
        elif line.startswith("  ") and items:
            items[-1] += " " + line.strip()
    return items


def missing_tests(path: Path) -> list[str]:
    return [
        f"{file}::{name}"
        for file, name in CITATION.findall(path.read_text(encoding="utf-8"))
        if not (ROOT / file).is_file() or name not in defined_tests(file) or not name.startswith("test")
    ]


def test_every_test_id_the_documentation_cites_exists() -> None:
    cited = sum(len(CITATION.findall(p.read_text(encoding="utf-8"))) for p in DOCUMENTS)
    assert cited >= 60, "the documentation's citations were not found"
    missing = {str(p.relative_to(ROOT)): m for p in DOCUMENTS if (m := missing_tests(p))}
    assert not missing, f"these cite tests that do not exist: {missing}"


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


def test_the_checker_sees_a_missing_test(tmp_path: Path) -> None:
    """The existence check can fail: a made-up name in a real file, and a real name, are told apart."""
    page = tmp_path / "page.md"
    page.write_text(
        "tests/test_readme_citations.py::test_the_checker_sees_a_missing_test and "
        "tests/test_readme_citations.py::test_no_such_test"
    )
    assert missing_tests(page) == ["tests/test_readme_citations.py::test_no_such_test"]
    assert bullets(section("## Known limits", "## Known limits\n- a claim\n  (tests/a.py::test_b)\n")) == [
        "- a claim (tests/a.py::test_b)"
    ]
