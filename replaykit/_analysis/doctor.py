"""A determinism preflight: run an env (and a policy) and say what would stop a bit-exact replay.

:func:`doctor` does not only read flags, it *runs* things: it builds the env twice with one
seed and compares every step bit-exactly, restores a mid-episode capture into a freshly built
env and compares the steps after it, watches the process-wide RNGs, the clock and
``os.urandom`` while the env steps, checks every wrapper layer has a state adapter, and calls
the policy's torch model twice on the same input. Each check is one :class:`DoctorCheck` row:
``PASS``, ``WARN`` (replay may still work, but something deserves a look) or ``FAIL`` (a
replay will diverge, or a snapshot cannot be taken), each with the fix.

Example:
    >>> import gymnasium as gym
    >>> report = doctor(lambda: gym.make("CartPole-v1"), steps=20)
    >>> report.ok, report.checks[0].status
    (True, 'PASS')
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xxhash

from replaykit.errors import UsageError

__all__ = ["FAIL", "PASS", "WARN", "DoctorCheck", "DoctorReport", "doctor"]

PASS = "PASS"
WARN = "WARN"
FAIL = "FAIL"

# The clock and entropy sources watched while the env steps (module, attribute).
_WATCHED: tuple[tuple[Any, str], ...] = (
    (time, "time"),
    (time, "time_ns"),
    (time, "perf_counter"),
    (time, "perf_counter_ns"),
    (time, "monotonic"),
    (time, "monotonic_ns"),
    (os, "urandom"),
)


@dataclass
class DoctorCheck:
    """One row of a :class:`DoctorReport`.

    Attributes:
        name: what was checked.
        status: ``"PASS"``, ``"WARN"`` or ``"FAIL"``.
        detail: what was found, with the evidence.
        fix: what to do about it (empty for a pass).
    """

    name: str
    status: str
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


@dataclass
class DoctorReport:
    """What :func:`doctor` found.

    Attributes:
        env: the env's id (or class name).
        seed: the seed both runs used.
        steps: the steps each run took.
        checks: one row per check, in the order they ran.
        flags: torch's determinism settings at the time (recorded, for the report).

    Example:
        >>> r = DoctorReport("CartPole-v1", 0, 10, [DoctorCheck("x", FAIL, "found", "fix it")])
        >>> r.ok, r.check("x").fix
        (False, 'fix it')
    """

    env: str
    seed: int
    steps: int
    checks: list[DoctorCheck] = field(default_factory=list)
    flags: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether no check failed (warnings allowed)."""
        return not any(c.status == FAIL for c in self.checks)

    def check(self, name: str) -> DoctorCheck:
        """Return the row named ``name``.

        Raises:
            KeyError: there is no such row.
        """
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return {
            "env": self.env,
            "seed": self.seed,
            "steps": self.steps,
            "ok": self.ok,
            "checks": [c.to_json() for c in self.checks],
            "torch_flags": self.flags,
        }


# --------------------------------------------------------------------------------------------
# one run


def _leaves(x: Any, prefix: str) -> Iterator[tuple[str, np.ndarray]]:
    """Flatten an observation or action into ``(key, array)`` leaves (dicts by sorted key)."""
    if isinstance(x, dict):
        for k in sorted(x, key=str):
            yield from _leaves(x[k], f"{prefix}.{k}")
    elif isinstance(x, (tuple, list)) and not _is_number_list(x):
        for i, v in enumerate(x):
            yield from _leaves(v, f"{prefix}[{i}]")
    else:
        arr = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
        yield prefix, arr


def _is_number_list(x: Any) -> bool:
    return all(isinstance(v, (int, float, np.generic)) for v in x)


def _digest(arr: np.ndarray) -> str:
    h = xxhash.xxh3_64()
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


@dataclass
class _Step:
    """Digests of what one step produced, by key."""

    digests: dict[str, str]
    values: dict[str, np.ndarray]


@dataclass
class _Run:
    steps: list[_Step] = field(default_factory=list)
    actions: list[Any] = field(default_factory=list)
    needs_reset: list[bool] = field(default_factory=list)
    capture: Any = None  # (chain tree, global rngs) at the capture step
    global_draws: dict[str, int] = field(default_factory=dict)  # source -> first step
    clock_calls: dict[str, int] = field(default_factory=dict)  # function -> first step
    error: str | None = None


