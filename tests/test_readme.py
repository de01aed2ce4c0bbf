"""Every Python snippet in the README runs as written, each on its own, in a fresh process.

A reader copies one snippet at a time, so each must carry its own imports; snippets
that share a file name (the quickstart records ``run.h5``, the next restores it) run in
one working directory, in README order.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_FENCE = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)


def _snippets() -> list[str]:
    return _FENCE.findall(README.read_text())


def test_readme_has_python_snippets() -> None:
    assert len(_snippets()) >= 2


@pytest.mark.integration
def test_readme_snippets_run_as_written(tmp_path: Path) -> None:
    for i, code in enumerate(_snippets(), 1):
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, f"README snippet {i} failed:\n{code}\n{out.stderr[-3000:]}"
