"""What a recording session writes through: the :class:`RecordingSink` protocol.

The recorders in ``replaykit._session`` (single env, vector, training) need only
this much of a writer. :class:`~replaykit._format.store.RecordingWriter` is the
one implementation today (one HDF5 file); a second one, such as a writer that
shards a long recording over several files, implements the same members and the
sessions do not change.

Rows are written through the :class:`~replaykit._format.store.StreamWriter`
that :meth:`RecordingSink.stream` returns: a block buffer per column
(``column(...).buf[stream.pos] = value``, then ``end_row()``), so the per-step
cost stays an array store, whichever sink is behind it.

Example:
    >>> import tempfile, os
    >>> from replaykit._format.store import RecordingWriter
    >>> path = os.path.join(tempfile.mkdtemp(), "run.h5")
    >>> sink: RecordingSink = RecordingWriter(path, meta={}, provenance={})
    >>> isinstance(sink, RecordingSink)
    True
    >>> sink.update_meta(closed=True)
    >>> sink.close()
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from replaykit._format.store import RecordingWriter, StreamWriter

__all__ = ["RecordingSink"]


@runtime_checkable
class RecordingSink(Protocol):
    """The writer a recording session writes through (a minimal subset of ``RecordingWriter``).

    Attributes:
        path: where the recording is written (for messages and for the caller).
        meta: the metadata written so far, read-only (root ``meta``, docs/FORMAT.md §6).
        snapshots: names of the snapshots written so far, in order.
    """

    @property
    def path(self) -> Path: ...

    @property
    def meta(self) -> Mapping[str, Any]: ...

    @property
    def snapshots(self) -> Sequence[str]: ...

    def stream(self, name: str) -> StreamWriter:
        """Return the writer of stream ``name``, creating the stream (zero rows) if new."""
        ...

    def update_meta(self, **items: Any) -> None:
        """Merge JSON-able items into the metadata; they reach the disk at the next commit."""
        ...

    def maybe_commit(self) -> None:
        """Commit if enough rows or time have passed since the last commit."""
        ...

    def commit(self) -> None:
        """Make every row appended so far, and the metadata, durable and visible to readers."""
        ...

    @property
    def last_nonfinite(self) -> tuple[str, tuple[int, ...], Any] | None:
        """First NaN/infinity the last ``write_snapshot(nonfinite_under=...)`` found."""
        ...

    def write_snapshot(
        self, name: str, tree: Any, meta: dict[str, Any], *, nonfinite_under: str | None = None
    ) -> int:
        """Commit, then write snapshot ``name`` atomically; return the bytes of array data.

        Args:
            name: a valid, new snapshot name (``layout.is_valid_name``).
            tree: the state tree (encoded by ``replaykit._format.tree``).
            meta: the snapshot metadata (``layout.SNAP_*`` keys); the sink adds
                ``SNAP_BYTES`` and ``SNAP_NAME``.
            nonfinite_under: a top-level key of ``tree`` to look for NaN/infinity under
                while the arrays are written; the first one (or ``None``) goes into the
                metadata as ``SNAP_NONFINITE`` and into :attr:`last_nonfinite`.
        """
        ...

    def drop_snapshot(self, name: str) -> None:
        """Unlink snapshot ``name`` (retention), committed before its space is reused."""
        ...

    reuse_snapshot_slots: bool
    """Write snapshots so that a dropped one's space can take a later one (flight mode)."""

    def close(self) -> None:
        """Commit what is left and close; further writes are errors."""
        ...


if TYPE_CHECKING:
    # mypy checks here that the HDF5 writer satisfies the protocol.
    def _recording_writer_is_a_sink(writer: RecordingWriter) -> RecordingSink:
        return writer
