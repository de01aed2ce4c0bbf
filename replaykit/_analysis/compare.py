"""Comparison rules, first-divergence search and the structured reports they produce.

Bit-exact is the default: same dtype, same shape, same bytes (so ``-0.0`` is
not ``0.0`` and NaN payloads count). A tolerance applies only where a rule is
named for a key pattern, and every report says which rule was used.

The results here are data (:class:`Mismatch`, :class:`DivergenceReport`,
:class:`KeyDivergence`, :class:`DiffResult`); :mod:`replaykit._analysis.render` words them.

Example:
    >>> import numpy as np
    >>> b = np.float32([1, np.nextafter(2, 3, dtype=np.float32)])
    >>> m = compare_arrays(np.float32([1, 2]), b)
    >>> m.index, m.ulp
    ((1,), 1)
    >>> compare_arrays(np.float32([0.0]), np.float32([-0.0])).reason
    'value'
"""

from __future__ import annotations

import fnmatch
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import zip_longest
from typing import TYPE_CHECKING, Any

import numpy as np

from replaykit._format import layout as F
from replaykit.errors import UsageError

if TYPE_CHECKING:
    from replaykit._analysis.layers import LayerDivergence

__all__ = [
    "DiffResult",
    "DivergenceReport",
    "KeyDivergence",
    "Mismatch",
    "Rule",
    "Rules",
    "compare_arrays",
    "diff_recordings",
    "divergence_values",
]


@dataclass(frozen=True)
class Rule:
    """How two arrays must agree. All zero (the default) means bit-exact.

    Args:
        atol: absolute tolerance.
        rtol: relative tolerance (of the expected value).
        max_ulp: largest allowed distance in units in the last place.

    An element passes when it is bit-identical, or (for a tolerance rule)
    when ``|a - e| <= atol + rtol * |e|`` or its ULP distance is ``<= max_ulp``.
    NaN matches NaN only under a tolerance rule.
    """

    atol: float = 0.0
    rtol: float = 0.0
    max_ulp: int = 0

    def __post_init__(self) -> None:
        if self.atol < 0 or self.rtol < 0 or self.max_ulp < 0:
            raise UsageError("tolerances must be >= 0")

    @property
    def exact(self) -> bool:
        return self.atol == 0 and self.rtol == 0 and self.max_ulp == 0

    def describe(self) -> str:
        if self.exact:
            return "bit-exact"
        parts = []
        if self.atol:
            parts.append(f"atol={self.atol:g}")
        if self.rtol:
            parts.append(f"rtol={self.rtol:g}")
        if self.max_ulp:
            parts.append(f"max_ulp={self.max_ulp}")
        return "tolerance " + ", ".join(parts)


EXACT = Rule()


class Rules:
    """Per-key rules: ``{"obs/*": Rule(atol=1e-6)}``; the first matching pattern wins.

    Keys match with :func:`fnmatch.fnmatchcase` against the key path
    (``obs``, ``obs/pos``, ``probe/logits``, ``info/x``). Unmatched keys use
    ``default`` (bit-exact unless you pass another).
    """

    def __init__(self, rules: Mapping[str, Rule] | None = None, *, default: Rule = EXACT) -> None:
        self.rules = dict(rules or {})
        self.default = default

    def for_key(self, key: str) -> Rule:
        for pattern, rule in self.rules.items():
            if fnmatch.fnmatchcase(key, pattern):
                return rule
        return self.default

    def describe(self) -> str:
        if not self.rules and self.default.exact:
            return "bit-exact for every key"
        parts = [f"{p}: {r.describe()}" for p, r in self.rules.items()]
        parts.append(f"other keys: {self.default.describe()}")
        return "; ".join(parts)


