"""Smoke test of benchmarks/flight.py: the quick sizes run and report every row.

Benchmarks are not timed tests: this checks that each measurement runs and is reported
(and that the fixture-size and streaming rows, which are not timings, hold), never how fast
anything is.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.integration
def test_quick_flight_benchmarks_report_every_row(tmp_path: Path) -> None:
    out_md = tmp_path / "flight.md"
    env = dict(os.environ)
    env["COLUMNS"] = "200"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "flight.py"),
            "--quick",
            "--markdown",
            str(out_md),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out_md.read_text()
    for row in (
        "Flight recording, 100k CartPole steps",
        "Flight recording throughput",
        "Extracted fixture: CartPole + MLP(64) + Adam, 200 steps after the snapshot",
        "replaykit.extract of a",
    ):
        assert row in text, f"no row {row!r}"
    fixture = next(line for line in text.splitlines() if line.startswith("| Extracted fixture"))
    assert "| PASS |" in fixture  # <= 64 KiB: a size, not a timing
    streaming = next(line for line in text.splitlines() if "replaykit.extract of a" in line)
    assert "| PASS |" in streaming  # peak RSS <= 256 MB
