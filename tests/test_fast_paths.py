"""Paths that must stay light: input errors and file checks import no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch


def _run(code: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


@pytest.mark.integration
def test_unknown_env_id_is_reported_before_heavy_imports(tmp_path: Path) -> None:
    out = tmp_path / "never.h5"
    res = _run(
        "import sys, json\n"
        "from replaykit.cli import main\n"
        f"rc = main(['record', 'NoSuchEnv-v0', '--out', {str(out)!r}])\n"
        "print(json.dumps({'rc': rc, 'heavy': sorted(m for m in ('torch', 'h5py') "
        "if m in sys.modules)}))\n"
    )
    assert res == {"rc": 2, "heavy": []}
    assert not out.exists()


@pytest.mark.integration
def test_snapshot_checked_without_torch_has_every_array(tmp_path: Path) -> None:
    import gymnasium as gym

    import replaykit

    path = tmp_path / "r.h5"
    net = torch.nn.Linear(300, 300)
    rec = replaykit.RecordingWrapper(gym.make("CartPole-v1"), path, seed=0, track={"net": net})
    rec.reset()
    rec.snapshot("s")
    rec.close()
    res = _run(
        "import sys, json\n"
        "from replaykit._format.store import Recording\n"
        f"with Recording({str(path)!r}) as r:\n"
        "    _, tree = r.load_snapshot('s', tensors=False)\n"
        "w = tree['tracked']['net']['state_dict']['weight']\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'type': type(w).__name__, "
        "'shape': list(w.shape), 'sum': float(w.sum())}))\n"
    )
    assert res["torch"] is False and res["type"] == "ndarray" and res["shape"] == [300, 300]
    assert np.isclose(res["sum"], float(net.weight.detach().sum()), rtol=1e-5)
    report = replaykit.validate_file(path)
    assert report.ok and report.snapshots == ["s"]
