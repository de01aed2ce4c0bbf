"""An env with nested Dict/Tuple observations, a small image, and ragged infos."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["NestedObsEnv"]

_H = _W = 16
_MOVES = np.array([[0, 0], [-1, 0], [0, 1], [1, 0], [0, -1]], dtype=np.int64)


def _wrap(angle: np.ndarray) -> np.ndarray:
    """Wrap angles into [-pi, pi) so the phase stays inside its Box."""
    return np.mod(angle + np.pi, 2 * np.pi) - np.pi


class NestedObsEnv(gym.Env[dict[str, Any], np.ndarray]):
    """A painter walking on a 16x16 canvas, observed through nested spaces.

    Observation (``Dict``)::

        image:  Box(0, 255, (16, 16, 3), uint8)   the canvas, mutated in place each step
        inner:  Dict(vec=Box(-1, 1, (5,), float32), mode=Discrete(3))
        pair:   Tuple(Discrete(4), Box(-4, 4, (2,), float64))   a wrapped phase

    Action: ``MultiDiscrete([5, 3])`` = (move: stay/up/right/down/left, new mode).
    Every step draws from ``self.np_random`` (pixel flicker, a wobble, random
    pushes). ``info["collisions"]`` (``int``) is present every step; on some
    steps ``info["contact"]`` (a ``float64`` array of shape ``(3,)``) is added
    too, so infos are ragged. Terminates after 12 collisions with the border.

    Example:
        >>> env = NestedObsEnv()
        >>> obs, info = env.reset(seed=0)
        >>> obs["image"].shape, sorted(obs["inner"])
        ((16, 16, 3), ['mode', 'vec'])
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 10}  # noqa: RUF012 (gymnasium.Env declares it so)

    def __init__(self, render_mode: str | None = None) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        self.action_space = spaces.MultiDiscrete([5, 3])
        self.observation_space = spaces.Dict(
            {
                "image": spaces.Box(0, 255, shape=(_H, _W, 3), dtype=np.uint8),
                "inner": spaces.Dict(
                    {
                        "vec": spaces.Box(-1.0, 1.0, shape=(5,), dtype=np.float32),
                        "mode": spaces.Discrete(3),
                    }
                ),
                "pair": spaces.Tuple(
                    (
                        spaces.Discrete(4),
                        spaces.Box(-4.0, 4.0, shape=(2,), dtype=np.float64),
                    )
                ),
            }
        )
        self.canvas = np.zeros((_H, _W, 3), dtype=np.uint8)
        self.pos = np.zeros(2, dtype=np.int64)
        self.vec = np.zeros(5, dtype=np.float32)
        self.mode = 0
        self.phase = np.zeros(2, dtype=np.float64)
        self.collisions = 0
        self.t = 0

    def _obs(self) -> dict[str, Any]:
        # Fresh arrays every call: callers keep observations (check_env verifies this).
        return {
            "image": self.canvas.copy(),
            "inner": {"vec": self.vec.copy(), "mode": np.int64(self.mode)},
            "pair": (np.int64(self.t % 4), self.phase.copy()),
        }

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        self.canvas = self.np_random.integers(0, 32, size=(_H, _W, 3), dtype=np.uint8)
        self.pos = self.np_random.integers(0, _H, size=2, dtype=np.int64)
        self.vec = self.np_random.uniform(-0.5, 0.5, size=5).astype(np.float32)
        self.mode = 0
        self.phase = _wrap(self.np_random.normal(size=2))
        self.collisions = 0
        self.t = 0
        return self._obs(), {"collisions": 0}

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        if not self.action_space.contains(action):
            raise ValueError(f"invalid action {action!r} for {self.action_space}")
        move, mode = int(action[0]), int(action[1])
        self.t += 1
        # A random push on some steps makes the walk depend on the RNG.
        if self.np_random.random() < 0.25:
            move = int(self.np_random.integers(1, 5))
        target = self.pos + _MOVES[move]
        hit = bool(np.any(target < 0) or np.any(target >= _H))
        self.pos = np.clip(target, 0, _H - 1)
        self.collisions += int(hit)
        self.mode = mode
        # Paint the agent's cell and flicker one random pixel (in-place canvas state).
        self.canvas[self.pos[0], self.pos[1], mode] = 255
        flick = self.np_random.integers(0, _H, size=2)
        self.canvas[flick[0], flick[1]] //= 2
        wobble = self.np_random.normal(0.0, 0.1, size=5).astype(np.float32)
        self.vec = np.clip(self.vec * np.float32(0.9) + wobble, -1.0, 1.0).astype(np.float32)
        delta = np.array([np.sin(self.phase[1]), np.cos(self.phase[0])]) * 0.1
        self.phase = _wrap(self.phase + delta)
        reward = float(self.vec.sum()) - (1.0 if hit else 0.0)
        terminated = self.collisions >= 12
        info: dict[str, Any] = {"collisions": self.collisions}
        if hit or self.t % 7 == 0:
            info["contact"] = np.array([float(hit), *self.phase], dtype=np.float64)
        return self._obs(), reward, terminated, False, info

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        return self.canvas.copy()
