"""CUDA checks.

Run them on a GPU machine with `bash .ci/gpu-check`; they skip where no CUDA device is present.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import replaykit

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.integration,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

HERE = Path(__file__).resolve().parent


def child(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HERE / "core_child.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=HERE,
        env={**__import__("os").environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8"},
    )


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_cuda_snapshot_restores_bit_exactly_in_fresh_process(tmp_path: Path, env_id: str) -> None:
    path = tmp_path / "cuda.h5"
    res = child("--device", "cuda", "record", str(path), env_id, "300", "152")
    assert res.returncode == 0, res.stderr
    with replaykit.Recording(path) as rec:
        assert rec.provenance["device"]["cuda"]
        _, tree = rec.load_snapshot("mid")
        # The snapshot opens on any machine: tensors come back on the CPU, the device is recorded.
        weight = tree["tracked"]["policy"]["state_dict"]["net.0.weight"]
        assert weight.device.type == "cpu"
        assert tree["rngs"]["torch"]["cuda"] is not None
    res = child("--device", "cuda", "replay", str(path), env_id, "120")
    assert res.returncode == 0, res.stderr
    assert "verified 120 steps" in res.stdout


def test_cpu_vs_cuda_is_a_tolerance_comparison(tmp_path: Path) -> None:
    a, b = tmp_path / "cpu.h5", tmp_path / "cuda.h5"
    assert child("record", str(a), "Pendulum-v1", "64", "32").returncode == 0
    assert child("--device", "cuda", "record", str(b), "Pendulum-v1", "64", "32").returncode == 0
    res = replaykit.diff_recordings(a, b, keys=["probe/out"])
    assert any("different devices" in n for n in res.notes)


def test_cuda_generator_round_trip() -> None:
    from replaykit._state import rng

    g = torch.Generator(device="cuda").manual_seed(3)
    state = rng.capture_generator(g)
    first = torch.rand(4, device="cuda", generator=g)
    rng.restore_generator(g, state)
    assert torch.equal(first, torch.rand(4, device="cuda", generator=g))
