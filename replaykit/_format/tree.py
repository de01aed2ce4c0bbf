"""Exact, pickle-free encoding of state trees into JSON plus a list of arrays.

A *state tree* is nested ``dict`` (``str`` or ``int`` keys), ``list`` and
``tuple`` whose leaves are numpy arrays, numpy scalars, torch tensors, or JSON
scalars (``int`` of any size, ``float``, ``bool``, ``str``, ``None``).
:func:`encode` turns it into a JSON-able document, where each array leaf is a
reference into a returned list of numpy arrays; :func:`decode` turns both back
into an equal tree with the same container and leaf types. Tensors come back
on the CPU with their dtype; the device they lived on is kept in the document.

Every node of the document is either a JSON scalar or a one-key tagged object,
so decoding never guesses and never executes anything:

======  ==========================================================
tag     meaning
======  ==========================================================
``D``   dict with ``str`` keys: ``{"D": {key: node}}``
``M``   dict with other keys: ``{"M": [[key node, value node], ...]}``
``L``   list: ``{"L": [node, ...]}``
``T``   tuple: ``{"T": [node, ...]}``
``A``   numpy array: ``{"A": index}``
``S``   numpy scalar: ``{"S": index}`` (a 0-d array)
``t``   torch tensor: ``{"t": index, "dtype": "bfloat16", "device": "cpu", "grad": false}``
``F``   non-finite float: ``{"F": "nan" | "inf" | "-inf"}``
======  ==========================================================
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from replaykit._format.layout import ALLOWED_KINDS, LOGICAL_DTYPES
from replaykit.errors import CaptureError, FileFormatError

__all__ = [
    "array_paths",
    "decode",
    "encode",
    "encode_located",
    "numpy_to_tensor",
    "tensor_to_numpy",
]

_TORCH_LOGICAL = {"bfloat16", "float8_e4m3fn", "float8_e5m2"}
# Every tensor dtype name a file may hold. A name read from a file is looked up here, never
# with getattr on the torch module: torch resolves unknown attributes by importing
# submodules (a forged "dtype": "_dynamo" imported ~800 modules before being refused).
TORCH_DTYPES = frozenset(
    {
        "bool",
        "uint8",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
        "complex64",
        "complex128",
    }
    | _TORCH_LOGICAL
)


def _torch_dtype(name: Any) -> Any:
    """Return ``torch.<name>`` for an allow-listed dtype name; FileFormatError otherwise."""
    if not isinstance(name, str) or name not in TORCH_DTYPES:
        raise FileFormatError(
            f"tensor dtype {str(name)[:40]!r} is not one replaykit stores "
            f"(expected one of {', '.join(sorted(TORCH_DTYPES))}); the file is damaged or forged"
        )
    dtype = getattr(_torch(), name, None)  # an allow-listed name: a plain attribute
    if dtype is None:
        raise FileFormatError(f"this torch has no dtype {name}; upgrade torch to load the file")
    return dtype


def _torch() -> Any:
    import torch

    return torch


def tensor_to_numpy(t: Any) -> tuple[np.ndarray, str]:
    """Return (array holding the tensor's exact bits, torch dtype name without 'torch.')."""
    torch = _torch()
    name = str(t.dtype).removeprefix("torch.")
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    if name in _TORCH_LOGICAL:
        width = LOGICAL_DTYPES[name].itemsize
        view = {2: torch.int16, 1: torch.uint8}[width]
        return t.view(view).numpy().view(LOGICAL_DTYPES[name]), name
    try:
        return t.numpy(), name
    except TypeError as exc:
        raise CaptureError(
            f"tensor dtype torch.{name} has no exact storage in replaykit; "
            "convert it to a supported dtype (float32/float16/bfloat16/int/bool) before capture"
        ) from exc


def numpy_to_tensor(arr: np.ndarray, dtype_name: str) -> Any:
    torch = _torch()
    if not isinstance(dtype_name, str) or dtype_name not in TORCH_DTYPES:
        _torch_dtype(dtype_name)  # raises
    if dtype_name in _TORCH_LOGICAL:
        width = LOGICAL_DTYPES[dtype_name].itemsize
        view = {2: torch.int16, 1: torch.uint8}[width]
        base = torch.from_numpy(
            np.require(arr, requirements=["C", "W"]).view({2: np.int16, 1: np.uint8}[width])
        )
        return base.view(view).view(_torch_dtype(dtype_name))
    expected = _torch_dtype(dtype_name)
    # The array was just read from the file and belongs to nobody else: no copy needed.
    t = torch.from_numpy(np.require(arr, requirements=["C", "W"]))
    if t.dtype != expected:
        raise FileFormatError(f"tensor dtype {dtype_name} does not match stored {arr.dtype}")
    return t


class _Encoder:
    def __init__(self) -> None:
        self.arrays: list[np.ndarray] = []
        self.logical: dict[int, str] = {}
        # Where each array sits in the tree, and the non-finite Python floats met (with the
        # number of arrays met before each), so a writer can name the first NaN/infinity in
        # tree order while it scans the arrays' bytes (see encode_located).
        self.paths: list[str] = []
        self.bad_floats: list[tuple[int, str, float]] = []

    def array(self, arr: np.ndarray, path: str) -> int:
        if arr.dtype.kind not in ALLOWED_KINDS:
            raise CaptureError(
                f"state at {path or '<root>'} has numpy dtype {arr.dtype} (kind "
                f"{arr.dtype.kind!r}); only bool, int, float and complex arrays are stored, "
                "never objects or strings"
            )
        self.arrays.append(arr)
        self.paths.append(path)
        return len(self.arrays) - 1

    # One return per node kind, in the order the document table lists them.
    def node(self, obj: Any, path: str) -> Any:  # noqa: PLR0911
        # bool before int: bool is an int subclass.
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, int) and not isinstance(obj, np.integer):
            return int(obj)
        if isinstance(obj, float) and not isinstance(obj, np.floating):
            if math.isfinite(obj):
                return obj
            self.bad_floats.append((len(self.arrays), path, obj))
            return {"F": repr(obj)}
        if isinstance(obj, np.ndarray):
            # No copy: the encoded arrays are written before anything can change them, and
            # capture functions already hand over trees that share no memory with live objects.
            return {"A": self.array(np.require(obj, requirements="C"), path)}
        if isinstance(obj, np.generic):
            return {"S": self.array(np.array(obj), path)}
        if isinstance(obj, dict):
            if all(isinstance(k, str) for k in obj):
                return {"D": {k: self.node(v, f"{path}/{k}") for k, v in obj.items()}}
            return {
                "M": [
                    [self.node(k, f"{path}/<key>"), self.node(v, f"{path}/{k}")]
                    for k, v in obj.items()
                ]
            }
        if isinstance(obj, list):
            return {"L": [self.node(v, f"{path}/{i}") for i, v in enumerate(obj)]}
        if isinstance(obj, tuple):
            return {"T": [self.node(v, f"{path}/{i}") for i, v in enumerate(obj)]}
        if (
            type(obj).__module__.startswith("torch")
            and hasattr(obj, "dtype")
            and hasattr(obj, "device")
        ):
            arr, name = tensor_to_numpy(obj)
            idx = self.array(arr, path)
            return {
                "t": idx,
                "dtype": name,
                "device": str(obj.device),
                "grad": bool(getattr(obj, "requires_grad", False)),
            }
        raise CaptureError(
            f"state at {path or '<root>'} is a {type(obj).__module__}.{type(obj).__qualname__}, "
            "which replaykit does not store (no pickle); capture it as arrays, tensors, "
            "dicts, lists and JSON scalars instead"
        )


