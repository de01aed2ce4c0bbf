"""Declarative tracking of array-holding objects (replay buffers, rollout storage).

:class:`ArrayState` names the array attributes of an object (NumPy arrays or torch tensors,
first axis = rows) and, optionally, the attribute that counts the filled rows. A snapshot
stores only the filled rows; a restore checks every array's type, dtype and full shape
against the recorded ones before writing anything, so restoring a 10,000-row buffer into a
5,000-row one is a :class:`~replaykit.errors.StateMismatchError`, not a silent swap.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from replaykit.errors import CaptureError, StateMismatchError, UsageError

__all__ = ["ArrayState"]

_TREE_KEYS = frozenset({"class", "filled", "arrays", "layout", "values"})


def _is_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "dtype") and hasattr(x, "shape")


def _layout(x: Any) -> list[Any]:
    """``[kind, dtype, full shape]`` of one array: what a restore checks."""
    if isinstance(x, np.ndarray):
        return ["ndarray", str(x.dtype), [int(n) for n in x.shape]]
    return ["tensor", str(x.dtype).removeprefix("torch."), [int(n) for n in x.shape]]


def _spell(layout: Any) -> str:
    kind, dtype, shape = layout
    return f"{kind} {dtype} {tuple(shape)}"


class ArrayState:
    """Track an object's arrays by name: shapes and dtypes checked on restore, filled rows only.

    Wrap the object once and track the wrapper, in the recording and in the restore alike.
    The wrapper reads and writes the object's attributes; the object keeps its identity.

    Args:
        obj: the object holding the arrays (a replay buffer, rollout storage, ...).
        arrays: attribute names of its NumPy arrays or torch tensors. With ``filled``, each
            must have at least one axis, the row axis, first.
        filled: the number of filled rows: an attribute name (an int attribute, restored
            too) or a function of ``obj`` (for a ring buffer,
            ``lambda b: b.capacity if b.full else b.pos``). Only rows ``[:filled]`` are
            stored; rows past it are left as they are on restore. ``None`` stores whole
            arrays.
        values: attribute names of plain numbers, bools or strings (write position, a
            ``full`` flag, ...) captured and restored with the arrays.

    Raises:
        UsageError: an attribute is missing or not of the kind named.

    Example:
        >>> import numpy as np, replaykit
        >>> class Buffer:
        ...     def __init__(self, capacity):
        ...         self.obs = np.zeros((capacity, 4), np.float32)
        ...         self.act = np.zeros(capacity, np.int64)
        ...         self.size = 0
        >>> buf = Buffer(10_000)
        >>> tracked = replaykit.ArrayState(buf, ["obs", "act"], filled="size")
        >>> # env.track("buffer", tracked)   (and track={"buffer": ArrayState(...)} to restore)
        >>> buf.obs[0], buf.size = 1.0, 1
        >>> tree = tracked.__replaykit_state__()
        >>> tree["arrays"]["obs"].shape  # only the filled row is stored
        (1, 4)
        >>> small = replaykit.ArrayState(Buffer(5_000), ["obs", "act"], filled="size")
        >>> try:
        ...     small.__replaykit_restore__(tree)
        ... except replaykit.StateMismatchError as exc:
        ...     print(exc.mismatches[0])
        obs: recorded ndarray float32 (10000, 4), got ndarray float32 (5000, 4)
    """

    def __init__(
        self,
        obj: Any,
        arrays: Iterable[str],
        *,
        filled: str | Callable[[Any], int] | None = None,
        values: Iterable[str] = (),
    ) -> None:
        self.obj = obj
        self.arrays = tuple(arrays)
        self.filled = filled
        self.values = tuple(values)
        if isinstance(arrays, str):
            raise UsageError(f"arrays must be a list of attribute names, got the string {arrays!r}")
        if not self.arrays:
            raise UsageError("ArrayState needs at least one array attribute name")
        cls = type(obj).__name__
        for name in self.arrays:
            x: Any = getattr(obj, name, None)
            if not isinstance(x, np.ndarray) and not _is_tensor(x):
                raise UsageError(
                    f"{cls}.{name}: expected a NumPy array or torch tensor, found a "
                    f"{type(x).__name__}; "
                    "list it in values=... if it is a number"
                )
            if filled is not None and len(x.shape) == 0:
                raise UsageError(f"{cls}.{name} has no row axis; filled= needs rows (axis 0)")
        for name in self._value_names():
            if not hasattr(obj, name):
                raise UsageError(f"{cls} has no attribute {name!r} (named in filled= or values=)")
        self._rows()  # a filled count that cannot be read fails here, when tracking starts

    def _value_names(self) -> tuple[str, ...]:
        own = (self.filled,) if isinstance(self.filled, str) else ()
        return own + tuple(v for v in self.values if v not in own)

    def _rows(self) -> int | None:
        if self.filled is None:
            return None
        n = (
            getattr(self.obj, self.filled)
            if isinstance(self.filled, str)
            else self.filled(self.obj)
        )
        if isinstance(n, bool) or not isinstance(n, numbers.Integral):
            raise CaptureError(
                f"{type(self.obj).__name__}: the filled row count is a "
                f"{type(n).__name__}, not an int"
            )
        n = int(n)
        for name in self.arrays:
            rows = int(getattr(self.obj, name).shape[0])
            if not 0 <= n <= rows:
                raise CaptureError(
                    f"{type(self.obj).__name__}: filled row count {n} is outside 0..{rows} "
                    f"(the rows of {name})"
                )
        return n

    def __repr__(self) -> str:
        return f"ArrayState({type(self.obj).__name__}, arrays={list(self.arrays)})"

    def __replaykit_state__(self) -> dict[str, Any]:
        n = self._rows()
        arrays: dict[str, Any] = {}
        layout: dict[str, Any] = {}
        for name in self.arrays:
            x = getattr(self.obj, name)
            layout[name] = _layout(x)
            part = x if n is None else x[:n]
            arrays[name] = part.detach() if _is_tensor(part) else part
        return {
            "class": type(self.obj).__qualname__,
            "filled": n,
            "arrays": arrays,
            "layout": layout,
            "values": {name: getattr(self.obj, name) for name in self._value_names()},
        }

    def __replaykit_restore__(self, tree: Any) -> None:
        what = f"arrays of {type(self.obj).__name__}"
        if not isinstance(tree, dict) or set(tree) != _TREE_KEYS:
            found = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
            raise StateMismatchError(what, [f"recorded an ArrayState tree, got {found}"])
        problems = self._problems(tree)
        if problems:
            raise StateMismatchError(what, problems)
        n = tree["filled"]
        for name in self.arrays:
            live, saved = getattr(self.obj, name), tree["arrays"][name]
            target = live if n is None else live[: int(n)]
            if _is_tensor(live):
                import torch

                with torch.no_grad():
                    target.copy_(saved if _is_tensor(saved) else torch.from_numpy(saved))
            else:
                target[...] = saved
        for name, value in tree["values"].items():
            setattr(self.obj, name, value)

    def _problems(self, tree: dict[str, Any]) -> list[str]:
        """One line per array or value that does not fit: ``name: recorded X, got Y``."""
        problems: list[str] = []
        saved_layout: dict[str, Any] = tree["layout"]
        for name in self.arrays:
            if name not in saved_layout:
                problems.append(f"{name}: not recorded (the recording has {sorted(saved_layout)})")
                continue
            want = [saved_layout[name][0], saved_layout[name][1], list(saved_layout[name][2])]
            got = _layout(getattr(self.obj, name))
            if want != got:
                problems.append(f"{name}: recorded {_spell(want)}, got {_spell(got)}")
        problems += [
            f"{name}: recorded but not in arrays=... here"
            for name in saved_layout
            if name not in self.arrays
        ]
        if (tree["filled"] is None) != (self.filled is None):
            problems.append(
                f"filled: recorded {'whole arrays' if tree['filled'] is None else 'filled rows'}, "
                f"got {'whole arrays' if self.filled is None else 'filled rows'}"
            )
        names = set(self._value_names())
        if set(tree["values"]) != names:
            problems.append(f"values: recorded {sorted(tree['values'])}, got {sorted(names)}")
        return problems