_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64, 16: np.uint64}
_INT64_BYTES = 8
_FLOAT_WIDTH = {"bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1}


def _bits(a: np.ndarray) -> np.ndarray:
    a = np.require(a, requirements="C")  # keeps 0-d arrays 0-d, unlike ascontiguousarray
    if a.dtype.itemsize in (1, 2, 4, 8):
        return a.view(_UINT[a.dtype.itemsize])
    return a.view(np.uint8).reshape(*a.shape, -1) if a.ndim else a.view(np.uint8)


def _ordered(bits: np.ndarray, width: int) -> np.ndarray:
    """Map float bit patterns to integers whose difference is the ULP distance."""
    signed = bits.astype(np.int64) if width < _INT64_BYTES else bits.view(np.int64)
    if width < _INT64_BYTES:
        sign = np.int64(1) << (8 * width - 1)
        neg = signed >= sign
        mag = signed & (sign - 1)
        out: np.ndarray = np.where(neg, -mag, mag)
        return out
    mag = signed & np.int64(0x7FFFFFFFFFFFFFFF)
    wide: np.ndarray = np.where(signed < 0, -mag, mag)
    return wide


def bf16_to_float(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _as_float(a: np.ndarray, logical: str | None) -> np.ndarray | None:
    if logical == "bfloat16":
        return bf16_to_float(a)
    if logical is not None:
        return None
    if a.dtype.kind == "f":
        return a
    if a.dtype.kind in "iub":
        return a.astype(np.float64)
    return None


@dataclass
class Mismatch:
    """The first element at which two arrays disagree."""

    reason: str  # "dtype", "shape", "value", "missing", "extra"
    index: tuple[int, ...] = ()
    expected: Any = None
    actual: Any = None
    abs_diff: float | None = None
    rel_diff: float | None = None
    ulp: int | None = None
    count: int = 0
    total: int = 0
    expected_dtype: str = ""
    actual_dtype: str = ""
    expected_shape: tuple[int, ...] = ()
    actual_shape: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "index": list(self.index),
            "expected": _jsonable(self.expected),
            "actual": _jsonable(self.actual),
            "abs_diff": _jsonable(self.abs_diff),
            "rel_diff": _jsonable(self.rel_diff),
            "ulp": self.ulp,
            "count": self.count,
            "total": self.total,
            "expected_dtype": self.expected_dtype,
            "actual_dtype": self.actual_dtype,
            "expected_shape": list(self.expected_shape),
            "actual_shape": list(self.actual_shape),
        }

    def describe_values(self) -> list[str]:
        """Both values with bits and dtypes, and the difference (see :func:`render.value_lines`).

        Example:
            >>> compare_arrays(np.int8([1]), np.int8([2])).describe_values()[0]
            'expected: 1 [int8]'
        """
        from replaykit._analysis import render

        return render.value_lines(self)


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)
    if isinstance(v, (np.generic,)):
        return _jsonable(v.item())
    return v


def _dtype_name(a: np.ndarray, logical: str | None) -> str:
    return logical if logical else a.dtype.name


