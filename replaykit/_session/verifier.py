"""The verifier core every replay session shares: recorded rows, checks, reports, restores."""

from __future__ import annotations

import contextlib
import fnmatch
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import gymnasium as gym
import numpy as np

from replaykit._analysis.compare import (
    EXACT,
    DivergenceReport,
    Mismatch,
    Rule,
    Rules,
    compare_arrays,
)
from replaykit._format import layout as F
from replaykit._format.store import Recording, SnapshotInfo, StreamReader
from replaykit._session.recorder import NotRecordableError, first_nonfinite_value, to_array
from replaykit._state import spaces as _spaces
from replaykit.errors import DivergenceError, PrefixEndError, UsageError

__all__ = [
    "DEFAULT_IGNORE",
    "ReplayCore",
    "Rows",
    "UpdateChecker",
    "Verifier",
    "as_rules",
    "join_notes",
    "leaf_values",
    "restoring",
    "space_problems",
]

_S = TypeVar("_S")

# Keys that legitimately differ between runs (wall-clock times).
DEFAULT_IGNORE: tuple[str, ...] = ("info/episode/t", "reset/info/episode/t")

# Rows a Rows reader fetches per column at once.
BLOCK_ROWS = 512


class Rows:
    """Reads rows of a recorded stream in cached blocks.

    The stream's commit record is read on first use: a restore that never resets or
    logs an update does not pay for those streams.
    """

    def __init__(self, rec: Recording, name: str) -> None:
        self._rec = rec
        self._name = name
        self._stream: StreamReader | None = None
        self._cache: dict[str, tuple[int, np.ndarray, np.ndarray | None]] = {}

    @property
    def stream(self) -> StreamReader:
        """The stream's reader (opened at first use)."""
        if self._stream is None:
            self._stream = self._rec.stream(self._name)
        return self._stream

    @property
    def rows(self) -> int:
        """Rows the stream holds."""
        return int(self.stream.rows)

    def get(self, column: str, i: int) -> tuple[np.ndarray, bool]:
        """Return row ``i`` of ``column`` and whether the row holds a value."""
        c = self._cache.get(column)
        if c is None or not c[0] <= i < c[0] + len(c[1]):
            lo = i
            data = self.stream.read(column, lo, lo + BLOCK_ROWS)
            present = self.stream.present(column, lo, lo + BLOCK_ROWS)
            c = self._cache[column] = (lo, data, present)
        lo, data, present = c
        return data[i - lo], True if present is None else bool(present[i - lo])

    def value(self, column: str, i: int) -> Any:
        """Return row ``i`` of ``column`` as a value a live object would hold (a copy)."""
        v, _ = self.get(column, i)
        return v.copy() if isinstance(v, np.ndarray) and v.ndim else v[()]


