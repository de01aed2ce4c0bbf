"""Shared fixtures: a small real recording, and a process factory for kill/fuzz children.

Also this suite's own ``--run-slow`` option: tests marked ``slow`` (declared in
pyproject.toml) are skipped unless it is given. The replaykit pytest plugin declares only
``--replaykit-*`` options, so a user project keeps its own ``--run-slow`` and ``slow``.
"""

from __future__ import annotations

import multiprocessing
import shutil
from pathlib import Path
from typing import Any

import pytest
import replaykit_envs  # noqa: F401  (the suite uses the replaykit/... test envs)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: pass --run-slow to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def forkserver() -> Any:
    """A multiprocessing context whose children fork from a clean, pre-imported server.

    Forking the test process itself is unsafe once torch has started its thread pool
    (the child deadlocks on a futex); a fork server imports replaykit and torch once and
    never runs a torch op, so its children start in milliseconds and do not deadlock.
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["replaykit", "torch", "gymnasium", "h5py", "numpy"])
    return ctx


@pytest.fixture(scope="session")
def small_recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real recording: CartPole, the training MLP policy, one snapshot.

    It holds every stream (steps, resets, updates), probes, a tracked torch model and
    optimizer. Tests must copy it before changing it (see ``recording_copy``).
    """
    from replaykit._session.rollout import record_rollout

    path = tmp_path_factory.mktemp("small-rec") / "small.h5"
    record_rollout("CartPole-v1", "mlp", seed=3, steps=100, out=path, snapshot_at=[60])
    return path


@pytest.fixture
def recording_copy(small_recording: Path, tmp_path: Path) -> Path:
    """A private copy of :func:`small_recording` that a test may damage."""
    dst = tmp_path / "copy.h5"
    shutil.copyfile(small_recording, dst)
    return dst


def record_tiny(path: Path) -> None:
    """CartPole, seeded actions, a tracked torch model and an updates stream; one snapshot.

    Small (about 20 HDF5 objects), so hundreds of damaged copies load in seconds.
    """
    import gymnasium as gym
    import numpy as np
    import torch

    from replaykit._session.record import RecordingWrapper

    torch.manual_seed(5)
    model = torch.nn.Linear(4, 2)
    env = RecordingWrapper(
        gym.make("CartPole-v1"), path, seed=5, track={"model": model}, snapshot_at=[30]
    )
    actions = np.random.default_rng(5).integers(0, 2, 60)
    env.reset()
    for i, a in enumerate(actions):
        _, _, term, trunc, _ = env.step(int(a))
        if i % 10 == 9:
            env.log_update(loss=np.float32(i / 7), grad=torch.tensor([float(i), 0.5]))
        if term or trunc:
            env.reset()
    env.close()


def tiny_model() -> Any:
    """A model built like the one :func:`record_tiny` tracks (for restore())."""
    import torch

    return torch.nn.Linear(4, 2)


@pytest.fixture(scope="session")
def tiny_recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-rec") / "tiny.h5"
    record_tiny(path)
    return path