def compare_arrays(
    expected: np.ndarray,
    actual: np.ndarray,
    rule: Rule = EXACT,
    *,
    logical: str | None = None,
    actual_logical: str | None = None,
) -> Mismatch | None:
    """Return the first :class:`Mismatch` between two arrays under ``rule``, or ``None``.

    ``logical`` names a dtype numpy lacks (``"bfloat16"``) whose bits the
    arrays hold.
    """
    expected = np.asarray(expected)
    actual = np.asarray(actual)
    actual_logical = logical if actual_logical is None else actual_logical
    ed, ad = _dtype_name(expected, logical), _dtype_name(actual, actual_logical)
    if ed != ad or expected.dtype != actual.dtype:
        return Mismatch(
            "dtype",
            expected_dtype=ed,
            actual_dtype=ad,
            expected_shape=expected.shape,
            actual_shape=actual.shape,
        )
    if expected.shape != actual.shape:
        return Mismatch(
            "shape",
            expected_dtype=ed,
            actual_dtype=ad,
            expected_shape=expected.shape,
            actual_shape=actual.shape,
        )
    eb, ab = _bits(expected), _bits(actual)
    # Integer views compare bits (so -0.0 != 0.0, NaN payloads count) without copying.
    if np.array_equal(eb, ab):
        return None
    neq = eb != ab
    if neq.ndim > expected.ndim:
        neq = neq.any(axis=-1)
    # Float views of whole arrays only for a tolerance rule; a report needs one element.
    ef = _as_float(expected, logical) if not rule.exact else None
    af = _as_float(actual, logical) if not rule.exact else None
    if not rule.exact and ef is not None and af is not None:
        with np.errstate(invalid="ignore", over="ignore"):
            d = np.abs(af.astype(np.float64) - ef.astype(np.float64))
            ok = d <= rule.atol + rule.rtol * np.abs(ef.astype(np.float64))
            both_nan = np.isnan(ef) & np.isnan(af)
            ok |= both_nan
            if (
                rule.max_ulp
                and expected.dtype.kind in "fu"
                and (expected.dtype.kind == "f" or logical)
            ):
                width = expected.dtype.itemsize
                ulps = np.abs(_ordered(eb, width) - _ordered(ab, width))
                ok |= ulps <= rule.max_ulp
        neq = neq & ~ok
        if not neq.any():
            return None
    flat = np.flatnonzero(neq.reshape(-1))
    first = int(flat[0])
    index = tuple(int(i) for i in np.unravel_index(first, expected.shape)) if expected.ndim else ()
    e_val = expected.reshape(-1)[first] if expected.ndim else expected[()]
    a_val = actual.reshape(-1)[first] if actual.ndim else actual[()]
    m = Mismatch(
        "value",
        index=index,
        count=int(flat.size),
        total=int(expected.size),
        expected_dtype=ed,
        actual_dtype=ad,
        expected_shape=expected.shape,
        actual_shape=actual.shape,
    )
    e_one = expected.reshape(-1)[first : first + 1]
    a_one = actual.reshape(-1)[first : first + 1]
    ef, af = _as_float(e_one, logical), _as_float(a_one, logical)
    if ef is not None and af is not None:
        e_f, a_f = ef[0], af[0]
        m.expected, m.actual = float(e_f), float(a_f)
        if expected.dtype.kind in "iub" and logical is None:
            m.expected, m.actual = e_val.item(), a_val.item()
        with np.errstate(invalid="ignore", over="ignore"):
            m.abs_diff = float(abs(np.float64(a_f) - np.float64(e_f)))
            m.rel_diff = float(m.abs_diff / abs(np.float64(e_f))) if np.float64(e_f) != 0 else None
        if expected.dtype.kind == "f" or logical == "bfloat16":
            width = expected.dtype.itemsize
            e_bits = eb.reshape(-1)[first : first + 1] if expected.ndim else eb.reshape(1)
            a_bits = ab.reshape(-1)[first : first + 1] if actual.ndim else ab.reshape(1)
            m.ulp = int(abs(int(_ordered(e_bits, width)[0]) - int(_ordered(a_bits, width)[0])))
    else:
        m.expected, m.actual = e_val.item(), a_val.item()
    return m