def encode(tree: Any) -> tuple[Any, list[np.ndarray], dict[int, str]]:
    """Encode a state tree.

    Returns:
        ``(document, arrays, logical)`` where ``document`` is JSON-able,
        ``arrays`` are the leaves in reference order, and ``logical`` maps an
        array index to a dtype name numpy lacks (e.g. ``"bfloat16"``) whose bits
        the array holds.

    Example:
        >>> doc, arrays, _ = encode({"w": np.zeros(2, np.float32), "step": 3})
        >>> doc
        {'D': {'w': {'A': 0}, 'step': 3}}
    """
    enc = _Encoder()
    doc = enc.node(tree, "")
    logical: dict[int, str] = {}
    _collect_logical(doc, logical)
    return doc, enc.arrays, logical


def encode_located(
    tree: Any,
) -> tuple[Any, list[np.ndarray], dict[int, str], list[str], list[tuple[int, str, float]]]:
    """Like :func:`encode`, also returning where things are in the tree.

    Returns:
        ``(document, arrays, logical, paths, bad_floats)``: ``paths[i]`` is the tree path
        (``/``-joined keys and indices) of ``arrays[i]``; ``bad_floats`` lists the
        non-finite Python floats as ``(arrays met before it, path, value)``, in tree order.

    Example:
        >>> _, _, _, paths, bad = encode_located({"w": np.zeros(2), "lr": float("nan")})
        >>> paths, bad[0][:2]
        (['/w'], (1, '/lr'))
    """
    enc = _Encoder()
    doc = enc.node(tree, "")
    logical: dict[int, str] = {}
    _collect_logical(doc, logical)
    return doc, enc.arrays, logical, enc.paths, enc.bad_floats


def array_paths(doc: Any) -> dict[str, int]:
    """Map the tree path of every array an encoded document refers to, to its index.

    Example:
        >>> doc, _, _ = encode({"m": {"w": np.zeros(2)}})
        >>> array_paths(doc)
        {'/m/w': 0}
    """
    out: dict[str, int] = {}
    _array_paths(doc, "", out, 0)
    return out


