"""Built-in policies for ``replaykit record`` / ``replay`` and user policy specs.

A policy is an object with:

- ``act(obs) -> action``
- ``probes() -> dict`` named values computed in the last ``act`` (recorded per step)
- ``observe(obs, reward, terminated, truncated) -> dict | None`` called after each
  step; a dict is one training update's values (recorded in the ``updates`` stream)
- ``state_objects() -> dict`` objects to include in snapshots (model, optimizer, ...)

``SPEC`` strings: ``random`` (the seeded action space), ``mlp`` (a small
stochastic torch policy that also trains as it goes, so snapshots carry real
model, optimizer and torch RNG state), or ``module:callable`` naming a factory
``callable(env, seed) -> policy`` you wrote. A ``module:callable`` is imported only
when you pass it on the command line, never because a file names it.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
import torch

from replaykit.errors import UsageError

__all__ = [
    "BUILTIN",
    "MLPPolicy",
    "Policy",
    "RandomPolicy",
    "import_policy_module",
    "resolve_policy",
]


class Policy(Protocol):
    def act(self, obs: Any) -> Any: ...

    def probes(self) -> dict[str, Any]: ...

    def observe(
        self, obs: Any, reward: Any, terminated: bool, truncated: bool
    ) -> dict[str, Any] | None: ...

    def state_objects(self) -> dict[str, Any]: ...


class RandomPolicy:
    """Samples the env's (seeded) action space."""

    def __init__(self, env: gym.Env[Any, Any], seed: int) -> None:
        self.space = env.action_space

    def act(self, obs: Any) -> Any:
        return self.space.sample()

    def probes(self) -> dict[str, Any]:
        return {}

    def observe(
        self, obs: Any, reward: Any, terminated: bool, truncated: bool
    ) -> dict[str, Any] | None:
        return None

    def state_objects(self) -> dict[str, Any]:
        return {}


class _Pending:
    """Transitions since the last update, as arrays (tracked in snapshots)."""

    def __init__(self) -> None:
        self.obs: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []
        self.rewards: list[float] = []
        self.dones: list[bool] = []

    def __replaykit_state__(self) -> dict[str, Any]:
        return {
            "obs": [o.copy() for o in self.obs],
            "actions": [a.copy() for a in self.actions],
            "rewards": np.asarray(self.rewards, dtype=np.float64),
            "dones": np.asarray(self.dones, dtype=np.bool_),
        }

    def __replaykit_restore__(self, state: dict[str, Any]) -> None:
        self.obs = [np.array(o) for o in state["obs"]]
        self.actions = [np.array(a) for a in state["actions"]]
        self.rewards = [float(r) for r in np.asarray(state["rewards"])]
        self.dones = [bool(d) for d in np.asarray(state["dones"])]


class _MLP(torch.nn.Module):
    """Policy network; ``log_std`` is the Gaussian policy's state-independent spread."""

    def __init__(self, n_in: int, hidden: int, n_out: int) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(n_in, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, n_out)
        )
        self.log_std = torch.nn.Parameter(torch.full((n_out,), -0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


class MLPPolicy:
    """A small stochastic MLP policy trained by REINFORCE every ``update_every`` steps.

    Discrete actions sample from a categorical over logits; Box actions from a
    Gaussian around the MLP's output (clipped to the bounds). Sampling draws
    from torch's global generator, so the torch RNG is part of the state.
    """

    def __init__(
        self,
        env: gym.Env[Any, Any],
        seed: int,
        *,
        hidden: int = 32,
        update_every: int = 32,
        lr: float = 1e-2,
    ) -> None:
        obs_space, act_space = env.observation_space, env.action_space
        if not isinstance(act_space, (gym.spaces.Discrete, gym.spaces.Box)):
            raise UsageError(
                "the mlp policy handles Discrete and Box action spaces, not "
                f"{type(act_space).__name__}"
            )
        self.obs_space = obs_space
        self.act_space = act_space
        n_in = int(gym.spaces.flatdim(obs_space))
        self.discrete = isinstance(act_space, gym.spaces.Discrete)
        n_out = (
            int(act_space.n)
            if isinstance(act_space, gym.spaces.Discrete)
            else int(np.prod(act_space.shape))
        )
        gen = torch.Generator().manual_seed(seed)
        self.model = _MLP(n_in, hidden, n_out)
        with torch.no_grad():
            for p in self.model.net.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        params = list(self.model.net.parameters()) + ([] if self.discrete else [self.model.log_std])
        self.optimizer = torch.optim.Adam(params, lr=lr)
        self.update_every = update_every
        self.pending = _Pending()
        self._probes: dict[str, Any] = {}
        self._last_obs: np.ndarray | None = None
        self._last_action: np.ndarray | None = None

    def _obs_tensor(self, obs: Any) -> Any:
        flat = np.asarray(gym.spaces.flatten(self.obs_space, obs), dtype=np.float32)
        return torch.from_numpy(flat)

    def _dist(self, x: Any) -> Any:
        out = self.model(x)
        if self.discrete:
            return torch.distributions.Categorical(logits=out), out
        return torch.distributions.Normal(out, self.model.log_std.exp()), out

    def act(self, obs: Any) -> Any:
        x = self._obs_tensor(obs)
        with torch.no_grad():
            dist, out = self._dist(x)
            sample = dist.sample()
        self._probes = {"logits" if self.discrete else "mean": out.detach().clone()}
        self._last_obs = x.numpy().copy()
        if self.discrete:
            a = int(sample.item())
            self._last_action = np.asarray(a, dtype=np.int64)
            return a
        assert isinstance(self.act_space, gym.spaces.Box)
        raw = sample.numpy().astype(np.float64)
        self._last_action = raw.copy()
        act = np.clip(raw, self.act_space.low, self.act_space.high).astype(self.act_space.dtype)
        return act.reshape(self.act_space.shape)

    def probes(self) -> dict[str, Any]:
        return self._probes

    def observe(
        self, obs: Any, reward: Any, terminated: bool, truncated: bool
    ) -> dict[str, Any] | None:
        assert self._last_obs is not None and self._last_action is not None
        self.pending.obs.append(self._last_obs)
        self.pending.actions.append(self._last_action)
        self.pending.rewards.append(float(reward))
        self.pending.dones.append(bool(terminated or truncated))
        if len(self.pending.rewards) < self.update_every:
            return None
        x = torch.from_numpy(np.stack(self.pending.obs))
        # Discounted reward-to-go inside the window (cut at episode ends), as the advantage
        # baseline-subtracted: constant rewards (CartPole) still give a learning signal.
        ret = np.zeros(len(self.pending.rewards), dtype=np.float32)
        running = 0.0
        for i in range(len(ret) - 1, -1, -1):
            running = self.pending.rewards[i] + (0.0 if self.pending.dones[i] else 0.95 * running)
            ret[i] = running
        r = torch.from_numpy(ret)
        adv = (r - r.mean()) / (r.std() + 1e-8)
        dist, _ = self._dist(x)
        a = torch.from_numpy(np.stack(self.pending.actions))
        logp = dist.log_prob(a if self.discrete else a.float())
        if not self.discrete:
            logp = logp.sum(-1)
        loss = -(logp * adv).mean()
        self.optimizer.zero_grad()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for g in self.optimizer.param_groups for p in g["params"]], 10.0
        )
        self.optimizer.step()
        self._reset_pending()
        return {"loss": loss.detach().clone(), "grad_norm": grad_norm.detach().clone()}

    def _reset_pending(self) -> _Pending:
        self.pending.obs.clear()
        self.pending.actions.clear()
        self.pending.rewards.clear()
        self.pending.dones.clear()
        return self.pending

    def state_objects(self) -> dict[str, Any]:
        return {"model": self.model, "optimizer": self.optimizer, "pending": self.pending}