@dataclass
class DivergenceReport:
    """Where and why a replay (or a second run) first differs from a recording."""

    key: str
    mismatch: Mismatch
    rule: str
    source: str = ""
    snapshot: str | None = None
    stream: str = F.STEPS
    row: int | None = None
    episode: int | None = None
    step_in_episode: int | None = None
    provenance: list[tuple[str, Any, Any]] = field(default_factory=list)
    note: str = ""

    def where(self) -> str:
        """Where it diverged: snapshot, row, episode, key, element (:mod:`render`)."""
        from replaykit._analysis import render

        return render.divergence_location(self)

    def format(self) -> str:
        """Return the full multi-line report (:func:`render.divergence_report`).

        Example:
            >>> m = compare_arrays(np.int64(3), np.int64(4))
            >>> print(DivergenceReport("action", m, "bit-exact", row=2).format())
            diverged at step 2, key 'action'
              expected: 3 [int64]
              actual:   4 [int64]
              difference: abs 1, rel 0.333333
              rule: bit-exact
        """
        from replaykit._analysis import render

        return render.divergence_report(self)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "snapshot": self.snapshot,
            "stream": self.stream,
            "row": self.row,
            "episode": self.episode,
            "step_in_episode": self.step_in_episode,
            "key": self.key,
            "rule": self.rule,
            "mismatch": self.mismatch.to_json(),
            "note": self.note,
            "provenance": [
                {"key": k, "a": _jsonable(a), "b": _jsonable(b)} for k, a, b in self.provenance
            ],
        }


# --------------------------------------------------------------------------- file vs file


@dataclass
class KeyDivergence:
    """First divergence of one key between two recordings."""

    stream: str
    key: str
    row: int | None
    mismatch: Mismatch
    rule: str
    episode: int | None = None
    step_in_episode: int | None = None
    # Global step the row belongs to (resets: the step it happened before; updates: the
    # step count it was logged at), so divergences in different streams order in time.
    at_step: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "at_step": self.at_step,
            "stream": self.stream,
            "key": self.key,
            "row": self.row,
            "episode": self.episode,
            "step_in_episode": self.step_in_episode,
            "rule": self.rule,
            "mismatch": self.mismatch.to_json(),
        }


@dataclass
class DiffResult:
    """Result of :func:`diff_recordings`.

    Attributes:
        a: the reference recording's path.
        b: the other recording's path.
        divergences: the first divergence of every key that differs.
        rows: ``{stream: (rows in a, rows in b)}``.
        only_in_a: streams or keys only ``a`` holds.
        only_in_b: streams or keys only ``b`` holds.
        provenance: ``(key, value in a, value in b)`` setup differences.
        rules: the comparison rules, described.
        compared_keys: how many keys were compared.
        notes: remarks on the comparison (recordings from different devices).
        update_probe_order: names of the ``updates`` stream's probes in the order the
            training loop first logged them (the recording's ``update_probe_order``
            metadata); orders divergences within one update.
        first_module: the first module whose output or gradient differs, when both runs
            recorded layer digests (:class:`~replaykit._analysis.layers.LayerTracer`).
    """

    a: str
    b: str
    divergences: list[KeyDivergence]
    rows: dict[str, tuple[int, int]]
    only_in_a: list[str]
    only_in_b: list[str]
    provenance: list[tuple[str, Any, Any]]
    rules: str
    compared_keys: int
    notes: list[str] = field(default_factory=list)
    update_probe_order: list[str] = field(default_factory=list)
    first_module: LayerDivergence | None = None

    @property
    def match(self) -> bool:
        return (
            not self.divergences
            and not self.only_in_a
            and not self.only_in_b
            and all(ra == rb for ra, rb in self.rows.values())
        )

    def probe_rank(self, key: str) -> int:
        """Position of an ``updates`` key in the recorded probe order (unknown keys last).

        Example:
            >>> r = DiffResult("a", "b", [], {}, [], [], [], "", 0, update_probe_order=["z", "a"])
            >>> r.probe_rank("updates/probe/z"), r.probe_rank("updates/probe/a")
            (0, 1)
        """
        prefix = f"{F.UPDATES}/{F.PROBE}/"
        if key.startswith(prefix):
            name = key[len(prefix) :]
            for i, n in enumerate(self.update_probe_order):
                if n == name:
                    return i
        return len(self.update_probe_order)

    def _when(self, d: KeyDivergence) -> tuple[int, int, int, int, str]:
        """Sort key: global step, then reset < step < update, row, probe order, key."""
        stream_order = {F.RESETS: 0, F.STEPS: 1, F.UPDATES: 2}
        row = d.row if d.row is not None else -1
        if d.stream == F.STEPS:
            t = row
        elif d.at_step is not None:
            # An update logged at step count n follows step row n - 1.
            t = d.at_step - 1 if d.stream == F.UPDATES else d.at_step
        else:
            t = -1 if d.stream == F.RESETS else row
        rank = self.probe_rank(d.key) if d.stream == F.UPDATES else 0
        return (t, stream_order.get(d.stream, 3), row, rank, d.key)

    def ordered(self) -> list[KeyDivergence]:
        """Divergences in time order: global step, reset < step < update, then probe order.

        Within one update, probes follow the order the training loop logged them (the
        execution order, for :class:`~replaykit._analysis.layers.LayerTracer` digests), not
        the alphabetical order of their names.
        """
        return sorted(self.divergences, key=self._when)

    @property
    def first(self) -> KeyDivergence | None:
        """The earliest divergence in time (the first of :meth:`ordered`)."""
        if not self.divergences:
            return None
        return min(self.divergences, key=self._when)

    def to_json(self) -> dict[str, Any]:
        first = self.first
        module = None
        if self.first_module is not None:
            from replaykit._analysis import render

            module = render.layer_divergence(self.first_module)
        return {
            "a": self.a,
            "b": self.b,
            "match": self.match,
            "rules": self.rules,
            "compared_keys": self.compared_keys,
            "rows": {k: {"a": a, "b": b} for k, (a, b) in self.rows.items()},
            "first": first.to_json() if first else None,
            "first_module": module,
            "divergences": [d.to_json() for d in self.divergences],
            "only_in_a": self.only_in_a,
            "only_in_b": self.only_in_b,
            "notes": self.notes,
            "provenance": [
                {"key": k, "a": _jsonable(a), "b": _jsonable(b)} for k, a, b in self.provenance
            ],
        }


