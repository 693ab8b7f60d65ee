"""The documentation site builds with ``--strict``, its generated reference covers the code, and the
benchmark charts are drawn from the saved result files.

The build is the one CI runs (``bash scripts/docs`` does the same): a broken link, a missing page or
anchor, a snippet that doesn't exist or a docstring mkdocstrings can't render fails it — the second
test plants a broken link in a copy of the docs to show the build really refuses it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import tasks_engine
from bench import charts
from tasks_engine.core.config import EngineSettings
from tasks_engine.dashboard.settings import DashboardSettings
from tests.conftest import ROOT

pytestmark = pytest.mark.slow
MKDOCS = [sys.executable, "-m", "mkdocs", "build", "--strict"]  # not --quiet: it hides the warnings --strict counts
ENV = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    started = time.monotonic()
    run = subprocess.run([*MKDOCS, "-d", str(out)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert time.monotonic() - started < 60, "the strict build got slow: keep it under a minute for CI"
    return out


def page(site: Path, path: str) -> str:
    return (site / path / "index.html").read_text()


def test_api_reference_has_every_public_name(site: Path) -> None:
    html = page(site, "reference/api")
    ids = set(re.findall(r'id="(tasks_engine\.[^"]+)"', html))
    missing = [name for name in tasks_engine.__all__ if f"tasks_engine.{name}" not in ids]
    assert not missing, f"not in the API reference: {missing}"
    assert "tasks_engine.testing.always_eager" in ids and "tasks_engine.signals" in ids
    assert ":class:<code>" not in html and ":meth:<code>" not in html  # Sphinx roles of the docstrings dropped


def test_settings_reference_lists_every_field_with_its_variable(site: Path) -> None:
    html = page(site, "reference/settings")
    for model, prefix in ((EngineSettings, "TE_"), (DashboardSettings, "TE_DASHBOARD_")):
        for name in model.model_fields:
            assert f"<td><code>{name}</code></td>" in html, name
            if name != "redis_url":
                assert f"<code>{prefix}{name.upper()}</code>" in html, name
    assert "<code>REDIS_URL</code>" in html and "<code>'redis://127.0.0.1:6379/0'</code>" in html
    assert "Seconds a result record is kept." in html  # descriptions come from the model


def test_every_setting_says_what_it_does() -> None:
    """The reference table's text is each field's description: a new setting without one fails here."""
    for model in (EngineSettings, DashboardSettings):
        silent = [name for name, field in model.model_fields.items() if not field.description]
        assert not silent, f"{model.__name__}: add description= to {silent}"


def test_cli_reference_has_every_command(site: Path) -> None:
    import typer

    from tasks_engine.cli import app

    html = page(site, "reference/cli")
    root = typer.main.get_command(app)

    def paths(command: object, prefix: str) -> list[str]:
        ctx = command.context_class(command)  # type: ignore[attr-defined]
        out = []
        for name in command.list_commands(ctx):  # type: ignore[attr-defined]
            sub = command.get_command(ctx, name)  # type: ignore[attr-defined]
            if sub is not None and not sub.hidden:
                out.append(f"{prefix} {name}")
                if hasattr(sub, "list_commands"):
                    out += paths(sub, f"{prefix} {name}")
        return out

    commands = paths(root, "tasks-engine")
    assert {"tasks-engine worker", "tasks-engine dead requeue", "tasks-engine inspect active"} <= set(commands)
    for path in commands:
        assert f'id="{path.replace(" ", "-")}"' in html, path
    assert "--max-jobs" in html and "concurrent jobs per process" in html


def saved_cell(row: str, column: int = 0) -> str:
    """The ``column``-th engine's figure (0: tasks_engine) of ``row`` as bench/results-latest.txt prints it."""
    line = next(line for line in (ROOT / "bench" / "results-latest.txt").read_text().splitlines()
                if line.startswith(row + "  "))  # fmt: skip
    return line[len(row) :].split()[2 + column]


def test_pages_show_the_examples_charts_and_screenshot(site: Path) -> None:
    assert "async def add(x: int, y: int)" in re.sub(r"<[^>]+>", "", page(site, "getting-started"))
    assert "快速上手" in page(site, "zh/getting-started")
    for migration in ("migrating-from-celery", "zh/migrating-from-celery"):  # both languages show both examples
        text = re.sub(r"<[^>]+>", "", page(site, migration))
        assert 'Celery("admin", broker=REDIS_URL' in text.replace("&quot;", '"'), migration
        assert "async def send_email_task(" in text, migration
    assert "TE_CELERY_QUEUES" in page(site, "production/celery-wire")
    bench = page(site, "benchmarks")
    for chart in ("peers.svg", "latency.svg", "cluster.svg"):
        assert f'src="../charts/{chart}"' in bench and (site / "charts" / chart).exists()
    assert saved_cell("(1) no-op enqueue") in bench  # the table beside the chart
    assert (site / "screenshots" / "overview.png").exists()
    assert not (site / "examples").exists()


