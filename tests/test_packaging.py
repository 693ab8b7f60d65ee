"""The engine as a user installs it: a wheel in a fresh virtualenv, core dependencies only."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.extended


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)], check=True,
                   capture_output=True, timeout=300)  # fmt: skip
    (built,) = out.glob("tasks_engine-*.whl")
    return built


def test_wheel_ships_the_engine_not_the_application(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    assert "tasks_engine/py.typed" in names
    assert "tasks_engine/store/lua/claim.lua" in names and "tasks_engine/store/lua/lib.lua" in names
    assert "tasks_engine/dashboard/templates/base.html" in names
    assert not [n for n in names if n.startswith(("jobs/", "tests/", "bench/"))]
    metadata = next(n for n in names if n.endswith("METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    requires = [line for line in text.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    core = {line.split()[1].split(";")[0].split(">")[0].split("<")[0].split("[")[0].lower() for line in requires}
    assert core == {"arq", "redis", "hiredis", "pydantic", "pydantic-settings", "structlog", "orjson", "typer",
                    "rich", "uvloop"}  # fmt: skip


def test_fresh_venv_with_core_dependencies_imports_and_runs_the_cli(wheel: Path, tmp_path: Path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)], check=True, timeout=600, env=env)
    code = (
        "import tasks_engine, importlib.util as u\n"
        "from tasks_engine import shared_task, chain, worker_context\n"
        "assert u.find_spec('jobs') is None and u.find_spec('sqlalchemy') is None\n"
        "assert u.find_spec('prometheus_client') is None and u.find_spec('starlette') is None\n"
        "print(tasks_engine.__version__)\n"
    )
    done = subprocess.run([str(py), "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    version = subprocess.run([str(venv / "bin" / "tasks-engine"), "--version"], capture_output=True, text=True,
                             cwd=tmp_path, env=env, timeout=60)  # fmt: skip
    assert version.stdout.strip() == f"tasks-engine {done.stdout.strip()}"
    missing = subprocess.run([str(venv / "bin" / "tasks-engine"), "metrics", "--app", "none"], capture_output=True,
                             text=True, cwd=tmp_path, env=env, timeout=60)  # fmt: skip
    assert missing.returncode == 2 and "tasks-engine[metrics]" in missing.stderr
