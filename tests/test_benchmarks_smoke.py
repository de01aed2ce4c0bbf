"""Smoke test of benchmarks/run.py: the quick sizes run and print every row.

Benchmarks are not timed tests: this checks that each measurement runs and is
reported, never how fast anything is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "benchmarks" / "run.py"

sys.path.insert(0, str(ROOT / "benchmarks"))
from run import ROW_KEYS  # noqa: E402


@pytest.mark.integration
def test_quick_benchmarks_print_every_row(tmp_path: Path) -> None:
    out_json = tmp_path / "rows.json"
    out_md = tmp_path / "RESULTS.md"
    env = dict(os.environ)
    env["COLUMNS"] = "200"
    proc = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--json", str(out_json), "--markdown", str(out_md)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    assert "replaykit benchmarks, quick" in text
    for col in ("Benchmark", "Measure", "Ratio", "Target", "Result"):
        assert col in text
    data = json.loads(out_json.read_text())
    names = [r["name"] for r in data["rows"]]
    for key in ROW_KEYS:
        assert any(n.startswith(key) for n in names), f"no row for {key!r} in {names}"
    for r in data["rows"]:
        # Every row is either measured (a verdict) or explicitly informational / skipped.
        assert r["ok"] in (True, False, None)
        assert r["measure"]
    # The diff found the one difference the benchmark planted (correctness, not speed).
    diffs = [r for r in data["rows"] if r["name"].startswith("replaykit diff")]
    assert diffs and all(r["raw"]["found_last_step"] for r in diffs)
    md = out_md.read_text()
    assert "| Benchmark |" in md and "cores" in md
    assert md.count("\n| ") >= len(ROW_KEYS)


def test_benchmark_cases_call_only_public_replaykit_names() -> None:
    """By AST: cases.py imports nothing private of replaykit, and every replaykit.X is public."""
    import ast
    import importlib

    import replaykit

    tree = ast.parse((ROOT / "benchmarks" / "cases.py").read_text())
    used: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("replaykit"):
            if node.module.startswith("replaykit.integrations."):
                # The integrations are public modules of their own (optional extras).
                module = importlib.import_module(node.module)
                names = {a.name for a in node.names}
                assert names <= set(module.__all__), f"{node.module}: {names}"
                continue
            assert node.module == "replaykit", f"private import from {node.module}"
            used |= {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            for a in node.names:
                assert not a.name.startswith("replaykit."), f"private import {a.name}"
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "replaykit"
        ):
            used.add(node.attr)
    assert used, "the benchmarks call no replaykit API at all"
    assert used <= set(replaykit.__all__), sorted(used - set(replaykit.__all__))
    assert {"RecordingWrapper", "restore", "VectorRecordingWrapper", "diff_recordings"} <= used


@pytest.mark.integration
def test_snapshot_and_restore_rows_go_through_the_public_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spy on the README's calls while the quick snapshot and small-restore cases run."""
    from cases import case_small_restore, case_snapshot

    import replaykit

    calls: list[tuple[str, Any]] = []
    wrapper = replaykit.RecordingWrapper
    real_track, real_snapshot, real_restore = wrapper.track, wrapper.snapshot, replaykit.restore

    def track(self: Any, name: str, obj: Any) -> None:
        calls.append(("track", name))
        real_track(self, name, obj)

    def snapshot(self: Any, *a: Any, **kw: Any) -> str:
        calls.append(("snapshot", a))
        return real_snapshot(self, *a, **kw)

    def restore(*a: Any, **kw: Any) -> Any:
        calls.append(("restore", sorted(kw.get("track") or {})))
        return real_restore(*a, **kw)

    monkeypatch.setattr(wrapper, "track", track)
    monkeypatch.setattr(wrapper, "snapshot", snapshot)
    monkeypatch.setattr(replaykit, "restore", restore)
    rows = case_snapshot(True, tmp_path)
    flags = [r["raw"].get("bit_exact") for r in rows if r["name"].startswith("Snapshot load")]
    assert flags and all(f is True for f in flags)
    assert ("track", "model") in calls and ("track", "optimizer") in calls
    assert ("snapshot", ("big",)) in calls
    assert ("restore", ["model", "optimizer"]) in calls
    calls.clear()
    case_small_restore(True, tmp_path)
    assert sum(c[0] == "restore" for c in calls) >= 20
    assert any(c[0] == "snapshot" for c in calls)