def _record_step(out: _Run, action: Any, result: tuple[Any, ...]) -> None:
    obs, reward, terminated, truncated, _ = result
    items = [
        *_leaves(action, "action"),
        *_leaves(obs, "obs"),
        ("reward", np.asarray(reward)),
        ("terminated", np.asarray(bool(terminated))),
        ("truncated", np.asarray(bool(truncated))),
    ]
    out.steps.append(
        _Step({k: _digest(v) for k, v in items}, {k: np.array(v, copy=True) for k, v in items})
    )


def _global_state() -> dict[str, Any]:
    import torch

    np_state = np.random.get_state(legacy=False)
    return {
        "python random": random.getstate(),
        "numpy global RNG": (
            np_state["state"]["key"].tobytes(),
            np_state["state"]["pos"],
            np_state["has_gauss"],
        ),
        "torch CPU RNG": torch.get_rng_state().numpy().tobytes(),
    }


@contextmanager
def _watch_clock(calls: dict[str, int], step: Callable[[], int]) -> Iterator[None]:
    """Count calls of the clock and entropy functions on this thread while the env steps."""
    me = threading.get_ident()
    saved = [(mod, name, getattr(mod, name)) for mod, name in _WATCHED if hasattr(mod, name)]

    def wrap(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def watched(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() == me:
                calls.setdefault(label, step())
            return fn(*args, **kwargs)

        return watched

    for mod, name, fn in saved:
        setattr(mod, name, wrap(f"{mod.__name__}.{name}", fn))
    try:
        yield
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)


def _seed_globals(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def _run(
    env: Any,
    act: Callable[[Any], Any],
    *,
    seed: int,
    steps: int,
    capture_at: int | None,
    watch: bool,
) -> _Run:
    """Reset with ``seed`` and take ``steps`` steps, resetting (unseeded) when an episode ends."""
    from replaykit._state.envs import capture_chain
    from replaykit._state.rng import capture_global_rngs

    out = _Run()
    t = 0
    obs, _ = env.reset(seed=seed)
    needs_reset = False
    for t in range(steps):
        if t == capture_at:
            try:
                out.capture = (capture_chain(env), capture_global_rngs(), needs_reset)
            except Exception as exc:  # a capture that fails is a finding, not a crash
                out.error = f"{type(exc).__name__}: {exc}"
        if needs_reset:
            obs, _ = env.reset()
        action = act(obs)
        out.actions.append(action)
        out.needs_reset.append(needs_reset)
        before = _global_state() if watch else None
        if watch:
            with _watch_clock(out.clock_calls, lambda t=t: t):  # type: ignore[misc]
                result = env.step(action)
        else:
            result = env.step(action)
        if before is not None:
            after = _global_state()
            for k, v in before.items():
                if after[k] != v:
                    out.global_draws.setdefault(k, t)
        _record_step(out, action, result)
        obs = result[0]
        needs_reset = bool(result[2] or result[3])
    return out


def _first_difference(a: list[_Step], b: list[_Step], offset: int = 0) -> str | None:
    for i, (sa, sb) in enumerate(zip(a, b, strict=False)):
        for key in sa.digests:
            if sb.digests.get(key) != sa.digests[key]:
                va, vb = sa.values[key], sb.values.get(key)
                return f"step {i + offset}, {key}: {_short(va)} vs {_short(vb)}"
    if len(a) != len(b):
        return f"runs took {len(a)} and {len(b)} steps"
    return None


def _short(v: np.ndarray | None) -> str:
    if v is None:
        return "(missing)"
    if v.size == 1:
        return repr(v.reshape(-1)[0].item())
    flat = v.reshape(-1)
    return f"{v.dtype}{list(v.shape)} [{', '.join(repr(x.item()) for x in flat[:3])}, ...]"


# --------------------------------------------------------------------------------------------
# the checks


def _env_name(env: Any) -> str:
    spec = getattr(env, "spec", None)
    if spec is not None and getattr(spec, "id", None):
        return str(spec.id)
    return type(env.unwrapped).__name__


def _policy_actor(policy: Any, env: Any, seed: int) -> tuple[Callable[[Any], Any], Any]:
    """``(act, policy object)`` for a policy factory, or the seeded action space when ``None``."""
    if policy is None:
        space = env.action_space
        space.seed(seed)
        return (lambda obs: space.sample()), None
    obj = policy(env, seed)
    if hasattr(obj, "act"):
        return obj.act, obj
    if callable(obj):
        return obj, obj
    raise UsageError(
        f"policy factory returned {type(obj).__name__}; expected an object with act(obs) or a "
        "callable obs -> action"
    )


def _space_rng_seeded(space: Any) -> bool:
    return getattr(space, "_np_random", None) is not None


def _check_chain(env: Any) -> list[DoctorCheck]:
    from replaykit._state.envs import chain_layers, find_env_adapter, find_wrapper_adapter

    layers = chain_layers(env)
    missing = []
    names = []
    for layer in layers[:-1]:
        name = type(layer).__name__
        if name == "RecordingWrapper" or getattr(type(layer), "_replaykit_transparent", False):
            continue
        names.append(name)
        if find_wrapper_adapter(layer) is None:
            missing.append(f"{type(layer).__module__}.{type(layer).__qualname__}")
    rows = []
    if missing:
        rows.append(
            DoctorCheck(
                "wrapper adapters",
                FAIL,
                f"no state adapter for {', '.join(missing)}: a snapshot cannot capture it",
                "replaykit.register_stateless_wrapper(Cls) if it holds no state, else "
                "replaykit.register_wrapper_adapter(Cls, adapter)",
            )
        )
    else:
        listed = ", ".join(names) if names else "no wrappers"
        rows.append(DoctorCheck("wrapper adapters", PASS, f"every layer has one ({listed})"))
    base = env.unwrapped
    adapter = find_env_adapter(base)
    if adapter is None:
        rows.append(
            DoctorCheck(
                "env adapter",
                WARN,
                f"no state adapter for {type(base).__name__}: snapshots restore by replaying "
                "from the episode's reset (correct for a deterministic env, slower)",
                "replaykit.register_env_adapter(EnvCls, adapter) for direct restores",
            )
        )
    else:
        rows.append(DoctorCheck("env adapter", PASS, f"{adapter.name}"))
    return rows


def _check_spaces(env: Any, seeded_before: dict[str, bool], default_policy: bool) -> DoctorCheck:
    unseeded = []
    for name in ("action_space", "observation_space"):
        if not seeded_before[name] and _space_rng_seeded(getattr(env, name)):
            unseeded.append(name)
    if unseeded:
        return DoctorCheck(
            "space RNGs",
            WARN,
            f"{' and '.join(unseeded)} drew from an RNG that reset(seed=...) did not seed "
            "(it seeded itself from OS entropy)",
            f"call env.{unseeded[0]}.seed(seed) once after building the env",
        )
    how = "seeded by doctor for its random policy" if default_policy else "not drawn unseeded"
    return DoctorCheck("space RNGs", PASS, f"action and observation spaces {how}")


def _sticky(env: Any) -> float | None:
    for layer in _layers(env):
        p = getattr(layer, "repeat_action_probability", None)
        if p is None:
            p = getattr(layer, "_repeat_action_probability", None)
        if isinstance(p, (int, float)):
            return float(p)
    spec = getattr(env, "spec", None)
    kwargs = getattr(spec, "kwargs", None) or {}
    p = kwargs.get("repeat_action_probability")
    return float(p) if isinstance(p, (int, float)) else None


def _layers(env: Any) -> list[Any]:
    from replaykit._state.envs import chain_layers

    return list(chain_layers(env))


def _check_sticky(env: Any) -> DoctorCheck:
    p = _sticky(env)
    if p is None or p == 0:
        return DoctorCheck("sticky actions", PASS, "off" if p == 0 else "not an option of this env")
    return DoctorCheck(
        "sticky actions",
        WARN,
        f"repeat_action_probability={p:g}: the env repeats the previous action at random "
        "(its RNG is captured in snapshots, so replays reproduce it; behaviour differs from "
        "a run with another seed or setting)",
        "gym.make(..., repeat_action_probability=0.0) for a deterministic env",
    )


def _check_global(run: _Run) -> DoctorCheck:
    if not run.global_draws:
        return DoctorCheck(
            "global RNGs in step()", PASS, "Python, NumPy and torch global RNGs untouched"
        )
    found = ", ".join(f"{k} (first at step {s})" for k, s in sorted(run.global_draws.items()))
    return DoctorCheck(
        "global RNGs in step()",
        FAIL,
        f"step() drew from {found}: reset(seed=...) does not control it, so two runs with one "
        "env seed differ unless every global RNG is seeded too",
        "draw from self.np_random in the env (seeded by reset(seed=...)) instead of "
        "np.random / random / torch global functions",
    )


def _check_clock(run: _Run) -> DoctorCheck:
    if not run.clock_calls:
        return DoctorCheck("clock and OS entropy in step()", PASS, "not read")
    found = ", ".join(f"{k}() (first at step {s})" for k, s in sorted(run.clock_calls.items()))
    return DoctorCheck(
        "clock and OS entropy in step()",
        WARN,
        f"step() called {found}: anything derived from it (infos, seeds) will not replay",
        "keep wall-clock values out of observations and rewards; derive seeds from the run's seed",
    )


def _check_torch() -> tuple[list[DoctorCheck], dict[str, Any]]:
    import torch

    from replaykit.determinism import determinism_flags

    flags = determinism_flags()
    cuda = bool(torch.cuda.is_available())
    rows = []
    if flags["cudnn_benchmark"]:
        rows.append(
            DoctorCheck(
                "torch: cudnn.benchmark",
                FAIL if cuda else WARN,
                "on: cuDNN picks kernels by timing them, which can differ run to run",
                "torch.backends.cudnn.benchmark = False (replaykit.enable_determinism())",
            )
        )
    else:
        rows.append(DoctorCheck("torch: cudnn.benchmark", PASS, "off"))
    if flags["deterministic_algorithms"]:
        rows.append(DoctorCheck("torch: deterministic algorithms", PASS, "on"))
    elif cuda:
        rows.append(
            DoctorCheck(
                "torch: deterministic algorithms",
                WARN,
                "off on a CUDA machine: some CUDA kernels (scatter_add, index_add, ...) are "
                "non-deterministic",
                "replaykit.enable_determinism(seed) at the start of the program",
            )
        )
    else:
        rows.append(
            DoctorCheck(
                "torch: deterministic algorithms", PASS, "off; not needed on CPU (no CUDA here)"
            )
        )
    cublas = flags["cublas_workspace_config"]
    if cublas or not cuda:
        what = f"CUBLAS_WORKSPACE_CONFIG={cublas}" if cublas else "unset; not needed without CUDA"
        rows.append(DoctorCheck("torch: cuBLAS workspace", PASS, what))
    else:
        rows.append(
            DoctorCheck(
                "torch: cuBLAS workspace",
                WARN,
                "CUBLAS_WORKSPACE_CONFIG unset: cuBLAS matmuls may not be reproducible",
                "export CUBLAS_WORKSPACE_CONFIG=:4096:8 before starting Python",
            )
        )
    rows.append(
        DoctorCheck(
            "torch: threads",
            PASS,
            f"{flags['num_threads']} intra-op, {flags['num_interop_threads']} inter-op (recorded "
            "in provenance; replay with the same count)",
        )
    )
    return rows, flags


def _modules_of(obj: Any, depth: int = 0) -> list[tuple[str, Any]]:
    """``(name, module)`` for the torch modules a policy object holds (two levels deep)."""
    import torch

    if obj is None or depth > 2:  # noqa: PLR2004
        return []
    if isinstance(obj, torch.nn.Module):
        return [(type(obj).__name__, obj)]
    found: list[tuple[str, Any]] = []
    state = getattr(obj, "state_objects", None)
    items = dict(state()) if callable(state) else {}
    with suppress(TypeError):
        items.update(vars(obj))
    for name, v in items.items():
        if isinstance(v, torch.nn.Module):
            if all(v is not m for _, m in found):
                found.append((str(name), v))
        elif not isinstance(v, (str, bytes, int, float, np.ndarray)) and hasattr(v, "__dict__"):
            for sub_name, m in _modules_of(v, depth + 1):
                if all(m is not f for _, f in found):
                    found.append((f"{name}.{sub_name}", m))
    return found


def _hook_inputs(modules: list[tuple[str, Any]]) -> tuple[dict[str, Any], list[Any]]:
    """Keep each module's first call's inputs (detached copies), to call it again later."""
    import torch

    inputs: dict[str, Any] = {}
    handles = []
    for name, m in modules:

        def pre(mod: Any, args: Any, name: str = name) -> None:
            if name not in inputs:
                inputs[name] = tuple(
                    a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args
                )

        handles.append(m.register_forward_pre_hook(pre))
    return inputs, handles


def _check_models(modules: list[tuple[str, Any]], inputs: dict[str, Any]) -> DoctorCheck:
    import torch

    if not modules:
        return DoctorCheck("policy model", PASS, "no torch model on the policy (nothing to check)")
    problems = []
    checked = []
    for name, m in modules:
        args = inputs.get(name)
        if args is None:
            continue
        saved = torch.get_rng_state()
        try:
            with torch.no_grad():
                out1, out2 = m(*args), m(*args)
        except Exception:  # a model that cannot be re-called as it was: not this check's concern
            continue
        finally:
            torch.set_rng_state(saved)
        checked.append(name)
        same = all(
            torch.equal(x, y)
            for x, y in zip(_tensors(out1), _tensors(out2), strict=False)
            if isinstance(x, torch.Tensor)
        )
        if not same:
            on = [
                f"{sub} ({type(s).__name__}, p={getattr(s, 'p', '?')})"
                for sub, s in m.named_modules()
                if "Dropout" in type(s).__name__ and s.training
            ]
            why = f"dropout in training mode: {', '.join(on)}" if on else "stochastic layers"
            problems.append(f"{name} gives different outputs for the same input ({why})")
    if problems:
        return DoctorCheck(
            "policy model",
            FAIL,
            "; ".join(problems),
            "put the model in evaluation mode (its `eval` method) before acting, and in training "
            "mode only around updates",
        )
    if not checked:
        return DoctorCheck("policy model", PASS, "the policy's model was not called during the run")
    return DoctorCheck(
        "policy model", PASS, f"{', '.join(checked)}: same input, same output (bit-exact)"
    )


def _tensors(out: Any) -> list[Any]:
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in _tensors(out[k])]
    return [out]


def _restore_check(env_fn: Callable[[], Any], run: _Run, seed: int, k: int) -> DoctorCheck:
    """Restore the capture taken at step ``k`` into a fresh env and re-apply the same actions."""
    from replaykit._state.envs import restore_chain
    from replaykit._state.rng import restore_global_rngs

    name = "snapshot/restore mid-episode"
    if run.error is not None:
        return DoctorCheck(
            name,
            FAIL,
            f"capturing the env at step {k} failed: {run.error}",
            "register adapters for the layers named above",
        )
    if run.capture is None:
        return DoctorCheck(name, WARN, f"the run ended before step {k}; nothing restored")
    tree, rngs, _ = run.capture
    env = env_fn()
    try:
        start = k
        if tree["env"] is None:
            start = 0  # no env adapter: replay from reset, as recordings do
            env.reset(seed=seed)
        else:
            env.reset(seed=seed)
            restore_chain(env, tree)
            restore_global_rngs(rngs)
        replayed = _Run()
        for t in range(start, len(run.actions)):
            if run.needs_reset[t]:
                env.reset()
            result = env.step(run.actions[t])
            _record_step(replayed, run.actions[t], result)
    except Exception as exc:
        return DoctorCheck(
            name,
            FAIL,
            f"restoring at step {k} failed: {type(exc).__name__}: {exc}",
            "see the error; register an adapter that captures all of the env's state",
        )
    finally:
        env.close()
    how = (
        f"restored by adapter at step {k}"
        if tree["env"] is not None
        else "no env adapter: re-ran the recorded actions from reset(seed)"
    )
    diff = _first_difference(run.steps[start:], replayed.steps, offset=start)
    if diff is not None:
        return DoctorCheck(
            name,
            FAIL,
            f"{how} in a fresh env, then diverged at {diff}",
            "the env keeps state its adapter does not capture; extend the adapter",
        )
    return DoctorCheck(
        name,
        PASS,
        f"{how} in a fresh env: steps {start}-{len(run.actions) - 1} bit-exact",
    )


def doctor(
    env_fn: Callable[[], Any],
    policy: Callable[[Any, int], Any] | None = None,
    *,
    seed: int = 0,
    steps: int = 200,
) -> DoctorReport:
    """Check that an env (and policy) replay bit-exactly, before a long run is recorded.

    Runs the env twice from ``env_fn()`` with one seed and compares every step (actions,
    observations, rewards, flags) bit-exactly; captures the env chain and global RNGs halfway,
    restores them into a freshly built env and compares the remaining steps; watches
    Python's, NumPy's and torch's global RNGs, the clock and ``os.urandom`` while ``step()``
    runs; checks every wrapper layer has a state adapter, space RNGs are seeded, sticky
    actions, torch's determinism settings, and that the policy's torch model gives the same
    output for the same input (no dropout left on).

    Args:
        env_fn: builds a fresh env (called three times), e.g.
            ``lambda: gym.make("CartPole-v1")``.
        policy: a factory ``policy(env, seed)`` returning an object with ``act(obs)`` (or a
            callable ``obs -> action``), as ``replaykit record --policy module:callable``
            takes; ``None`` samples the env's action space seeded with ``seed``.
        seed: the seed of both runs (env, global RNGs, policy).
        steps: steps per run (at least 2).

    Returns:
        A :class:`DoctorReport`; ``report.ok`` is false when any row is ``FAIL``.

    Raises:
        UsageError: ``steps`` is below 2, ``seed`` is negative, or ``policy`` is not callable.

    Example:
        >>> import gymnasium as gym
        >>> import replaykit
        >>> report = replaykit.doctor(lambda: gym.make("CartPole-v1"), steps=50)
        >>> report.ok
        True
        >>> report.check("same seed, two runs").status
        'PASS'
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:  # noqa: PLR2004
        raise UsageError(f"steps must be an int >= 2, got {steps!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UsageError(f"seed must be a non-negative int, got {seed!r}")
    if policy is not None and not callable(policy):
        raise UsageError(
            f"policy must be a factory policy(env, seed), got {type(policy).__name__}; each run "
            "builds a fresh policy (e.g. lambda env, seed: MyPolicy(env, seed))"
        )
    k = steps // 2
    runs = []
    checks: list[DoctorCheck] = []
    env_name = "?"
    modules: list[tuple[str, Any]] = []
    inputs: dict[str, Any] = {}
    seeded_before: dict[str, bool] = {}
    for i in range(2):
        env = env_fn()
        _seed_globals(seed)
        act, obj = _policy_actor(policy, env, seed)
        handles: list[Any] = []
        if i == 0:
            env_name = _env_name(env)
            seeded_before = {
                "action_space": _space_rng_seeded(env.action_space),
                "observation_space": _space_rng_seeded(env.observation_space),
            }
            modules = _modules_of(obj)
            inputs, handles = _hook_inputs(modules)
        try:
            runs.append(
                _run(
                    env, act, seed=seed, steps=steps, capture_at=k if i == 0 else None, watch=i == 0
                )
            )
        finally:
            for h in handles:
                h.remove()
        if i == 0:
            checks.extend(_check_chain(env))
            checks.append(_check_spaces(env, seeded_before, policy is None))
            checks.append(_check_sticky(env))
        env.close()
    diff = _first_difference(runs[0].steps, runs[1].steps)
    if diff is None:
        two = DoctorCheck("same seed, two runs", PASS, f"{steps} steps bit-exact")
    else:
        two = DoctorCheck(
            "same seed, two runs",
            FAIL,
            f"two runs with seed {seed} differ first at {diff}",
            "see the rows below for the source (global RNGs, clock, unseeded spaces, model)",
        )
    checks.insert(0, two)
    checks.insert(1, _restore_check(env_fn, runs[0], seed, k))
    checks.append(_check_global(runs[0]))
    checks.append(_check_clock(runs[0]))
    checks.append(_check_models(modules, inputs))
    torch_rows, flags = _check_torch()
    checks.extend(torch_rows)
    return DoctorReport(env=env_name, seed=seed, steps=steps, checks=checks, flags=flags)
