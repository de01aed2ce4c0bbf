"""Stable-Baselines3 in one line: record ``model.learn``, resume a snapshot bit-exactly.

``pip install "replaykit[sb3]"``. Record a run with one callback::

    model.learn(10_000, callback=ReplaykitCallback("run.h5", snapshot_at_steps=[4_100]))

The recording holds every env step through the VecEnv (all sub-envs: ``obs``, ``action``,
``reward``, ``done``, ``info/TimeLimit.truncated``, and the policy's ``probe/value`` and
``probe/log_prob`` where the algorithm computes them), one update per ``train()`` call
(every ``train/...`` value SB3 logs, ``grad_norm`` of the last gradient, ``params`` digest
of the policy, ``n_updates``), and snapshots of everything needed to continue: policy and
optimizers, the rollout or replay buffer, the algorithm's counters and last observations,
the VecEnv chain (``DummyVecEnv`` sub-envs with their gymnasium wrappers and ``Monitor``,
``VecNormalize`` running statistics, ``VecFrameStack``, ``VecTransposeImage``,
``VecMonitor``) and every RNG. No pickle: state goes through replaykit's arrays and tensors.

:func:`resume` builds the algorithm from the recorded hyper-parameters, restores a snapshot,
finishes the interrupted rollout, and trains on to the recorded end, verifying every step
and update; the first difference raises :class:`~replaykit.DivergenceError`.

Snapshot points: a snapshot asked for at step ``s`` (counted in ``model.num_timesteps``)
is taken just before the policy acts for the first step after ``s`` -- between two env
steps, also in the middle of a rollout (and, off-policy, with a partly filled replay
buffer); when ``s`` is a rollout's last step, at the rollout's end, just before
``train()``. A point between two minibatches inside ``train()`` is not reachable through
SB3's callbacks: the nearest points are that rollout end (before ``train()``) and the
first env step after it.

Flight mode: ``snapshot_every=N, keep_snapshots=K`` keeps the first and the last ``K``
periodic snapshots and records the run's first NaN/infinity (observations, rewards, policy
values, logged losses) or exception from the policy or ``train()`` as its failure record
(``callback.failure``; ``callback.mark_failure(reason)`` records one of yours).

Example:
    >>> import tempfile, os
    >>> from stable_baselines3 import PPO
    >>> from replaykit.integrations.sb3 import ReplaykitCallback, resume
    >>> path = os.path.join(tempfile.mkdtemp(), "ppo.h5")
    >>> model = PPO("MlpPolicy", "CartPole-v1", n_steps=32, batch_size=16, n_epochs=1,
    ...             seed=0, device="cpu")
    >>> _ = model.learn(96, callback=ReplaykitCallback(path, snapshot_at_steps=[40]))
    >>> done = resume(path, "step-000040", PPO, lambda: "CartPole-v1")
    >>> done.verified_steps, done.verified_updates
    (56, 2)
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import inspect
import math
import os
import sys
import warnings
from collections import deque as _deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path as _Path
from typing import Any

import numpy as np
import torch

from replaykit._format import layout as F
from replaykit._format.store import Recording as _Recording
from replaykit._session.recorder import (
    RecorderCore as _RecorderCore,
)
from replaykit._session.recorder import (
    column_writer as _column_writer,
)
from replaykit._session.recorder import (
    env_spec_json as _env_spec_json,
)
from replaykit._session.training import params_digest as _params_digest
from replaykit._session.vector import SubEnv as _SubEnv
from replaykit._session.verifier import (
    ReplayCore as _ReplayCore,
)
from replaykit._session.verifier import (
    as_rules as _as_rules,
)
from replaykit._session.verifier import (
    restoring as _restoring,
)
from replaykit._state import envs as envstate
from replaykit._state import rng, snapshot
from replaykit._state import spaces as _spaces
from replaykit._state.arrays import ArrayState as _ArrayState
from replaykit.errors import (
    CaptureError as _CaptureError,
)
from replaykit.errors import (
    MissingExtraError as _MissingExtraError,
)
from replaykit.errors import (
    StateMismatchError as _StateMismatchError,
)
from replaykit.errors import (
    UsageError as _UsageError,
)

SB3_MISSING = (
    "replaykit.integrations.sb3 needs Stable-Baselines3, which is not installed; "
    'install it with: pip install "replaykit[sb3]"'
)

try:
    from stable_baselines3.common.base_class import BaseAlgorithm as _BaseAlgorithm
    from stable_baselines3.common.callbacks import BaseCallback as _BaseCallback
    from stable_baselines3.common.logger import Logger as _Logger
    from stable_baselines3.common.monitor import Monitor as _Monitor
    from stable_baselines3.common.off_policy_algorithm import (
        OffPolicyAlgorithm as _OffPolicyAlgorithm,
    )
    from stable_baselines3.common.type_aliases import (
        TrainFreq as _TrainFreq,
    )
    from stable_baselines3.common.type_aliases import (
        TrainFrequencyUnit as _TrainFrequencyUnit,
    )
    from stable_baselines3.common.utils import (
        ConstantSchedule as _ConstantSchedule,
    )
    from stable_baselines3.common.utils import (
        FloatSchedule as _FloatSchedule,
    )
    from stable_baselines3.common.vec_env import (
        DummyVecEnv as _DummyVecEnv,
    )
    from stable_baselines3.common.vec_env import (
        SubprocVecEnv as _SubprocVecEnv,
    )
    from stable_baselines3.common.vec_env import (
        VecEnv as _VecEnv,
    )
    from stable_baselines3.common.vec_env import (
        VecEnvWrapper as _VecEnvWrapper,
    )
    from stable_baselines3.common.vec_env import (
        VecFrameStack as _VecFrameStack,
    )
    from stable_baselines3.common.vec_env import (
        VecMonitor as _VecMonitor,
    )
    from stable_baselines3.common.vec_env import (
        VecNormalize as _VecNormalize,
    )
    from stable_baselines3.common.vec_env import (
        VecTransposeImage as _VecTransposeImage,
    )
except ImportError:  # pragma: no cover - exercised in a process without the extra
    raise _MissingExtraError(SB3_MISSING) from None

__all__ = [
    "SB3_MISSING",
    "SUBPROC_REFUSED",
    "ReplaykitCallback",
    "Resumed",
    "capturable",
    "resume",
]

SUBPROC_REFUSED = (
    "cannot snapshot a SubprocVecEnv whose sub-envs are plain: their state lives in worker "
    "processes; build it as SubprocVecEnv(replaykit.integrations.sb3.capturable(env_fns)) "
    "or use DummyVecEnv"
)
_EXTRA_KEY = "sb3"
# Algorithm attributes that say where training is, besides buffers and networks.
_COUNTERS = (
    "num_timesteps",
    "_total_timesteps",
    "_num_timesteps_at_start",
    "_episode_num",
    "_n_updates",
    "_n_calls",
    "_current_progress_remaining",
    "exploration_rate",
)
_LAST = ("_last_obs", "_last_original_obs", "_last_episode_starts")
# Modules whose classes a recorded hyper-parameter may name (looked up, never imported).
_CLASS_MODULES = (
    "torch.nn",
    "torch.optim",
    "stable_baselines3.common.buffers",
    "stable_baselines3.common.torch_layers",
    "sb3_contrib.common.recurrent.buffers",
)
_CONSTRUCTOR_SKIP = frozenset({"self", "policy", "env", "device", "_init_setup_model"})


# --------------------------------------------------------------------------------------------
# state adapters


class _MonitorAdapter(envstate.AttrAdapter):
    name = "sb3.Monitor"
    attrs = (
        "rewards",
        "needs_reset",
        "episode_returns",
        "episode_lengths",
        "episode_times",
        "total_steps",
    )


envstate.register_wrapper_adapter(_Monitor, _MonitorAdapter())


def _make_sub(fn: Callable[[], Any]) -> _SubEnv:
    return _SubEnv(fn())


def capturable(env_fns: Iterable[Callable[[], Any]]) -> list[Callable[[], _SubEnv]]:
    """Wrap env thunks so a ``SubprocVecEnv`` built from them can be snapshotted.

    Each worker's env answers ``replaykit_capture`` through ``env_method``; SB3's own pipe
    carries the state tree; files never hold pickled data.

    Example:
        >>> import gymnasium as gym
        >>> fns = capturable([lambda: gym.make("CartPole-v1")] * 2)
        >>> type(fns[0]()).__name__
        'SubEnv'
    """
    import functools

    return [functools.partial(_make_sub, fn) for fn in env_fns]


def _rms(r: Any) -> Any:
    if isinstance(r, dict):
        return {k: _rms(v) for k, v in r.items()}
    return {
        "mean": np.array(r.mean, copy=True),
        "var": np.array(r.var, copy=True),
        "count": r.count,
    }


def _restore_rms(r: Any, tree: Any) -> None:
    if isinstance(r, dict):
        for k, v in r.items():
            _restore_rms(v, tree[k])
        return
    r.mean, r.var, r.count = np.array(tree["mean"]), np.array(tree["var"]), tree["count"]


def _copy(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _copy(v) for k, v in x.items()}
    return None if x is None else np.array(x, copy=True)


class _VecEnvState:
    """The VecEnv chain: wrapper statistics, sub-env chains (captured or refused)."""

    def __init__(self, venv: _VecEnv) -> None:
        self.venv = venv

    def _layers(self) -> list[Any]:
        out: list[Any] = []
        v = self.venv
        while isinstance(v, _VecEnvWrapper):
            out.append(v)
            v = v.venv
        out.append(v)
        return out

    def __replaykit_state__(self) -> list[Any]:
        return [{"class": type(v).__name__, "state": _capture_layer(v)} for v in self._layers()]

    def __replaykit_restore__(self, tree: Any) -> None:
        layers = self._layers()
        live = [type(v).__name__ for v in layers]
        saved = [t["class"] for t in tree] if isinstance(tree, list) else []
        if live != saved:
            raise _StateMismatchError("vec env", [f"layers: recorded {saved}, got {live}"])
        for v, t in zip(layers, tree, strict=True):
            _restore_layer(v, t["state"])


def _capture_layer(v: Any) -> Any:
    if isinstance(v, _VecNormalize):
        return {
            "obs_rms": _rms(v.obs_rms),
            "ret_rms": _rms(v.ret_rms),
            "returns": _copy(v.returns),
            "old_obs": _copy(getattr(v, "old_obs", None)),
            "old_reward": _copy(getattr(v, "old_reward", None)),
            "training": bool(v.training),
        }
    if isinstance(v, _VecFrameStack):
        st = v.stacked_obs
        subs = getattr(st, "sub_stacked_observations", None)
        if subs:
            return {"stacked": {k: _copy(s.stacked_obs) for k, s in subs.items()}}
        return {"stacked": _copy(st.stacked_obs)}
    if isinstance(v, _VecMonitor):
        return {
            "episode_returns": _copy(v.episode_returns),
            "episode_lengths": _copy(v.episode_lengths),
            "episode_count": int(v.episode_count),
        }
    if isinstance(v, _VecTransposeImage):
        return {}
    if isinstance(v, _DummyVecEnv):
        return {"envs": [envstate.capture_chain(e) for e in v.envs]}
    if isinstance(v, _SubprocVecEnv):
        if not all(v.env_method("has_wrapper_attr", "replaykit_capture")):
            raise _CaptureError(SUBPROC_REFUSED)
        return {"envs": list(v.env_method("replaykit_capture"))}
    raise _CaptureError(
        f"{type(v).__module__}.{type(v).__qualname__} has no replaykit state support; "
        "snapshots cover DummyVecEnv, SubprocVecEnv(capturable(...)), VecNormalize, "
        "VecFrameStack, VecTransposeImage and VecMonitor (record without snapshots otherwise)"
    )


def _restore_layer(v: Any, state: Any) -> None:
    if isinstance(v, _VecNormalize):
        _restore_rms(v.obs_rms, state["obs_rms"])
        _restore_rms(v.ret_rms, state["ret_rms"])
        v.returns = _copy(state["returns"])
        v.old_obs = _copy(state["old_obs"])
        v.old_reward = _copy(state["old_reward"])
        v.training = bool(state["training"])
    elif isinstance(v, _VecFrameStack):
        st = v.stacked_obs
        subs = getattr(st, "sub_stacked_observations", None)
        if subs:
            for k, s in subs.items():
                s.stacked_obs[...] = state["stacked"][k]
        else:
            st.stacked_obs[...] = state["stacked"]
    elif isinstance(v, _VecMonitor):
        v.episode_returns = _copy(state["episode_returns"])
        v.episode_lengths = _copy(state["episode_lengths"])
        v.episode_count = int(state["episode_count"])
    elif isinstance(v, (_DummyVecEnv, _SubprocVecEnv)) and len(state["envs"]) != v.num_envs:
        raise _StateMismatchError(
            "vec env", [f"sub-envs: recorded {len(state['envs'])}, got {v.num_envs}"]
        )
    elif isinstance(v, _DummyVecEnv):
        for e, s in zip(v.envs, state["envs"], strict=True):
            envstate.restore_chain(e, s)
    elif isinstance(v, _SubprocVecEnv):
        if not all(v.env_method("has_wrapper_attr", "replaykit_capture")):
            raise _CaptureError(SUBPROC_REFUSED)
        for i, s in enumerate(state["envs"]):
            v.set_attr("replaykit_incoming", (s, False), indices=[i])
        v.env_method("replaykit_apply")


class _AlgoState:
    """The algorithm's counters, last observations and its action space's RNG."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def __replaykit_state__(self) -> dict[str, Any]:
        m = self.model
        counters = {}
        for k in _COUNTERS:
            if hasattr(m, k):
                v = getattr(m, k)
                counters[k] = v.item() if isinstance(v, np.generic) else v
        last = {k: _copy(getattr(m, k)) for k in _LAST if getattr(m, k, None) is not None}
        layout = {k: _layout(getattr(m, k)) for k in last}
        lstm = getattr(m, "_last_lstm_states", None)
        gen = getattr(m.action_space, "_np_random", None)
        return {
            "counters": counters,
            "last": last,
            "last_layout": {k: v for k, v in layout.items() if v is not None},
            "lstm": None if lstm is None else [t.detach().clone() for t in _flat(lstm)],
            "action_space_rng": None if gen is None else rng.capture_generator(gen),
        }

    def __replaykit_restore__(self, tree: Any) -> None:
        m = self.model
        for k, v in tree["counters"].items():
            setattr(m, k, v)
        layout = tree.get("last_layout") or {}
        for k in _LAST:
            setattr(m, k, _with_layout(_copy(tree["last"].get(k)), layout.get(k)))
        if tree["lstm"] is not None:
            with torch.no_grad():
                for live, saved in zip(_flat(m._last_lstm_states), tree["lstm"], strict=True):
                    live.copy_(saved)
        if tree["action_space_rng"] is None:
            m.action_space._np_random = None
        else:
            gen = m.action_space.np_random
            rng.restore_generator(gen, tree["action_space_rng"])


