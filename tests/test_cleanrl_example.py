"""examples/cleanrl_ppo.py: a CleanRL-style PPO resumed bit-exactly from the middle of an epoch.

The example records in one process and resumes in another (``--replay``), as a user runs it.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

import replaykit

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "cleanrl_ppo.py"

pytestmark = pytest.mark.integration


def _marked_lines() -> list[int]:
    tokens = tokenize.generate_tokens(io.StringIO(SCRIPT.read_text()).readline)
    return sorted(
        {t.start[0] for t in tokens if t.type == tokenize.COMMENT and "# replaykit" in t.string}
    )


def test_replaykit_takes_at_most_ten_marked_lines() -> None:
    assert 0 < len(_marked_lines()) <= 10


def test_a_snapshot_mid_epoch_resumes_bit_exactly_in_a_fresh_process(tmp_path: Path) -> None:
    path = tmp_path / "cleanrl.h5"
    rec = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(path)], capture_output=True, text=True
    )
    assert rec.returncode == 0, rec.stderr[-2000:]
    with replaykit.Recording(path) as r:
        _, tree = r.load_snapshot("mid")
        updates = r.stream("updates").rows
        steps = r.stream("steps").rows
    # In the middle of an update epoch: iteration 2, epoch 1, two minibatches done.
    assert tree["tracked"]["pos"] == {"iteration": 2, "epoch": 1, "start": 64}
    assert tree["recorder"]["updates"] == 14
    rep = subprocess.run(
        [sys.executable, str(SCRIPT), "--replay", str(path)], capture_output=True, text=True
    )
    assert rep.returncode == 0, rep.stderr[-2000:]
    assert rep.stdout.strip() == (
        f"verified {updates - 14} updates and {steps - tree['recorder']['step']} steps"
    )
    assert updates - 14 >= 3