def _episode_of(stream: Any, row: int) -> tuple[int | None, int | None]:
    if stream.name != F.STEPS or F.EPISODE not in stream:
        return None, None
    ep = stream.read(F.EPISODE, row, row + 1)
    if ep.size == 0:
        return None, None
    episode = int(ep[0])
    # Walk back to the episode's first row in blocks that start small (most episodes are
    # short) and double up to the streaming budget (memory stays bounded).
    start = row
    cap = stream.block_rows_for(F.EPISODE)
    block = min(1024, cap)
    while start > 0:
        lo = max(0, start - block)
        eps = stream.read(F.EPISODE, lo, start)
        other = np.flatnonzero(eps != episode)
        if other.size:
            start = lo + int(other[-1]) + 1
            break
        start = lo
        block = min(2 * block, cap)
    return episode, row - start


def diff_recordings(
    a: str | os.PathLike[str],
    b: str | os.PathLike[str],
    *,
    rules: Rules | None = None,
    keys: Iterable[str] | None = None,
    block_rows: int | None = None,
    verify: bool = True,
) -> DiffResult:
    """Stream two recordings and report the first divergence of every key.

    Each column is read once, in blocks: the same blocks are hashed for verification
    and compared, so memory stays bounded by one block per column and file whatever
    the files' length. With ``verify`` on, every committed row of every compared column
    is hashed even past a divergence, and a damaged file raises
    :class:`~replaykit.errors.ChecksumError` instead of returning a result.

    Args:
        a: the reference recording.
        b: the recording to compare with it.
        rules: per-key comparison rules (bit-exact by default).
        keys: fnmatch patterns; only matching keys are compared.
        block_rows: rows read per block; ``None`` picks about 1 MiB per column.
        verify: check stored checksums while streaming.

    Example:
        >>> # res = diff_recordings("before.h5", "after.h5")
        >>> # res.match, res.first.key, res.first.row
    """
    from replaykit import provenance as prov
    from replaykit._format.store import BLOCK_BYTES, Recording

    if block_rows is not None and block_rows < 1:
        raise UsageError(f"block_rows must be >= 1, got {block_rows}")
    rules = rules or Rules()
    patterns = list(keys) if keys else None
    divergences: list[KeyDivergence] = []
    rows: dict[str, tuple[int, int]] = {}
    only_a: list[str] = []
    only_b: list[str] = []
    compared = 0
    # Values and presence blocks of both files, shared by every column: allocated (and
    # their pages faulted in) once per diff rather than once per column.
    scratch = [np.empty(BLOCK_BYTES, np.uint8) for _ in range(4)]
    with Recording(a, verify=verify) as ra, Recording(b, verify=verify) as rb:
        names_a, names_b = ra.stream_names, rb.stream_names
        for sname in dict.fromkeys(names_a + names_b):
            if sname not in names_a:
                only_b.append(sname)
                continue
            if sname not in names_b:
                only_a.append(sname)
                continue
            sa, sb = ra.stream(sname), rb.stream(sname)
            selected = 0
            found: list[KeyDivergence] = []
            for col in list(dict.fromkeys(list(sa.columns) + list(sb.columns))):
                key = f"{sname}/{col}" if sname != F.STEPS else col
                if patterns and not any(fnmatch.fnmatchcase(key, p) for p in patterns):
                    continue
                selected += 1
                if col not in sa.columns:
                    only_b.append(key)
                    continue
                if col not in sb.columns:
                    only_a.append(key)
                    continue
                compared += 1
                rule = rules.for_key(key)
                d = _diff_column(sa, sb, col, key, rule, block_rows, verify, scratch)
                if d is not None:
                    found.append(d)
            # Episode and step context is read once the stream's columns are streamed: the
            # episode column has been verified by its own pass by then, not read twice.
            for d in found:
                if d.row is not None and d.row < sa.rows:
                    d.episode, d.step_in_episode = _episode_of(sa, d.row)
                d.at_step = _step_of(sa, sb, d.row)
            divergences += found
            # Row counts count only for streams with a selected key, so --key reward
            # is not failed by a resets stream nobody asked about.
            if selected or not patterns:
                rows[sname] = (sa.rows, sb.rows)
        provenance = prov.differences(ra.provenance, rb.provenance)
        notes = device_notes(ra.provenance, rb.provenance, rules)
        probe_order = _probe_order(ra) or _probe_order(rb)
        first_module = None
        if ra.has_stream(F.UPDATES):
            from replaykit._analysis import layers  # no torch at import

            first_module = layers.locate_first_module(divergences, ra.stream(F.UPDATES))
    return DiffResult(
        a=str(a),
        b=str(b),
        divergences=divergences,
        rows=rows,
        only_in_a=only_a,
        only_in_b=only_b,
        provenance=provenance,
        rules=rules.describe(),
        compared_keys=compared,
        notes=notes,
        update_probe_order=probe_order,
        first_module=first_module,
    )


