"""The recorder core every recording session shares: columns, updates, snapshots, the file."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import traceback
import warnings
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import gymnasium as gym
import numpy as np

from replaykit._format import layout as F
from replaykit._format.sink import RecordingSink
from replaykit._format.store import Column, RecordingWriter, StreamWriter
from replaykit._state import snapshot
from replaykit._state import spaces as _spaces
from replaykit.errors import CaptureError, ReplaykitWarning, UsageError

__all__ = [
    "RECORDING_CLOSED",
    "LeafWriter",
    "NotRecordableError",
    "RecorderCore",
    "UpdateLog",
    "check_seed_and_schedule",
    "column_writer",
    "env_fields",
    "env_spec_json",
    "exact_into",
    "first_nonfinite_value",
    "flat_info",
    "info_key_problem",
    "json_options",
    "nonfinite_report",
    "nonfinite_word",
    "open_writer",
    "probe_name_problem",
    "to_array",
]

_S = TypeVar("_S")

RECORDING_CLOSED = "the recording is closed"

# Integers below this magnitude convert to float64 exactly (53-bit significand).
_FLOAT64_EXACT_INT = 1 << 53
# Significand bits (with the implicit one) of each float width, in bytes: an integer dtype
# of at most this many value bits converts into the float exactly, every value.
_SIGNIFICAND_BITS = {2: 11, 4: 24, 8: 53, 16: 64}


class NotRecordableError(CaptureError):
    """A value replaykit cannot store: not a number, or an integer beyond int64.

    Info values like this are skipped for their row (FORMAT.md: non-numeric values are
    skipped; the column's ``@present`` mask records the absence); anywhere else it is an
    error.
    """


def to_array(value: Any, what: str) -> tuple[np.ndarray, str | None]:
    """Convert a recorded value to ``(array, logical dtype)`` without changing its bits.

    Raises:
        NotRecordableError: ``value`` is not a number, array or tensor of numbers, or is
            a Python int beyond int64.
    """
    if isinstance(value, np.ndarray):
        arr = value
    elif isinstance(value, np.generic):
        arr = np.asarray(value)
    elif isinstance(value, bool):
        arr = np.asarray(value, dtype=np.bool_)
    elif isinstance(value, int):
        try:
            arr = np.asarray(value, dtype=np.int64)
        except OverflowError:
            raise NotRecordableError(
                f"{what} is the int {value}, beyond int64; replaykit stores integers of at most "
                "64 bits exactly (convert it to a float or a string yourself if rounding is fine)"
            ) from None
    elif isinstance(value, float):
        arr = np.asarray(value, dtype=np.float64)
    elif type(value).__module__.startswith("torch") and hasattr(value, "dtype"):
        from replaykit._format.tree import tensor_to_numpy

        arr, name = tensor_to_numpy(value)
        if arr.dtype.kind == "u" and name not in ("uint8", "uint16", "uint32", "uint64"):
            return arr, name
        return arr, None
    elif isinstance(value, (list, tuple)) and all(
        isinstance(v, (int, float, bool, np.generic)) for v in value
    ):
        arr = np.asarray(value)
    else:
        raise NotRecordableError(
            f"{what} is a {type(value).__name__}; replaykit records numbers, arrays and tensors"
        )
    if arr.dtype.kind not in F.ALLOWED_KINDS:
        raise NotRecordableError(
            f"{what} has dtype {arr.dtype}; only numeric and bool values are recorded"
        )
    return arr, None


def exact_into(value: Any, arr: np.ndarray, dt: np.dtype) -> bool:
    """Tell whether every value of ``arr``'s dtype converts into ``dt`` exactly.

    The rule is by dtype, not by value, so a run that mixes types fails at the first step
    that mixes them, never hours later at the first value that happens to round. The one
    exception is a Python int (``arr`` is int64): Python numbers are one family (FORMAT.md:
    a reward column is float64 when the env returns Python numbers), so its value is checked.

    Args:
        value: the value as the caller passed it (a Python int is checked by value).
        arr: ``value`` as :func:`to_array` converted it.
        dt: the column's dtype.
    """
    src = arr.dtype
    if src == dt:
        return True
    if value.__class__ is int:
        try:
            # Back to a Python number: Python compares an int with a float exactly.
            return bool(dt.type(value).item() == value)
        except OverflowError:
            return False
    if src.kind == "b":
        return True
    if src.kind == dt.kind == "f" or (src.kind in "iu" and dt.kind in "iu"):
        return bool(np.can_cast(src, dt, "safe"))
    if src.kind in "iu" and dt.kind == "f":
        value_bits = src.itemsize * 8 - (src.kind == "i")
        return value_bits <= _SIGNIFICAND_BITS.get(dt.itemsize, 0)
    return False


def probe_name_problem(name: Any, column: str, s: StreamWriter) -> str | None:
    """Say why a probe or update name cannot name a new column, or ``None`` when it can.

    Probe names may hold ``/`` (layer digests: ``layer/net.0/out``); each part must be a
    valid key, and a name may not be both a column and the group of another.
    """
    if column in s.columns:
        return None
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not a str"
    for part in name.split("/"):
        problem = info_key_problem(part)
        if problem is not None:
            return f"has the part {part!r}, which {problem}"
    for other in s.columns:
        if other.startswith(column + "/") or column.startswith(other + "/"):
            return f"collides with the recorded column {other!r}"
    return None


def info_key_problem(key: Any) -> str | None:
    """Say why an info key cannot name a column, or ``None`` when it can.

    Nested info keys are ``/``-joined into column paths and each optional column has a
    ``<name>@present`` companion, so a key holding ``/`` or ending in ``@present`` would
    share a column with another key; non-str keys (``1`` and ``"1"``) likewise.
    """
    if not isinstance(key, str):
        return f"is a {type(key).__name__}, not a str"
    if "/" in key:
        return "contains '/', which joins nested info keys into column paths"
    if key.endswith(F.PRESENT_SUFFIX):
        return f"ends with {F.PRESENT_SUFFIX!r}, the suffix of replaykit's presence columns"
    if not F.is_valid_name(key):
        return "is empty, starts with '.' or holds unprintable characters"
    return None


def check_info_key(s: StreamWriter, parts: tuple[Any, ...], step: int) -> None:
    """Refuse a new info key that cannot name a column of its own.

    Raises:
        CaptureError: a part of the key cannot name a column, or the key's column would
            nest inside (or hold) a column already recorded.
    """
    key = "/".join(map(str, parts))
    for part in parts:
        problem = info_key_problem(part)
        if problem is not None:
            raise CaptureError(
                f"info key {key!r} at step {step}: {part!r} {problem}; rename it, or "
                f"exclude it with ignore_info=[{key!r}]"
            )
    column = F.column_path(F.INFO, key)
    # A key may not be both a value and a dict of values ('a' then {'a': {'b': ...}}):
    # both would need the path info/a.
    for other in s.columns:
        if other.startswith(column + "/") or column.startswith(other + "/"):
            raise CaptureError(
                f"info key {key!r} at step {step} collides with the recorded column "
                f"{other!r} (a key that is a number in one step and a dict in another); "
                f"keep each key's structure, or exclude it with ignore_info=[{key!r}]"
            )


def flat_info(info: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    """Yield ``(key, value)`` for every leaf of a nested info dict, keys ``/``-joined."""
    for k, v in info.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            yield from flat_info(v, key)
        else:
            yield key, v


def json_options(options: Mapping[str, Any]) -> Any:
    """Return reset ``options`` as the JSON data the file stores (a copy)."""
    try:
        return F.loads(F.dumps(options))
    except TypeError as exc:
        raise CaptureError(
            f"reset options must be JSON data to be recorded ({exc}); pass numbers, strings, "
            "lists and dicts"
        ) from None


def env_spec_json(env: gym.Env[Any, Any]) -> dict[str, Any] | None:
    """Return the env's spec as JSON data (callables and other non-data values as their repr)."""
    spec = env.spec
    if spec is None:
        return None

    def data(v: Any) -> Any:
        if v is None or isinstance(v, (bool, int, str)):
            return v
        if isinstance(v, float):
            return v if math.isfinite(v) else repr(v)
        if isinstance(v, (list, tuple)):
            return [data(x) for x in v]
        if isinstance(v, dict):
            return {str(k): data(x) for k, x in v.items()}
        if isinstance(v, np.generic):
            return v.item()
        return {F.REPR_TAG: repr(v)[:200]}

    wrappers = []
    for w in spec.additional_wrappers or ():
        wrappers.append(
            {
                F.WRAPPER_NAME: w.name,
                F.WRAPPER_ENTRY_POINT: str(w.entry_point),
                F.WRAPPER_KWARGS: data(w.kwargs),
            }
        )
    return {
        F.SPEC_ID: spec.id,
        F.SPEC_ENTRY_POINT: spec.entry_point
        if isinstance(spec.entry_point, str)
        else data(spec.entry_point),
        F.SPEC_KWARGS: data(dict(spec.kwargs)),
        F.SPEC_MAX_EPISODE_STEPS: spec.max_episode_steps,
        F.SPEC_REWARD_THRESHOLD: data(spec.reward_threshold),
        F.SPEC_NONDETERMINISTIC: bool(spec.nondeterministic),
        F.SPEC_ORDER_ENFORCE: bool(spec.order_enforce),
        F.SPEC_DISABLE_ENV_CHECKER: bool(spec.disable_env_checker),
        F.SPEC_ADDITIONAL_WRAPPERS: wrappers,
    }


def env_fields(env: Any, spec: dict[str, Any] | None, seed: int | None) -> dict[str, Any]:
    """Metadata describing the recorded env: id, spec, class, seed and spaces."""
    return {
        F.META_ENV_ID: spec[F.SPEC_ID] if spec else None,
        F.META_ENV_SPEC: spec,
        F.META_ENV_CLASS: snapshot.kind_of(env.unwrapped),
        F.META_SEED: seed,
        F.META_OBSERVATION_SPACE: _spaces.space_to_json(env.observation_space),
        F.META_ACTION_SPACE: _spaces.space_to_json(env.action_space),
    }


def check_seed_and_schedule(seed: Any, snapshot_every: int | None) -> None:
    """Refuse a seed that is not a non-negative int and a ``snapshot_every`` below 1."""
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        raise UsageError(f"seed must be a non-negative int, got {seed!r}")
    if snapshot_every is not None and snapshot_every < 1:
        raise UsageError(f"snapshot_every must be >= 1, got {snapshot_every}")


def open_writer(
    path: str | os.PathLike[str],
    fields: Mapping[str, Any],
    *,
    metadata: Mapping[str, Any] | None = None,
    **writer_options: Any,
) -> RecordingWriter:
    """Open a recording file with the metadata every recorder writes, plus ``fields``.

    The single-env, vector and env-less training recorders all start here, so the keys
    a reader relies on (``user``, ``skipped_info``, ``reset_options``, ``closed``) are
    spelled once.
    """
    from replaykit import provenance

    meta: dict[str, Any] = {
        **fields,
        F.META_USER: dict(metadata or {}),
        F.META_SKIPPED_INFO: [],
        F.META_RESET_OPTIONS: {},
        F.META_CLOSED: False,
    }
    return RecordingWriter(path, meta=meta, provenance=provenance.collect(), **writer_options)


class LeafWriter:
    """Writes one leaf value per row into a column, refusing silent dtype or shape changes."""

    __slots__ = (
        "buf",
        "col",
        "dt",
        "fast_type",
        "name",
        "shape",
        "stream",
        "tdtype",
        "tensor_type",
        "what",
    )

    def __init__(
        self, stream: StreamWriter, col: Column, what: str, first: Any = None, name: str = ""
    ) -> None:
        self.stream = stream
        self.name = name  # the key an info writer records (meta.skipped_info names it)
        self.col = col
        self.buf = col.buf
        self.dt = col.buf.dtype
        self.shape = col.shape
        self.what = what
        # A scalar class whose every value converts to exactly this column's dtype.
        self.fast_type: type | None = None
        if (
            col.logical is None
            and self.shape == ()
            and isinstance(first, (bool, int, float, np.generic))
        ):
            self.fast_type = type(first)
        # CPU tensors of a dtype numpy shares (probes such as logits) copy straight in.
        self.tensor_type: type | None = None
        self.tdtype: Any = None
        if (
            col.logical is None
            and type(first).__module__.startswith("torch")
            and getattr(first, "device", None) is not None
            and first.device.type == "cpu"
        ):
            self.tensor_type = type(first)
            self.tdtype = first.dtype

    def write(self, v: Any, p: int) -> None:
        """Store ``v`` at row ``p`` of the column's buffer."""
        c = v.__class__
        if c is np.ndarray:
            if v.dtype is self.dt and v.shape == self.shape:
                self.buf[p] = v
                return
        elif c is self.fast_type:
            try:
                self.buf[p] = v
            except OverflowError:
                raise NotRecordableError(
                    f"{self.what} is the int {v} at row {self.stream.rows}, beyond int64; "
                    "replaykit stores integers of at most 64 bits exactly"
                ) from None
            return
        elif (
            c is self.tensor_type
            and v.dtype is self.tdtype
            and v.shape == self.shape
            and v.device.type == "cpu"
        ):
            self.buf[p] = v.detach().numpy()
            return
        arr, logical = to_array(v, self.what)
        if (logical or arr.dtype) != (
            self.col.logical or self.col.dtype
        ) or arr.shape != self.shape:
            # Refused, never converted: a column has one dtype (FORMAT.md, "Ragged values"),
            # and storing a float64 into a float32 column would round it silently.
            raise CaptureError(
                f"{self.what} changed from {self.col.logical or self.col.dtype}"
                f"{list(self.shape)} to "
                f"{logical or arr.dtype}{list(arr.shape)} at row {self.stream.rows}; replaykit "
                "records each key with one dtype and shape and never rounds: cast it "
                "consistently (or exclude a ragged info key with ignore_info=...)"
            )
        self.buf[p] = arr

    def write_present(self, v: Any, p: int) -> None:
        """Store ``v`` at row ``p`` of an optional column and mark the row present."""
        self.write(v, p)
        assert self.col.present is not None
        self.col.present[p] = True


def column_writer(
    s: StreamWriter,
    column: str,
    what: str,
    value: Any,
    *,
    optional: bool = False,
    name: str = "",
    ignore: Iterable[str] = (),
    skipped: set[str] | None = None,
) -> LeafWriter | None:
    """Create the column that ``value`` starts (its dtype and shape), and its writer.

    Args:
        s: the stream to add the column to.
        column: the column's path in the stream.
        what: how errors name the value.
        value: the column's first value.
        optional: rows may lack a value (info keys, probes).
        name: the key that ``ignore`` and ``skipped`` speak of.
        ignore: keys not to record.
        skipped: collects the keys whose values are not numbers, arrays or tensors;
            ``None`` raises :class:`~replaykit.errors.CaptureError` for them instead.

    Returns:
        The column's writer, or ``None`` for an ignored or skipped key.
    """
    if name in ignore:
        return None
    try:
        arr, logical = to_array(value, what)
    except CaptureError:
        if skipped is None:
            raise
        skipped.add(name)
        return None
    col = s.column(column, arr.dtype, arr.shape, logical=logical, optional=optional)
    return LeafWriter(s, col, what, value, name)


def nonfinite_word(value: Any) -> str:
    """``NaN``, ``+inf`` or ``-inf`` (complex: the value's repr)."""
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return "+inf" if value > 0 else "-inf"
    return f"non-finite ({value!r})"


def nonfinite_report(
    bad: tuple[str, tuple[int, ...], Any] | None, snapshot_name: str, stacklevel: int = 3
) -> dict[str, Any] | None:
    """Warn about a first NaN/infinity ``(path, index, value)`` and describe it for metadata."""
    if bad is None:
        return None
    index = list(bad[1]) if isinstance(bad[1], tuple) else bad[1]
    warnings.warn(
        f"snapshot {snapshot_name!r}: tracked state holds a non-finite value ({bad[2]!r} at "
        f"{bad[0]} element {index}); the run had already diverged numerically here",
        ReplaykitWarning,
        stacklevel=stacklevel,
    )
    return {F.NONFINITE_PATH: bad[0], F.NONFINITE_INDEX: index, F.NONFINITE_VALUE: repr(bad[2])}


def first_nonfinite_value(values: Mapping[str, Any]) -> dict[str, Any] | None:
    """Find the first NaN/infinity among named values.

    Returns:
        ``{"probe", "index", "value"}`` of the first one, or ``None``.
    """
    for name, value in values.items():
        try:
            arr, logical = to_array(value, name)
        except CaptureError:
            continue
        if logical is not None or arr.dtype.kind not in "fc":
            continue
        bad = ~np.isfinite(arr)
        if bad.any():
            flat = int(np.flatnonzero(bad)[0])
            index = [int(i) for i in np.unravel_index(flat, arr.shape)] if arr.ndim else []
            return {
                F.NONFINITE_PROBE: name,
                F.NONFINITE_INDEX: index,
                F.NONFINITE_VALUE: repr(arr.reshape(-1)[flat].item()),
            }
    return None


class UpdateLog:
    """Writes the ``updates`` stream of a recording (shared by every recorder).

    Args:
        writer: the recording's writer; the stream is created at the first update.
    """

    def __init__(self, writer: RecordingSink) -> None:
        self._writer = writer
        self._stream: StreamWriter | None = None
        self.count = 0
        self.first_nonfinite: dict[str, Any] | None = None
        # Called with the first non-finite update's record (flight mode: a failure record).
        self.on_nonfinite: Any = None
        # Names in first-logged order: stream columns are stored sorted, and "the first probe
        # that differs" within one update means the first one the loop computed.
        self._order: list[str] = []

    def log(self, step: int, values: Mapping[str, Any]) -> int:
        """Append one update row tagged with ``step``; returns the update index."""
        s = self._stream
        if s is None:
            s = self._stream = self._writer.stream(F.UPDATES)
        # Every value is checked before anything is written: a refused update leaves no
        # half-filled row (a stale present flag would show up in the next update).
        rows = self.count
        checked = []
        for name, value in values.items():
            what = f"update value {name!r}"
            key = F.column_path(F.PROBE, name)
            problem = probe_name_problem(name, key, s)
            if problem is not None:
                raise CaptureError(
                    f"{what} (update {rows}) {problem}; rename it: update names are column names"
                )
            arr, logical = to_array(value, what)
            col = s.columns.get(key)
            if col is not None and (
                (logical or arr.dtype) != (col.logical or col.dtype) or arr.shape != col.shape
            ):
                raise CaptureError(
                    f"{what} changed from {col.logical or col.dtype}{list(col.shape)} to "
                    f"{logical or arr.dtype}{list(arr.shape)} at update {rows}; replaykit "
                    "records each value with one dtype and shape and never rounds: cast it "
                    "consistently"
                )
            checked.append((name, key, what, arr, logical))
        p = s.pos
        step_col = s.column(F.UPDATE_STEP, np.dtype(np.int64), ())
        step_col.buf[p] = step
        for name, key, _what, arr, logical in checked:
            if key not in s.columns:
                self._order.append(name)
                self._writer.update_meta(**{F.META_UPDATE_PROBE_ORDER: list(self._order)})
            col = s.column(key, arr.dtype, arr.shape, logical=logical, optional=True)
            col.buf[p] = arr
            assert col.present is not None
            col.present[p] = True
        s.end_row()
        if self.first_nonfinite is None:
            bad = first_nonfinite_value(values)
            if bad is not None:
                self.first_nonfinite = {
                    F.NONFINITE_UPDATE: self.count,
                    F.NONFINITE_STEP: step,
                    **bad,
                }
                self._writer.update_meta(**{F.META_FIRST_NONFINITE_UPDATE: self.first_nonfinite})
                if self.on_nonfinite is not None:
                    self.on_nonfinite(self.first_nonfinite)
        self.count += 1
        return self.count - 1


class RecorderCore:
    """What every recorder does besides writing rows: the file, tracked objects, snapshots.

    The base of :class:`~replaykit.RecordingWrapper`, :class:`~replaykit.VectorRecordingWrapper`
    and :class:`~replaykit.TrainingRecorder`. A subclass calls :meth:`_open` in its
    ``__init__``, builds its snapshots' ``env`` and ``recorder`` parts and hands them to
    :meth:`_write_snapshot`, and says what closing writes in :meth:`_final_meta`.
    """

    path: Path
    _writer: RecordingSink
    _update_log: UpdateLog
    _tracked: dict[str, Any]
    _snap_seq: int
    _closed: bool
    _halted: bool
    _refused: str | None
    # Env recorders only (see _open_env and _schedule).
    _t: int
    _steps: StreamWriter
    _resets: StreamWriter
    _snapshot_at: set[int]
    _snapshot_every: int | None
    # The next step count at which a snapshot may be due (recomputed after each check).
    _next_snapshot: float = 0
    # Flight mode: failure detection and snapshot retention (see _start_flight).
    _detect: bool = False
    _failure: dict[str, Any] | None = None
    _keep: int | None = None
    _periodic: list[str]
    _snap_pos: dict[str, tuple[int, int, int]]
    _retention: dict[str, Any] | None = None

    def _open(
        self,
        path: str | os.PathLike[str],
        fields: Mapping[str, Any],
        *,
        metadata: Mapping[str, Any] | None,
        **writer_options: Any,
    ) -> None:
        """Open the recording file (see :func:`open_writer`) and start the session's state."""
        self._writer = open_writer(path, fields, metadata=metadata, **writer_options)
        self.path = self._writer.path
        self._update_log = UpdateLog(self._writer)
        self._tracked = {}
        self._snap_seq = 0
        self._closed = False
        # True once steps are no longer accepted: closed, or a step was refused.
        self._halted = False
        self._refused = None
        self._periodic = []
        self._snap_pos = {}

    def _open_env(
        self,
        env: Any,
        spec: dict[str, Any] | None,
        seed: int | None,
        path: str | os.PathLike[str],
        fields: Mapping[str, Any],
        **options: Any,
    ) -> None:
        """Open the recording of an env (single or vector) and its steps and resets streams.

        Seeds the env's spaces with ``seed``, then opens the file (:meth:`_open`, with
        ``options``) with the env's metadata (:func:`env_fields`) plus ``fields``.
        """
        if seed is not None:
            env.action_space.seed(seed)
            env.observation_space.seed(seed)
        self._open(path, {**env_fields(env, spec, seed), **fields}, **options)
        self._steps = self._writer.stream(F.STEPS)
        self._resets = self._writer.stream(F.RESETS)
        self._steps.on_block_full = self._writer.maybe_commit

    @property
    def update_count(self) -> int:
        """Training updates logged so far (the index of the next update)."""
        return self._update_log.count

    @property
    def snapshot_names(self) -> list[str]:
        """Names of the snapshots written so far, oldest first."""
        return list(self._writer.snapshots)

    def track(self, name: str, obj: Any) -> None:
        """Include ``obj`` in every snapshot under ``name``.

        Accepts torch modules, optimizers, LR schedulers, grad scalers,
        NumPy/torch/Python generators, NumPy arrays, dicts of arrays, and any
        object with ``state_dict``/``load_state_dict`` or
        ``__replaykit_state__``/``__replaykit_restore__``.
        """
        if not F.is_valid_name(name):
            raise UsageError(f"tracked name {name!r} must be non-empty, printable, without '/'")
        snapshot.capture_tracked(obj, name)  # refuse an uncapturable object now, not mid-run
        self._tracked[name] = obj

    def set_metadata(self, key: str, value: Any) -> None:
        """Store JSON data under ``meta["user"][key]`` in the file (written at the next commit)."""
        user = dict(self._writer.meta.get(F.META_USER) or {})
        user[key] = value
        self._writer.update_meta(**{F.META_USER: user})

    @property
    def failure(self) -> dict[str, Any] | None:
        """The run's failure record (see :meth:`mark_failure`), or ``None`` while none."""
        return None if self._failure is None else dict(self._failure)

    def mark_failure(self, reason: str) -> None:
        """Record that the run failed here, for a reason of your own (a check you wrote).

        Writes the failure record (step, episode, update, the reason, and the newest
        snapshot taken before this point) and commits it. Only the first failure of a run
        is recorded; retention then keeps every snapshot, and flight mode takes no more
        periodic ones. ``replaykit inspect`` shows it first; ``replaykit extract`` cuts a
        small recording from the nearest snapshot through it.

        Args:
            reason: one line saying what went wrong (stored as text, shown escaped).
        """
        self._require_open()
        self._record_failure({F.FAILURE_KIND: F.FAILURE_MARKED, F.FAILURE_REASON: str(reason)})

    def flight_snapshot(self, name: str | None = None, *, extra: Any = None) -> str | None:
        """Take a periodic snapshot under flight-mode retention; returns its name.

        For loops that snapshot at a point of their own (the top of an iteration) rather
        than with ``snapshot_every``: the rows so far are checked for failures first, the
        snapshot is written, and then only the first and the last ``keep_snapshots`` such
        snapshots stay. Once a failure is recorded no more are taken (``None`` is returned),
        so the snapshots before the failure are the ones kept.

        Example:
            >>> # if env.step_count % 10_000 == 0:
            >>> #     env.flight_snapshot()
        """
        self._require_open()
        if self._detect:
            self._scan_failures()
            if self._failure is not None:
                return None
        name = self.snapshot(name, extra=extra)
        self._periodic.append(name)
        self._retain()
        return name

    def close(self, **kwargs: Any) -> None:
        """Write the closing metadata, close the file, then close what the recorder wraps."""
        if self._closed:
            return
        if self._detect and not self._writer_broken():
            with _suppress_write_errors():
                self._scan_failures()
        self._closed = self._halted = True
        try:
            self._writer.update_meta(**{F.META_CLOSED: True, **self._final_meta()})
            self._writer.close()
        finally:
            self._close_wrapped(**kwargs)

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, et: Any, exc: Any, tb: Any) -> Literal[False]:
        if (
            self._detect
            and isinstance(exc, Exception)
            and not self._closed
            and not self._writer_broken()
        ):
            with _suppress_write_errors():
                self._record_exception(exc)
        self.close()
        return False

    def snapshot(self, name: str | None = None, *, extra: Any = None) -> str:
        """Snapshot everything needed to continue from this point; returns its name."""
        raise NotImplementedError

    # ------------------------------------------------------------------ for subclasses
    def _schedule(self, snapshot_at: Iterable[int], snapshot_every: int | None) -> None:
        """Keep the step counts after which :meth:`_snapshot_if_due` snapshots."""
        self._snapshot_at = {int(s) for s in snapshot_at}
        self._snapshot_every = snapshot_every

    def _snapshot_if_due(self, t: int) -> None:
        """Snapshot if step count ``t`` is scheduled, and set the next count worth checking."""
        # step() compares the step count with one precomputed number; the set lookup and the
        # modulo run only here.
        every = self._snapshot_every
        periodic = every is not None and t % every == 0
        if periodic and t not in self._snapshot_at:
            # Every row so far is checked before it: no periodic snapshot is ever taken (nor
            # an older one dropped) after a failure that is already in the rows.
            self.flight_snapshot()
        elif t in self._snapshot_at:
            self.snapshot()
        later = [s for s in self._snapshot_at if s > t]
        if every is not None:
            later.append((t // every + 1) * every)
        self._next_snapshot = min(later, default=math.inf)

    def _require_open(self) -> None:
        if self._closed:
            raise UsageError(RECORDING_CLOSED)
        if self._refused is not None:
            raise UsageError(self._refused)

    def _halt_after_refusal(self, exc: BaseException) -> None:
        """Accept no more steps: the env has moved past a step the file does not hold."""
        why = (str(exc).splitlines() or [type(exc).__name__])[0]
        self._refused = (
            f"the recording stopped at step {self._t}, whose values were refused ({why}); "
            "the env has moved past a step the file does not hold, so later steps cannot be "
            f"recorded in line: close() the recorder (the file keeps the {self._t} steps "
            "before it) and record again with that value fixed"
        )
        self._halted = True

    def _snapshot_name(self, name: str | None, prefix: str, count: int) -> str:
        """Return ``name``, or ``<prefix>-<count>`` made unique with the sequence number."""
        if name is None:
            name = f"{prefix}-{count:06d}"
            if name in self._writer.snapshots:
                name = f"{name}-{self._snap_seq}"
        return name

    def _write_snapshot(
        self, name: str, meta: dict[str, Any], *, nonfinite: bool = True, **parts: Any
    ) -> str:
        """Capture the tracked objects and global RNGs with the given parts; write the snapshot.

        Args:
            name: the snapshot's name.
            meta: the snapshot's metadata; ``tracked``, ``nonfinite`` and ``bytes`` are added.
            nonfinite: look for (and warn about) NaN/infinity in the tracked state.
            **parts: the other parts of the tree, as :func:`replaykit._state.snapshot.build`
                takes them: ``env`` (the env's captured state), ``recorder`` (the recorder's
                position), ``fallback`` and ``extra``.
        """
        from replaykit._state.modelstate import sharing

        # The tree goes straight to disk, so tensors need no copy first (half the time of a
        # large snapshot); nothing runs between capture and write that could change them.
        with sharing():
            tree = snapshot.build(tracked=self._tracked, **parts)
            meta[F.SNAP_TRACKED] = sorted(self._tracked)
            if nonfinite:
                meta[F.SNAP_NONFINITE] = None  # filled in by the writer's scan
            # The non-finite scan runs inside the write, on each chunk as it is hashed and
            # written: no second pass over the tensors, no boolean tensor per parameter.
            meta[F.SNAP_BYTES] = self._writer.write_snapshot(
                name, tree, meta, nonfinite_under=F.TREE_TRACKED if nonfinite else None
            )
            if nonfinite:
                meta[F.SNAP_NONFINITE] = nonfinite_report(
                    self._writer.last_nonfinite, name, stacklevel=4
                )
        self._snap_seq += 1
        self._snap_pos[name] = (
            int(meta.get(F.SNAP_STEP, 0)),
            int(meta.get(F.SNAP_UPDATES, 0)),
            self._snap_seq,
        )
        return name

    # ------------------------------------------------------------------ flight mode
    def _start_flight(self, keep: int | None, every: int | None, detect: bool | None) -> None:
        """Turn on retention and failure detection.

        Retention keeps the first and the last ``keep`` periodic snapshots; ``detect``
        defaults to on when ``keep`` is given.
        """
        if keep is not None:
            if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
                raise UsageError(f"keep_snapshots must be an int >= 1, got {keep!r}")
            self._keep = keep
            self._writer.reuse_snapshot_slots = True
            self._retention = {
                F.RETENTION_EVERY: every,
                F.RETENTION_KEEP: keep,
                F.RETENTION_DROPPED: 0,
            }
            self._writer.update_meta(**{F.META_RETENTION: dict(self._retention)})
        self._detect = bool(keep is not None if detect is None else detect)
        if self._detect:
            self._update_log.on_nonfinite = self._update_failure
            _watch_uncaught(self)

    def _retain(self) -> None:
        """Drop periodic snapshots beyond the first and the last ``keep`` (after a publish).

        Nothing is dropped once a failure is recorded: the snapshots before it are the
        ones worth keeping.
        """
        keep = self._keep
        if keep is None or self._failure is not None:
            return
        while len(self._periodic) > keep + 1:
            name = self._periodic.pop(1)
            self._writer.drop_snapshot(name)
            self._snap_pos.pop(name, None)
            assert self._retention is not None
            self._retention[F.RETENTION_DROPPED] += 1
            self._writer.update_meta(**{F.META_RETENTION: dict(self._retention)})

    def _position(self) -> dict[str, Any]:
        """Return the failure record's position fields (step, episode, update) now."""
        episode = getattr(self, "episode", -1)
        return {
            F.FAILURE_STEP: int(getattr(self, "step_count", 0)),
            F.FAILURE_EPISODE: episode if isinstance(episode, int) else -1,
            F.FAILURE_UPDATE: self._update_log.count,
        }

    def _scan_failures(self) -> None:
        """Look for non-finite values in rows not checked yet (env recorders)."""

    def _record_first_nonfinite(
        self, s: StreamWriter, lo: int, hi: int, recent: list[int], *, episodes: bool
    ) -> None:
        """Record the first NaN/infinity in buffered rows ``[lo, hi)`` of ``s`` as the failure.

        Observations, rewards and probes are checked a block at a time (vectorised; nothing
        runs per step): the first non-finite element (lowest row, then column order) becomes
        the failure record at its own row's step (and episode, with ``episodes``).
        ``recent`` holds the step counts at which the updates logged since the last scan
        were logged, to place the failure among them.
        """
        best: tuple[int, str, Any] | None = None
        for col in s.columns.values():
            name = col.name
            if name not in (F.REWARD, F.OBS) and not name.startswith((F.OBS + "/", F.PROBE + "/")):
                continue
            if col.logical is not None or col.buf.dtype.kind not in "fc":
                continue
            bad = ~np.isfinite(col.buf[lo:hi].reshape(hi - lo, -1))
            if col.present is not None:
                bad &= col.present[lo:hi, None]
            rows = bad.any(axis=1)
            if rows.any():
                r = int(np.argmax(rows))
                if best is None or r < best[0]:
                    best = (r, name, bad[r])
        if best is None:
            return
        r, name, bad_row = best
        row = s.rows - s.pos + lo + r  # the global step index of the row
        col = s.columns[name]
        flat = int(np.flatnonzero(bad_row)[0])
        value = col.buf[lo + r].reshape(-1)[flat].item()
        index = [int(i) for i in np.unravel_index(flat, col.shape)] if col.shape else []
        before = self._update_log.count - len(recent)
        self._record_failure(
            {
                F.FAILURE_KIND: F.FAILURE_NONFINITE,
                F.FAILURE_WHERE: name.split("/", 1)[0],
                F.FAILURE_KEY: name,
                F.FAILURE_INDEX: index,
                F.FAILURE_VALUE: repr(value),
                F.FAILURE_REASON: f"{name} {nonfinite_word(value)}"
                + (f" at element {index}" if index else ""),
            },
            {
                F.FAILURE_STEP: row,
                F.FAILURE_EPISODE: int(s.columns[F.EPISODE].buf[lo + r]) if episodes else -1,
                F.FAILURE_UPDATE: before + sum(1 for u in recent if u <= row),
            },
        )

    def _writer_broken(self) -> bool:
        return getattr(self._writer, "_broken", None) is not None or self._closed

    def _nearest_snapshot(self, step: int, update: int) -> str | None:
        """Return the newest snapshot taken at or before (``step``, ``update``), if any."""
        best: tuple[int, str] | None = None
        for name, (s_step, s_upd, seq) in self._snap_pos.items():
            if (
                s_step <= step
                and s_upd <= update
                and name in self._writer.snapshots
                and (best is None or seq > best[0])
            ):
                best = (seq, name)
        return None if best is None else best[1]

    def _record_failure(
        self, fields: Mapping[str, Any], position: Mapping[str, Any] | None = None
    ) -> None:
        """Write the failure record (the first failure only) and commit it."""
        if self._failure is not None:
            return
        record = {**(position or self._position()), **fields}
        record[F.FAILURE_SNAPSHOT] = self._nearest_snapshot(
            int(record[F.FAILURE_STEP]), int(record[F.FAILURE_UPDATE])
        )
        self._failure = record
        self._writer.update_meta(**{F.META_FAILURE: record})
        self._writer.commit()

    def _record_exception(self, exc: BaseException) -> None:
        """Record an exception that escaped the recorded loop (after checking the rows)."""
        if self._detect:
            self._scan_failures()
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        limit = F.FAILURE_TEXT_MAX
        message = str(exc)
        kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
        self._record_failure(
            {
                F.FAILURE_KIND: F.FAILURE_EXCEPTION,
                F.FAILURE_REASON: f"{type(exc).__name__}: {message}"[:200],
                F.FAILURE_EXC_TYPE: kind,
                F.FAILURE_MESSAGE: message[:limit],
                F.FAILURE_TRACEBACK: text if len(text) <= limit else "..." + text[-limit:],
            }
        )

    def _update_failure(self, bad: Mapping[str, Any]) -> None:
        """Record the first non-finite value of a logged update as the run's failure."""
        position = self._position()
        position[F.FAILURE_UPDATE] = int(bad[F.NONFINITE_UPDATE])
        self._record_failure(
            {
                F.FAILURE_KIND: F.FAILURE_NONFINITE,
                F.FAILURE_WHERE: "update",
                F.FAILURE_KEY: bad[F.NONFINITE_PROBE],
                F.FAILURE_INDEX: list(bad[F.NONFINITE_INDEX]),
                F.FAILURE_VALUE: bad[F.NONFINITE_VALUE],
                F.FAILURE_REASON: f"update value {bad[F.NONFINITE_PROBE]!r} is "
                f"{bad[F.NONFINITE_VALUE]}",
            },
            position,
        )

    def _final_meta(self) -> dict[str, Any]:
        """Return the metadata :meth:`close` writes besides ``closed``."""
        raise NotImplementedError

    def _close_wrapped(self, **kwargs: Any) -> None:
        """Close what the recorder wraps (nothing by default)."""


class _suppress_write_errors:  # noqa: N801 - used as a context manager, reads like a keyword
    """Ignore a failed write while recording a failure on the way out.

    The error that stopped the writer is the one to report, not this one.
    """

    def __enter__(self) -> None:
        return None

    def __exit__(self, et: Any, exc: Any, tb: Any) -> bool:
        from replaykit.errors import RecordingWriteError

        return isinstance(exc, RecordingWriteError)


# Recorders that record an uncaught exception as their failure (flight mode).
_WATCHED: weakref.WeakSet[RecorderCore] = weakref.WeakSet()
_HOOK: dict[str, Any] = {"previous": None}


def _excepthook(et: Any, exc: Any, tb: Any) -> None:
    for rec in list(_WATCHED):
        if not rec._closed and isinstance(exc, Exception):
            with contextlib.suppress(Exception):  # never mask the user's exception
                rec._record_exception(exc)
    hook = _HOOK["previous"] or sys.__excepthook__
    hook(et, exc, tb)


def _watch_uncaught(rec: RecorderCore) -> None:
    """Record an exception that ends the program (``sys.excepthook``) in ``rec``'s file."""
    _WATCHED.add(rec)
    if sys.excepthook is not _excepthook:
        _HOOK["previous"] = sys.excepthook
        sys.excepthook = _excepthook
