"""Provenance: the recording script's git revision (informational) and RL library versions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from replaykit import provenance

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


@needs_git
@pytest.mark.integration
def test_git_revision_is_the_recording_scripts_repository(tmp_path: Path) -> None:
    repo, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    repo.mkdir()
    elsewhere.mkdir()
    script = repo / "train.py"
    script.write_text(
        "import json\nfrom replaykit import provenance\n"
        "print(json.dumps(provenance.collect().get('git')))\n"
    )
    _git(repo, "init", "-q")
    _git(repo, "add", "train.py")
    _git(repo, "commit", "-q", "-m", "train")
    head = _git(repo, "rev-parse", "HEAD")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run(
        [sys.executable, str(script)],
        cwd=elsewhere,  # not a git checkout: the revision still comes from the script's
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    ).stdout
    assert json.loads(out.strip().splitlines()[-1]) == {"revision": head, "dirty": False}


def test_git_differences_are_informational() -> None:
    a = {"versions": {"torch": "2.1"}, "git": {"revision": "a" * 40, "dirty": False}}
    b = {"versions": {"torch": "2.1"}, "git": {"revision": "b" * 40, "dirty": True}}
    assert provenance.differences(a, b) == []
    assert [k for k, _, _ in provenance.differences(a, b, informational=True)] == [
        "git.dirty",
        "git.revision",
    ]


def test_imported_rl_libraries_are_recorded() -> None:
    sb3 = pytest.importorskip("stable_baselines3")
    versions = provenance.collect(git=False)["versions"]
    assert versions["stable-baselines3"] == sb3.__version__
    assert all(
        (dist in versions) == (module in sys.modules)
        for module, dist in provenance.RL_LIBRARIES.items()
    )


def test_an_rl_library_imported_on_one_side_only_is_no_difference() -> None:
    a = {"versions": {"torch": "2.1", "stable-baselines3": "2.9.2"}}
    b = {"versions": {"torch": "2.1"}}
    assert provenance.differences(a, b) == []
    c = {"versions": {"torch": "2.1", "stable-baselines3": "2.8.0"}}
    assert provenance.differences(a, c) == [("versions.stable-baselines3", "2.9.2", "2.8.0")]


def test_installed_versions_are_looked_up_once_per_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from importlib import metadata

    calls: list[str] = []
    real = metadata.version

    def counting(dist: str) -> str:
        calls.append(dist)
        return real(dist)

    monkeypatch.setattr(provenance, "_FOUND_VERSIONS", {})
    monkeypatch.setattr(metadata, "version", counting)
    first = provenance.collect(git=False)["versions"]
    looked_up = list(calls)
    assert "numpy" in looked_up and "torch" in looked_up
    calls.clear()
    second = provenance.collect(git=False)["versions"]
    assert second == first
    # Found versions are not looked up again; only packages that were missing are.
    missing = {d for d in looked_up if first.get(d) is None}
    assert set(calls) == missing


def test_a_package_missing_at_first_is_found_once_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from importlib import metadata

    installed: dict[str, str] = {}

    def fake(dist: str) -> str:
        if dist in installed:
            return installed[dist]
        raise metadata.PackageNotFoundError(dist)

    monkeypatch.setattr(provenance, "_FOUND_VERSIONS", {})
    monkeypatch.setattr(metadata, "version", fake)
    assert provenance._version("late-package") is None
    installed["late-package"] = "1.2.3"
    assert provenance._version("late-package") == "1.2.3"
