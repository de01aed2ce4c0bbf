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


_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _relative_links() -> list[str]:
    return sorted({t for t in _LINK.findall(README.read_text()) if "://" not in t and ":" not in t})


def test_readme_links_point_at_files_in_the_repository() -> None:
    root = README.parent
    links = _relative_links()
    assert links, "the README links to docs and examples"
    missing = [t for t in links if not (root / t).exists()]
    assert not missing, f"README links to paths that do not exist: {missing}"


@pytest.mark.integration
def test_source_distribution_ships_what_the_readme_links_to(tmp_path: Path) -> None:
    """On a package index the README's relative links resolve against the sdist's files."""
    import tarfile

    root = README.parent
    code = "import sys; from setuptools import build_meta as b; print(b.build_sdist(sys.argv[1]))"
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    name = out.stdout.strip().splitlines()[-1]
    with tarfile.open(tmp_path / name) as tar:
        shipped = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}
    dirs = {str(Path(p).parent) for p in shipped}
    for target in _relative_links():
        t = target.rstrip("/")
        assert t in shipped or t in dirs, f"README links to {target}, which the sdist lacks"
    for required in ("CHANGELOG.md", "LICENSE", "tests/conftest.py", "tests/data/golden_v3.h5"):
        assert required in shipped, required