def _probe_order(rec: Any) -> list[str]:
    """Return the recording's update probe names in first-logged order (``[]`` if absent)."""
    names = rec.meta.get(F.META_UPDATE_PROBE_ORDER)
    if not isinstance(names, list):
        return []
    return [n for n in names if isinstance(n, str)]


def device_notes(a: dict[str, Any], b: dict[str, Any], rules: Rules) -> list[str]:
    """Say so when two recordings come from different devices (CPU vs CUDA, or two GPUs).

    Such a comparison is a tolerance comparison: the same code legitimately rounds differently.
    """
    da, db = (a.get("device") or {}), (b.get("device") or {})
    if da.get("cuda") == db.get("cuda") and da.get("names") == db.get("names"):
        return []
    kind_a = "CUDA" if da.get("cuda") else "CPU"
    kind_b = "CUDA" if db.get("cuda") else "CPU"
    note = (
        f"the recordings come from different devices ({kind_a}: {da.get('names')}, "
        f"{kind_b}: {db.get('names')}); bit-exact equality is not expected across devices"
    )
    if rules.default.exact and not rules.rules:
        note += ": compare with a tolerance (--atol/--rtol/--max-ulp)"
    else:
        note += f"; compared under a tolerance ({rules.describe()})"
    return [note]


def _step_of(sa: Any, sb: Any, row: int | None) -> int | None:
    """Return the global step of a resets/updates row (from whichever file holds it)."""
    if row is None or sa.name not in (F.RESETS, F.UPDATES):
        return None
    col = F.RESET_STEP if sa.name == F.RESETS else F.UPDATE_STEP
    for s in (sa, sb):
        if col in s and row < s.rows:
            return int(s.read(col, row, row + 1)[0])
    return None


