"""Copying attribute values into state trees and back, plus a generic attribute adapter."""

from __future__ import annotations

from collections import deque
from typing import Any, ClassVar

import numpy as np

from replaykit.errors import CaptureError, StateMismatchError

__all__ = ["AttrAdapter", "class_name", "copy_value", "get_path", "set_path", "values_equal"]

_SCALARS = (bool, int, float, str, type(None))
# Longest repr of a value quoted in an error message.
_DESCRIBE_MAX = 60


def class_name(obj_or_type: Any) -> str:
    """Return ``module.QualName`` of a class (or of an object's class)."""
    cls = obj_or_type if isinstance(obj_or_type, type) else type(obj_or_type)
    return f"{cls.__module__}.{cls.__qualname__}"


def copy_value(value: Any, what: str) -> Any:
    """Deep-copy ``value`` into a state tree that shares no memory with it.

    Keeps the exact Python/numpy types (tuple stays tuple, ``np.float32`` stays
    ``np.float32``, ``int`` stays ``int``) because the next step's arithmetic can
    depend on them. Restore code calls this too, so the live object never
    aliases arrays of the (reusable) tree.

    Raises:
        CaptureError: for values a state tree cannot hold (objects, object arrays).
    """
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject or value.dtype.kind not in "biufc":
            raise CaptureError(
                f"{what}: expected a numeric or bool array, found dtype {value.dtype}; "
                "register an adapter that converts it"
            )
        return np.array(value, copy=True)
    if isinstance(value, np.generic):
        if value.dtype.kind not in "biufc":
            raise CaptureError(
                f"{what}: expected a numeric numpy scalar, found {type(value).__name__}; "
                "register an adapter that converts it"
            )
        return value.copy()
    if isinstance(value, tuple):
        return tuple(copy_value(v, f"{what}[{i}]") for i, v in enumerate(value))
    if isinstance(value, list):
        return [copy_value(v, f"{what}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise CaptureError(
                    f"{what}: expected str or int dict keys, found {type(k).__name__} key {k!r}; "
                    "register an adapter that converts it"
                )
            out[k] = copy_value(v, f"{what}[{k!r}]")
        return out
    raise CaptureError(
        f"{what}: cannot capture a value of type {class_name(value)}; "
        "register an adapter for the object that holds it"
    )


def values_equal(a: Any, b: Any) -> bool:
    """Exact structural equality: same types, dtypes, shapes and bytes."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (np.ndarray, np.generic)):
        return bool(a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes())
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(values_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(values_equal(a[k], b[k]) for k in a)
    if isinstance(a, float):
        # Compare bit patterns so nan == nan and 0.0 != -0.0.
        return bool(np.float64(a).tobytes() == np.float64(b).tobytes())
    return bool(a == b)


_MISSING = object()


def get_path(obj: Any, path: str, default: Any = _MISSING) -> Any:
    """``getattr`` along a dotted path (``"obs_rms.mean"``)."""
    for part in path.split("."):
        obj = getattr(obj, part) if default is _MISSING else getattr(obj, part, default)
        if obj is default and default is not _MISSING:
            return default
    return obj


def set_path(obj: Any, path: str, value: Any) -> None:
    """``setattr`` along a dotted path."""
    *parents, last = path.split(".")
    for part in parents:
        obj = getattr(obj, part)
    setattr(obj, last, value)


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"array(shape={value.shape}, dtype={value.dtype})"
    text = repr(value)
    return text if len(text) <= _DESCRIBE_MAX else text[: _DESCRIBE_MAX - 3] + "..."


class AttrAdapter:
    """Adapter that captures a fixed list of attributes of an env or wrapper.

    Subclasses set the class attributes below; each names attributes by dotted path.

    Attributes:
        name: adapter name stored in the state tree.
        attrs: attributes the next step depends on; captured and restored.
        deques: ``collections.deque`` attributes; restored in place so ``maxlen``
            and any ``Final`` binding survive.
        fixed: attributes among ``attrs`` whose array shape/dtype must match the live one.
        config: construction parameters; captured and compared on restore (a
            difference means the object was built differently), never written.
    """

    name: ClassVar[str] = "attrs"
    attrs: ClassVar[tuple[str, ...]] = ()
    deques: ClassVar[tuple[str, ...]] = ()
    fixed: ClassVar[tuple[str, ...]] = ()
    config: ClassVar[tuple[str, ...]] = ()

    def capture(self, obj: Any) -> Any:
        what = class_name(obj)
        state: dict[str, Any] = {}
        for path in self.attrs:
            value = get_path(obj, path, _MISSING)
            if value is _MISSING:
                raise CaptureError(
                    f"{what}: expected attribute {path!r} for adapter {self.name}, found none; "
                    "register an adapter matching this version of the class"
                )
            state[path] = copy_value(value, f"{what}.{path}")
        deques = {}
        for path in self.deques:
            live = get_path(obj, path)
            deques[path] = [copy_value(v, f"{what}.{path}[{i}]") for i, v in enumerate(live)]
        config = {}
        for path in self.config:
            value = get_path(obj, path, _MISSING)
            if value is not _MISSING:
                config[path] = copy_value(value, f"{what}.{path}")
        return {"attrs": state, "deques": deques, "config": config}

    def check(self, obj: Any, state: Any) -> list[str]:
        """Return one line per way ``state`` does not fit ``obj`` (empty when it fits)."""
        if not isinstance(state, dict) or set(state) != {"attrs", "deques", "config"}:
            return [
                f"adapter {self.name}: expected keys attrs/deques/config, found {_describe(state)}"
            ]
        problems = []
        if set(state["attrs"]) != set(self.attrs):
            problems.append(
                f"attributes: expected {sorted(self.attrs)}, found {sorted(state['attrs'])}"
            )
        if set(state["deques"]) != set(self.deques):
            problems.append(
                f"deques: expected {sorted(self.deques)}, found {sorted(state['deques'])}"
            )
        for path in self.fixed:
            saved = state["attrs"].get(path)
            live = get_path(obj, path, None)
            if isinstance(live, np.ndarray) and (
                not isinstance(saved, np.ndarray)
                or saved.shape != live.shape
                or saved.dtype != live.dtype
            ):
                problems.append(f"{path}: expected {_describe(live)}, found {_describe(saved)}")
        for path in self.deques:
            live = get_path(obj, path, None)
            saved = state["deques"].get(path, [])
            maxlen = getattr(live, "maxlen", None)
            if maxlen is not None and len(saved) > maxlen:
                problems.append(f"{path}: expected at most {maxlen} items, found {len(saved)}")
        for path, saved in state["config"].items():
            live = get_path(obj, path, _MISSING)
            if live is _MISSING:
                continue
            if not values_equal(copy_value(live, path), saved):
                problems.append(f"{path}: expected {_describe(saved)}, found {_describe(live)}")
        return problems

    def restore(self, obj: Any, state: Any) -> None:
        problems = self.check(obj, state)
        if problems:
            raise StateMismatchError(f"{class_name(obj)} (adapter {self.name})", problems)
        for path in self.attrs:
            set_path(obj, path, copy_value(state["attrs"][path], f"snapshot {path}"))
        for path in self.deques:
            live = get_path(obj, path)
            items = [copy_value(v, f"snapshot {path}") for v in state["deques"][path]]
            if isinstance(live, deque):
                live.clear()
                live.extend(items)
            else:
                set_path(obj, path, deque(items))
