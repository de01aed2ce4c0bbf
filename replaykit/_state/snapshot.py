"""Assemble a snapshot's state tree from its parts, and restore it.

A snapshot tree has these top-level keys (written by :func:`capture`):

``env``       the env chain below the recorder (:func:`replaykit._state.envs.capture_chain`)
``rngs``      Python ``random``, NumPy global, torch CPU and CUDA generator states
``tracked``   ``{name: state}`` of every object given to ``track`` (models, optimizers, ...)
``kinds``     ``{name: "module.QualName"}`` of those objects, for clear mismatch errors
``recorder``  the recorder's position: step, episode, step in episode, updates, ...
``fallback``  for envs without an adapter: the chain state just before the episode's reset
``extra``     a user tree passed to ``snapshot(extra=...)``
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np

from replaykit.errors import CaptureError, StateMismatchError

__all__ = ["capture", "capture_tracked", "restore_tracked", "kind_of"]


def kind_of(obj: Any) -> str:
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}"


def _is_generator(obj: Any) -> bool:
    import torch

    return isinstance(
        obj,
        (
            np.random.Generator,
            np.random.BitGenerator,
            np.random.RandomState,
            random.Random,
            torch.Generator,
        ),
    )


def capture_tracked(obj: Any, name: str) -> Any:
    from replaykit._state import modelstate, rng

    try:
        if _is_generator(obj):
            return rng.capture_generator(obj)
        return modelstate.capture_object(obj)
    except CaptureError as exc:
        raise CaptureError(f"tracked {name!r}: {exc}") from None


def restore_tracked(obj: Any, state: Any, name: str) -> None:
    from replaykit._state import modelstate, rng

    if _is_generator(obj):
        rng.restore_generator(obj, state)
    else:
        modelstate.restore_object(obj, state)


def capture(
    env: Any,
    tracked: Mapping[str, Any],
    recorder: dict[str, Any],
    *,
    fallback: Any = None,
    extra: Any = None,
    global_rngs: bool = True,
) -> dict[str, Any]:
    """Capture everything needed to continue from here."""
    from replaykit._state import envs as envstate
    from replaykit._state import rng

    chain = envstate.capture_chain(env)
    return {
        "env": chain,
        "rngs": rng.capture_global_rngs() if global_rngs else None,
        "tracked": {name: capture_tracked(obj, name) for name, obj in tracked.items()},
        "kinds": {name: kind_of(obj) for name, obj in tracked.items()},
        "recorder": dict(recorder),
        "fallback": fallback if chain.get("env") is None else None,
        "extra": extra,
    }


def check_tracked_names(
    saved: Mapping[str, Any], kinds: Mapping[str, str], given: Mapping[str, Any]
) -> None:
    problems = []
    for name in saved:
        if name not in given:
            problems.append(
                f"snapshot tracks {name!r} ({kinds.get(name, '?')}) but restore got none"
            )
    for name in given:
        if name not in saved:
            problems.append(f"restore got {name!r} but the snapshot does not track it")
        elif kinds.get(name) and kinds[name].rsplit(".", 1)[-1] != type(given[name]).__qualname__:
            # Only the class name: a class recorded from a script's __main__ is the same
            # class when a test imports it from its module.
            problems.append(f"{name!r}: recorded a {kinds[name]}, got a {kind_of(given[name])}")
    if problems:
        raise StateMismatchError("tracked objects", problems)
