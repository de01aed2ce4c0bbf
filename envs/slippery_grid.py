"""A slippery N x N grid world that draws from its RNG on every step."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["SlipperyGridEnv"]

# row, col deltas for actions 0..3: up, right, down, left
_MOVES = np.array([[-1, 0], [0, 1], [1, 0], [0, -1]], dtype=np.int64)


class SlipperyGridEnv(gym.Env[Any, np.int64]):
    """Walk from the top-left to the bottom-right corner of a slippery grid.

    Every step draws a uniform number from ``self.np_random``; with probability
    ``slip_prob`` the action is replaced by a random direction (a second draw).
    Reaching the goal gives reward 1 and terminates; every other step gives 0.

    Args:
        size: side length N of the grid (at least 2).
        slip_prob: probability that the chosen action is replaced by a random one.
        obs_type: ``"discrete"`` (cell index, ``Discrete(N*N)``) or ``"array"``
            (``int64`` array ``[row, col]``).
        render_mode: ``None`` or ``"ansi"``.

    Example:
        >>> env = SlipperyGridEnv(size=4, obs_type="array")
        >>> obs, info = env.reset(seed=1)
        >>> obs.tolist()
        [0, 0]
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}  # noqa: RUF012 (gymnasium.Env declares it so)

    def __init__(
        self,
        size: int = 8,
        slip_prob: float = 0.2,
        obs_type: str = "discrete",
        render_mode: str | None = None,
    ) -> None:
        if size < 2:
            raise ValueError(f"size must be at least 2, got {size}")
        if not 0.0 <= slip_prob <= 1.0:
            raise ValueError(f"slip_prob must be in [0, 1], got {slip_prob}")
        if obs_type not in ("discrete", "array"):
            raise ValueError(f"obs_type must be 'discrete' or 'array', got {obs_type!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.size = int(size)
        self.slip_prob = float(slip_prob)
        self.obs_type = obs_type
        self.render_mode = render_mode
        self.action_space = spaces.Discrete(4)
        self.observation_space: spaces.Space[Any]
        if obs_type == "discrete":
            self.observation_space = spaces.Discrete(self.size * self.size)
        else:
            self.observation_space = spaces.Box(0, self.size - 1, shape=(2,), dtype=np.int64)
        self.pos = np.zeros(2, dtype=np.int64)
        self.goal = np.array([self.size - 1, self.size - 1], dtype=np.int64)

    def _obs(self) -> Any:
        if self.obs_type == "discrete":
            return np.int64(self.pos[0] * self.size + self.pos[1])
        return self.pos.copy()

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        super().reset(seed=seed)
        self.pos = np.zeros(2, dtype=np.int64)
        return self._obs(), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        if not self.action_space.contains(action):
            raise ValueError(f"invalid action {action!r} for {self.action_space}")
        # Always draw, so a restore that forgets the RNG diverges on the next step.
        slipped = bool(self.np_random.random() < self.slip_prob)
        move = int(self.np_random.integers(4)) if slipped else int(action)
        self.pos = np.clip(self.pos + _MOVES[move], 0, self.size - 1)
        terminated = bool(np.array_equal(self.pos, self.goal))
        reward = 1.0 if terminated else 0.0
        return self._obs(), reward, terminated, False, {"slipped": slipped}

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        rows = []
        for r in range(self.size):
            row = ""
            for c in range(self.size):
                if r == self.pos[0] and c == self.pos[1]:
                    row += "A"
                elif r == self.goal[0] and c == self.goal[1]:
                    row += "G"
                else:
                    row += "."
            rows.append(row)
        return "\n".join(rows) + "\n"
