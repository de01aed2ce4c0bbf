"""Envs with no replaykit adapter, for the replay-from-reset fallback tests."""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import numpy as np


class NoAdapterEnv(gym.Env[np.ndarray, np.ndarray]):
    """A point mass with noisy, nonlinear dynamics driven by the env's own RNG."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self._x = np.zeros(3)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._x = self.np_random.normal(size=3)
        return self._x.copy(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        a = float(np.asarray(action).reshape(-1)[0])
        noise = self.np_random.normal(scale=0.01, size=3)
        self._x = np.sin(self._x * 1.3 + a) + noise + 0.1 * np.roll(self._x, 1)
        reward = float(-np.sum(self._x**2))
        return self._x.copy(), reward, bool(abs(self._x[0]) > 1.25), False, {}


class FlakyEnv(NoAdapterEnv):
    """Like NoAdapterEnv, but it draws from the OS entropy pool: not reproducible."""

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, r, term, trunc, info = super().step(action)
        if os.urandom(1)[0] < 64:
            self._x = self._x + 1e-9
            obs = self._x.copy()
        return obs, r, term, trunc, info


for _id, _cls in (
    ("replaykit-test/NoAdapter-v0", NoAdapterEnv),
    ("replaykit-test/Flaky-v0", FlakyEnv),
):
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=_cls, max_episode_steps=200)
