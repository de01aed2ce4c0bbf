"""Envs, wrappers and policies with known pathologies, for ``replaykit doctor`` and ``report``.

* ``replaykit/GlobalNoise-v0``: CartPole whose ``step()`` adds noise drawn from NumPy's
  *global* RNG, which ``reset(seed=...)`` does not control.
* :class:`ScaleDimension`: a stateless wrapper that multiplies one observation dimension by a
  factor (un-normalised inputs).
* Policy factories ``policy(env, seed)`` for ``--policy replaykit_envs.diagnostics:NAME``:
  :func:`dropout_policy` (a torch MLP left in training mode with dropout),
  :func:`collapsing_policy` (plays action 0 only after ``COLLAPSE_AT`` steps),
  :func:`nan_policy` (probes logits that turn NaN at step ``NAN_AT``) and
  :func:`eval_policy` (the same MLP as :func:`dropout_policy`, in eval mode).

Example:
    >>> import gymnasium as gym
    >>> import replaykit_envs  # noqa: F401
    >>> env = gym.make("replaykit/GlobalNoise-v0")
    >>> obs, _ = env.reset(seed=0)
    >>> obs.shape
    (4,)
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

__all__ = [
    "COLLAPSE_AT",
    "NAN_AT",
    "GlobalNoiseEnv",
    "ScaleDimension",
    "collapsing_policy",
    "dropout_policy",
    "eval_policy",
    "nan_policy",
]

#: The step from which :func:`collapsing_policy` plays action 0 only.
COLLAPSE_AT = 300
#: The step at which :func:`nan_policy`'s probed logits become NaN.
NAN_AT = 123


class GlobalNoiseEnv(CartPoleEnv):
    """CartPole whose ``step()`` perturbs the pole with ``np.random.normal`` (the global RNG)."""

    def step(self, action: Any) -> Any:
        _, reward, terminated, truncated, info = super().step(action)
        assert self.state is not None
        state = np.array(self.state, dtype=np.float64)
        state[2] += np.random.normal(0.0, 1e-3)
        self.state = tuple(float(v) for v in state)
        return np.array(self.state, dtype=np.float32), reward, terminated, truncated, info


class ScaleDimension(gym.ObservationWrapper[np.ndarray, Any, np.ndarray]):
    """Multiply observation dimension ``dim`` by ``factor`` (stateless)."""

    def __init__(self, env: gym.Env[np.ndarray, Any], dim: int = 2, factor: float = 1e4) -> None:
        super().__init__(env)
        self.dim, self.factor = int(dim), float(factor)
        box = env.observation_space
        assert isinstance(box, gym.spaces.Box)
        low, high = box.low.copy(), box.high.copy()
        low[self.dim] *= self.factor
        high[self.dim] *= self.factor
        self.observation_space = gym.spaces.Box(low, high, dtype=box.dtype)  # type: ignore[assignment]

    def observation(self, observation: np.ndarray) -> np.ndarray:
        out = np.array(observation, copy=True)
        out[self.dim] = out[self.dim] * self.factor
        return out


class _TorchPolicy:
    """Greedy over an MLP's logits; probes the logits every step."""

    def __init__(self, env: gym.Env[Any, Any], seed: int, *, train: bool) -> None:
        import torch

        torch.manual_seed(seed)
        n_in = int(np.prod(env.observation_space.shape or (1,)))
        n_out = int(env.action_space.n)  # type: ignore[attr-defined]
        self.model = torch.nn.Sequential(
            torch.nn.Linear(n_in, 32),
            torch.nn.Tanh(),
            torch.nn.Dropout(0.5),
            torch.nn.Linear(32, n_out),
        )
        self.model.train(train)
        self._logits = torch.zeros(n_out)

    def act(self, obs: Any) -> int:
        import torch

        x = torch.as_tensor(np.asarray(obs, dtype=np.float32).reshape(-1))
        with torch.no_grad():
            self._logits = self.model(x)
        return int(self._logits.argmax())

    def probes(self) -> dict[str, Any]:
        return {"logits": self._logits.clone()}

    def state_objects(self) -> dict[str, Any]:
        return {"model": self.model}


def dropout_policy(env: gym.Env[Any, Any], seed: int) -> _TorchPolicy:
    """Build an MLP policy with ``Dropout(0.5)`` left in training mode (same obs, other logits)."""
    return _TorchPolicy(env, seed, train=True)


def eval_policy(env: gym.Env[Any, Any], seed: int) -> _TorchPolicy:
    """Build the same MLP in eval mode (deterministic)."""
    return _TorchPolicy(env, seed, train=False)


class _Collapsing:
    def __init__(self, env: gym.Env[Any, Any], seed: int) -> None:
        self.space = env.action_space
        self.space.seed(seed)
        self.t = 0
        n = int(self.space.n)  # type: ignore[attr-defined]
        self._logits = np.zeros(n, np.float32)

    def act(self, obs: Any) -> int:
        self.t += 1
        if self.t > COLLAPSE_AT:
            self._logits = np.array([8.0] + [-8.0] * (len(self._logits) - 1), np.float32)
            return 0
        self._logits = np.zeros(len(self._logits), np.float32)
        return int(self.space.sample())

    def probes(self) -> dict[str, Any]:
        return {"logits": self._logits.copy()}


def collapsing_policy(env: gym.Env[Any, Any], seed: int) -> _Collapsing:
    """Build a policy playing uniform random actions, then only action 0 from ``COLLAPSE_AT``."""
    return _Collapsing(env, seed)


class _NaN(_Collapsing):
    def act(self, obs: Any) -> int:
        self.t += 1
        self._logits = np.zeros(len(self._logits), np.float32)
        if self.t - 1 == NAN_AT:
            self._logits[1] = np.nan
        return int(self.space.sample())


def nan_policy(env: gym.Env[Any, Any], seed: int) -> _NaN:
    """Build a random policy whose probed logits hold a NaN at element 1 of step ``NAN_AT``."""
    return _NaN(env, seed)
