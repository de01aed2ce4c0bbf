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
