"""Flatten nested gymnasium values (Dict/Tuple spaces) into named leaf columns and back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from replaykit.errors import CaptureError

__all__ = ["Leaf", "flatten", "leaves_of", "space_to_json", "unflatten"]

Path = tuple[Any, ...]


class Leaf:
    """One array-valued leaf of a (possibly nested) space."""

    __slots__ = ("dtype", "name", "path", "shape", "space")

    def __init__(self, path: Path, space: gym.Space[Any]) -> None:
        self.path = path
        self.name = "/".join(str(p) for p in path)
        self.space = space
        self.dtype = np.dtype(space.dtype) if space.dtype is not None else None
        self.shape = tuple(space.shape) if space.shape is not None else None


def leaves_of(space: gym.Space[Any], what: str) -> list[Leaf]:
    """List the leaves of ``space``; refuses spaces whose values are not fixed arrays."""
    out: list[Leaf] = []

    def walk(s: gym.Space[Any], path: Path) -> None:
        if isinstance(s, gym.spaces.Dict):
            for k, sub in s.spaces.items():
                walk(sub, (*path, k))
        elif isinstance(s, gym.spaces.Tuple):
            for i, sub in enumerate(s.spaces):
                walk(sub, (*path, i))
        elif isinstance(
            s,
            (gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiBinary, gym.spaces.MultiDiscrete),
        ):
            out.append(Leaf(path, s))
        else:
            where = "/".join(str(p) for p in path) or "<root>"
            raise CaptureError(
                f"{what} space {where} is a {type(s).__name__}, whose values are not fixed-shape "
                "arrays; replaykit records Box, Discrete, MultiBinary, MultiDiscrete, Dict and "
                "Tuple spaces (wrap the env to flatten or encode it)"
            )

    walk(space, ())
    return out


def getter(path: Path) -> Callable[[Any], Any]:
    if not path:
        return lambda v: v
    if len(path) == 1:
        k = path[0]
        return lambda v: v[k]

    def get(v: Any) -> Any:
        for p in path:
            v = v[p]
        return v

    return get


def flatten(value: Any, leaves: list[Leaf]) -> list[Any]:
    return [getter(leaf.path)(value) for leaf in leaves]


def unflatten(space: gym.Space[Any], values: dict[str, Any], prefix: Path = ()) -> Any:
    """Rebuild a nested value of ``space`` from ``{leaf name: value}``."""
    if isinstance(space, gym.spaces.Dict):
        return {k: unflatten(sub, values, (*prefix, k)) for k, sub in space.spaces.items()}
    if isinstance(space, gym.spaces.Tuple):
        return tuple(unflatten(sub, values, (*prefix, i)) for i, sub in enumerate(space.spaces))
    return values["/".join(str(p) for p in prefix)]


def space_to_json(space: gym.Space[Any]) -> Any:
    """Describe a space as JSON (for metadata and mismatch messages)."""
    if isinstance(space, gym.spaces.Dict):
        return {"type": "Dict", "spaces": {k: space_to_json(s) for k, s in space.spaces.items()}}
    if isinstance(space, gym.spaces.Tuple):
        return {"type": "Tuple", "spaces": [space_to_json(s) for s in space.spaces]}
    d: dict[str, Any] = {"type": type(space).__name__}
    if space.shape is not None:
        d["shape"] = list(space.shape)
    if space.dtype is not None:
        d["dtype"] = np.dtype(space.dtype).str
    if isinstance(space, gym.spaces.Discrete):
        d["n"] = int(space.n)
        d["start"] = int(space.start)
    return d
