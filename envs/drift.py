"""Continuous nonlinear dynamics whose floating-point error accumulates step after step."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["DriftEnv"]

_BOUND = 10.0


class DriftEnv(gym.Env[np.ndarray, np.ndarray]):
    """A point drifting under nonlinear (sin/exp/tanh), multiplicative dynamics plus noise.

    The state is ``x`` (``action_dim`` values) and a multiplicative ``gain``
    that is multiplied by a state-dependent factor every step, so any rounding
    difference compounds: a restore that is not bit-exact drifts visibly. Every
    step adds Gaussian noise drawn from ``self.np_random``. The episode never
    terminates on its own; ``gym.make`` adds a time limit.

    Args:
        action_dim: 1 or 2.
        dtype: ``"float64"`` or ``"float32"``, the dtype of the internal state.
        noise: standard deviation of the per-step noise.

    Example:
        >>> env = DriftEnv(action_dim=2)
        >>> obs, info = env.reset(seed=3)
        >>> obs.dtype, obs.shape
        (dtype('float32'), (3,))
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 (gymnasium.Env declares it so)

    def __init__(self, action_dim: int = 2, dtype: str = "float64", noise: float = 0.05) -> None:
        if action_dim not in (1, 2):
            raise ValueError(f"action_dim must be 1 or 2, got {action_dim}")
        if dtype not in ("float64", "float32"):
            raise ValueError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
        self.action_dim = int(action_dim)
        self.dtype_name = dtype
        self.dtype = np.dtype(dtype)
        self.noise = float(noise)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(self.action_dim,), dtype=np.float32)
        self.observation_space = spaces.Box(
            -_BOUND, _BOUND, shape=(self.action_dim + 1,), dtype=np.float32
        )
        self.x = np.zeros(self.action_dim, dtype=self.dtype)
        self.gain = self.dtype.type(1.0)

    def _obs(self) -> np.ndarray:
        return np.concatenate([self.x, [self.gain]]).astype(np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.x = self.np_random.uniform(-1.0, 1.0, size=self.action_dim).astype(self.dtype)
        self.gain = self.dtype.type(1.0)
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        a = np.clip(np.asarray(action, dtype=self.dtype), -1.0, 1.0)
        t = self.dtype.type
        noise = self.np_random.normal(0.0, self.noise, size=self.action_dim).astype(self.dtype)
        # Nonlinear and multiplicative on purpose: tiny rounding differences grow.
        x = self.x * t(1.1) * np.cos(self.x * t(0.7)) + np.tanh(a) * t(0.3)
        x = x * np.exp(-np.abs(x) * t(0.05)) + noise
        self.x = np.clip(x, t(-_BOUND + 1.0), t(_BOUND - 1.0)).astype(self.dtype)
        factor = t(1.0) + t(0.01) * np.sin(self.x.sum())
        self.gain = t(np.clip(self.gain * factor, t(0.1), t(_BOUND - 1.0)))
        reward = float(-np.sum(self.x * self.x) * self.gain)
        return self._obs(), reward, False, False, {}