def _column_rows(
    s: Any, col: str, block_rows: int, scratch: tuple[np.ndarray, np.ndarray]
) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """Yield ``(start, values, present or None)`` blocks, both verified as they stream."""
    values = s.blocks(col, block_rows, buffer=scratch[0])
    present = s.present_blocks(col, block_rows, buffer=scratch[1])
    if present is None:
        for lo, x in values:
            yield lo, x, None
        return
    for (lo, x), (_, p) in zip(values, present, strict=True):
        yield lo, x, p


def _diff_column(
    sa: Any,
    sb: Any,
    col: str,
    key: str,
    rule: Rule,
    block_rows: int | None,
    verify: bool,
    scratch: list[np.ndarray],
) -> KeyDivergence | None:
    """First divergence of one column, streaming both files' blocks once.

    With ``verify`` on, both columns are read to their last committed row even after a
    divergence, so their checksums are checked before any result is returned.
    """
    la, lb = sa.logical_dtype(col), sb.logical_dtype(col)
    n = min(sa.rows, sb.rows)
    if block_rows is None:
        block_rows = min(sa.block_rows_for(col), sb.block_rows_for(col))
    found: KeyDivergence | None = None
    pairs = zip_longest(
        _column_rows(sa, col, block_rows, (scratch[0], scratch[1])),
        _column_rows(sb, col, block_rows, (scratch[2], scratch[3])),
    )
    # Equal stored checksums over the same rows: once both columns pass verification (the
    # blocks are still read and hashed), they hold the same bytes, so no block is compared.
    same = verify and _same_checksums(sa, sb, col) and rule.exact
    for ba, bb in pairs:
        if same or found is not None or ba is None or bb is None or ba[0] >= n:
            if not verify:
                break
            continue  # still hashing the rest of the longer or diverged column
        (lo, xa, pa), (_, xb, pb) = ba, bb
        hi = min(lo + len(xa), n)
        xa, xb = xa[: hi - lo], xb[: hi - lo]
        found = _diff_block(sa, key, rule, lo, xa, xb, pa, pb, la, lb)
    if found is None and sa.rows != sb.rows:
        found = KeyDivergence(
            sa.name, key, n, Mismatch("missing" if sa.rows > sb.rows else "extra"), rule.describe()
        )
    return found


def _same_checksums(sa: Any, sb: Any, col: str) -> bool:
    """Both columns (and presence masks) claim the same bytes for the same rows and type."""
    if (sa.first, sa.rows) != (sb.first, sb.rows) or sa.columns[col] != sb.columns[col]:
        return False
    names = [col, col + F.PRESENT_SUFFIX] if sa.optional(col) else [col]
    return all(sa.checksum(x) is not None and sa.checksum(x) == sb.checksum(x) for x in names)


