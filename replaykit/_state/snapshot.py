"""Assemble a snapshot's state tree from its parts, and restore it.

A snapshot tree has these top-level keys (assembled by :func:`build`):

``env``       the env chain below the recorder (:func:`replaykit._state.envs.capture_chain`);
              for a vector env its parts, ``{}`` for a recording without an env
``rngs``      Python ``random``, NumPy global, torch CPU and CUDA generator states
``tracked``   ``{name: state}`` of every object given to ``track`` (models, optimizers, ...)
``kinds``     ``{name: "module.QualName"}`` of those objects, for clear mismatch errors
``recorder``  the recorder's position: step, episode, step in episode, updates, ...
``fallback``  for envs without an adapter: the chain state just before the episode's reset
``extra``     a user tree passed to ``snapshot(extra=...)``
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from replaykit._format import layout as F
from replaykit.errors import CaptureError, StateMismatchError

__all__ = [
    "build",
    "capture_tracked",
    "check_tracked_names",
    "kind_of",
    "restore",
    "restore_tracked",
]


def kind_of(obj: Any) -> str:
    """Return ``"module.QualName"`` of ``obj``'s class."""
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
    """Capture the state of one tracked object (errors name it ``name``)."""
    from replaykit._state import modelstate, rng

    try:
        if _is_generator(obj):
            return rng.capture_generator(obj)
        return modelstate.capture_object(obj)
    except CaptureError as exc:
        raise CaptureError(f"tracked {name!r}: {exc}") from None


def restore_tracked(obj: Any, state: Any, name: str) -> None:
    """Restore one tracked object from its captured ``state``."""
    from replaykit._state import modelstate, rng

    try:
        if _is_generator(obj):
            rng.restore_generator(obj, state)
        else:
            modelstate.restore_object(obj, state)
    except StateMismatchError as exc:
        # Two tracked objects of one class (q and target nets) must be told apart.
        raise StateMismatchError(
            f"tracked {name!r} ({exc.what})",
            [_under(name, line) for line in exc.mismatches],
            fix=exc.fix,
        ) from None


# Mismatch lines that name an aspect of the object itself, not a path inside it.
_ASPECTS = frozenset({"class", "kind", "enabled", "submodules", "names", "filled", "values"})


def _under(name: str, line: str) -> str:
    """Put a mismatch line under a tracked object's name.

    A line about a path inside the object gets the path joined on (``q.net.0.weight: ...``,
    ``buffer/obs: ...``); any other line is prefixed (``optimizer: param groups: ...``).
    """
    if line.startswith("/"):
        return f"{name}{line}"
    head, sep, _ = line.partition(": ")
    if sep and head and " " not in head and head not in _ASPECTS:
        return f"{name}.{line}"
    return f"{name}: {line}"


def build(
    env: Any,
    tracked: Mapping[str, Any],
    recorder: Mapping[str, Any],
    *,
    fallback: Any = None,
    extra: Any = None,
) -> dict[str, Any]:
    """Assemble a snapshot tree: the one place its top-level keys are put together.

    Args:
        env: the env's captured state (a chain, a vector env's parts, ``{}`` for none).
        tracked: ``{name: object}`` to capture.
        recorder: the recorder's position.
        fallback: the replay-from-reset start states (envs without an adapter).
        extra: the user's tree given to ``snapshot(extra=...)``.
    """
    from replaykit._state import rng

    return {
        F.TREE_ENV: env,
        F.TREE_RNGS: rng.capture_global_rngs(),
        F.TREE_TRACKED: {name: capture_tracked(obj, name) for name, obj in tracked.items()},
        F.TREE_KINDS: {name: kind_of(obj) for name, obj in tracked.items()},
        F.TREE_RECORDER: dict(recorder),
        F.TREE_FALLBACK: fallback,
        F.TREE_EXTRA: extra,
    }


def restore(tree: Mapping[str, Any], tracked: Mapping[str, Any], *, global_rngs: bool) -> None:
    """Restore the tracked objects and (with ``global_rngs``) the global RNGs from ``tree``.

    The objects are restored from the tree without copies: pass a tree just read from a
    file, which nothing else holds. Check the names first with :func:`check_tracked_names`.
    """
    from replaykit._state import rng
    from replaykit._state.modelstate import sharing

    with sharing():
        for name, obj in tracked.items():
            restore_tracked(obj, tree[F.TREE_TRACKED][name], name)
    if global_rngs and tree.get(F.TREE_RNGS) is not None:
        rng.restore_global_rngs(tree[F.TREE_RNGS])


def read_targets(
    tracked: Mapping[str, Any],
) -> Callable[[Mapping[str, tuple[np.dtype[Any], tuple[int, ...]]]], dict[str, np.ndarray]]:
    """Where a snapshot's large arrays may be read straight into the tracked objects' memory.

    The returned function takes ``{tree path: (dtype, shape)}`` of the snapshot's large arrays
    and answers ``{tree path: array}``: views of the tracked modules' CPU tensors with exactly
    that dtype and shape, for the reader to fill (no second copy). A module is offered only
    when every large array the snapshot holds for it fits one of its tensors. The restore
    that follows checks everything as usual; if it raises, those modules hold undefined
    values.
    """
    from replaykit._state import modelstate

    def pick(offered: Mapping[str, tuple[np.dtype[Any], tuple[int, ...]]]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for name, obj in tracked.items():
            live = modelstate.module_read_targets(obj)
            if not live:
                continue
            prefix = f"/{F.TREE_TRACKED}/{name}/"
            mine = {p: v for p, v in offered.items() if p.startswith(prefix)}
            found: dict[str, np.ndarray] = {}
            for path, (dtype, shape) in mine.items():
                rest = path[len(prefix) :]
                arr = (
                    live.get(rest[len("state_dict/") :]) if rest.startswith("state_dict/") else None
                )
                if arr is None or arr.dtype != dtype or arr.shape != shape:
                    break
                found[path] = arr
            else:
                out.update(found)
        return out

    return pick


def check_tracked_names(
    saved: Mapping[str, Any], kinds: Mapping[str, str], given: Mapping[str, Any]
) -> None:
    """Check that the objects ``given`` to a restore are those the snapshot tracks.

    Raises:
        StateMismatchError: names missing on either side, or a different class.
    """
    problems = []
    for name in saved:
        if name not in given:
            problems.append(
                f"snapshot tracks {name!r} ({kinds.get(name, '?')}) but restore got none"
            )
    for name in given:
        if name not in saved:
            problems.append(f"restore got {name!r} but the snapshot does not track it")
        elif kinds.get(name) and kinds[name].rsplit(".", 1)[-1] != type(given[name]).__name__:
            # Only the class name: a class recorded from a script's __main__ is the same
            # class when a test imports it from its module.
            problems.append(f"{name!r}: recorded a {kinds[name]}, got a {kind_of(given[name])}")
    if problems:
        raise StateMismatchError("tracked objects", problems)
