"""Tasks are typed by their functions: mypy flags a call whose arguments don't fit, and
``await result.get()`` has the task's return type (tests/typing/sample_app.py lists what must be flagged)."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import ROOT

RELATIVE = "tests/typing/sample_app.py"
SAMPLE = ROOT / RELATIVE


def test_mypy_reports_exactly_the_marked_lines():
    expected = {
        (number, text.strip())
        for number, line in enumerate(SAMPLE.read_text().splitlines(), start=1)
        if (text := line.partition("# error: ")[2])
    }
    proc = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--hide-error-context",
                           "--no-error-summary", RELATIVE], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, check=False)  # fmt: skip
    found = set()
    for line in proc.stdout.splitlines():
        match = re.match(rf"{re.escape(RELATIVE)}:(\d+): error: (.*?)  \[[a-z-]+\]$", line)
        assert match, f"unexpected mypy output: {line}"
        found.add((int(match.group(1)), match.group(2)))
    assert found == expected, proc.stdout