def _array_paths(doc: Any, path: str, out: dict[str, int], depth: int) -> None:
    if depth > _MAX_DEPTH or not isinstance(doc, dict) or len(doc) == 0:
        return
    if "A" in doc or "S" in doc:
        idx = doc.get("A", doc.get("S"))
        if isinstance(idx, int) and not isinstance(idx, bool):
            out[path] = idx
        return
    if "t" in doc:
        idx = doc.get("t")
        if isinstance(idx, int) and not isinstance(idx, bool):
            out[path] = idx
        return
    if isinstance(doc.get("D"), dict):
        for k, v in doc["D"].items():
            _array_paths(v, f"{path}/{k}", out, depth + 1)
    elif isinstance(doc.get("L"), list) or isinstance(doc.get("T"), list):
        items = doc.get("L") if isinstance(doc.get("L"), list) else doc.get("T")
        assert isinstance(items, list)
        for i, v in enumerate(items):
            _array_paths(v, f"{path}/{i}", out, depth + 1)


def _collect_logical(doc: Any, out: dict[int, str]) -> None:
    if isinstance(doc, dict):
        if "t" in doc and doc.get("dtype") in _TORCH_LOGICAL:
            out[int(doc["t"])] = str(doc["dtype"])
            return
        for v in doc.values():
            _collect_logical(v, out)
    elif isinstance(doc, list):
        for v in doc:
            _collect_logical(v, out)


def decode(doc: Any, arrays: list[np.ndarray], *, tensors: bool = True) -> Any:
    """Invert :func:`encode`. Raises :class:`FileFormatError` on a malformed document.

    With ``tensors=False`` tensor nodes come back as the arrays holding their bytes, with
    every check made but without importing torch (a file check needs no tensors).
    """
    return _decode(doc, arrays, 0, tensors)


_MAX_DEPTH = 200
# A tree mapping entry is a [key, value] pair.
_PAIR = 2


# One branch per tag of the table in the module docstring: a flat, closed dispatch.
def _decode(  # noqa: C901, PLR0911, PLR0912
    doc: Any, arrays: list[np.ndarray], depth: int, tensors: bool = True
) -> Any:
    if depth > _MAX_DEPTH:
        raise FileFormatError("state tree nests deeper than 200 levels")
    if doc is None or isinstance(doc, (bool, int, float, str)):
        return doc
    if not isinstance(doc, dict) or len(doc) == 0:
        raise FileFormatError(f"malformed state tree node {str(doc)[:60]!r}")
    d = depth + 1
    if "D" in doc and len(doc) == 1 and isinstance(doc["D"], dict):
        return {k: _decode(v, arrays, d, tensors) for k, v in doc["D"].items()}
    if "M" in doc and len(doc) == 1 and isinstance(doc["M"], list):
        out = {}
        for pair in doc["M"]:
            if not isinstance(pair, list) or len(pair) != _PAIR:
                raise FileFormatError("malformed state tree mapping entry")
            key = _decode(pair[0], arrays, d, tensors)
            if isinstance(key, (dict, list)):
                raise FileFormatError("state tree mapping key is not hashable")
            out[key] = _decode(pair[1], arrays, d, tensors)
        return out
    if "L" in doc and len(doc) == 1 and isinstance(doc["L"], list):
        return [_decode(v, arrays, d, tensors) for v in doc["L"]]
    if "T" in doc and len(doc) == 1 and isinstance(doc["T"], list):
        return tuple(_decode(v, arrays, d, tensors) for v in doc["T"])
    if "F" in doc and len(doc) == 1 and doc["F"] in ("nan", "inf", "-inf"):
        return float(doc["F"])
    if "A" in doc and len(doc) == 1:
        return _array(doc["A"], arrays)
    if "S" in doc and len(doc) == 1:
        arr = _array(doc["S"], arrays)
        if arr.ndim != 0:
            raise FileFormatError("numpy scalar node refers to a non-scalar array")
        return arr[()]
    if "t" in doc and set(doc) <= {"t", "dtype", "device", "grad"}:
        arr = _array(doc["t"], arrays)
        name = doc.get("dtype")
        if not isinstance(name, str) or name not in TORCH_DTYPES:
            raise FileFormatError(
                f"tensor dtype {str(name)[:40]!r} is not one replaykit stores; the file is "
                "damaged or forged"
            )
        if not isinstance(doc.get("device", "cpu"), str) or not isinstance(
            doc.get("grad", False), bool
        ):
            raise FileFormatError("tensor node has a non-string device or a non-bool grad flag")
        if not tensors:
            want = LOGICAL_DTYPES.get(name)
            if want is None:
                try:
                    want = np.dtype(name)
                except TypeError:
                    want = None
            if want is not None and arr.dtype != want:
                raise FileFormatError(f"tensor dtype {name} does not match stored {arr.dtype}")
            return arr
        t = numpy_to_tensor(arr, name)
        if doc.get("grad") is True and t.is_floating_point():
            t.requires_grad_(True)
        return t
    raise FileFormatError(f"unknown state tree tag in {str(doc)[:60]!r}")


def _array(ref: Any, arrays: list[np.ndarray]) -> np.ndarray:
    if not isinstance(ref, int) or isinstance(ref, bool) or not 0 <= ref < len(arrays):
        raise FileFormatError(f"state tree refers to array {ref!r}, which the snapshot lacks")
    return arrays[ref]