def _layout(x: Any) -> list[int] | None:
    """Return the axes of a strided array from the outermost in memory (``None``: C order).

    ``VecTransposeImage`` hands out transposed views; torch keeps their strides, and a
    convolution over a channels-last input may round differently from a C-ordered one, so
    the restored last observation must have the recorded layout, not only its values.
    """
    if not isinstance(x, np.ndarray) or x.ndim < 2 or x.flags.c_contiguous:  # noqa: PLR2004
        return None
    return [int(i) for i in np.argsort([-abs(s) for s in x.strides], kind="stable")]


def _with_layout(x: Any, perm: Any) -> Any:
    if perm is None or not isinstance(x, np.ndarray):
        return x
    perm = [int(i) for i in perm]
    return np.ascontiguousarray(x.transpose(perm)).transpose(np.argsort(perm))


def _flat(x: Any) -> list[Any]:
    if isinstance(x, torch.Tensor):
        return [x]
    return [t for part in x for t in _flat(part)]


class _TensorState:
    """A tensor attribute of the algorithm (SAC's ``log_ent_coef``), restored in place."""

    def __init__(self, model: Any, name: str) -> None:
        self.model, self.name = model, name

    def __replaykit_state__(self) -> Any:
        return _getpath(self.model, self.name).detach().clone()

    def __replaykit_restore__(self, tree: Any) -> None:
        live = _getpath(self.model, self.name)
        if tuple(live.shape) != tuple(tree.shape) or live.dtype != tree.dtype:
            raise _StateMismatchError(
                self.name, [f"recorded {tree.dtype}{list(tree.shape)}, got {live.dtype}"]
            )
        with torch.no_grad():
            live.copy_(tree)