class Verifier:
    """Compares live values with recorded rows and raises at the first difference."""

    def __init__(
        self,
        rec: Recording,
        snap: SnapshotInfo | None,
        rules: Rules,
        ignore: Iterable[str],
        error: type[DivergenceError] = DivergenceError,
        note: str = "",
    ) -> None:
        self.rec = rec
        self.snap = snap
        self.rules = rules
        self.ignore = tuple(ignore)
        self.error = error
        self.note = note
        self.compared = 0
        # Called at a failure with (stream, row): a note on what else the replay did differently.
        self.hint: Callable[[str, int | None], str] | None = None

    def ignored(self, key: str) -> bool:
        """Tell whether ``key`` matches one of the ignore patterns."""
        return any(fnmatch.fnmatchcase(key, p) for p in self.ignore)

    def check(
        self,
        key: str,
        expected: np.ndarray,
        actual: Any,
        *,
        stream: str,
        row: int,
        episode: int | None,
        k: int | None,
        logical: str | None = None,
    ) -> None:
        """Compare ``actual`` with the recorded ``expected`` under ``key``'s rule."""
        __tracebackhide__ = True
        if self.ignored(key):
            return
        arr, alog = to_array(actual, key) if not isinstance(actual, np.ndarray) else (actual, None)
        rule = self.rules.for_key(key)
        m = compare_arrays(
            expected,
            arr,
            rule,
            logical=logical,
            actual_logical=alog or logical if alog else logical,
        )
        self.compared += 1
        if m is not None:
            self.fail(key, m, rule, stream=stream, row=row, episode=episode, k=k)

    def fail(
        self,
        key: str,
        m: Mismatch,
        rule: Rule,
        *,
        stream: str,
        row: int | None,
        episode: int | None,
        k: int | None,
        note: str = "",
    ) -> None:
        """Raise the session's divergence error for ``key`` with a full report."""
        __tracebackhide__ = True
        from replaykit import provenance

        hint = self.hint(stream, row) if self.hint is not None else ""
        report = DivergenceReport(
            key=key,
            mismatch=m,
            rule=rule.describe(),
            source=str(self.rec.path),
            snapshot=self.snap.name if self.snap else None,
            stream=stream,
            row=row,
            episode=episode,
            step_in_episode=k,
            provenance=provenance.differences(self.rec.provenance, provenance.collect()),
            note=join_notes(note or self.note, hint),
        )
        raise self.error(report)


class UpdateChecker:
    """Verifies training updates against a recording's ``updates`` stream.

    Shared by :class:`Replay` and envless training replays. Remembers the first
    non-finite value it meets and names it in the note of any later divergence.
    """

    def __init__(self, rec: Recording, verifier: Verifier) -> None:
        self._rows = Rows(rec, F.UPDATES) if rec.has_stream(F.UPDATES) else None
        self._v = verifier
        # A recording that was never closed (killed, interrupted) is a committed prefix:
        # its updates stream may end before the update its last committed step triggered.
        self._prefix = rec.meta.get(F.META_CLOSED) is False
        self.first_nonfinite: dict[str, Any] | None = None
        self._base_note = verifier.note
        recorded = rec.meta.get(F.META_FIRST_NONFINITE_UPDATE)
        if isinstance(recorded, dict):
            self._base_note = join_notes(
                self._base_note,
                "the recording met its first non-finite update value at update "
                f"{recorded.get(F.NONFINITE_UPDATE)}, probe {recorded.get(F.NONFINITE_PROBE)!r}, "
                f"element {recorded.get(F.NONFINITE_INDEX)}: {recorded.get(F.NONFINITE_VALUE)}",
            )
            verifier.note = self._base_note

    @property
    def rows(self) -> int:
        """Updates the recording holds."""
        return 0 if self._rows is None else self._rows.rows

    def logged_before(self, step: int) -> int:
        """Count the recorded updates logged before step ``step`` (at step counts ``<= step``)."""
        if self._rows is None or not self._rows.rows:
            return 0
        first = self._rows.stream.first  # an extract holds the updates from its snapshot on
        steps = self._rows.stream.read(F.UPDATE_STEP, first, self._rows.rows)
        return first + int(np.searchsorted(steps, step, side="right"))

    def check(self, u: int, values: Mapping[str, Any]) -> int:
        """Compare update ``u``'s values with the recording; raises at the first difference."""
        __tracebackhide__ = True
        rows = self._rows
        if rows is None or u >= rows.rows:
            if self._prefix:
                raise PrefixEndError(
                    f"replayed to the end of the committed prefix: the recording was not "
                    f"closed and holds {self.rows} updates, not update {u}; everything before "
                    "was verified (record again and close it to replay further)"
                )
            raise UsageError(
                f"the recording holds {self.rows} updates; update {u} was not recorded"
            )
        if self.first_nonfinite is None:
            bad = first_nonfinite_value(values)
            if bad is not None:
                self.first_nonfinite = {F.NONFINITE_UPDATE: u, **bad}
                self._v.note = join_notes(
                    self._base_note,
                    f"first non-finite value met in this replay: update {u}, probe "
                    f"{bad[F.NONFINITE_PROBE]!r}, element {bad[F.NONFINITE_INDEX]}: "
                    f"{bad[F.NONFINITE_VALUE]}",
                )
        st = rows.stream
        where: dict[str, Any] = {"stream": F.UPDATES, "row": u, "episode": None, "k": None}
        # In the order the loop logged them: the first one that differs is the one to name.
        for key in values:
            col = F.column_path(F.PROBE, key)
            if col not in st.columns:
                self._v.fail(f"update/{key}", Mismatch("extra"), EXACT, **where)
            expected, present = rows.get(col, u)
            if not present:
                self._v.fail(f"update/{key}", Mismatch("extra"), EXACT, **where)
            self._v.check(
                f"update/{key}", expected, values[key], logical=st.logical_dtype(col), **where
            )
        for col in st.columns:
            if col.startswith(F.PROBE + "/") and col[len(F.PROBE) + 1 :] not in values:
                _, present = rows.get(col, u)
                name = col[len(F.PROBE) + 1 :]
                if present and not self._v.ignored(f"update/{name}"):
                    self._v.fail(f"update/{name}", Mismatch("missing"), EXACT, **where)
        return u


