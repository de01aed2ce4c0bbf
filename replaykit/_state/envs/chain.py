"""Capture and restore a whole wrapper chain: every layer, the env, its RNG and space RNGs."""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from replaykit._state.envs.generators import (
    capture_env_generator,
    capture_space_rng,
    restore_env_generator,
    restore_space_rng,
)
from replaykit._state.envs.registry import find_env_adapter, find_wrapper_adapter
from replaykit._state.envs.values import class_name
from replaykit.errors import (
    REGISTER_ADAPTER_FIX,
    CaptureError,
    RestoreError,
    StateMismatchError,
)

__all__ = [
    "CAPTURE_UNKNOWN_WRAPPER",
    "capture_chain",
    "capture_wrappers_and_rngs",
    "chain_layers",
    "restore_chain",
    "restore_wrappers_and_rngs",
    "uncapturable_layer",
]

#: Message template for a wrapper layer that has no adapter.
CAPTURE_UNKNOWN_WRAPPER = (
    "wrapper {cls} has no state adapter, so snapshots cannot capture its state; register one "
    "before recording: replaykit.register_wrapper_adapter({name}, adapter) (see "
    "replaykit.AttrAdapter), or replaykit.register_stateless_wrapper({name}) if it holds no "
    "state between steps"
)

_RECORDING_WRAPPER = "replaykit._session.record.RecordingWrapper"
_TREE_KEYS = {"layers", "env", "env_rng", "spaces"}


def chain_layers(env: Any) -> list[Any]:
    """List the layers of ``env``: wrappers outermost to innermost, then the unwrapped env.

    Example:
        >>> import gymnasium as gym
        >>> [type(x).__name__ for x in chain_layers(gym.make("CartPole-v1"))]
        ['TimeLimit', 'OrderEnforcing', 'PassiveEnvChecker', 'CartPoleEnv']
    """
    layers = []
    current = env
    while isinstance(current, gym.Wrapper):
        layers.append(current)
        current = current.env
    layers.append(current)
    return layers


def _is_transparent(layer: Any) -> bool:
    cls = type(layer)
    return class_name(cls) == _RECORDING_WRAPPER or bool(
        getattr(cls, "_replaykit_transparent", False)
    )


def _wrappers(env: Any) -> list[Any]:
    """Return the captured wrapper layers (transparent ones skipped), outermost first."""
    return [layer for layer in chain_layers(env)[:-1] if not _is_transparent(layer)]


def _capture_spaces(env: Any) -> dict[str, Any]:
    base = env.unwrapped
    out: dict[str, Any] = {
        "action": capture_space_rng(env.action_space, "action_space"),
        "observation": capture_space_rng(env.observation_space, "observation_space"),
    }
    # Wrappers may define their own spaces; the unwrapped env's are separate objects then.
    for key, outer, inner in (
        ("unwrapped_action", env.action_space, base.action_space),
        ("unwrapped_observation", env.observation_space, base.observation_space),
    ):
        out[key] = None if inner is outer else capture_space_rng(inner, f"unwrapped.{key}")
    return out


def uncapturable_layer(env: Any) -> str | None:
    """Say why no snapshot of ``env`` could be taken: the first wrapper with no adapter.

    Checked when a recording starts, so a chain no snapshot could capture is refused
    before the run, not at its first snapshot.

    Returns:
        The :data:`CAPTURE_UNKNOWN_WRAPPER` message for the outermost such wrapper, or
        ``None`` when every wrapper layer has an adapter.

    Example:
        >>> import gymnasium as gym
        >>> uncapturable_layer(gym.make("CartPole-v1")) is None
        True
    """
    for layer in _wrappers(env):
        if find_wrapper_adapter(layer) is None:
            return CAPTURE_UNKNOWN_WRAPPER.format(cls=class_name(layer), name=type(layer).__name__)
    return None


def _register_fix(register: str, cls: type, adapter: str) -> str:
    return REGISTER_ADAPTER_FIX.format(register=register, cls=cls.__name__, adapter=adapter)


def capture_wrappers_and_rngs(env: Any) -> dict[str, Any]:
    """Capture everything :func:`capture_chain` does except the unwrapped env's own state.

    The returned tree has ``"env": None``. Used by the replay-from-reset fallback
    for envs without an adapter.

    Raises:
        CaptureError: a wrapper layer has no adapter, or holds uncapturable values.
    """
    layers = []
    for layer in _wrappers(env):
        adapter = find_wrapper_adapter(layer)
        if adapter is None:
            name = class_name(layer)
            raise CaptureError(CAPTURE_UNKNOWN_WRAPPER.format(cls=name, name=type(layer).__name__))
        layers.append(
            {"class": class_name(layer), "adapter": adapter.name, "state": adapter.capture(layer)}
        )
    base = env.unwrapped
    return {
        "layers": layers,
        "env": None,
        # Read the private field: the np_random property would seed a fresh RNG as a side effect.
        "env_rng": capture_env_generator(getattr(base, "_np_random", None), "env.np_random"),
        "spaces": _capture_spaces(env),
    }