def _diff_block(
    sa: Any,
    key: str,
    rule: Rule,
    lo: int,
    xa: np.ndarray,
    xb: np.ndarray,
    pa: np.ndarray | None,
    pb: np.ndarray | None,
    la: str | None,
    lb: str | None,
) -> KeyDivergence | None:
    """First divergence inside one block of rows starting at row ``lo``, or ``None``.

    The blocks are views of reused buffers: everything kept in the result is copied out.
    """
    k = len(xa)
    if pa is not None and pb is not None and not np.array_equal(pa[:k], pb[:k]):
        i = int(np.flatnonzero(pa[:k] != pb[:k])[0])
        reason = "missing" if pa[i] else "extra"
        return KeyDivergence(sa.name, key, lo + i, Mismatch(reason), rule.describe())
    if xa.dtype != xb.dtype or xa.shape[1:] != xb.shape[1:] or la != lb:
        m = compare_arrays(xa[:1], xb[:1], rule, logical=la, actual_logical=lb)
        if m is not None:
            return KeyDivergence(sa.name, key, lo, m, rule.describe())
    if rule.exact and _same_bytes(xa, xb):
        return None
    m = compare_arrays(xa, xb, rule, logical=la)
    if m is None:
        return None
    row_m = compare_arrays(xa[m.index[0]], xb[m.index[0]], rule, logical=la)
    assert row_m is not None
    return KeyDivergence(sa.name, key, lo + m.index[0], row_m, rule.describe())


def _same_bytes(xa: np.ndarray, xb: np.ndarray) -> bool:
    """Bit equality of two C-contiguous blocks of one dtype and shape."""
    a, b = xa.reshape(-1).view(np.uint8), xb.reshape(-1).view(np.uint8)
    if a.size % 8 == 0:
        # Eight bytes per element: bool and float32 blocks compare 8x and 2x fewer elements.
        a, b = a.view(np.uint64), b.view(np.uint64)
    return bool(np.array_equal(a, b))


def divergence_values(
    a: str | os.PathLike[str],
    b: str | os.PathLike[str],
    d: KeyDivergence,
    *,
    half: int = 500,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Both runs' values of a diverging key around its first divergence, for a picture.

    Reads rows ``[row - half, row + half)`` of the key's column in both files (only rows both
    hold), the element that first differs, as float64.

    Args:
        a: the reference recording.
        b: the other recording.
        d: a divergence from :func:`diff_recordings` (usually ``result.first``).
        half: rows read on each side of the divergence.

    Returns:
        ``(rows, values in a, values in b, element label)``; the label is ``""`` for a scalar.

    Raises:
        UsageError: the key cannot be drawn (a dtype or shape differs, or it is not numeric).
    """
    from replaykit._format.store import Recording

    column = d.key if d.stream == F.STEPS else d.key[len(d.stream) + 1 :]
    row = d.row or 0
    with Recording(a) as ra, Recording(b) as rb:
        sa, sb = ra.stream(d.stream), rb.stream(d.stream)
        if column not in sa or column not in sb:
            raise UsageError(f"{d.key} is not in both recordings: nothing to plot")
        lo = max(0, row - half)
        hi = min(sa.rows, sb.rows, row + half)
        xa = _as_float(sa.read(column, lo, hi), sa.logical_dtype(column))
        xb = _as_float(sb.read(column, lo, hi), sb.logical_dtype(column))
    if xa is None or xb is None or xa.shape[1:] != xb.shape[1:]:
        raise UsageError(f"{d.key} differs in dtype or shape between the runs: nothing to plot")
    index = tuple(d.mismatch.index)
    if xa.ndim > 1 and len(index) != xa.ndim - 1:
        index = (0,) * (xa.ndim - 1)
    sel: tuple[Any, ...] = (slice(None), *index)
    va = xa[sel] if xa.ndim > 1 else xa
    vb = xb[sel] if xb.ndim > 1 else xb
    label = f"[{', '.join(str(i) for i in index)}]" if xa.ndim > 1 else ""
    return np.arange(lo, lo + len(va)), va.astype(np.float64), vb.astype(np.float64), label