def _recordable(value: Any, what: str) -> bool:
    """Tell whether a recorder would store ``value`` (a number, array or tensor of numbers)."""
    try:
        to_array(value, what)
    except NotRecordableError:
        return False
    return True


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def join_notes(*notes: str) -> str:
    """Join the non-empty notes with ``"; "``."""
    return "; ".join(n for n in notes if n)


def leaf_values(leaves: list[_spaces.Leaf], value: Any) -> dict[str, Any]:
    """Return ``{leaf name: part of value}`` for each leaf of a space."""
    return {leaf.name: _spaces.getter(leaf.path)(value) for leaf in leaves}


def as_rules(rules: Rules | Mapping[str, Rule] | None) -> Rules:
    """Return ``rules`` as a :class:`~replaykit._analysis.compare.Rules`."""
    return rules if isinstance(rules, Rules) else Rules(rules)


def space_problems(
    rec: Recording, observation_space: gym.Space[Any], action_space: gym.Space[Any]
) -> list[str]:
    """Say which of the recorded observation and action spaces the live ones differ from."""
    problems = []
    if rec.meta.get(F.META_OBSERVATION_SPACE) != _spaces.space_to_json(observation_space):
        problems.append("observation space differs from the recorded one")
    if rec.meta.get(F.META_ACTION_SPACE) != _spaces.space_to_json(action_space):
        problems.append("action space differs from the recorded one")
    return problems


@contextlib.contextmanager
def restoring(
    recording: Recording | str | os.PathLike[str], verify: bool
) -> Iterator[tuple[Recording, bool]]:
    """Open ``recording`` for a restore, and close it again if the restore fails.

    Args:
        recording: a path (opened here, then owned by the replay) or an open recording
            (the caller's, never closed here).
        verify: check file checksums.

    Yields:
        ``(recording, owns)``.
    """
    __tracebackhide__ = True
    owns = not isinstance(recording, Recording)
    rec = recording if isinstance(recording, Recording) else Recording(recording, verify=verify)
    try:
        yield rec, owns
    except BaseException:
        if owns:
            rec.close()
        raise