BUILTIN = {"random": RandomPolicy, "mlp": MLPPolicy}


def import_policy_module(spec: str) -> None:
    """Import the module of a ``module:callable`` policy spec (errors as resolve_policy's)."""
    mod_name = spec.partition(":")[0]
    if not mod_name:
        return
    try:
        importlib.import_module(mod_name)
    except ImportError as exc:
        raise UsageError(_import_failure(mod_name, exc)) from None


def resolve_policy(spec: str, env: gym.Env[Any, Any], seed: int) -> Any:
    """Build the policy named by ``spec`` for ``env``.

    Example:
        >>> import gymnasium as gym
        >>> type(resolve_policy("random", gym.make("CartPole-v1"), 0)).__name__
        'RandomPolicy'
    """
    if spec in BUILTIN:
        return BUILTIN[spec](env, seed)
    if ":" not in spec:
        raise UsageError(
            f"unknown policy {spec!r}; use 'random', 'mlp' or 'module:callable' (a factory "
            "taking (env, seed))"
        )
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise UsageError(
            f"policy {spec!r} is not of the form module:callable (e.g. mypolicies:make)"
        )
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise UsageError(_import_failure(mod_name, exc)) from None
    factory: Any = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise UsageError(f"module {mod_name!r} has no attribute {attr!r}")
    if not callable(factory):
        raise UsageError(f"{spec!r} is not callable")
    policy = factory(env, seed)
    if callable(policy) and not hasattr(policy, "act"):
        return _CallablePolicy(policy)
    for method in ("act",):
        if not hasattr(policy, method):
            raise UsageError(f"policy from {spec!r} has no {method}() method")
    return _Adapted(policy)


def _import_failure(mod_name: str, exc: ImportError) -> str:
    """Say why ``import mod_name`` failed: the module itself is missing, or an import in it."""
    top = mod_name.split(".", maxsplit=1)[0]
    if isinstance(exc, ModuleNotFoundError) and exc.name in (mod_name, top):
        cwd = os.getcwd()
        where = (
            f"in the current directory ({cwd}) or on sys.path"
            if cwd in sys.path or "" in sys.path
            else "on sys.path"
        )
        return (
            f"cannot import policy module {mod_name!r}: no module {exc.name!r} {where}; run "
            f"from the directory that holds {top}.py, or add its directory to PYTHONPATH"
        )
    return f"cannot import policy module {mod_name!r}: {type(exc).__name__}: {exc}"


class _CallablePolicy(RandomPolicy):
    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def act(self, obs: Any) -> Any:
        return self.fn(obs)


class _Adapted:
    """Fills in optional policy methods a user policy may leave out."""

    def __init__(self, p: Any) -> None:
        self.p = p

    def act(self, obs: Any) -> Any:
        return self.p.act(obs)

    def probes(self) -> dict[str, Any]:
        f = getattr(self.p, "probes", None)
        return dict(f()) if f else {}

    def observe(
        self, obs: Any, reward: Any, terminated: bool, truncated: bool
    ) -> dict[str, Any] | None:
        f = getattr(self.p, "observe", None)
        return f(obs, reward, terminated, truncated) if f else None

    def state_objects(self) -> dict[str, Any]:
        f = getattr(self.p, "state_objects", None)
        return dict(f()) if f else {}