def _getpath(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _buffer_state(buf: Any) -> _ArrayState:
    arrays = sorted(k for k, v in vars(buf).items() if isinstance(v, np.ndarray))
    for k, v in vars(buf).items():
        if isinstance(v, dict) and v and all(isinstance(x, np.ndarray) for x in v.values()):
            raise _CaptureError(
                f"{type(buf).__name__}.{k} is a dict of arrays (a Dict observation space); "
                "snapshots cover buffers of array observations -- record without snapshots"
            )
    values = [k for k in ("pos", "full", "generator_ready") if hasattr(buf, k)]
    return _ArrayState(
        buf, arrays, filled=lambda b: b.buffer_size if b.full else b.pos, values=values
    )


def _tracked(model: _BaseAlgorithm) -> dict[str, Any]:
    """``{name: object}`` a snapshot of ``model`` holds (the same names on resume)."""
    names, tensors = model._get_torch_save_params()
    out: dict[str, Any] = {name: _getpath(model, name) for name in names}
    for name in tensors:
        out[name] = _TensorState(model, name)
    buf = getattr(model, "rollout_buffer", None)
    if buf is None:
        buf = getattr(model, "replay_buffer", None)
    if buf is not None:
        out["buffer"] = _buffer_state(buf)
    out["algorithm"] = _AlgoState(model)
    env = model.get_env()
    if env is not None:
        out["vec_env"] = _VecEnvState(env)
    return out


# --------------------------------------------------------------------------------------------
# hyper-parameters as data


class _UnrecordableError(Exception):
    pass


def _encode(v: Any) -> Any:  # noqa: PLR0911
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        if not np.isfinite(v):
            raise _UnrecordableError
        return v
    if isinstance(v, np.generic):
        return _encode(v.item())
    if isinstance(v, enum.Enum):
        return _encode(v.value)
    if isinstance(v, tuple):
        return {"__tuple__": [_encode(x) for x in v]}
    if isinstance(v, list):
        return [_encode(x) for x in v]
    if isinstance(v, dict) and all(isinstance(k, str) for k in v):
        return {k: _encode(x) for k, x in v.items()}
    if isinstance(v, _FloatSchedule):
        return _encode(v.value_schedule)
    if isinstance(v, _ConstantSchedule):
        return _encode(v.val)
    if isinstance(v, type):
        for mod in _CLASS_MODULES:
            if v.__module__ == mod or v.__module__.startswith(mod + "."):
                return {"__class__": [mod, v.__qualname__]}
    raise _UnrecordableError


def _decode(v: Any) -> Any:
    if isinstance(v, list):
        return [_decode(x) for x in v]
    if isinstance(v, dict):
        if set(v) == {"__tuple__"}:
            return tuple(_decode(x) for x in v["__tuple__"])
        if set(v) == {"__class__"}:
            mod, name = v["__class__"]
            if mod not in _CLASS_MODULES or mod not in sys.modules:
                raise _UsageError(
                    f"the recording names the class {mod}.{name}, which cannot be looked up "
                    "here; pass it in overrides={...}"
                )
            obj: Any = sys.modules[mod]
            for part in str(name).split("."):
                obj = getattr(obj, part, None)
            if not isinstance(obj, type):
                raise _UsageError(f"the recording names {mod}.{name}, which is not a class here")
            return obj
        return {k: _decode(x) for k, x in v.items()}
    return v


def _hyper(model: _BaseAlgorithm) -> tuple[dict[str, Any], list[str]]:
    """Return the constructor arguments as data, and the names that are not data."""
    out: dict[str, Any] = {}
    missing = []
    for name in inspect.signature(type(model).__init__).parameters:
        if name in _CONSTRUCTOR_SKIP:
            continue
        value = getattr(model, name, getattr(model, "_" + name, inspect.Parameter.empty))
        if value is inspect.Parameter.empty:
            continue
        try:
            out[name] = _encode(value)
        except _UnrecordableError:
            missing.append(name)
    return out, missing


def _policy_name(model: _BaseAlgorithm) -> str | None:
    for alias, cls in getattr(type(model), "policy_aliases", {}).items():
        if cls is model.policy_class:
            return str(alias)
    return None


# --------------------------------------------------------------------------------------------
# hooks shared by recording and verifying


class _Hooks:
    """Instance-level wrappers around ``train`` and the per-step action choice."""

    def __init__(
        self,
        model: Any,
        at_boundary: Callable[[], object],
        after_train: Callable[[], object],
        on_error: Callable[[BaseException], object] | None = None,
    ) -> None:
        self.model = model
        self._installed: list[tuple[Any, str]] = []
        orig_train = model.train

        def train(*args: Any, **kwargs: Any) -> Any:
            values: dict[str, Any] = model.logger.name_to_value
            for key in [k for k in values if k.startswith("train/")]:
                del values[key]
            try:
                out = orig_train(*args, **kwargs)
            except Exception as exc:
                if on_error is not None:
                    on_error(exc)
                raise
            after_train()
            return out

        self._set(model, "train", train)
        if isinstance(model, _OffPolicyAlgorithm):
            orig_sample = model._sample_action

            def sample(*args: Any, **kwargs: Any) -> Any:
                at_boundary()
                try:
                    return orig_sample(*args, **kwargs)
                except Exception as exc:
                    if on_error is not None:
                        on_error(exc)
                    raise

            self._set(model, "_sample_action", sample)
        else:
            policy = model.policy
            orig_forward = policy.forward

            def forward(*args: Any, **kwargs: Any) -> Any:
                at_boundary()
                try:
                    return orig_forward(*args, **kwargs)
                except Exception as exc:
                    if on_error is not None:
                        on_error(exc)
                    raise

            self._set(policy, "forward", forward)

    def _set(self, obj: Any, name: str, fn: Any) -> None:
        obj.__dict__[name] = fn
        self._installed.append((obj, name))

    def remove(self) -> None:
        for obj, name in self._installed:
            obj.__dict__.pop(name, None)
        self._installed = []


def _update_values(model: _BaseAlgorithm) -> dict[str, Any]:
    values: dict[str, Any] = {"n_updates": np.int64(getattr(model, "_n_updates", 0))}
    logged = model.logger.name_to_value
    for key in [k for k in logged if k.startswith("train/")]:  # in the order SB3 logged them
        v = logged[key]
        values[key] = np.float64(v) if isinstance(v, (float, int)) else v
    grads = [p.grad.detach() for p in model.policy.parameters() if p.grad is not None]
    if grads:
        norms = torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
        values["grad_norm"] = torch.linalg.vector_norm(norms)
    values["params"] = _params_digest(model.policy)
    return values


_TRUNCATED_COL = F.column_path(F.INFO, "TimeLimit.truncated")
_PROBES = (
    ("values", F.column_path(F.PROBE, "value")),
    ("log_probs", F.column_path(F.PROBE, "log_prob")),
)


def _step_values(local: Mapping[str, Any]) -> dict[str, Any]:
    """Return the recorded columns of one VecEnv step, from ``collect_rollouts``' locals."""
    obs = local["new_obs"]
    if isinstance(obs, dict):
        out = {F.column_path(F.OBS, str(k)): v for k, v in obs.items()}
    else:
        out = {F.OBS: obs}
    out[F.ACTION] = local["actions"]
    out[F.REWARD] = local["rewards"]
    out["done"] = local["dones"]
    infos = local["infos"]
    out[_TRUNCATED_COL] = np.fromiter(
        (i.get("TimeLimit.truncated", False) for i in infos), np.bool_, len(infos)
    )
    for name, col in _PROBES:
        v = local.get(name)
        if v is not None and isinstance(v, torch.Tensor):
            out[col] = v
    return out


# --------------------------------------------------------------------------------------------
# recording


class _Recorder(_RecorderCore):
    def __init__(
        self,
        model: _BaseAlgorithm,
        path: str | os.PathLike[str],
        *,
        snapshot_at: Iterable[int],
        snapshot_every: int | None,
        overwrite: bool,
        metadata: Mapping[str, Any] | None,
        keep_snapshots: int | None = None,
        detect_failures: bool | None = None,
    ) -> None:
        self.model = model
        venv = model.get_env()
        while isinstance(venv, _VecEnvWrapper):
            venv = venv.venv
        first = venv.envs[0] if isinstance(venv, _DummyVecEnv) else None
        spec = _env_spec_json(first) if first is not None else None
        hyper, missing = _hyper(model)
        self._extra_base = {
            "algo": type(model).__name__,
            "policy": _policy_name(model),
            "hyper": hyper,
            "unrecorded": missing,
            "n_envs": int(model.n_envs),
        }
        self._at = sorted({int(s) for s in snapshot_at})
        self._every = snapshot_every
        tracked = _tracked(model) if (self._at or self._every) else {}
        for name, obj in tracked.items():
            snapshot.capture_tracked(obj, name)  # refuse an uncapturable object before training
        self._due = False
        self._due_at = False  # the due snapshot was asked for by snapshot_at_steps
        self._at_i = 0  # the first snapshot_at_steps value not yet reached
        self._next_due: float = min(
            [*self._at, *([self._every] if self._every else [])], default=math.inf
        )
        # Flight mode: rows of the current block already checked for NaN/infinity, and the
        # step rows at which the updates since the last check were logged.
        self._scan_pos = 0
        self._recent_updates: list[int] = []
        self._rollout_steps = 0
        self._rollout_episodes = 0
        self._writers: dict[str, Any] = {}
        self._fast: list[tuple[str, Any]] | None = None
        self._truncated: Any = None
        self._open(
            path,
            {
                F.META_KIND: F.KIND_SB3,
                F.META_ENV_ID: spec[F.SPEC_ID] if spec else None,
                F.META_ENV_SPEC: spec,
                F.META_ENV_CLASS: snapshot.kind_of(first.unwrapped if first else venv),
                F.META_SEED: model.seed if isinstance(model.seed, int) else None,
                F.META_OBSERVATION_SPACE: _spaces.space_to_json(model.observation_space),
                F.META_ACTION_SPACE: _spaces.space_to_json(model.action_space),
            },
            metadata=metadata,
            overwrite=overwrite,
        )
        self._tracked = tracked
        self._steps = self._writer.stream(F.STEPS)
        self._steps.on_block_full = self._writer.maybe_commit
        self.hooks = _Hooks(model, self.at_boundary, self._after_train, self._on_error)
        self._start_flight(keep_snapshots, snapshot_every, detect_failures)
        if self._detect:
            self._steps.before_write = self._scan_before_write

    # steps
    def rollout_start(self) -> None:
        self._rollout_steps = 0
        self._rollout_episodes = 0

    def step(self, local: Mapping[str, Any]) -> None:
        s = self._steps
        p = s.pos
        fast = self._fast
        if fast is not None:
            # The columns are known after the first row: write them without building a dict.
            for name, w in fast:
                w.write(local[name], p)
            infos = local["infos"]
            self._truncated.write(
                np.fromiter(
                    (i.get("TimeLimit.truncated", False) for i in infos), np.bool_, len(infos)
                ),
                p,
            )
        else:
            values = _step_values(local)
            for col, v in values.items():
                w = self._writers.get(col)
                if w is None:
                    w = _column_writer(s, col, f"step value {col!r}", v)
                    assert w is not None
                    self._writers[col] = w
                w.write(v, p)
            if F.OBS in values:  # array observations: later rows take the fast path
                names = {F.OBS: "new_obs", F.ACTION: "actions", F.REWARD: "rewards"}
                names.update({"done": "dones", **{col: name for name, col in _PROBES}})
                fast = [(names[c], w) for c, w in self._writers.items() if c != _TRUNCATED_COL]
                self._fast, self._truncated = fast, self._writers[_TRUNCATED_COL]
        s.end_row()
        self._rollout_steps += 1
        self._rollout_episodes += int(np.count_nonzero(local["dones"]))
        t = self.model.num_timesteps
        if t >= self._next_due:
            self._due = True
            at, i = self._at, self._at_i
            while i < len(at) and at[i] <= t:
                self._due_at, i = True, i + 1
            self._at_i = i
            later = at[i : i + 1]
            if self._every is not None:
                later.append((t // self._every + 1) * self._every)
            self._next_due = min(later, default=math.inf)

    def at_boundary(self) -> None:
        if self._due:
            asked, self._due, self._due_at = self._due_at, False, False
            if asked:
                self.snapshot()
            else:  # periodic: under flight-mode retention when keep_snapshots is given
                self.flight_snapshot()

    def _after_train(self) -> None:
        if self._detect:
            self._recent_updates.append(self._steps.rows)
        self._update_log.log(self._steps.rows, _update_values(self.model))

    # flight mode
    def _on_error(self, exc: BaseException) -> None:
        """Record an exception escaping the policy or ``train()`` (flight mode), then close."""
        if self._closed:
            return
        if self._detect and not self._writer_broken():
            with contextlib.suppress(Exception):  # never mask the user's exception
                self._record_exception(exc)
        with contextlib.suppress(Exception):
            self.close()

    def _position(self) -> dict[str, Any]:
        return {
            F.FAILURE_STEP: self._steps.rows,
            F.FAILURE_EPISODE: -1,
            F.FAILURE_UPDATE: self._update_log.count,
        }

    def _scan_before_write(self) -> None:
        s = self._steps
        self._scan_failures()
        if s.pos == s.block:  # the buffers start over after this write
            self._scan_pos = 0

    def _scan_failures(self) -> None:
        """Check the step rows not checked yet for NaN/infinity (observations, rewards, probes).

        The rows are checked in the buffers, a block at a time (before it is written), before
        each periodic snapshot and at close: nothing runs per step.
        """
        s = self._steps
        lo, hi = self._scan_pos, s.pos
        self._scan_pos = hi
        recent, self._recent_updates = self._recent_updates, []
        if hi <= lo or self._failure is not None:
            return
        self._record_first_nonfinite(s, lo, hi, recent, episodes=False)

    def snapshot(self, name: str | None = None, *, extra: Any = None) -> str:
        self._require_open()
        name = self._snapshot_name(name, "step", int(self.model.num_timesteps))
        position = {
            F.SNAP_STEP: self._steps.rows,
            F.SNAP_EPISODE: -1,
            F.SNAP_STEP_IN_EPISODE: 0,
            F.SNAP_UPDATES: self._update_log.count,
            F.SNAP_NEEDS_RESET: False,
            F.SNAP_SEQ: self._snap_seq,
        }
        tree = {
            _EXTRA_KEY: {
                **self._extra_base,
                "rollout_steps": self._rollout_steps,
                "rollout_episodes": self._rollout_episodes,
            },
            "user": extra,
        }
        meta = {**position, F.SNAP_ENV_STATE: None}
        return self._write_snapshot(name, meta, env={}, recorder=position, extra=tree)

    def _final_meta(self) -> dict[str, Any]:
        return {
            F.META_STEPS: self._steps.rows,
            F.META_EPISODES: 0,
            F.META_UPDATES: self._update_log.count,
        }

    def _close_wrapped(self, **kwargs: Any) -> None:
        self.hooks.remove()


class ReplaykitCallback(_BaseCallback):
    """Record an SB3 ``learn()`` run: every env step, every update, snapshots on request.

    Args:
        path: the ``.h5`` file to write; must not exist unless ``overwrite``.
        snapshot_at_steps: ``model.num_timesteps`` values after which to snapshot (at the
            next step boundary, also in the middle of a rollout).
        snapshot_every: also snapshot each time ``num_timesteps`` crosses a multiple of it.
        overwrite: replace an existing ``path`` once the recording is closed.
        metadata: JSON data stored under ``meta["user"]``.
        keep_snapshots: flight mode: keep only the first and the last ``keep_snapshots``
            periodic (``snapshot_every``) snapshots, so a long run's file stays bounded;
            the ``snapshot_at_steps`` ones are all kept. Turns failure detection on.
        detect_failures: write a failure record (:attr:`failure`) at the first NaN or
            infinity in the recorded observations, rewards, policy values or logged
            losses; after it, no periodic snapshot is taken or dropped. Defaults to on
            with ``keep_snapshots``. :meth:`mark_failure` records a failure of your own.

    Example:
        >>> import tempfile, os
        >>> from stable_baselines3 import A2C
        >>> path = os.path.join(tempfile.mkdtemp(), "a2c.h5")
        >>> model = A2C("MlpPolicy", "CartPole-v1", n_steps=8, seed=0, device="cpu")
        >>> cb = ReplaykitCallback(path, snapshot_at_steps=[12])
        >>> _ = model.learn(32, callback=cb)
        >>> cb.snapshot_names
        ['step-000012']
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        snapshot_at_steps: Iterable[int] = (),
        snapshot_every: int | None = None,
        overwrite: bool = False,
        metadata: Mapping[str, Any] | None = None,
        keep_snapshots: int | None = None,
        detect_failures: bool | None = None,
    ) -> None:
        super().__init__(0)
        at = [int(s) for s in snapshot_at_steps]
        if keep_snapshots is not None and (
            isinstance(keep_snapshots, bool)
            or not isinstance(keep_snapshots, int)
            or keep_snapshots < 1
        ):
            raise _UsageError(f"keep_snapshots must be an int >= 1, got {keep_snapshots!r}")
        if keep_snapshots is not None and snapshot_every is None:
            raise _UsageError(
                "keep_snapshots keeps the first and last periodic snapshots; "
                "pass snapshot_every=N with it"
            )
        if any(s < 1 for s in at):
            raise _UsageError(f"snapshot_at_steps must be >= 1, got {sorted(at)}")
        if snapshot_every is not None and snapshot_every < 1:
            raise _UsageError(f"snapshot_every must be >= 1, got {snapshot_every}")
        if _Path(path).exists() and not overwrite:
            raise _UsageError(f"{path} exists; pass overwrite=True to replace it")
        self.path = _Path(path)
        self._at, self._every = at, snapshot_every
        self._overwrite, self._metadata = overwrite, metadata
        self._keep, self._detect = keep_snapshots, detect_failures
        self._rec: _Recorder | None = None

    @property
    def snapshot_names(self) -> list[str]:
        """Names of the snapshots in the file, oldest first (flight mode: those kept)."""
        return [] if self._rec is None else self._rec.snapshot_names

    @property
    def failure(self) -> dict[str, Any] | None:
        """The run's failure record, or ``None`` while none (also after training ends)."""
        return None if self._rec is None else self._rec.failure

    def mark_failure(self, reason: str) -> None:
        """Record that the run failed here, for a reason of your own (a check you wrote).

        Call it from a callback of your own during ``learn()`` (e.g. in a
        ``CallbackList`` after this one). The failure record names the step, the update
        and the newest snapshot before it; periodic snapshots stop and none is dropped.

        Args:
            reason: one line saying what went wrong.
        """
        if self._rec is None:
            raise _UsageError("mark_failure() is for a run in progress: call it during learn()")
        self._rec.mark_failure(reason)

    def _init_callback(self) -> None:
        if self._rec is None:
            self._rec = _Recorder(
                self.model,
                self.path,
                snapshot_at=self._at,
                snapshot_every=self._every,
                overwrite=self._overwrite,
                metadata=self._metadata,
                keep_snapshots=self._keep,
                detect_failures=self._detect,
            )

    def _on_rollout_start(self) -> None:
        assert self._rec is not None
        self._rec.rollout_start()

    def _on_rollout_end(self) -> None:
        assert self._rec is not None
        self._rec.at_boundary()  # a snapshot due at a rollout's last step: before train()

    def _on_step(self) -> bool:
        assert self._rec is not None
        self._rec.step(self.locals)
        return True

    def _on_training_end(self) -> None:
        if self._rec is not None:
            self._rec.close()


# --------------------------------------------------------------------------------------------
# resume and verify


@dataclasses.dataclass
class Resumed:
    """What :func:`resume` did.

    Attributes:
        model: the algorithm, trained to the end of the recording.
        snapshot: the snapshot it started from.
        verified_steps: env steps (VecEnv steps) verified against the recording.
        verified_updates: ``train()`` calls verified against the recording.
    """

    model: Any
    snapshot: str
    verified_steps: int
    verified_updates: int


class _Replay(_ReplayCore):
    def _where(self) -> dict[str, Any]:
        return {"stream": F.STEPS, "row": self.step_count, "episode": None, "k": None}

    def check_step(self, local: Mapping[str, Any]) -> None:
        __tracebackhide__ = True
        rows = self._next_step_rows()
        i = self.step_count
        where = self._where()
        for col, v in _step_values(local).items():
            if col not in rows.stream.columns:
                continue
            expected, _ = rows.get(col, i)
            self._v.check(col, expected, v, logical=rows.stream.logical_dtype(col), **where)
        self.step_count += 1
        self.verified_steps += 1


class _VerifyCallback(_BaseCallback):
    def __init__(self, replay: _Replay) -> None:
        super().__init__(0)
        self.replay = replay

    def _on_step(self) -> bool:
        self.replay.check_step(self.locals)
        return True


def resume(
    path: str | os.PathLike[str] | _Recording,
    snapshot_id: str | int | None,
    algo: type[_BaseAlgorithm],
    env_fn: Callable[[], Any],
    *,
    total_timesteps: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    device: str = "cpu",
    rules: Any = None,
    ignore: Iterable[str] = (),
    verify: bool = True,
) -> Resumed:
    """Rebuild the recorded algorithm, restore a snapshot and train on, verifying each step.

    Args:
        path: the recording (from :class:`ReplaykitCallback`).
        snapshot_id: snapshot name, index, or ``None`` for the first.
        algo: the algorithm class (``PPO``, ``SAC``, ...) the recording used.
        env_fn: builds the env exactly as the recording did (a VecEnv, a gymnasium env or
            an env id: what was passed to the algorithm).
        total_timesteps: stop at this ``num_timesteps`` (default: where the run stopped).
        overrides: constructor arguments the recording could not hold as data (a
            callable schedule, action noise, a custom class), or deliberate changes.
        device: the torch device to build the algorithm on.
        rules: per-key tolerances; bit-exact by default.
        ignore: fnmatch patterns of keys never compared.
        verify: check file checksums.

    Returns:
        A :class:`Resumed` with the model and the verified counts.

    Raises:
        DivergenceError: the first step or update value that differs from the recording.
    """
    with _restoring(path, verify) as (rec, owns):
        info, tree = rec.load_snapshot(snapshot_id)
        extra = (tree.get(F.TREE_EXTRA) or {}).get(_EXTRA_KEY)
        if not isinstance(extra, dict):
            raise _UsageError(
                f"snapshot {info.name!r} of {rec.path} was not written by ReplaykitCallback; "
                "resume() restores Stable-Baselines3 recordings"
            )
        if extra["algo"] != algo.__name__:
            raise _UsageError(
                f"the recording trained {extra['algo']}, not {algo.__name__}; pass "
                f"{extra['algo']} to resume()"
            )
        kwargs = {k: _decode(v) for k, v in extra["hyper"].items()}
        kwargs.update(overrides or {})
        missing = [n for n in extra["unrecorded"] if n not in kwargs]
        if missing:
            raise _UsageError(
                f"the recording could not hold {missing} as data; pass them as "
                "resume(..., overrides={...}) built as in the recorded run"
            )
        policy = kwargs.pop("policy", None) or extra["policy"]
        if policy is None:
            raise _UsageError(
                "the recording used a custom policy class; pass it as overrides={'policy': Cls}"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = algo(policy, env_fn(), device=device, **kwargs)
        if int(model.n_envs) != int(extra["n_envs"]):
            raise _StateMismatchError(
                "vec env", [f"sub-envs: recorded {extra['n_envs']}, got {model.n_envs}"]
            )
        tracked = _tracked(model)
        snapshot.check_tracked_names(tree[F.TREE_TRACKED], tree.get(F.TREE_KINDS) or {}, tracked)
        replay = _Replay(
            rec,
            info,
            tree[F.TREE_RECORDER],
            owns,
            rules=_as_rules(rules),
            ignore=ignore,
        )
        snapshot.restore(tree, tracked, global_rngs=True)
    try:
        _continue(model, replay, extra, total_timesteps)
    finally:
        replay.close()
    return Resumed(model, info.name, replay.verified_steps, replay.verified_updates)


def _continue(model: Any, replay: _Replay, extra: Mapping[str, Any], total: int | None) -> None:
    model.set_logger(_Logger(folder=None, output_formats=[]))
    model.ep_info_buffer = _deque(maxlen=model._stats_window_size)
    model.ep_success_buffer = _deque(maxlen=model._stats_window_size)
    hooks = _Hooks(model, lambda: None, lambda: replay.log_update(**_update_values(model)))
    callback = _VerifyCallback(replay)
    callback.init_callback(model)
    end = int(model._total_timesteps if total is None else total)
    try:
        if isinstance(model, _OffPolicyAlgorithm):
            _finish_off_policy(model, callback, extra)
        else:
            _finish_on_policy(model, callback, extra)
        left = end - int(model.num_timesteps)
        if left > 0:
            model.learn(left, callback=callback, reset_num_timesteps=False)
    finally:
        hooks.remove()


def _finish_on_policy(model: Any, callback: _BaseCallback, extra: Any) -> None:
    """Collect the rest of the interrupted rollout (if any), then ``train()`` as learn() does."""
    buf = model.rollout_buffer
    remaining = int(model.n_steps) - int(extra["rollout_steps"])
    if remaining > 0:
        buf.__dict__["reset"] = lambda: None  # keep the restored, partly filled buffer
        try:
            ok = model.collect_rollouts(model.env, callback, buf, n_rollout_steps=remaining)
        finally:
            buf.__dict__.pop("reset", None)
        if not ok:
            return
    model._update_current_progress_remaining(model.num_timesteps, model._total_timesteps)
    model.train()


def _finish_off_policy(model: Any, callback: _BaseCallback, extra: Any) -> None:
    """Collect the rest of the interrupted rollout (if any), then train as learn() does."""
    tf = model.train_freq
    step_unit = tf.unit == _TrainFrequencyUnit.STEP
    done = int(extra["rollout_steps"] if step_unit else extra["rollout_episodes"])
    timesteps = int(extra["rollout_steps"]) * int(model.n_envs)
    if done < tf.frequency:
        rollout = model.collect_rollouts(
            model.env,
            train_freq=_TrainFreq(tf.frequency - done, tf.unit),
            action_noise=model.action_noise,
            callback=callback,
            learning_starts=model.learning_starts,
            replay_buffer=model.replay_buffer,
        )
        if not rollout.continue_training:
            return
        timesteps += rollout.episode_timesteps
    if model.num_timesteps > 0 and model.num_timesteps > model.learning_starts:
        gradient_steps = model.gradient_steps if model.gradient_steps >= 0 else timesteps
        if gradient_steps > 0:
            model.train(batch_size=model.batch_size, gradient_steps=gradient_steps)