class ReplayCore:
    """What every replay does besides stepping: the recording, its checks, updates, closing.

    The base of :class:`~replaykit.Replay`, :class:`~replaykit.VectorReplay` and
    :class:`~replaykit.TrainingReplay`. It reads the recorded steps, resets and updates,
    and holds the checks the single-env and vector replays share.

    Args:
        rec: the recording.
        snap: the restored snapshot.
        position: the recorder's position at the snapshot (its ``recorder`` tree).
        owns: close ``rec`` with the replay.
        extra: the ``extra`` tree given to ``snapshot``.
        **checks: how values are compared, as :class:`Verifier` takes them: ``rules``,
            ``ignore``, ``error`` and ``note``.

    Attributes:
        recording: the recording.
        snapshot: which snapshot was restored.
        extra: the ``extra`` tree given to ``snapshot``.
        step_count: the step index of the next step (steps taken so far, counting the
            recorded ones before the snapshot), as on the recorders.
        update_count: the index of the next update (updates so far), as on the recorders.
        verified_steps: steps verified since the restore.
        verified_updates: updates verified since the restore.
    """

    def __init__(
        self,
        rec: Recording,
        snap: SnapshotInfo,
        position: Mapping[str, Any],
        owns: bool,
        *,
        extra: Any = None,
        **checks: Any,
    ) -> None:
        self.recording = rec
        self.snapshot = snap
        self.extra = extra
        self._owns = owns
        self.step_count = int(position.get(F.SNAP_STEP, 0))
        self.update_count = int(position.get(F.SNAP_UPDATES, 0))
        self.verified_steps = 0
        self.verified_updates = 0
        self._v = Verifier(rec, snap, **checks)
        self._steps = Rows(rec, F.STEPS) if rec.has_stream(F.STEPS) else None
        self._resets = Rows(rec, F.RESETS)
        self._update_check = UpdateChecker(rec, self._v)
        self._snapshot_updates = self.update_count
        self._v.hint = self._skipped_updates_hint
        self._skipped_info = frozenset(rec.meta.get(F.META_SKIPPED_INFO) or ())

    @property
    def steps_left(self) -> int:
        """Recorded steps after the current position."""
        return 0 if self._steps is None else self._steps.rows - self.step_count

    @property
    def updates_left(self) -> int:
        """Recorded updates after the current position."""
        return self._update_check.rows - self.update_count

    @property
    def first_nonfinite(self) -> dict[str, Any] | None:
        """The first NaN/infinity met among verified update values (update, probe, element)."""
        return self._update_check.first_nonfinite

    def log_update(self, **values: Any) -> int:
        """Check one training update's values against the recorded update stream.

        Raises:
            DivergenceError: a value differs from the recorded one.
        """
        __tracebackhide__ = True
        u = self._update_check.check(self.update_count, values)
        self.update_count += 1
        self.verified_updates += 1
        return u

    def close(self) -> None:
        """Close the recording if the replay opened it."""
        if self._owns:
            self.recording.close()

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _skipped_updates_hint(self, stream: str, row: int | None) -> str:
        """At a step that diverges, say so when the recording had logged more updates by then.

        A loop resumed from a snapshot taken mid-rollout that skips the rest of the rollout
        (and its updates) diverges steps later at some probe; the update counts say why.
        """
        if stream != F.STEPS or row is None:
            return ""
        recorded = self._update_check.logged_before(row) - self._snapshot_updates
        replayed = self.update_count - self._snapshot_updates
        if recorded <= replayed:
            return ""
        return (
            f"the recording logged {_count(recorded, 'update')} after the snapshot and before "
            f"this step; this replay logged {_count(replayed, 'update') if replayed else 'none'}"
            " — did the resumed loop skip an update?"
        )

    # ------------------------------------------------------------------ for subclasses
    def _where(self) -> dict[str, Any]:
        """Return where the next step is, for reports: ``stream``, ``row``, ``episode``, ``k``."""
        raise NotImplementedError

    def _steps_rows(self) -> Rows:
        if self._steps is None:
            raise UsageError(f"{self.recording.path} holds no steps")
        return self._steps

    def _next_step_rows(self) -> Rows:
        """Return the steps' rows, refusing a step past the recording's end."""
        rows = self._steps_rows()
        if self.step_count >= rows.rows:
            raise UsageError(
                f"the recording ends at step {rows.rows}; {self.verified_steps} steps were "
                "verified after the snapshot — step fewer times or record longer"
            )
        return rows

    def _recorded(
        self, rows: Rows, prefix: str, leaves: list[_spaces.Leaf], space: gym.Space[Any], i: int
    ) -> Any:
        """Return the value of ``space`` recorded under ``prefix`` at row ``i``."""
        values = {leaf.name: rows.value(F.column_path(prefix, leaf.name), i) for leaf in leaves}
        return _spaces.unflatten(space, values)

    def _recorded_reset(self, r: int) -> tuple[Any, Any, dict[str, Any] | None]:
        """Return ``(seed, seeded, options)`` recorded for reset ``r``."""
        seed, _ = self._resets.get(F.RESET_SEED, r)
        seeded, _ = self._resets.get(F.RESET_SEEDED, r)
        options = self.recording.meta.get(F.META_RESET_OPTIONS) or {}
        return seed, seeded, options.get(str(r))

    def _check_reset(
        self, r: int, what: str, seed: Any, seeded: Any, where: dict[str, Any]
    ) -> None:
        """Check that reset ``r`` was recorded here, with this ``seed`` (``-1``: none)."""
        __tracebackhide__ = True
        rows = self._resets
        if r >= rows.rows:
            if self.recording.meta.get(F.META_CLOSED) is False:
                raise PrefixEndError(
                    f"replayed to the end of the committed prefix: the recording was not "
                    f"closed and holds {rows.rows} {what}, not reset {r}; everything before "
                    "was verified (record again and close it to replay further)"
                )
            raise UsageError(f"the recording holds {rows.rows} {what}; reset {r} was not recorded")
        start = int(rows.get(F.RESET_STEP, r)[0])
        if start != self.step_count:
            self._v.fail(
                "reset",
                Mismatch("extra"),
                EXACT,
                **self._where(),
                note=f"the recording reset at step {start}, not here",
            )
        self._v.check("reset/seed", np.asarray(rows.get(F.RESET_SEED, r)[0]), seed, **where)
        self._v.check("reset/seeded", np.asarray(rows.get(F.RESET_SEEDED, r)[0]), seeded, **where)

    def _check_leaves(
        self,
        rows: Rows,
        i: int,
        prefix: str,
        values: Mapping[str, Any],
        where: dict[str, Any],
        key_prefix: str = "",
    ) -> None:
        """Check ``{leaf name: value}`` against the columns under ``prefix`` at row ``i``."""
        __tracebackhide__ = True
        for name, value in values.items():
            col = F.column_path(prefix, name)
            expected, _ = rows.get(col, i)
            self._v.check(key_prefix + col, expected, value, **where)

    def _check_info(
        self, rows: Rows, i: int, live: Mapping[str, Any], prefix: str, where: dict[str, Any]
    ) -> None:
        """Check flat infos against the recorded ``info/...`` columns of row ``i``."""
        __tracebackhide__ = True
        st = rows.stream
        for col in st.columns:
            if not col.startswith(F.INFO + "/"):
                continue
            name = col[len(F.INFO) + 1 :]
            key = f"{prefix}/{name}"
            if self._v.ignored(key):
                continue
            expected, present = rows.get(col, i)
            if present != (name in live):
                # A row the recorder skipped: the value was not recordable (None, text, an
                # int beyond int64), and the replayed one is not either.
                if not present and not _recordable(live[name], key):
                    continue
                self._v.fail(key, Mismatch("missing" if present else "extra"), EXACT, **where)
            if present:
                self._v.check(key, expected, live[name], logical=st.logical_dtype(col), **where)
        for name, value in live.items():
            key = f"{prefix}/{name}"
            if (
                F.column_path(F.INFO, name) in st.columns
                or name in self._skipped_info
                or self._v.ignored(key)
            ):
                continue
            try:
                to_array(value, key)
            except Exception:
                continue  # not recordable: the recorder skipped it too
            self._v.fail(key, Mismatch("extra"), EXACT, **where)
