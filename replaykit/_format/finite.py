"""Look for NaN/infinity in array bytes while they are hashed and written, chunk by chunk.

A snapshot's arrays are read once on their way to disk; scanning each chunk there (while
it is hot in the cache, into a boolean buffer the size of the chunk) costs a small fraction
of a separate pass over every tensor, which also allocated a boolean tensor per parameter.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["ChunkVisitor", "first_bad", "value_at"]

# Exponent bits (all ones: infinity or NaN) of the float formats numpy lacks, stored as
# unsigned integers of their width. float8_e4m3fn has no infinity: its NaN is 0x7f / 0xff.
_LOGICAL_EXP = {"bfloat16": 0x7F80, "float8_e5m2": 0x7C}
_E4M3_NAN = 0x7F


def scans(dtype: np.dtype[Any], logical: str | None) -> bool:
    """Tell whether arrays of this dtype (or logical dtype name) can hold NaN/infinity."""
    if logical is not None:
        return logical in _LOGICAL_EXP or logical == "float8_e4m3fn"
    return dtype.kind in "fc"


def first_bad(flat: np.ndarray, logical: str | None) -> int | None:
    """Index of the first NaN/infinity in a 1-d array (its logical dtype's bits), or ``None``."""
    if logical is None:
        ok = np.isfinite(flat)
    elif logical == "float8_e4m3fn":
        ok = (flat & _E4M3_NAN) != _E4M3_NAN
    else:
        exp = _LOGICAL_EXP[logical]
        ok = (flat & exp) != exp
    if ok.all():
        return None
    return int(np.argmin(ok))


def value_at(flat: np.ndarray, i: int, logical: str | None) -> Any:
    """Return the number at ``flat[i]``, decoding a logical dtype's bits (NaN/infinity only)."""
    if logical is None:
        return flat[i].item()
    bits = int(flat[i])
    if logical == "bfloat16":
        return float(np.array([bits << 16], np.uint32).view(np.float32)[0])
    if logical == "float8_e4m3fn":
        return float("nan")
    if bits & 0x03:  # float8_e5m2: mantissa set is NaN
        return float("nan")
    return float("-inf") if bits & 0x80 else float("inf")


class ChunkVisitor:
    """Hashes an array's bytes chunk by chunk and notes its first NaN/infinity.

    Args:
        hasher: an ``xxhash`` object fed every chunk.
        dtype: the array's numpy dtype; chunks are whole elements of it.
        logical: its logical dtype name (``"bfloat16"``, ...), or ``None``.
        scan: look for NaN/infinity (otherwise only hash).

    Example:
        >>> import xxhash
        >>> v = ChunkVisitor(xxhash.xxh3_64(), np.dtype("f4"), None, scan=True)
        >>> v.update(np.array([1.0, np.inf], np.float32).data)
        >>> v.bad
        (1, inf)
    """

    def __init__(self, hasher: Any, dtype: np.dtype[Any], logical: str | None, scan: bool) -> None:
        self.hasher = hasher
        self.dtype = dtype
        self.logical = logical
        self.scan = scan and scans(dtype, logical)
        self.seen = 0
        self.bad: tuple[int, Any] | None = None

    def update(self, chunk: Any) -> None:
        self.hasher.update(chunk)
        if not self.scan:
            return
        flat = np.frombuffer(chunk, self.dtype)
        if self.bad is None:
            i = first_bad(flat, self.logical)
            if i is not None:
                self.bad = (self.seen + i, value_at(flat, i, self.logical))
        self.seen += flat.size
