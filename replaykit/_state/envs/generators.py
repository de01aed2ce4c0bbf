"""Capture and restore ``numpy.random.Generator`` and space RNG state exactly."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from replaykit.errors import CaptureError, StateMismatchError

__all__ = [
    "capture_env_generator",
    "capture_space_rng",
    "restore_env_generator",
    "restore_space_rng",
]

# Names are looked up in this table, never imported from data.
_BIT_GENERATORS: dict[str, type[np.random.BitGenerator]] = {
    "PCG64": np.random.PCG64,
    "PCG64DXSM": np.random.PCG64DXSM,
    "MT19937": np.random.MT19937,
    "Philox": np.random.Philox,
    "SFC64": np.random.SFC64,
}


def _copy_state(value: Any) -> Any:
    # Bit-generator states are dicts of ints, strs and (for MT19937) uint32 arrays.
    if isinstance(value, dict):
        return {k: _copy_state(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, np.generic):
        return value.item()
    return value


def capture_env_generator(gen: np.random.Generator | None, what: str) -> dict[str, Any] | None:
    """Capture an env's or a space's ``np_random``, which may be unset.

    Unlike :func:`replaykit.capture_generator` (any registered generator type), this takes
    exactly a ``numpy.random.Generator`` or ``None`` and names ``what`` in its errors.

    Returns:
        ``{"bit_generator": name, "state": bit_generator.state}``, or ``None`` for ``None``.

    Raises:
        CaptureError: ``gen`` is not a Generator, or its bit generator is not a known one.
    """
    if gen is None:
        return None
    if not isinstance(gen, np.random.Generator):
        raise CaptureError(
            f"{what}: expected a numpy.random.Generator, found {type(gen).__name__}; "
            "use numpy.random.Generator (gymnasium's default)"
        )
    name = type(gen.bit_generator).__name__
    if name not in _BIT_GENERATORS:
        raise CaptureError(
            f"{what}: expected one of the bit generators {sorted(_BIT_GENERATORS)}, found {name}; "
            "seed the RNG with one of those"
        )
    return {"bit_generator": name, "state": _copy_state(gen.bit_generator.state)}


def restore_env_generator(
    gen: np.random.Generator | None, state: dict[str, Any], what: str
) -> np.random.Generator:
    """Set ``gen`` to ``state`` in place when it fits; otherwise return a new Generator.

    Setting in place keeps any other holder of the same Generator in step. Restores what
    :func:`capture_env_generator` captured.

    Raises:
        StateMismatchError: ``state`` is not such a state, or its bit generator rejects it.
    """
    if not isinstance(state, dict) or set(state) != {"bit_generator", "state"}:
        raise StateMismatchError(what, [f"expected an RNG state dict, found {state!r:.60}"])
    name = state["bit_generator"]
    cls = _BIT_GENERATORS.get(name)
    if cls is None:
        raise StateMismatchError(
            what, [f"bit generator: expected one of {sorted(_BIT_GENERATORS)}, found {name!r}"]
        )
    if gen is None or type(gen.bit_generator) is not cls:
        gen = np.random.Generator(cls())
    try:
        gen.bit_generator.state = _copy_state(state["state"])
    except (TypeError, ValueError, KeyError) as exc:
        raise StateMismatchError(what, [f"bit generator state rejected: {exc}"]) from exc
    return gen


def _children(space: spaces.Space[Any]) -> list[spaces.Space[Any]] | None:
    if isinstance(space, spaces.Dict):
        return list(space.spaces.values())
    if isinstance(space, spaces.Tuple):
        return list(space.spaces)
    if isinstance(space, spaces.OneOf):
        return list(space.spaces)
    if isinstance(space, spaces.Sequence):
        return [space.feature_space]
    if isinstance(space, spaces.Graph):
        graph: list[spaces.Space[Any]] = [space.node_space]
        if space.edge_space is not None:
            graph.append(space.edge_space)
        return graph
    return None


def capture_space_rng(space: Any, what: str) -> Any:
    """Capture the RNG of ``space`` and of its subspaces (Dict, Tuple, OneOf, Sequence, Graph)."""
    if space is None:
        return None
    if not isinstance(space, spaces.Space):
        raise CaptureError(
            f"{what}: expected a gymnasium.spaces.Space, found {type(space).__name__}; "
            "give the env gymnasium spaces"
        )
    # Read the private field: the np_random property would seed a fresh RNG as a side effect.
    out: dict[str, Any] = {
        "type": type(space).__name__,
        "rng": capture_env_generator(space._np_random, what),
    }
    children = _children(space)
    if children is not None:
        out["children"] = [capture_space_rng(c, f"{what}[{i}]") for i, c in enumerate(children)]
    return out


def restore_space_rng(space: Any, state: Any, what: str) -> None:
    """Restore what :func:`capture_space_rng` captured into a space built the same way."""
    if state is None or space is None:
        if (state is None) != (space is None):
            raise StateMismatchError(what, [f"expected space {state!r:.40}, found {space!r:.40}"])
        return
    if not isinstance(state, dict) or state.get("type") != type(space).__name__:
        found = state.get("type") if isinstance(state, dict) else state
        raise StateMismatchError(
            what, [f"space type: expected {found!r}, found {type(space).__name__!r}"]
        )
    children = _children(space)
    saved_children = state.get("children")
    if (children is None) != (saved_children is None) or (
        children is not None and len(children) != len(saved_children or [])
    ):
        raise StateMismatchError(what, ["subspaces differ in number"])
    if state["rng"] is None:
        space._np_random = None
    else:
        space._np_random = restore_env_generator(space._np_random, state["rng"], what)
    if children is not None and saved_children is not None:
        for i, (child, saved) in enumerate(zip(children, saved_children, strict=True)):
            restore_space_rng(child, saved, f"{what}[{i}]")