def capture_chain(env: Any) -> dict[str, Any]:
    """Capture the state of ``env`` and every wrapper around it as a state tree.

    Args:
        env: a gymnasium env, usually wrapped (e.g. from ``gym.make``).

    Returns:
        ``{"layers": [...], "env": {...} or None, "env_rng": ..., "spaces": {...}}``;
        ``"env"`` is ``None`` when the unwrapped env has no adapter (replay from
        reset must then reproduce it).

    Raises:
        CaptureError: a wrapper layer has no adapter, or a value cannot be captured.

    Example:
        >>> import gymnasium as gym
        >>> env = gym.make("CartPole-v1")
        >>> _ = env.reset(seed=0)
        >>> tree = capture_chain(env)
        >>> tree["env"]["adapter"]
        'classic_control.CartPole'
    """
    tree = capture_wrappers_and_rngs(env)
    base = env.unwrapped
    adapter = find_env_adapter(base)
    if adapter is not None:
        tree["env"] = {
            "class": class_name(base),
            "adapter": adapter.name,
            "state": adapter.capture(base),
        }
    return tree


def _check_tree(env: Any, state: Any) -> list[Any]:
    if not isinstance(state, dict) or set(state) != _TREE_KEYS:
        found = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise StateMismatchError(
            "env chain", [f"expected keys {sorted(_TREE_KEYS)}, found {found}"]
        )
    live = _wrappers(env)
    saved = state["layers"]
    problems = []
    for i in range(max(len(live), len(saved))):
        expected = saved[i]["class"] if i < len(saved) else "(no layer)"
        found = class_name(live[i]) if i < len(live) else "(no layer)"
        if expected != found:
            problems.append(f"layer {i}: recorded {expected}, got {found}")
    if problems:
        raise StateMismatchError("env wrapper chain", problems)
    fix = ""
    for i, (layer, entry) in enumerate(zip(live, saved, strict=True)):
        adapter = find_wrapper_adapter(layer)
        if adapter is None or adapter.name != entry["adapter"]:
            problems.append(
                f"layer {i} ({entry['class']}): recorded adapter {entry['adapter']!r}, got "
                f"{repr(adapter.name) if adapter is not None else 'none registered'}"
            )
            fix = fix or _register_fix("register_wrapper_adapter", type(layer), entry["adapter"])
    if problems:
        raise StateMismatchError("env wrapper chain", problems, fix=fix)
    return live


def restore_wrappers_and_rngs(env: Any, state: Any) -> None:
    """Restore every wrapper layer, the env RNG and the space RNGs, but not the env itself.

    The replay-from-reset fallback calls this after re-running the env to the
    snapshot step. Layer classes must match exactly.

    Raises:
        StateMismatchError: the wrapper chain or a layer's state does not fit.
    """
    live = _check_tree(env, state)
    for layer, entry in zip(live, state["layers"], strict=True):
        adapter = find_wrapper_adapter(layer)
        if adapter is not None:  # checked by _check_tree; keeps type checkers informed
            adapter.restore(layer, entry["state"])
    base = env.unwrapped
    if state["env_rng"] is None:
        base._np_random = None
    else:
        base._np_random = restore_env_generator(
            getattr(base, "_np_random", None), state["env_rng"], "env.np_random"
        )
    spaces = state["spaces"]
    restore_space_rng(env.action_space, spaces["action"], "action_space")
    restore_space_rng(env.observation_space, spaces["observation"], "observation_space")
    for key, outer, inner in (
        ("unwrapped_action", env.action_space, base.action_space),
        ("unwrapped_observation", env.observation_space, base.observation_space),
    ):
        if (spaces.get(key) is None) != (inner is outer):
            raise StateMismatchError(
                "env spaces", [f"{key}: wrapper and env spaces are shared differently"]
            )
        if spaces.get(key) is not None:
            restore_space_rng(inner, spaces[key], f"unwrapped.{key}")


def restore_chain(env: Any, state: Any) -> None:
    """Restore a tree from :func:`capture_chain` into ``env`` built the same way.

    Args:
        env: a live env with the same wrapper classes (in order) and env class.
        state: the tree :func:`capture_chain` returned.

    Raises:
        RestoreError: the snapshot holds no env state (the env had no adapter);
            replay from reset instead.
        StateMismatchError: wrapper classes, env class or any layer's state differ.
    """
    if not isinstance(state, dict) or "env" not in state:
        raise StateMismatchError(
            "env chain", [f"expected a capture_chain tree, found {type(state).__name__}"]
        )
    saved_env = state["env"]
    base = env.unwrapped
    if saved_env is None:
        raise RestoreError(
            "expected env state in the snapshot, found none "
            f"(env {class_name(base)} had no adapter when captured); "
            "replay from reset, or register an env adapter and record again"
        )
    if saved_env["class"] != class_name(base):
        raise StateMismatchError(
            "env", [f"env class: recorded {saved_env['class']}, got {class_name(base)}"]
        )
    adapter = find_env_adapter(base)
    if adapter is None or adapter.name != saved_env["adapter"]:
        found = repr(adapter.name) if adapter is not None else "none registered"
        raise StateMismatchError(
            "env",
            [f"env adapter: recorded {saved_env['adapter']!r}, got {found}"],
            fix=_register_fix("register_env_adapter", type(base), saved_env["adapter"]),
        )
    # Check the wrappers before touching anything, so a mismatch leaves the env as it was.
    _check_tree(env, state)
    adapter.restore(base, saved_env["state"])
    restore_wrappers_and_rngs(env, state)