class PythonName(str):
    """A ``!!python/name:`` tag of mkdocs.yml (the Mermaid fence), kept as it is through a copy."""


class ConfigLoader(yaml.SafeLoader):
    pass


class ConfigDumper(yaml.SafeDumper):
    pass


ConfigLoader.add_multi_constructor("tag:yaml.org,2002:python/name:", lambda _loader, suffix, _node: PythonName(suffix))
ConfigDumper.add_representer(PythonName, lambda d, v: d.represent_scalar(f"tag:yaml.org,2002:python/name:{v}", ""))


def test_strict_build_refuses_a_broken_link(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    with (docs / "guide" / "retries.md").open("a") as f:
        f.write("\nSee [the missing page](no-such-page.md).\n")
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=ConfigLoader)  # noqa: S506 - safe loader
    config["docs_dir"] = str(docs)
    config["hooks"] = [str(ROOT / h) for h in config["hooks"]]
    config["plugins"][1]["mkdocstrings"]["handlers"]["python"]["paths"] = [str(ROOT)]
    (tmp_path / "mkdocs.yml").write_text(yaml.dump(config, Dumper=ConfigDumper, allow_unicode=True))
    run = subprocess.run(
        [*MKDOCS, "-f", str(tmp_path / "mkdocs.yml"), "-d", str(tmp_path / "site")],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode != 0
    assert "no-such-page.md" in run.stdout + run.stderr


def test_charts_are_drawn_from_the_saved_results(tmp_path: Path) -> None:
    written = {p.name for p in charts.draw(out=tmp_path)}
    assert written == {"peers.svg", "peers.md", "latency.svg", "latency.md", "cluster.svg", "cluster.md"}
    peers = (tmp_path / "peers.svg").read_text()
    assert (
        peers.startswith("<?xml") and "tasks_engine" in peers and saved_cell("(1) no-op enqueue") in peers
    )  # text stays text
    assert "9,115" in (tmp_path / "cluster.svg").read_text()
    p50 = "(3) enqueue->start p50 @50/s"
    cells = " | ".join(saved_cell(p50, i) for i in range(3))
    assert f"| {p50} | ms | {cells} |" in (tmp_path / "latency.md").read_text()
    for name in ("peers.md", "latency.md", "cluster.md"):  # the committed tables match the saved results
        assert (ROOT / "docs" / "charts" / name).read_text() == (tmp_path / name).read_text(), (
            f"docs/charts/{name} is stale: run .venv/bin/python bench/charts.py"
        )


def test_charts_refuse_a_results_file_they_cannot_read(tmp_path: Path) -> None:
    broken = tmp_path / "cluster.txt"
    broken.write_text("Redis Cluster, 3 primaries\n  1 prefix    on 1 primary :    9,115 jobs/s, busiest primary 46%\n")
    with pytest.raises(ValueError, match="3 prefixes"):
        charts.draw(cluster=broken, out=tmp_path / "out")
    with pytest.raises(ValueError, match="no median table"):
        charts.parse_compare("no table here\n")


def test_the_readme_is_a_front_page_whose_links_resolve() -> None:
    """The README stays a front page (what, for whom, the two commands, 30 seconds, numbers, links);
    everything else lives on a page of the site, and every link it gives leads to a file."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    assert len(links) >= 10
    broken = [link for link in links if "://" not in link and not (ROOT / link).exists()]
    assert not broken, broken
    for command in ("bash scripts/demo", "bash scripts/test"):
        assert command in readme


def test_every_python_example_on_a_page_is_an_example_file() -> None:
    """Inline Python on a page would be untested: every ``python`` block includes a docs/examples file."""
    for md in (ROOT / "docs").rglob("*.md"):
        if md.name.startswith("_") or "charts" in md.parts:
            continue
        for block in re.findall(r"```python\n(.*?)```", md.read_text(), re.S):
            assert re.fullmatch(r'--8<-- "[\w./-]+\.py"\n', block), (
                f"{md.relative_to(ROOT)}: inline Python {block[:60]!r}"
            )
