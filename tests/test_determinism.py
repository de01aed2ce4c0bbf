from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch

from replaykit.determinism import CUBLAS_WORKSPACE_CONFIG, determinism_flags, enable_determinism
from replaykit.errors import ReplaykitWarning, UsageError


@pytest.fixture(autouse=True)
def _restore_torch_flags(monkeypatch):
    # enable_determinism changes process-wide switches; put every one back for other tests.
    det = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn_det = torch.backends.cudnn.deterministic
    bench = torch.backends.cudnn.benchmark
    rngs = random.getstate(), np.random.get_state(), torch.get_rng_state()
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    yield
    torch.use_deterministic_algorithms(det, warn_only=warn_only)
    torch.backends.cudnn.deterministic = cudnn_det
    torch.backends.cudnn.benchmark = bench
    random.setstate(rngs[0])
    np.random.set_state(rngs[1])
    torch.set_rng_state(rngs[2])


def test_enable_sets_flags_and_reports_them():
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark = True
    applied = enable_determinism()
    flags = determinism_flags()
    assert flags["deterministic_algorithms"] is True
    assert flags["deterministic_algorithms_warn_only"] is False
    assert flags["cudnn_deterministic"] is True
    assert flags["cudnn_benchmark"] is False
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE_CONFIG == ":4096:8"
    assert flags["cublas_workspace_config"] == ":4096:8"
    for key in (
        "deterministic_algorithms",
        "deterministic_algorithms_warn_only",
        "cudnn_deterministic",
        "cudnn_benchmark",
        "cublas_workspace_config",
    ):
        assert applied[key] == flags[key]
    assert applied["seed"] is None


def test_warn_only_and_existing_cublas_value_kept(monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    applied = enable_determinism(warn_only=True)
    assert applied["deterministic_algorithms_warn_only"] is True
    assert determinism_flags()["deterministic_algorithms_warn_only"] is True
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    assert applied["cublas_workspace_config"] == ":16:8"


def test_seed_seeds_every_global_stream():
    def draw():
        return random.random(), float(np.random.random()), float(torch.rand(()))

    enable_determinism(seed=1234)
    first = draw()
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    enable_determinism(seed=1234)
    assert draw() == first
    enable_determinism(seed=1235)
    assert draw() != first
    assert enable_determinism(seed=2**40)["seed"] == 2**40  # > 32 bits is fine for all


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True])
def test_bad_seed_is_usage_error(bad):
    with pytest.raises(UsageError, match="seed"):
        enable_determinism(seed=bad)


def test_flags_are_json_and_complete():
    flags = determinism_flags()
    assert json.loads(json.dumps(flags)) == flags
    assert set(flags) == {
        "deterministic_algorithms",
        "deterministic_algorithms_warn_only",
        "cudnn_deterministic",
        "cudnn_benchmark",
        "cublas_workspace_config",
        "num_threads",
        "num_interop_threads",
        "cuda_matmul_allow_tf32",
        "cudnn_allow_tf32",
        "float32_matmul_precision",
    }
    assert flags["num_threads"] == torch.get_num_threads()
    assert flags["cublas_workspace_config"] is None  # the fixture removed it
    assert flags["float32_matmul_precision"] == torch.get_float32_matmul_precision()


def test_flags_follow_changes():
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        assert determinism_flags()["float32_matmul_precision"] == "high"
    finally:
        torch.set_float32_matmul_precision(old)
    torch.use_deterministic_algorithms(False)
    assert determinism_flags()["deterministic_algorithms"] is False


def test_deterministic_mode_is_observable_on_cpu():
    # In deterministic mode torch fills "uninitialised" memory with NaN, so torch.empty stops
    # returning whatever bytes were lying around: a CPU-visible effect of the switch.
    torch.use_deterministic_algorithms(False)
    enable_determinism()
    assert torch.isnan(torch.empty(64)).all()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_late_cublas_setting_warns_when_cuda_initialised():
    torch.zeros(1, device="cuda")
    with pytest.warns(ReplaykitWarning, match="after CUDA was initialised"):
        enable_determinism()
