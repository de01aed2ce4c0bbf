"""Shared fixtures: a small real recording, and a process factory for kill/fuzz children."""

from __future__ import annotations

import multiprocessing
import shutil
from pathlib import Path
from typing import Any

import pytest


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
    """A small real recording: CartPole, the training MLP policy, two snapshots.

    It holds every stream (steps, resets, updates), probes, a tracked torch model and
    optimizer. Tests must copy it before changing it (see ``recording_copy``).
    """
    from replaykit.rollout import record_rollout

    path = tmp_path_factory.mktemp("small-rec") / "small.h5"
    record_rollout("CartPole-v1", "mlp", seed=3, steps=120, out=path, snapshot_at=[40, 90])
    return path


@pytest.fixture
def recording_copy(small_recording: Path, tmp_path: Path) -> Path:
    """A private copy of :func:`small_recording` that a test may damage."""
    dst = tmp_path / "copy.h5"
    shutil.copyfile(small_recording, dst)
    return dst
