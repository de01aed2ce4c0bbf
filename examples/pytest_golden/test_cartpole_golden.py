"""A golden-recording test: your own recording code, checked against a committed file.

Run from the repository root:

    python -m pytest examples/pytest_golden                         # verify
    python -m pytest examples/pytest_golden --replaykit-update=missing   # create missing files
    python -m pytest examples/pytest_golden --replaykit-update=failing   # accept a change

The recording function is the code under test (here a hand-written controller). When a
change alters what it does, the test fails with the first divergence: step, key, element,
both values. The second test restores the golden file's snapshot into a fresh env and
steps on with the controller, verifying each step bit-exactly.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np

from replaykit import RecordingWrapper
from replaykit.testing import assert_replay

GOLDEN = "golden/cartpole.h5"


def controller(obs: np.ndarray) -> int:
    """Push the cart toward where the pole leans (angle plus a bit of angular velocity)."""
    return int(obs[2] + 0.1 * obs[3] > 0)


def record(path: Path) -> None:
    env = RecordingWrapper(
        gym.make("CartPole-v1"), path, seed=7, snapshot_at=[50], compression="gzip"
    )
    obs, _ = env.reset()
    for _ in range(150):
        obs, _, terminated, truncated, _ = env.step(controller(obs))
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()


def test_cartpole_matches_golden(replaykit_golden):
    replaykit_golden.check(GOLDEN, record)


def test_restore_snapshot_and_step_on(replaykit_restore):
    rep = replaykit_restore(GOLDEN, "step-000050", env=gym.make("CartPole-v1"))
    assert assert_replay(rep, controller) == 100
