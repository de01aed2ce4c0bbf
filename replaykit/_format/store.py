"""Reading and writing recordings: buffered chunked appends, atomic snapshots, checksums.

This module knows HDF5 and the layout in :mod:`replaykit._format.layout`; it knows
nothing of gymnasium. Writers append rows into preallocated numpy buffers and
write whole blocks, so a step costs a few array assignments; a *commit*
writes the pending rows, records the row count and running checksums, and
flushes, so a process killed at any moment leaves a file that opens with
everything up to its last commit. Snapshots are written under a temporary
name and renamed once complete, so a reader never sees half a snapshot.

Example:
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "r.h5")
    >>> with RecordingWriter(path, meta={"env_id": "X"}, provenance={}) as w:
    ...     s = w.stream("steps")
    ...     col = s.column("reward", np.dtype("float64"), ())
    ...     for i in range(3):
    ...         col.buf[s.pos] = i
    ...         s.end_row()
    >>> with Recording(path) as r:
    ...     r.stream("steps").read("reward")
    array([0., 1., 2.])
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, cast

import h5py
import numpy as np
import xxhash
from h5py import h5a, h5s, h5t

from replaykit._format import chunks as _chunks
from replaykit._format import finite as _finite
from replaykit._format import known as _known
from replaykit._format import layout as F
from replaykit._format import rawio as _rawio
from replaykit._format import tree as _tree
from replaykit.errors import (
    ChecksumError,
    FileFormatError,
    NotARecordingError,
    RecordingWriteError,
    ReplaykitError,
    TruncatedFileError,
    UnsafeFileError,
    UnsupportedVersionError,
    UsageError,
)

__all__ = [
    "DatasetInfo",
    "Recording",
    "RecordingWriter",
    "SnapshotInfo",
    "StreamReader",
    "StreamWriter",
    "library_versions",
]


# Bytes per column a streaming read (diff, verification, statistics) holds at once: large
# enough that per-call costs in h5py and libhdf5 vanish, small enough that memory stays flat.
BLOCK_BYTES = 1 << 20

# A column of at most this many bytes is kept in memory once verified, and read from there.
KEEP_VERIFIED_BYTES = 256 << 10

# A stream looks at the clock (for time-based commits) once every this many rows.
CLOCK_CHECK_ROWS = 64

# Bytes a writer buffers per column before a block write: a stream's block holds fewer rows
# when one of its columns has large rows (a 1 MiB info array: 8 rows, not 4,096 = 4 GiB).
WRITE_BLOCK_MAX_BYTES = 8 << 20

# The deflate level of ``compression="gzip"`` (h5py's default, so files keep their sizes).
GZIP_DEFAULT_LEVEL = 4


def _digest(data: bytes | memoryview | np.ndarray) -> str:
    return xxhash.xxh3_64_hexdigest(cast(Any, data))


def _array_digest(arr: np.ndarray) -> str:
    return _digest(np.ascontiguousarray(arr).data if arr.size else b"")


def _layout(arr: np.ndarray) -> str:
    """Dtype and shape of a snapshot array, as checked on load.

    The data checksum covers bytes only; a damaged datatype message can turn float64
    bytes into int64 ones without changing a byte, so the layout is checked too.
    """
    return f"{arr.dtype.str}{list(arr.shape)}"


def _attrs_digest(attrs: dict[str, str], logical: Any, layouts: Any, offsets: Any) -> str:
    """Digest of a snapshot's attributes and of how its bytes are to be read.

    Version 1 covers the snapshot and tree attributes and the logical dtypes; version 2
    also covers the layouts and pack offsets, since packed arrays have no dataset whose
    own datatype could be checked against them.
    """
    text = F.dumps({k: attrs[k] for k in sorted(attrs)}) + F.dumps(logical)
    if offsets is not None:  # version 2
        text += F.dumps(layouts) + F.dumps(offsets)
    return _digest(text.encode())


def _parse_layout(layout: Any) -> tuple[np.dtype, tuple[int, ...], int]:
    """Invert :func:`_layout`, adding the byte size; ValueError unless numeric dtype and shape."""
    if not isinstance(layout, str):
        raise ValueError(f"bad layout {layout!r}")
    hit = _LAYOUTS.get(layout)
    if hit is not None:
        return hit
    if "[" not in layout:
        raise ValueError(f"bad layout {layout!r}")
    dstr, _, rest = layout.partition("[")
    dtype = np.dtype(dstr)
    if dtype.kind not in F.ALLOWED_KINDS or dtype.fields is not None or dtype.subdtype:
        raise ValueError(f"bad dtype {dstr!r}")
    dims = rest.rstrip("]").split(",") if rest.rstrip("]").strip() else []
    shape = tuple(int(x) for x in dims)
    if any(x < 0 for x in shape):
        raise ValueError(f"bad shape {shape}")
    hit = dtype, shape, dtype.itemsize * math.prod(shape)
    if len(_LAYOUTS) < _CACHE_MAX:  # the few layouts a process meets, parsed once
        _LAYOUTS[layout] = hit
    return hit


_LAYOUTS: dict[str, tuple[np.dtype, tuple[int, ...], int]] = {}
# Entries a per-process parse cache keeps (layouts, column dtype spellings).
_CACHE_MAX = 4096
# Row shapes have at most this many dimensions (numpy's own limit is 64).
_MAX_NDIM = 32
# dtype.str spellings are at most this long ("<f8", "|b1", "<c16").
_DTYPE_STR_MAX = 8


def _read_rows(dsid: h5py.h5d.DatasetID, start: int, out: np.ndarray) -> None:
    """Read rows ``[start, start + len(out))`` of a dataset into the C-contiguous ``out``.

    h5py's low-level API into a caller's buffer: slicing the high-level dataset allocates
    a fresh array per call and spends more Python per call on selection objects.
    """
    if out.size == 0:
        return
    fspace = dsid.get_space()
    fspace.select_hyperslab((start,) + (0,) * (out.ndim - 1), out.shape)
    dsid.read(h5s.create_simple(out.shape), fspace, out)


def library_versions() -> dict[str, str]:
    """Return the versions of the HDF5 libraries that write and read recordings.

    Provenance records them (keys ``h5py`` and ``hdf5`` of its ``versions``), so nothing
    outside ``replaykit._format`` needs to import h5py.

    Returns:
        ``{"h5py": h5py's version, "hdf5": the HDF5 C library's version}``.

    Example:
        >>> sorted(library_versions())
        ['h5py', 'hdf5']
    """
    return {"h5py": h5py.version.version, "hdf5": h5py.version.hdf5_version}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _storage_dtype(dtype: np.dtype, logical: str | None) -> np.dtype:
    if logical is not None:
        return F.LOGICAL_DTYPES[logical]
    return dtype


# --------------------------------------------------------------------------- writing


def _append_rows(ds: h5py.Dataset, data: np.ndarray, start: int) -> None:
    """Grow ``ds`` to ``start + len(data)`` rows and write C-contiguous ``data`` at ``start``.

    Uses h5py's low-level API: the high-level ``resize`` plus slice assignment spends
    ~0.3 ms of Python per call on selection objects, which was most of a block write and
    ~0.5 us per recorded step.
    """
    dsid = ds.id
    shape = data.shape
    dsid.set_extent((start + shape[0], *shape[1:]))
    fspace = dsid.get_space()
    fspace.select_hyperslab((start,) + (0,) * (len(shape) - 1), shape)
    dsid.write(h5s.create_simple(shape), fspace, data)


class Column:
    """One column of a stream: a block buffer in memory and a dataset on disk.

    Writers fill ``buf[stream.pos]`` for each row; the stream moves rows to
    disk. ``present`` (optional columns only) marks the rows that hold a value.
    """

    __slots__ = (
        "_h",
        "_ph",
        "buf",
        "ds",
        "dtype",
        "enc",
        "logical",
        "name",
        "pds",
        "present",
        "shape",
    )

    def __init__(
        self, name: str, dtype: np.dtype, shape: tuple[int, ...], logical: str | None, block: int
    ) -> None:
        self.name = name
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(s) for s in shape)
        self.logical = logical
        self.buf = np.zeros((block, *self.shape), dtype=_storage_dtype(self.dtype, logical))
        self.present: np.ndarray | None = None
        self.ds: h5py.Dataset | None = None
        self.pds: h5py.Dataset | None = None
        # Deflate-compressed columns: writes their chunks, compressed off the GIL.
        self.enc: _chunks.DeflateColumn | None = None
        self._h = xxhash.xxh3_64()
        self._ph: Any = None


class StreamWriter:
    """Appends rows to one stream (``steps``, ``resets``, ``updates``, ...).

    A row is written by assigning ``column.buf[stream.pos]`` for each column
    and then calling :meth:`end_row`. Optional columns (``column(..., optional=True)``)
    may be skipped in a row: set ``column.present[stream.pos] = True`` when you fill one.
    """

    def __init__(self, writer: RecordingWriter, name: str, block: int) -> None:
        self._writer = writer
        self.name = name
        self.block = block
        self._base_block = block  # the block before large columns shrank it (chunk sizes)
        self._next_block = 0  # the block to take at the end of this one, when it must shrink
        self.group = writer._file.require_group(F.stream_path(name))
        self.columns: dict[str, Column] = {}
        self.pos = 0  # row index inside the block buffers
        self._flushed_pos = 0  # rows of the current block already on disk
        self.rows_on_disk = 0
        self.rows = 0  # rows appended (on disk + buffered)
        self.optional: list[Column] = []
        self.on_block_full: Any = None
        # Called before buffered rows are written: a writer that defers filling ``buf`` (the
        # recorder batches scalar columns per block) materialises its rows here.
        self.before_write: Any = None
        self.committed_rows = 0  # rows covered by the last commit record
        # end_row compares pos with this one value: the end of the block, or an earlier row
        # where the writer looks at the clock or a commit falls due (so slow envs still
        # commit on time, and no commit is late by a row, without a per-step clock read).
        self.check_at = self._next_check()

    def column(
        self,
        name: str,
        dtype: np.dtype,
        shape: tuple[int, ...],
        *,
        logical: str | None = None,
        optional: bool = False,
    ) -> Column:
        """Return the column ``name``, creating it (backfilled as absent) if new."""
        col = self.columns.get(name)
        if col is not None:
            return col
        dtype = np.dtype(dtype)
        if dtype.kind not in F.ALLOWED_KINDS:
            raise UsageError(
                f"column {self.name}/{name} would have dtype {dtype}; only bool, int, float and "
                "complex values are recorded"
            )
        rows = self._block_for(dtype, shape, logical)
        col = Column(name, dtype, shape, logical, rows)
        if optional:
            col.present = np.zeros(rows, dtype=bool)
            col._ph = xxhash.xxh3_64()
            self.optional.append(col)
        self.columns[name] = col
        self._create_datasets(col)
        return col

    def _block_for(self, dtype: np.dtype, shape: tuple[int, ...], logical: str | None) -> int:
        """Shrink the stream's block for a new column of large rows; return its buffer rows.

        Buffers stay bound where writers hold them (no reallocation): the existing ones are
        only used up to the smaller block. When the current row lies past the new block,
        this block ends after the current row instead: the new column's buffer then spans
        it, allocated zeroed (pages untouched until written), and the block shrinks at the
        end of this one.
        """
        row_bytes = _storage_dtype(dtype, logical).itemsize * int(np.prod(shape, dtype=np.int64))
        rows = max(1, min(self._base_block, WRITE_BLOCK_MAX_BYTES // max(1, row_bytes)))
        if rows >= self.block:
            return self.block
        if self.pos < rows:
            self.block = rows
        else:
            self._next_block = min(rows, self._next_block or rows)
            self.block = rows = self.pos + 1
        self.check_at = self._next_check()
        return rows

    def _create_datasets(self, col: Column) -> None:
        sdtype = col.buf.dtype
        row_bytes = max(1, sdtype.itemsize * int(np.prod(col.shape, dtype=np.int64)))
        # ~16 KiB chunks: small files stay small, and block writes still span whole chunks
        # (rows of more than 1 KiB: 16 rows a chunk, or the rows of one block if fewer).
        big = max(1, min(16, WRITE_BLOCK_MAX_BYTES // row_bytes))
        chunk_rows = int(max(big, min(self._base_block, (16 << 10) // row_bytes)))
        if all(col.shape):
            w = self._writer
            col.ds = self.group.create_dataset(
                col.name,
                shape=(self.rows_on_disk, *col.shape),
                maxshape=(None, *col.shape),
                dtype=sdtype,
                chunks=(chunk_rows, *col.shape),
                fillvalue=np.zeros((), sdtype),
                compression=w.compression,
                compression_opts=w.deflate_level,
                shuffle=w.compression is not None,
            )
            if w.deflate_level is not None:
                col.enc = _chunks.DeflateColumn(
                    col.ds.id, chunk_rows, self.rows_on_disk, w.deflate_level, w._deflate_pool
                )
        else:
            # Rows with no elements hold no bytes; HDF5 cannot chunk a zero-length axis, so the
            # dataset keeps zero rows and readers produce the empty rows from the commit count.
            col.ds = self.group.create_dataset(col.name, shape=(0, *col.shape), dtype=sdtype)
        if col.logical:
            col.ds.attrs[F.LOGICAL_DTYPE_ATTR] = col.logical
        # Rows before the column existed hold the fill value (zeros); hash them as such.
        if self.rows_on_disk:
            col._h.update(np.zeros((self.rows_on_disk, *col.shape), sdtype).tobytes())
        if col.present is not None:
            col.pds = self.group.create_dataset(
                col.name + F.PRESENT_SUFFIX,
                shape=(self.rows_on_disk,),
                maxshape=(None,),
                dtype=bool,
                chunks=(max(1, min(self.block, 1 << 16)),),
                fillvalue=False,
            )
            if self.rows_on_disk:
                col._ph.update(np.zeros(self.rows_on_disk, bool).tobytes())

    def end_row(self) -> None:
        """Finish the current row; writes a block to disk when the buffers are full.

        Hot loops may inline it: ``pos += 1; rows += 1; if pos == check_at: checkpoint()``.
        """
        self.pos += 1
        self.rows += 1
        if self.pos == self.check_at:
            self.checkpoint()

    def checkpoint(self) -> None:
        # Every CLOCK_CHECK_ROWS rows and at each full block: write a full block, and commit
        # when the writer's step or time budget since its last commit is spent.
        w = self._writer
        if w._broken is not None:
            raise w._broken
        try:
            if self.pos == self.block:
                self.write_pending()  # resets pos to 0 and calls on_block_full
            w.maybe_commit()
        except ReplaykitError:
            raise
        except (OSError, RuntimeError, ValueError) as exc:
            raise w._fail(exc) from None
        self.check_at = self._next_check()

    def _next_check(self) -> int:
        due = self._writer._commit_rows - (self.rows - self.committed_rows)
        return min(self.block, self.pos + max(1, min(CLOCK_CHECK_ROWS, due)))

    def write_pending(self) -> None:
        """Write buffered rows to the datasets (no flush, no commit record)."""
        if self.before_write is not None:
            self.before_write()
        lo, hi = self._flushed_pos, self.pos
        if hi > lo:
            start = self.rows_on_disk
            stop = start + (hi - lo)
            for col in self.columns.values():
                assert col.ds is not None
                if not all(col.shape):
                    continue
                chunk = np.ascontiguousarray(col.buf[lo:hi])
                if col.enc is not None:
                    col.enc.append(chunk, start)
                else:
                    _append_rows(col.ds, chunk, start)
                col._h.update(chunk.data)
                if col.present is not None and col.pds is not None:
                    pchunk = np.ascontiguousarray(col.present[lo:hi])
                    _append_rows(col.pds, pchunk, start)
                    col._ph.update(pchunk.data)
            self.rows_on_disk = stop
            self._flushed_pos = hi
        if self.pos == self.block:
            used = self.pos
            self.pos = 0
            self._flushed_pos = 0
            for col in self.optional:
                assert col.present is not None
                if col.buf.nbytes > WRITE_BLOCK_MAX_BYTES:
                    # A buffer made to span a block that had to end (see _block_for): zero
                    # only the rows written, so its untouched pages stay unallocated.
                    col.buf[: len(col.present)][col.present] = 0
                else:
                    col.buf[:used].fill(0)
                col.present[:used].fill(False)
            if self._next_block:
                self.block, self._next_block = self._next_block, 0
            self.check_at = self._next_check()
            # Only a block that just filled may trigger a commit: firing on every call with
            # pos == 0 made commit -> write_pending -> maybe_commit -> commit recurse.
            if self.on_block_full is not None:
                self.on_block_full()

    def flush_chunks(self) -> None:
        """Wait for the compressed chunks of every row written so far and write them."""
        for col in self.columns.values():
            if col.enc is not None:
                col.enc.flush()

    def commit_record(self) -> dict[str, Any]:
        checksums: dict[str, str] = {}
        columns: dict[str, Any] = {}
        for col in self.columns.values():
            checksums[col.name] = col._h.hexdigest()
            columns[col.name] = {
                F.COLUMN_DTYPE: col.dtype.str if col.logical is None else col.logical,
                F.COLUMN_SHAPE: list(col.shape),
                F.COLUMN_OPTIONAL: col.present is not None,
            }
            if col.present is not None:
                checksums[col.name + F.PRESENT_SUFFIX] = col._ph.hexdigest()
        # The stream's own name is in the record (version 2), under its checksum: a damaged
        # group name must not pass one stream's rows off as another's.
        return {
            F.COMMIT_ROWS: self.rows_on_disk,
            F.COMMIT_CHECKSUMS: checksums,
            F.COMMIT_COLUMNS: columns,
            F.COMMIT_STREAM: self.name,
        }


def _first_nonfinite(
    prefix: str,
    arrays: list[np.ndarray],
    paths: list[str],
    bad_floats: list[tuple[int, str, float]],
    found: dict[int, tuple[int, Any]],
) -> tuple[str, tuple[int, ...], Any] | None:
    """Return the first NaN/infinity under ``prefix`` in tree order: ``(path, index, value)``."""
    first_float = next((b for b in bad_floats if b[1].startswith(prefix)), None)
    first_array = min(found) if found else None
    if first_float is not None and (first_array is None or first_float[0] <= first_array):
        return first_float[1][len(prefix) - 1 :], (), first_float[2]
    if first_array is None:
        return None
    flat, value = found[first_array]
    shape = arrays[first_array].shape
    index = tuple(int(x) for x in np.unravel_index(flat, shape)) if shape else ()
    return paths[first_array][len(prefix) - 1 :], index, value


def _create_placed(
    group: h5py.Group, name: str, dtype: np.dtype[Any], shape: tuple[int, ...]
) -> h5py.h5d.DatasetID:
    """Create a contiguous dataset whose bytes are placed now and never filled.

    Its offset in the file is fixed at creation, so its bytes can be written in place
    (spill slots, direct I/O) without libhdf5 moving or zero-filling them first.
    """
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_layout(h5py.h5d.CONTIGUOUS)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    return h5py.h5d.create(
        group.id,
        name.encode(),
        h5t.py_create(dtype, logical=True),
        h5s.create_simple(shape),
        dcpl=dcpl,
    )


class RecordingWriter:
    """Writes one recording file.

    The writer never opens an existing file for writing: HDF5's ``"w"`` mode truncates a
    file before it locks it, which destroyed a recording another process was writing (or a
    reader held open). A new path is created exclusively; an existing one is refused unless
    ``overwrite=True``, and then the recording is written under a temporary name in the same
    directory and renamed over ``path`` by :meth:`close`, so the old file stays whole until
    the new one is complete.

    Args:
        path: where to write; must not exist unless ``overwrite`` is true.
        meta: JSON-able recording metadata (env id, spec, seeds, spaces, ...).
        provenance: JSON-able description of the recording setup.
        commit_every_steps: commit after this many rows of the busiest stream.
        commit_every_seconds: also commit when this much time passed since the last one.
        fsync: ``os.fsync`` after each commit (durable across power loss; slower).
        block_rows: rows buffered in memory per column before a block write.
        compression: ``None`` (default), ``"gzip"`` (deflate level 4), ``"gzip:LEVEL"``
            (LEVEL 0-9) or ``"lzf"``: lossless compression (with the byte-shuffle filter) of
            stream columns; snapshots stay uncompressed. Deflate runs on a worker thread,
            off the recording loop (see :mod:`replaykit._format.chunks`); lzf runs inside
            HDF5's write.
        direct_io: write snapshot arrays of 1 MiB and more with direct I/O (Linux
            ``O_DIRECT``), bypassing the page cache: ``True`` always, ``False`` never,
            ``None`` (default) when a buffered write would be throttled by the kernel's
            dirty-page limits (a large snapshot, or much unwritten data queued already).
            Falls back to ordinary writes where the platform or file system has none.
        overwrite: replace an existing file at ``path`` once this recording is closed
            (written under a temporary name until then). ``False`` (default): refuse an
            existing path with :class:`~replaykit.errors.UsageError`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        meta: dict[str, Any],
        provenance: dict[str, Any],
        commit_every_steps: int = F.STREAM_CHUNK_ROWS,
        commit_every_seconds: float = 5.0,
        fsync: bool = False,
        block_rows: int = F.STREAM_CHUNK_ROWS,
        compression: str | None = None,
        direct_io: bool | None = None,
        overwrite: bool = False,
    ) -> None:
        if commit_every_steps < 1 or block_rows < 1:
            raise UsageError("commit_every_steps and block_rows must be >= 1")
        self.compression, self.deflate_level = _parse_compression(compression)
        self._pool: ThreadPoolExecutor | None = None
        self.direct_io = direct_io
        self.path = Path(path)
        # Where the bytes go: ``path`` itself, or (overwrite of an existing file) a temporary
        # name in the same directory, renamed over ``path`` by close().
        self.write_path = self.path
        self.fsync = fsync
        self.commit_every_seconds = float(commit_every_seconds)
        self.block_rows = int(min(block_rows, commit_every_steps))
        self._commit_rows = int(commit_every_steps)
        # fs_strategy="none": space freed while writing (old commit records, replaced
        # attributes) is never reused in this session, so new bytes never land on space the
        # last flushed state still points to. With evictions off, libhdf5 writes metadata
        # only when we flush, so between commits the file on disk is the last commit plus
        # raw data in fresh space: what a SIGKILL leaves is always the last commit.
        # Objects of 1 MiB and more (large snapshot arrays) start on a 4096-byte boundary,
        # where direct I/O can write them (replaykit._format.rawio).
        self._file = self._create(bool(overwrite))
        _hold_metadata_until_flush(self._file)
        self._streams: dict[str, StreamWriter] = {}
        self._meta = dict(meta)
        self._provenance = dict(provenance)
        self._created = ""
        self._version = F.BASE_VERSION
        self._meta_dirty = True
        # Spilled attributes (version 3): (group name, attribute) -> index of the slot the
        # attribute points to on disk (-1: none yet).
        self._spill_current: dict[tuple[str, str], int] = {}
        self._spill_pending: dict[tuple[str, str], int] = {}
        # The error that stopped this writer (see _fail); every later write raises it.
        self._broken: RecordingWriteError | None = None
        # Bytes the file may already grow to without asking the file system (see _reserve).
        self._reserved = 0
        self._last_commit = time.monotonic()
        self._closed = False
        self.snapshots: list[str] = []
        # Flight mode (docs/FORMAT.md §4.1): snapshot attributes are written fixed-size, so a
        # snapshot dropped by retention leaves its group as a slot the next one overwrites.
        self.reuse_snapshot_slots = False
        self._free_slots: list[h5py.Group] = []
        self.last_nonfinite: tuple[str, tuple[int, ...], Any] | None = None
        self._write_root_attrs(self._spill(self._file, F.META_ATTR, F.dumps(self._meta)))
        self._meta_dirty = False
        self._file.require_group(F.STREAMS_GROUP)
        self._file.require_group(F.SNAPSHOTS_GROUP)
        try:
            self.commit()
        except RecordingWriteError:
            # Nothing was ever committed: the file is ours (created exclusively) and empty.
            with contextlib.suppress(OSError):
                os.unlink(self.write_path)
            raise

    def _deflate_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = _chunks.new_pool()
        return self._pool

    def _stop_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _create(self, overwrite: bool) -> h5py.File:
        """Create the file exclusively (HDF5 ``"x"``: never truncates an existing file)."""
        if self.path.is_dir():
            raise UsageError(f"{self.path} is a directory; pass a file path for the recording")
        if overwrite and os.path.lexists(self.path):
            self.write_path = _temporary_name(self.path)
        try:
            return h5py.File(
                self.write_path,
                "x",
                track_order=True,
                fs_strategy="none",
                alignment_threshold=_rawio.MIN_BYTES,
                alignment_interval=_rawio.ALIGN,
                # No raw-data chunk cache: rows reach the file when a block is written, not
                # at some later flush, so a write that fails (disk full) fails in the call
                # that made it, before a flush can record space that was never written.
                rdcc_nbytes=0,
            )
        except FileExistsError:
            pass
        except OSError as exc:
            if not os.path.lexists(self.write_path):
                raise UsageError(
                    f"cannot create {self.write_path} ({_first_line(exc)}); check that the "
                    "directory exists and is writable"
                ) from None
        raise UsageError(
            f"{self.path} already exists; pass overwrite=True (replaykit record --overwrite) "
            "to replace it once the new recording is complete, or pick another path"
        )

    def _write_root_attrs(self, meta_text: str) -> None:
        """Write the root attributes, with ``meta_text`` (the meta JSON or its spill pointer)."""
        first = F.FORMAT_ATTR not in self._file.attrs
        if first:
            self._created = self._meta.get(F.META_CREATED) or _now()
            self._file.attrs[F.FORMAT_ATTR] = F.FORMAT_NAME
            self._file.attrs[F.VERSION_ATTR] = np.int64(self._version)
            self._file.attrs[F.CREATED_ATTR] = self._created
            self._file.attrs[F.PROVENANCE_ATTR] = F.dumps(self._provenance)
        elif int(self._file.attrs[F.VERSION_ATTR]) != self._version:
            self._file.attrs.modify(F.VERSION_ATTR, np.int64(self._version))
        # Meta and the root checksum change while recording: fixed-size, padded, so an
        # update rewrites them in place (see _set_fixed) instead of reshuffling the root's
        # object header, which also holds the links to every group.
        meta = _set_fixed(self._file.attrs, F.META_ATTR, meta_text)
        attrs = {
            F.FORMAT_ATTR: F.FORMAT_NAME,
            F.VERSION_ATTR: self._version,
            F.CREATED_ATTR: self._created,
            F.PROVENANCE_ATTR: F.dumps(self._provenance),
            F.META_ATTR: meta,
        }
        _set_fixed(self._file.attrs, F.ROOT_CHECKSUM_ATTR, _root_checksum(attrs))

    @property
    def meta(self) -> Mapping[str, Any]:
        """The file's metadata as written so far (read-only; change it with :meth:`update_meta`)."""
        return MappingProxyType(self._meta)

    def update_meta(self, **items: Any) -> None:
        """Merge JSON-able items into the file's metadata (on disk at the next commit)."""
        F.dumps(items)  # refuse what is not JSON-able now, not at the commit
        self._meta.update(items)
        self._meta_dirty = True

    def _spill(self, group: h5py.Group, attr: str, text: str) -> str:
        """Return what attribute ``attr`` of ``group`` must hold for ``text``.

        Short text is held as it is. Longer text (version 3) is written now into the slot
        dataset the attribute does not point to, and the pointer to it is returned, to be
        written after the flush that puts the slot's bytes on disk: a kill in between
        leaves the attribute pointing to the other, untouched slot.
        """
        data = text.encode("utf-8")
        if len(data) <= F.SPILL_MAX_BYTES:
            return text
        key = (group.name, attr)
        current = self._spill_current.get(key)
        target = 0 if current is None else 1 - current
        name = F.spill_slots(attr)[target]
        ds = group.get(name)
        if not isinstance(ds, h5py.Dataset) or ds.shape[0] < len(data):
            if name in group:
                del group[name]
            cap = 1 << (len(data) + len(data) // 2).bit_length()
            dsid = _create_placed(group, name, np.dtype(np.uint8), (cap,))
        else:
            dsid = ds.id
        buf = np.frombuffer(data, np.uint8)
        fspace = dsid.get_space()
        fspace.select_hyperslab((0,), (len(data),))
        dsid.write(h5s.create_simple((len(data),)), fspace, buf)
        self._spill_pending[key] = target
        self._version = max(self._version, F.SPILL_VERSION)
        return F.dumps({F.SPILL_TAG: name, F.SPILL_BYTES: len(data), F.SPILL_DIGEST: _digest(data)})

    def stream(self, name: str) -> StreamWriter:
        s = self._streams.get(name)
        if s is None:
            s = StreamWriter(self, name, self.block_rows)
            self._streams[name] = s
            # Every stream group carries a commit record from the start (zero rows until its
            # first commit), so a reader can tell a damaged record from a stream too new to
            # have one: version 2 readers refuse a stream group without it.
            _set_fixed(s.group.attrs, F.COMMIT_ATTR, self._commit_text(s))
        return s

    def _commit_text(self, s: StreamWriter) -> str:
        body = s.commit_record()
        text = F.dumps({**body, F.COMMIT_CRC: _digest(F.dumps(body).encode())})
        return self._spill(s.group, F.COMMIT_ATTR, text)

    def maybe_commit(self) -> None:
        """Commit if enough rows or time have passed since the last commit.

        Streams call this at each full block and every ``CLOCK_CHECK_ROWS`` rows, so the
        clock is read once per 64 rows, never per row, and a time-based commit happens at
        the first check after its deadline.
        """
        if self._closed:
            return
        for s in self._streams.values():
            if s.rows - s.committed_rows >= self._commit_rows:
                self.commit()
                return
        if time.monotonic() - self._last_commit >= self.commit_every_seconds:
            self.commit()

    def commit(self) -> None:
        """Write every buffered row, record row counts and checksums, and flush.

        Raises:
            RecordingWriteError: a write failed (disk full, file-size limit); the file keeps
                its last commit and the writer is closed.
        """
        if self._broken is not None:
            raise self._broken
        try:
            self._commit()
        except ReplaykitError:
            raise
        except (OSError, RuntimeError, ValueError) as exc:
            raise self._fail(exc) from None

    def _reserve(self) -> None:
        """Make sure the file system holds room for what the next flush may write.

        libhdf5 records the file's end in the superblock at a flush and extends the file at
        close; when the disk is full or the file-size limit (``ulimit -f``) is hit in
        between, the superblock names an end past the bytes on disk and the whole file is
        unreadable. So before each commit's flushes the file is extended (``fallocate``,
        or one byte written at the end) past everything allocated so far plus a margin:
        a full disk fails here, before anything of the commit is written. The file's
        allocated size moves in steps of at least 256 KiB, so most commits make no call.
        """
        fid = self._file.id
        # Metadata a flush may still have to place: the cache's contents, plus a margin.
        need = int(fid.get_filesize()) + int(fid.get_mdc_size()[2]) + _RESERVE_MARGIN
        if need <= self._reserved:
            return
        fd = fid.get_vfd_handle()
        size = os.fstat(fd).st_size
        if need <= size:
            self._reserved = size
            return
        generous = need + max(_RESERVE_STEP, need // 8)
        try:
            _extend(fd, size, generous)
            self._reserved = generous
        except OSError:
            # Near the limit: claim only what this commit needs, so no committable row is
            # refused for the sake of headroom.
            _extend(fd, size, need)
            self._reserved = need

    def _fail(self, exc: BaseException) -> RecordingWriteError:
        """Stop writing at the first failed write; return the error to raise.

        libhdf5 would go on writing (a flush at close, the file's end in the superblock)
        after a failed write, and under a file-size limit that left a superblock naming an
        end past the data: the whole recording unreadable. The file's descriptor is swapped
        for a read-only one before it is closed, so nothing more reaches the disk and the
        file keeps its last commit.
        """
        if self._broken is not None:
            return self._broken
        text = _first_line(exc)
        code = getattr(exc, "errno", None)
        for errno_ in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            if code == errno_ or f"errno = {errno_}" in str(exc) or f"[Errno {errno_}]" in text:
                code = errno_
        if code in (errno.ENOSPC, errno.EDQUOT):
            why = "the disk is full (or over quota)"
        elif code == errno.EFBIG:
            why = "the file-size limit (ulimit -f) was hit"
        else:
            why = f"a write failed ({type(exc).__name__}: {text})"
        self._broken = RecordingWriteError(
            f"{self.path}: recording stopped because {why}; the file keeps everything up to "
            f"its last commit (earlier steps and snapshots are readable); free space or raise "
            "the limit and record again"
        )
        self._closed = True
        for s in self._streams.values():
            for col in s.columns.values():
                if col.enc is not None:
                    col.enc.cancel()
        self._stop_pool()
        try:
            fd = self._file.id.get_vfd_handle()
            ro = os.open(self.write_path, os.O_RDONLY)
            try:
                os.dup2(ro, fd)
            finally:
                os.close(ro)
        except (OSError, RuntimeError, ValueError, TypeError):
            pass
        # libhdf5's flush at close fails on the read-only descriptor: nothing left to save.
        with contextlib.suppress(Exception):
            self._file.close()
        return self._broken

    def _commit(self) -> None:
        """Do :meth:`commit`'s work.

        Two phases, each ending in a flush: first the rows (data, chunk indexes, extents),
        then the commit records, each rewritten in place. A kill in phase one leaves the
        old records, which describe rows already on disk; a kill in phase two leaves each
        stream's record old or new, and either describes rows on disk.
        """
        for s in self._streams.values():
            s.write_pending()
        for s in self._streams.values():
            s.flush_chunks()
        self._reserve()
        # Records too long for an attribute go into their spare slot before the first flush;
        # the attributes pointing to them change only in phase two.
        texts = [(s, self._commit_text(s)) for s in self._streams.values()]
        meta = (
            self._spill(self._file, F.META_ATTR, F.dumps(self._meta)) if self._meta_dirty else None
        )
        self._file.flush()
        for s, text in texts:
            _set_fixed(s.group.attrs, F.COMMIT_ATTR, text)
            s.committed_rows = s.rows_on_disk
            s.check_at = s._next_check()
        if meta is not None:
            self._write_root_attrs(meta)
            self._meta_dirty = False
        self._file.flush()
        self._spill_current.update(self._spill_pending)
        self._spill_pending.clear()
        if self.fsync:
            # flush() hands the bytes to the OS; only fsync makes them survive power loss.
            os.fsync(self._file.id.get_vfd_handle())
        self._last_commit = time.monotonic()

    def write_snapshot(
        self, name: str, tree: Any, meta: dict[str, Any], *, nonfinite_under: str | None = None
    ) -> int:
        """Write a snapshot atomically; returns the bytes of array data written.

        Rows buffered so far are committed first, so the snapshot never refers
        to steps the file does not hold.

        With ``nonfinite_under`` (a top-level key of the tree), the first NaN/infinity
        under it, in tree order, is looked for while the arrays are hashed and written (no
        second pass over them), recorded in the snapshot's metadata under
        ``nonfinite`` and left in :attr:`last_nonfinite` as ``(path, index, value)``
        (``path`` relative to that key), or ``None``.

        Raises:
            RecordingWriteError: a write failed (disk full, file-size limit); the file keeps
                its last commit (without this snapshot) and the writer is closed.
        """
        if self._broken is not None:
            raise self._broken
        try:
            return self._write_snapshot(name, tree, meta, nonfinite_under)
        except ReplaykitError:
            raise
        except (OSError, RuntimeError) as exc:
            raise self._fail(exc) from None

    def _write_snapshot(
        self,
        name: str,
        tree: Any,
        meta: dict[str, Any],
        nonfinite_under: str | None = None,
        encoded: tuple[Any, list[np.ndarray], dict[int, str]] | None = None,
    ) -> int:
        if not F.is_valid_name(name):
            raise UsageError(f"snapshot name {name!r} must be non-empty, printable, without '/'")
        if name in self.snapshots:
            raise UsageError(f"snapshot {name!r} already exists in {self.path}; pick another name")
        if encoded is None:
            doc, arrays, logical, paths, bad_floats = _tree.encode_located(tree)
        else:  # a stored snapshot copied as it is (extract): nothing to scan
            doc, arrays, logical = encoded
            paths, bad_floats = [""] * len(arrays), []
            nonfinite_under = None
        prefix = None if nonfinite_under is None else f"/{nonfinite_under}/"
        scan = [prefix is not None and p.startswith(prefix) for p in paths]
        found: dict[int, tuple[int, Any]] = {}
        snaps = self._file[F.SNAPSHOTS_GROUP]
        self.commit()
        checksums: dict[str, Any] = {}
        layouts: dict[str, str] = {}
        offsets: dict[str, int] = {}
        small: list[tuple[str, np.ndarray]] = []
        large: list[tuple[str, np.ndarray]] = []
        nbytes = 0
        pack_size = 0
        for i, arr in enumerate(arrays):
            key = f"{F.ARRAY_PREFIX}{i}"
            data = np.require(arr, requirements="C")
            layouts[key] = _layout(data)
            nbytes += data.nbytes
            if data.nbytes <= F.PACK_MAX_BYTES:
                offsets[key] = pack_size
                small.append((key, data))
                pack_size += -(-data.nbytes // F.PACK_ALIGN) * F.PACK_ALIGN
                continue
            large.append((key, data))
        pack = None
        if small:
            pack = np.zeros(pack_size, np.uint8)
            for key, data in small:
                off = offsets[key]
                pack[off : off + data.nbytes] = data.reshape(-1).view(np.uint8)
                _scan_array(key, data, logical, scan, found)
        g = self._free_slot(pack, large)
        if g is not None:
            # A slot left by a dropped snapshot (unlinked, so no reader sees it while it is
            # rewritten): same datasets, overwritten in place; no new space is taken.
            for key, data in large:
                g[key].id.write(h5s.ALL, h5s.ALL, data)
                checksums[key] = _array_digest(data)
                _scan_array(key, data, logical, scan, found)
        else:
            # Build the snapshot as an *anonymous* group: nothing in the file links to it, so
            # a kill at any point while it is written leaves unreachable bytes, never a
            # dangling or half-written entry in /snapshots. One hard link publishes it.
            g = h5py.Group(h5py.h5g.create(self._file.id, None))
            if large:
                checksums.update(self._write_large(g, large, logical, scan, found))
        if pack is not None:
            if F.PACK_DATASET in g:
                g[F.PACK_DATASET].id.write(h5s.ALL, h5s.ALL, pack)
            else:
                g.create_dataset(F.PACK_DATASET, data=pack)
            checksums[F.PACK_DATASET] = _array_digest(pack)
        # The name inside the checksummed metadata (version 2): a damaged link name is caught.
        meta = {**meta, F.SNAP_BYTES: nbytes, F.SNAP_NAME: name}
        if prefix is not None:
            self.last_nonfinite = _first_nonfinite(prefix, arrays, paths, bad_floats, found)
            meta[F.SNAP_NONFINITE] = _nonfinite_meta(self.last_nonfinite)
        # The tree keeps its key order (a dict comes back in the order it was captured).
        attrs = {F.SNAPSHOT_ATTR: F.dumps(meta), F.TREE_ATTR: F.dumps(doc, sort_keys=False)}
        self._set_snapshot_attrs(g, attrs, checksums, logical, layouts, offsets)
        # Everything the link will point to reaches the file before the link does.
        self._file.flush()
        snaps[name] = g
        self.snapshots.append(name)
        self.commit()
        return nbytes

    def _set_snapshot_attrs(
        self,
        g: h5py.Group,
        attrs: dict[str, str],
        checksums: dict[str, Any],
        logical: dict[int, str],
        layouts: dict[str, str],
        offsets: dict[str, int],
    ) -> None:
        """Write a snapshot's ``snapshot``/``tree`` attributes and its checksum record."""
        fixed = self.reuse_snapshot_slots and all(
            len(v) <= _SLOT_ATTR_MAX_BYTES for v in attrs.values()
        )
        for k, v in attrs.items():
            if fixed:
                # Padded in place (as meta and commit records are): the digest covers the
                # stored text, padding included; JSON readers skip the trailing spaces.
                attrs[k] = _set_fixed(g.attrs, k, v)
            else:
                g.attrs[k] = v
        logical_map = {str(i): n for i, n in sorted(logical.items())}
        checksums[F.LAYOUT_KEY] = layouts
        checksums[F.PACK_KEY] = offsets
        checksums[F.LOGICAL_KEY] = logical_map
        checksums[F.ATTRS_KEY] = _attrs_digest(attrs, logical_map, layouts, offsets)
        text = F.dumps(checksums)
        if fixed and len(text) <= _SLOT_ATTR_MAX_BYTES:
            _set_fixed(g.attrs, F.CHECKSUMS_ATTR, text)
        else:
            if F.CHECKSUMS_ATTR in g.attrs:
                del g.attrs[F.CHECKSUMS_ATTR]
            g.attrs[F.CHECKSUMS_ATTR] = text

    def copy_snapshot(
        self, name: str, encoded: tuple[Any, list[np.ndarray], dict[int, str]], meta: dict[str, Any]
    ) -> int:
        """Write a snapshot read with :meth:`Recording.load_snapshot_encoded` (no decoding).

        ``replaykit extract`` copies a snapshot this way: its tree document and arrays go
        over byte for byte, and nothing in it is turned into live objects.
        """
        if self._broken is not None:
            raise self._broken
        try:
            return self._write_snapshot(name, None, meta, encoded=encoded)
        except ReplaykitError:
            raise
        except (OSError, RuntimeError) as exc:
            raise self._fail(exc) from None

    def copy_stream(self, reader: StreamReader, start: int, stop: int) -> None:
        """Write rows ``[start, stop)`` of ``reader``'s stream as this file's stream.

        The stream's rows keep their global numbers (``first`` = ``start`` in the commit
        record, version 4 when ``start`` > 0). Each column becomes a contiguous dataset of
        exactly its rows (a small file stays small: no whole chunks), copied block by block
        in bounded memory; the source column's checksum is verified on the way.
        """
        start = max(reader.first, min(start, reader.rows))
        stop = max(start, min(stop, reader.rows))
        n = stop - start
        group = self._file.require_group(F.stream_path(reader.name))
        checksums: dict[str, str] = {}
        names = []
        for col in reader.columns:
            names.append(col)
            if reader.optional(col):
                names.append(col + F.PRESENT_SUFFIX)
        for dname in names:
            dtype, shape = reader._expected(dname)
            h = xxhash.xxh3_64()
            if n and all(shape):
                parent, _, leaf = dname.rpartition("/")
                owner = group.require_group(parent) if parent else group
                dsid = _create_placed(owner, leaf, dtype, (n, *shape))
                block = reader.block_rows_for(dname)
                for lo in range(start, stop, block):
                    hi = min(stop, lo + block)
                    if dname.endswith(F.PRESENT_SUFFIX):
                        data = reader.present(dname[: -len(F.PRESENT_SUFFIX)], lo, hi)
                    else:
                        data = reader.read(dname, lo, hi)
                    assert data is not None
                    data = np.ascontiguousarray(data)
                    fspace = dsid.get_space()
                    fspace.select_hyperslab((lo - start, *([0] * len(shape))), data.shape)
                    dsid.write(h5s.create_simple(data.shape), fspace, data)
                    h.update(data.data)
            else:
                group.create_dataset(dname, shape=(n if all(shape) else 0, *shape), dtype=dtype)
            if not dname.endswith(F.PRESENT_SUFFIX):
                logical = reader.logical_dtype(dname)
                if logical:
                    group[dname].attrs[F.LOGICAL_DTYPE_ATTR] = logical
            checksums[dname] = h.hexdigest()
        body: dict[str, Any] = {
            F.COMMIT_ROWS: n,
            F.COMMIT_CHECKSUMS: checksums,
            F.COMMIT_COLUMNS: reader.columns,
            F.COMMIT_STREAM: reader.name,
        }
        if start:
            body[F.COMMIT_FIRST] = start
            self._version = max(self._version, F.FIRST_ROW_VERSION)
            self._meta_dirty = True
        text = self._spill(
            group, F.COMMIT_ATTR, F.dumps({**body, F.COMMIT_CRC: _digest(F.dumps(body).encode())})
        )
        self._file.flush()
        _set_fixed(group.attrs, F.COMMIT_ATTR, text)
        self._spill_current.update(self._spill_pending)
        self._spill_pending.clear()

    def _free_slot(
        self, pack: np.ndarray | None, large: list[tuple[str, np.ndarray]]
    ) -> h5py.Group | None:
        """Take a dropped snapshot's group whose datasets fit this snapshot exactly, if any."""
        want = {key: (data.dtype, data.shape) for key, data in large}
        if pack is not None:
            want[F.PACK_DATASET] = (pack.dtype, pack.shape)
        for i, g in enumerate(self._free_slots):
            have = {}
            for key in g:
                ds = g[key]
                if not isinstance(ds, h5py.Dataset) or ds.chunks is not None:
                    break
                have[key] = (ds.dtype, ds.shape)
            else:
                if have == want:
                    return self._free_slots.pop(i)
        return None

    def drop_snapshot(self, name: str) -> None:
        """Unlink snapshot ``name`` and keep its group as a slot for a later snapshot.

        Called only after a newer snapshot is published (flight-mode retention). The unlink
        is committed (flushed) before the slot is ever rewritten, so a kill leaves either
        the snapshot whole and linked, or unlinked; never a linked snapshot half-overwritten.
        """
        if self._broken is not None:
            raise self._broken
        try:
            snaps = self._file[F.SNAPSHOTS_GROUP]
            g = snaps[name]
            del snaps[name]
            self.snapshots.remove(name)
            if self.reuse_snapshot_slots:
                self._free_slots.append(g)
            self.commit()
        except ReplaykitError:
            raise
        except (OSError, RuntimeError, KeyError) as exc:
            raise self._fail(exc) from None

    def _write_large(
        self,
        g: h5py.Group,
        arrays: list[tuple[str, np.ndarray]],
        logical: dict[int, str],
        scan: list[bool],
        found: dict[int, tuple[int, Any]],
    ) -> dict[str, str]:
        """Write a snapshot's large arrays as contiguous datasets; return their digests.

        Each dataset's space is allocated (aligned, never filled, so HDF5 writes none of its
        bytes) and the bytes are written at its file offset in one pass of bounded chunks
        that also hashes them and, where ``scan[i]``, notes the first NaN/infinity of array
        ``i`` in ``found``. Arrays of 1 MiB and more go with direct I/O when chosen (and the
        file system takes it), the rest through the page cache.
        """
        digests: dict[str, str] = {}
        direct = self.direct_io
        if direct is None:
            big = sum(a.nbytes for _, a in arrays if a.nbytes >= _rawio.MIN_BYTES)
            direct = big > 0 and not _rawio.page_cache_has_room(big)
        dw = _rawio.DirectWriter(self.write_path) if direct else None
        fd = os.open(self.write_path, os.O_WRONLY)
        try:
            placed = [_create_placed(g, key, data.dtype, data.shape) for key, data in arrays]
            _claim(
                fd, [(d.get_offset(), a.nbytes) for d, (_, a) in zip(placed, arrays, strict=True)]
            )
            for (key, data), dsid in zip(arrays, placed, strict=True):
                i = int(key[len(F.ARRAY_PREFIX) :])
                offset = dsid.get_offset()
                visit = _finite.ChunkVisitor(xxhash.xxh3_64(), data.dtype, logical.get(i), scan[i])
                if offset is None:  # not placed (never for a non-empty contiguous dataset)
                    dsid.write(h5s.ALL, h5s.ALL, data)
                    visit.update(data.reshape(-1).view(np.uint8).data)
                elif (
                    dw is None
                    or not dw.available
                    or data.nbytes < _rawio.MIN_BYTES
                    or not dw.write(offset, data, visit)
                ):
                    # (A direct write that gave up part-way is written again from the start.)
                    visit = _finite.ChunkVisitor(
                        xxhash.xxh3_64(), data.dtype, logical.get(i), scan[i]
                    )
                    _rawio.write_chunks(fd, offset, data, visit)
                digests[key] = visit.hasher.hexdigest()
                if visit.bad is not None:
                    found[i] = visit.bad
        finally:
            os.close(fd)
            if dw is not None:
                dw.close()
        return digests

    def close(self) -> None:
        """Commit what is buffered and close the file.

        With ``overwrite`` of an existing file, the temporary file is then renamed over
        ``path``.
        """
        if self._closed:
            return
        end = None
        try:
            self.commit()
            end = int(self._file.id.get_filesize())
        finally:
            self._stop_pool()
            if not self._closed:
                self._closed = True
                self._file.close()
        if end is not None:
            # Drop the room _reserve claimed past the file's end (libhdf5 does not know of it).
            with contextlib.suppress(OSError):
                if os.stat(self.write_path).st_size > end:
                    os.truncate(self.write_path, end)
        if self.write_path != self.path:
            os.replace(self.write_path, self.path)
            if self.fsync:
                _fsync_dir(self.path.parent)
            self.write_path = self.path

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Snapshot attributes longer than this stay variable-length (not rewritable in place): an
# object header holds at most 64 KiB of fixed-size attributes.
_SLOT_ATTR_MAX_BYTES = 16 << 10

# Room kept free past the file's allocated end before a commit flushes (see _reserve), and
# the step in which the reservation grows.
_RESERVE_MARGIN = 64 << 10
_RESERVE_STEP = 256 << 10


def _extend(fd: int, size: int, target: int) -> None:
    """Grow the file behind ``fd`` from ``size`` to ``target`` bytes, claiming the blocks.

    ``posix_fallocate`` where the file system supports it (a full disk fails here); else
    one byte written at the new end (a file-size limit fails here; a full disk may not).
    """
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is not None:
        try:
            fallocate(fd, size, target - size)
            return
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # no fallocate here
                raise
    os.pwrite(fd, b"\0", target - 1)


def _claim(fd: int, extents: list[tuple[int | None, int]]) -> None:
    """Allocate the file's blocks under the placed ``(offset, size)`` extents before writing.

    Writing into a new file's unallocated range makes the file system reserve blocks page by
    page inside every ``pwrite`` (ext4's delayed allocation); one ``posix_fallocate`` of the
    whole span first takes that out of the writes (1.2 GB through ``snapshot()``, eight
    alternating rounds on a busy 2-core VM: median 0.77 s instead of 1.03 s, CPU time
    0.50 s instead of 0.64 s). A full disk fails here, before any byte is written. Where
    the file system has no fallocate, nothing is done.
    """
    spans = [(o, n) for o, n in extents if o is not None and n > 0]
    fallocate = getattr(os, "posix_fallocate", None)
    if not spans or fallocate is None:
        return
    lo = min(o for o, _ in spans)
    hi = max(o + n for o, n in spans)
    try:
        fallocate(fd, lo, hi - lo)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise


def _parse_compression(compression: str | None) -> tuple[str | None, int | None]:
    """``(filter name, deflate level)`` for the writer's ``compression`` argument."""
    if compression is None or compression == "lzf":
        return compression, None
    if compression == "gzip":
        return "gzip", GZIP_DEFAULT_LEVEL
    if isinstance(compression, str):
        name, _, level = compression.partition(":")
        if name == "gzip" and level.isdigit() and 0 <= int(level) <= 9:  # noqa: PLR2004
            return "gzip", int(level)
    raise UsageError(
        f"compression must be None, 'gzip', 'gzip:LEVEL' (LEVEL 0-9) or 'lzf', got "
        f"{compression!r}; these are the lossless filters every HDF5 reader has"
    )


def _temporary_name(path: Path) -> Path:
    """Return a fresh name beside ``path`` for a recording that replaces it on close."""
    return path.with_name(f".{path.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _scan_array(
    key: str,
    data: np.ndarray,
    logical: dict[int, str],
    scan: list[bool],
    found: dict[int, tuple[int, Any]],
) -> None:
    """Note the first NaN/infinity of snapshot array ``key`` in ``found`` when it is scanned."""
    i = int(key[len(F.ARRAY_PREFIX) :])
    if scan[i] and _finite.scans(data.dtype, logical.get(i)):
        flat = data.reshape(-1)
        bad = _finite.first_bad(flat, logical.get(i))
        if bad is not None:
            found[i] = (bad, _finite.value_at(flat, bad, logical.get(i)))


def _nonfinite_meta(hit: tuple[str, tuple[int, ...], Any] | None) -> dict[str, Any] | None:
    if hit is None:
        return None
    return {
        F.NONFINITE_PATH: hit[0],
        F.NONFINITE_INDEX: list(hit[1]),
        F.NONFINITE_VALUE: repr(hit[2]),
    }


def _first_line(exc: BaseException) -> str:
    return ((str(exc).splitlines() or [type(exc).__name__])[0])[:160]


def _set_fixed(attrs: h5py.AttributeManager, name: str, text: str) -> str:
    """Store ``text`` as a space-padded fixed-size string attribute; return the padded text.

    When the padded capacity suffices the attribute is overwritten in place: one message in
    one object header, written by one ``pwrite`` at flush, so a kill leaves the old or the new
    value and never a torn header. Growing it (new columns, rarely) recreates it once, with
    room to spare.
    """
    data = text.encode("utf-8")
    cap = 0
    if name in attrs:
        dt = attrs.get_id(name).dtype
        if dt.kind == "S":
            cap = dt.itemsize
    if len(data) > cap:
        cap = 64
        while cap < len(data) + len(data) // 2:
            cap *= 2
        attrs.create(name, np.bytes_(data.ljust(cap)), dtype=f"S{cap}")
    else:
        attrs.modify(name, np.bytes_(data.ljust(cap)))
    return data.ljust(cap).decode("utf-8")


def _hold_metadata_until_flush(f: h5py.File) -> None:
    """Stop libhdf5 from writing dirty metadata to disk before an explicit flush.

    By default the metadata cache evicts (writes) entries whenever it is full, so a file
    killed between commits can hold a mix of old and new metadata. With evictions off the
    cache grows instead; recordings' metadata (chunk indexes, headers) is tiny next to
    their data, and each commit's flush leaves the cache clean.
    """
    cfg = f.id.get_mdc_config()
    cfg.evictions_enabled = False
    cfg.incr_mode = 0  # H5C_incr__off
    cfg.flash_incr_mode = 0  # H5C_flash_incr__off
    cfg.decr_mode = 0  # H5C_decr__off
    f.id.set_mdc_config(cfg)


def _root_checksum(attrs: dict[str, Any]) -> str:
    body = {k: (v if not isinstance(v, (np.integer,)) else int(v)) for k, v in attrs.items()}
    return _digest(F.dumps(dict(sorted(body.items()))).encode())


# --------------------------------------------------------------------------- reading

# Exceptions h5py, numpy and json raise on damaged input. Readers turn them into a
# FileFormatError naming the file and object, so a caller never sees a raw traceback.
_RAW_ERRORS = (
    OSError,
    RuntimeError,
    KeyError,
    ValueError,
    TypeError,
    IndexError,
    AttributeError,
    OverflowError,
    RecursionError,
)


class _guard:  # noqa: N801 - used as a context manager, reads like a keyword
    """Turn a raw library error into a :class:`FileFormatError` naming file and object."""

    __slots__ = ("obj", "path", "what")

    def __init__(self, path: Path, obj: str | None, what: str) -> None:
        self.path, self.obj, self.what = path, obj, what

    def __enter__(self) -> None:
        return None

    def __exit__(self, et: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        if exc is None or isinstance(exc, ReplaykitError):
            return False
        if isinstance(exc, MemoryError):
            raise UnsafeFileError(
                f"{self.what} needs more memory than is available (a crafted size?); "
                "do not trust this file",
                path=self.path,
                obj=self.obj,
            ) from None
        if isinstance(exc, _RAW_ERRORS):
            text = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
            from replaykit._format import safety as _safety

            if _safety.is_being_written(self.path) or _safety.changed_since_open(self.path):
                raise FileFormatError(
                    f"cannot {self.what} ({type(exc).__name__}: {text}): the file "
                    f"{_safety.BEING_WRITTEN}",
                    path=self.path,
                    obj=self.obj,
                ) from None
            raise FileFormatError(
                f"cannot {self.what} ({type(exc).__name__}: {text}); the file is damaged: "
                "re-record it or use a good copy",
                path=self.path,
                obj=self.obj,
            ) from None
        return False


def _get_attr(obj_id: Any, name: str) -> Any:
    """Attribute ``name`` of an HDF5 object (``None`` when absent), via h5py's low-level API.

    The object layer (``obj.attrs[name]``) costs several times more per attribute, and a
    small restore reads a dozen of them. Scalar strings, what replaykit writes, are read
    with the file's own type (fixed-size) or one cached string type (variable-length).
    """
    try:
        aid = h5a.open(obj_id, name.encode())
    except KeyError:
        return None
    # The element count is checked before every read: HDF5 fills the whole buffer
    # the dataspace describes, whatever size the array passed in has.
    if aid.get_space().get_simple_extent_npoints() == 1:
        tid = aid.get_type()
        if tid.get_class() == h5t.STRING:
            if tid.is_variable_str():
                obj = np.empty((), object)
                aid.read(obj, mtype=_vlen_str_type())
                return obj[()]
            fixed = np.empty((), f"S{tid.get_size()}")
            aid.read(fixed, mtype=tid)
            return fixed[()]
    shape = aid.shape
    if shape is None:  # an empty dataspace holds no value
        return None
    dt = aid.dtype
    arr = np.empty(shape, dt)
    if dt.kind == "O":
        aid.read(arr, mtype=h5t.py_create(dt))
    else:
        aid.read(arr)
    return arr[()] if shape == () else arr


_VLEN_STR: list[Any] = []


def _vlen_str_type() -> Any:
    if not _VLEN_STR:
        _VLEN_STR.append(h5t.py_create(h5py.string_dtype()))
    return _VLEN_STR[0]


def _missing_group(path: Path, group: str) -> FileFormatError:
    # Writers create both top-level groups before their first commit.
    return FileFormatError(
        f"recording has no /{group} group (every writer creates it); the file is damaged",
        path=path,
        obj="/",
    )


def _text(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if not isinstance(v, str):
        raise TypeError(f"expected a string attribute, found {type(v).__name__}")
    return v


@dataclass(frozen=True)
class SnapshotInfo:
    """A committed snapshot: its name and metadata (step, episode, ...)."""

    name: str
    meta: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.meta[F.SNAP_STEP])

    @property
    def episode(self) -> int:
        return int(self.meta[F.SNAP_EPISODE])


@dataclass(frozen=True)
class DatasetInfo:
    """How one dataset is stored: its storage dtype, shape and bytes on disk."""

    dtype: str
    shape: tuple[int, ...]
    storage_bytes: int


def _dataset_info(ds: h5py.Dataset) -> DatasetInfo:
    return DatasetInfo(ds.dtype.str, tuple(int(n) for n in ds.shape), int(ds.id.get_storage_size()))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_count(v: Any) -> bool:
    return _is_int(v) and v >= 0


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _opt(check: Any) -> Any:
    return lambda v: v is None or check(v)


def _is_str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _is_seed(v: Any) -> bool:
    return v is None or _is_int(v) or (isinstance(v, list) and all(_opt(_is_int)(x) for x in v))


def _is_dict(v: Any) -> bool:
    return isinstance(v, dict)


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_spec(v: Any) -> bool:
    if v is None:
        return True
    if not isinstance(v, dict):
        return False
    return _fields_ok(v, _SPEC_TYPES) is None


def _is_wrappers(v: Any) -> bool:
    return isinstance(v, list) and all(
        isinstance(w, dict) and _fields_ok(w, _WRAPPER_TYPES) is None for w in v
    )


# Types of the schema fields readers rely on (docs/FORMAT.md §3, §6); user data (kwargs,
# options, ``user``) is only required to be of its container type. A forged file that
# recomputed its checksums still cannot hand a reader a list where a dict belongs.
_SPEC_TYPES: dict[str, tuple[Any, str]] = {
    F.SPEC_ID: (_is_str, "a string"),
    F.SPEC_KWARGS: (_opt(_is_dict), "an object"),
    F.SPEC_MAX_EPISODE_STEPS: (_opt(_is_count), "a non-negative integer or null"),
    F.SPEC_REWARD_THRESHOLD: (_opt(_is_number), "a number or null"),
    F.SPEC_NONDETERMINISTIC: (_is_bool, "true or false"),
    F.SPEC_ORDER_ENFORCE: (_is_bool, "true or false"),
    F.SPEC_DISABLE_ENV_CHECKER: (_is_bool, "true or false"),
    F.SPEC_ADDITIONAL_WRAPPERS: (_opt(_is_wrappers), "a list of wrapper objects"),
}
_WRAPPER_TYPES: dict[str, tuple[Any, str]] = {
    F.WRAPPER_NAME: (_is_str, "a string"),
    F.WRAPPER_KWARGS: (_opt(_is_dict), "an object"),
}
_META_TYPES: dict[str, tuple[Any, str]] = {
    F.META_CREATED: (_is_str, "a string"),
    F.META_KIND: (_is_str, "a string"),
    F.META_ENV_ID: (_opt(_is_str), "a string or null"),
    F.META_ENV_SPEC: (_is_spec, "an env spec object or null"),
    F.META_ENV_CLASS: (_opt(_is_str), "a string or null"),
    F.META_ENV_ADAPTER: (_opt(_is_str), "a string or null"),
    F.META_SEED: (_is_seed, "an integer, a list of integers, or null"),
    F.META_OBSERVATION_SPACE: (_opt(_is_dict), "a space object or null"),
    F.META_ACTION_SPACE: (_opt(_is_dict), "a space object or null"),
    F.META_VECTOR: (_opt(_is_dict), "an object or null"),
    F.META_USER: (_is_dict, "an object"),
    F.META_SKIPPED_INFO: (lambda v: isinstance(v, list), "a list"),
    F.META_RESET_OPTIONS: (_is_dict, "an object"),
    F.META_CLOSED: (_is_bool, "true or false"),
    F.META_STEPS: (_is_count, "a non-negative integer"),
    F.META_EPISODES: (_is_count, "a non-negative integer"),
    F.META_RESETS: (_is_count, "a non-negative integer"),
    F.META_UPDATES: (_is_count, "a non-negative integer"),
    F.META_UPDATE_PROBE_ORDER: (_is_str_list, "a list of strings"),
    F.META_FIRST_NONFINITE_UPDATE: (_opt(_is_dict), "an object or null"),
    F.META_FAILURE: (_opt(_is_dict), "an object or null"),
    F.META_RETENTION: (_opt(_is_dict), "an object or null"),
    F.META_EXTRACT: (_opt(_is_dict), "an object or null"),
}
_SNAP_TYPES: dict[str, tuple[Any, str]] = {
    F.SNAP_STEP: (_is_count, "a non-negative integer"),
    F.SNAP_EPISODE: (_is_int, "an integer"),
    F.SNAP_STEP_IN_EPISODE: (_is_int, "an integer"),
    F.SNAP_UPDATES: (_is_count, "a non-negative integer"),
    F.SNAP_NEEDS_RESET: (_is_bool, "true or false"),
    F.SNAP_SEQ: (_is_int, "an integer"),
    F.SNAP_ENV_STATE: (_opt(_is_str), "a string or null"),
    F.SNAP_REPLAY_FROM: (_opt(_is_str), "a string or null"),
    F.SNAP_TRACKED: (_is_str_list, "a list of strings"),
    F.SNAP_NONFINITE: (_opt(_is_dict), "an object or null"),
    F.SNAP_BYTES: (_is_count, "a non-negative integer"),
    F.SNAP_NAME: (_is_str, "a string"),
    F.SNAP_RESETS: (_is_count, "a non-negative integer"),
    F.SNAP_LAST_WAS_RESET: (_is_bool, "true or false"),
    F.SNAP_PENDING_AUTORESETS: (
        lambda v: isinstance(v, list) and all(_is_count(x) for x in v),
        "a list of sub-env indexes",
    ),
}


def _fields_ok(record: dict[str, Any], types: dict[str, tuple[Any, str]]) -> str | None:
    """Return a description of the first mistyped field of ``record``, or ``None``."""
    for key, (ok, want) in types.items():
        if key in record and not ok(record[key]):
            v = record[key]
            return f"field {key!r} is {type(v).__name__} {str(v)[:40]!r}, expected {want}"
    return None


def _check_fields(
    record: dict[str, Any], types: dict[str, tuple[Any, str]], what: str, path: Path, obj: str
) -> None:
    problem = _fields_ok(record, types)
    if problem is not None:
        raise FileFormatError(
            f"{what} {problem}; the file is damaged or forged: re-record it or use a good copy",
            path=path,
            obj=obj,
        )


def _check_columns(columns: Any, checksums: Any, path: Path, obj: str) -> None:
    """Type-check a commit record's column specs (dtype names from an allow-list)."""
    if not isinstance(columns, dict) or not isinstance(checksums, dict):
        raise FileFormatError(
            "commit record's columns or checksums are not JSON objects; the file is damaged "
            "or forged",
            path=path,
            obj=obj,
        )
    for name, spec in columns.items():
        where = f"{obj}/{name}"
        problem = None
        if not isinstance(spec, dict):
            problem = f"is a {type(spec).__name__}, expected an object"
        else:
            d = spec.get(F.COLUMN_DTYPE)
            shape = spec.get(F.COLUMN_SHAPE)
            if not _column_dtype_ok(d):
                problem = f"has dtype {str(d)[:40]!r}, expected a bool/int/float/complex dtype"
            elif not (
                isinstance(shape, list)
                and len(shape) <= _MAX_NDIM
                and all(_is_count(x) for x in shape)
            ):
                problem = f"has shape {str(shape)[:40]!r}, expected a list of sizes"
            elif not isinstance(spec.get(F.COLUMN_OPTIONAL, False), bool):
                problem = "has a non-bool optional flag"
        if problem is not None:
            raise FileFormatError(
                f"commit record column {problem}; the file is damaged or forged",
                path=path,
                obj=where,
            )
    if not all(isinstance(v, str) for v in checksums.values()):
        raise FileFormatError(
            "commit record checksums are not strings; the file is damaged or forged",
            path=path,
            obj=obj,
        )


_COLUMN_DTYPES: dict[str, bool] = {}


def _column_dtype_ok(d: Any) -> bool:
    if not isinstance(d, str):
        return False
    hit = _COLUMN_DTYPES.get(d)
    if hit is None:
        if d in F.LOGICAL_DTYPES:
            hit = True
        elif (
            len(d) > _DTYPE_STR_MAX
            or d[:1] not in "<>|="
            or not d[1:2].isalpha()
            or not d[2:].isdigit()
        ):
            hit = False  # only dtype.str spellings ("<f8", "|b1"): no field lists, no names
        else:
            try:
                dt = np.dtype(d)
                hit = dt.kind in F.ALLOWED_KINDS and dt.fields is None and dt.subdtype is None
            except (TypeError, ValueError):
                hit = False
        if len(_COLUMN_DTYPES) < _CACHE_MAX:
            _COLUMN_DTYPES[d] = hit
    return hit


class StreamReader:
    """Committed rows of one stream, read column by column with checksums verified."""

    def __init__(self, rec: Recording, name: str, group: h5py.Group) -> None:
        self._rec = rec
        self.name = name
        self._group = group
        where = f"/{F.STREAMS_GROUP}/{name}"
        self._where = where
        k = rec._known
        hit = k.commits.get(name) if k is not None else None
        if hit is None:
            hit = self._read_commit(rec, name, group, where)
            k = rec._learning()
            if k is not None and _known.grow(k, hit[4]):
                k.commits[name] = hit
        first, rows, columns, checksums, _ = hit
        columns = dict(columns)  # each reader owns its table (a cached one is shared)
        # Rows are numbered globally: the stream stores rows [first, first + stored) (an
        # extract's streams start where its snapshot does; version 4).
        self.first = int(first)
        self.rows = self.first + rows
        self.columns: dict[str, dict[str, Any]] = columns
        self._checksums = checksums
        self._verified: set[str] = set()
        self._whole: dict[str, np.ndarray] = {}
        self._checked: dict[str, h5py.h5d.DatasetID] = {}
        self._chunk_rows: dict[str, int] = {}
        self._span_rows: dict[str, int] = {}
        # Dataset -> file offsets of its chunks (see _chunk_map); None: read through HDF5.
        self._maps: dict[str, np.ndarray | None] = {}

    @staticmethod
    def _read_commit(
        rec: Recording, name: str, group: h5py.Group, where: str
    ) -> tuple[int, int, dict[str, dict[str, Any]], dict[str, Any], int]:
        """Read and check the stream's commit record: first row, rows, columns, checksums.

        The last item is the record's text size.
        """
        with _guard(rec.path, where, "read the stream's commit record"):
            raw = _get_attr(group.id, F.COMMIT_ATTR)
        if raw is None:
            raise TruncatedFileError(
                "stream has no commit record (the recording was killed before its first "
                "commit); record again",
                path=rec.path,
                obj=where,
            )
        try:
            text = _text(raw)
        except (UnicodeError, TypeError) as exc:
            raise FileFormatError(
                f"commit record is not UTF-8 text ({_first_line(exc)}); the file is damaged",
                path=rec.path,
                obj=where,
            ) from None
        text = rec._unspill(group.id, text, F.COMMIT_ATTR, where)
        try:
            commit = F.loads(text)
            crc = commit.pop(F.COMMIT_CRC)
            body_ok = crc == _digest(F.dumps(commit).encode())
            rows = commit[F.COMMIT_ROWS]
            if not _is_int(rows):
                raise TypeError(f"row count {str(rows)[:40]!r} is not an integer")
            columns = commit[F.COMMIT_COLUMNS]
            checksums = commit[F.COMMIT_CHECKSUMS]
            first = commit.get(F.COMMIT_FIRST, 0)
            if not _is_int(first) or first < 0:
                raise TypeError(f"first row {str(first)[:40]!r} is not a non-negative integer")
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise FileFormatError(
                f"malformed commit record ({type(exc).__name__}: {_first_line(exc)}); "
                "the file is damaged",
                path=rec.path,
                obj=where,
            ) from None
        if not body_ok and rec.verify:
            raise ChecksumError(
                "commit record does not match its checksum (file damaged or edited); "
                "re-record it or use a good copy",
                path=rec.path,
                obj=where,
            )
        if rows < 0:
            raise FileFormatError(f"commit record claims {rows} rows", path=rec.path, obj=where)
        _check_columns(columns, checksums, rec.path, where)
        if (
            rec.verify
            and rec.format_version >= F.PACK_VERSION
            and commit.get(F.COMMIT_STREAM) != name
        ):
            raise ChecksumError(
                f"stream group {name!r} holds the commit record of stream "
                f"{commit.get(F.COMMIT_STREAM)!r} (a damaged name); re-record it or use a good "
                "copy",
                path=rec.path,
                obj=where,
            )
        return int(first), int(rows), columns, checksums, len(text)

    def checksum(self, name: str) -> str | None:
        """Return the commit record's checksum of dataset ``name`` (a column or its mask).

        Two columns with equal checksums and row counts hold the same bytes once each is
        verified against its checksum (64-bit xxh3; a damaged one fails that check).
        """
        value = self._checksums.get(name)
        return value if isinstance(value, str) else None

    def _chunk_map(self, name: str, ds: Any) -> np.ndarray | None:
        """File offsets of a plain chunked dataset's chunks, by chunk index, for ``preadv``.

        HDF5 spends ~12 us a chunk looking it up and reading it, which was most of a diff
        of two 1M-step recordings (5,000 16 KiB chunks a file). An uncompressed chunk of a
        stream column is the rows' bytes as they are in memory, so the chunks' addresses
        (one pass over HDF5's chunk index) let whole runs of adjacent chunks be read with
        one ``preadv`` each. ``None`` (read through HDF5) unless every chunk of the
        committed rows is stored, unfiltered, of the chunk's size, inside the file, with
        the file type equal to the memory type.
        """
        if name in self._maps:
            return self._maps[name]
        self._maps[name] = None
        rows_c = self._chunk_rows.get(name, 0)
        stored = self.rows - self.first
        if rows_c <= 0 or stored <= 0 or not hasattr(os, "preadv"):
            return None
        dcpl = ds.get_create_plist()
        row_shape = tuple(ds.shape[1:])
        if dcpl.get_nfilters() or tuple(dcpl.get_chunk()) != (rows_c, *row_shape):
            return None
        if ds.get_type() != h5t.py_create(ds.dtype):
            return None
        chunk_bytes = rows_c * ds.dtype.itemsize * math.prod(row_shape)
        fd = int(self._rec._file.id.get_vfd_handle())
        offsets = _chunk_offsets(
            ds, rows_c, -(-stored // rows_c), chunk_bytes, os.fstat(fd).st_size
        )
        self._maps[name] = offsets
        return offsets

    def _read_block(self, name: str, ds: Any, start: int, out: np.ndarray) -> None:
        """Read dataset rows ``[start, start + len(out))`` into the C-contiguous ``out``."""
        offsets = self._chunk_map(name, ds)
        if offsets is None or out.size == 0:
            _read_rows(ds, start, out)
            return
        rows_c = self._chunk_rows[name]
        row_bytes = out.itemsize * math.prod(out.shape[1:])
        view = out.reshape(-1).view(np.uint8).data
        fd = int(self._rec._file.id.get_vfd_handle())
        stop = start + len(out)
        k0, k1 = start // rows_c, (stop - 1) // rows_c + 1
        chunk_bytes = rows_c * row_bytes
        at = offsets[k0:k1]
        # Runs of chunks adjacent in the file: one preadv each.
        cuts = np.flatnonzero(at[1:] != at[:-1] + chunk_bytes) + 1
        dst = 0
        for lo, hi in zip([0, *cuts.tolist()], [*cuts.tolist(), k1 - k0], strict=True):
            row = max(start, (k0 + lo) * rows_c)
            upto = min(stop, (k0 + hi) * rows_c)
            n = (upto - row) * row_bytes
            off = int(at[lo]) + (row - (k0 + lo) * rows_c) * row_bytes
            _rawio.pread_exactly(fd, view[dst : dst + n], off)
            dst += n

    def __contains__(self, column: str) -> bool:
        return column in self.columns

    def optional(self, column: str) -> bool:
        return bool(self.columns[column].get(F.COLUMN_OPTIONAL))

    def logical_dtype(self, column: str) -> str | None:
        d = self.columns[column][F.COLUMN_DTYPE]
        return d if d in F.LOGICAL_DTYPES else None

    def _expected(self, name: str) -> tuple[np.dtype, tuple[int, ...]]:
        """Storage dtype and row shape the commit record promises for dataset ``name``."""
        if name.endswith(F.PRESENT_SUFFIX):
            return np.dtype(bool), ()
        spec = self.columns[name]
        d = spec[F.COLUMN_DTYPE]
        dtype = F.LOGICAL_DTYPES[d] if d in F.LOGICAL_DTYPES else np.dtype(d)
        return dtype, tuple(int(x) for x in spec[F.COLUMN_SHAPE])

    def _dataset(self, name: str) -> h5py.h5d.DatasetID:
        """Return the checked low-level dataset of column ``name`` (or ``<column>@present``).

        h5py's low-level API: the object layer's per-dataset setup cost more than the
        checks, and a diff opens every column of two files.
        """
        dsid = self._checked.get(name)
        if dsid is not None:
            return dsid
        where = f"{self._where}/{name}"
        path = self._rec.path
        k = self._rec._known
        spot = k.columns.get((self.name, name)) if k is not None else None
        if spot is not None:
            # Checked by an earlier verified open of this unchanged file.
            with _guard(path, where, "open the column"):
                obj = h5py.h5o.open(self._group.id, name.encode())
            if not isinstance(obj, h5py.h5d.DatasetID):
                raise TruncatedFileError(
                    "column dataset is missing (file damaged or edited)", path=path, obj=where
                )
            self._chunk_rows[name], self._span_rows[name] = spot
            self._checked[name] = obj
            return obj
        with _guard(path, where, "open the column"):
            gid = self._group.id
            key = name.encode()
            obj = h5py.h5o.open(gid, key) if gid.links.exists(key) else None
            if not isinstance(obj, h5py.h5d.DatasetID):
                raise TruncatedFileError(
                    "column dataset is missing (file damaged or edited)", path=path, obj=where
                )
            dtype, shape = self._expected(name)
            stored_shape = obj.shape
            if obj.dtype != dtype or tuple(stored_shape[1:]) != shape:
                raise FileFormatError(
                    f"column has dtype {obj.dtype}{list(stored_shape[1:])}, its commit record "
                    f"says {dtype}{list(shape)}; the file is damaged or edited",
                    path=path,
                    obj=where,
                )
            if stored_shape[0] < self.rows - self.first:
                raise TruncatedFileError(
                    f"column holds {stored_shape[0]} rows, commit record says "
                    f"{self.rows - self.first}; "
                    "the file is damaged or edited",
                    path=path,
                    obj=where,
                )
            # Unallocated chunks read back as zeros, so a commit record claiming rows that
            # were never stored would pass shape checks; compare with bytes actually stored.
            need = (self.rows - self.first) * dtype.itemsize * math.prod(shape)
            dcpl = obj.get_create_plist()
            compressed = any(
                dcpl.get_filter(i)[0] in (1, 32000) for i in range(dcpl.get_nfilters())
            )
            stored = int(obj.get_storage_size())
            if need > (stored * 1100 if compressed else stored):
                raise TruncatedFileError(
                    f"commit record claims {self.rows - self.first} rows ({need} bytes) but the "
                    f"column stores {stored} bytes; the file is damaged or edited",
                    path=path,
                    obj=where,
                )
            chunked = dcpl.get_layout() == h5py.h5d.CHUNKED
            self._chunk_rows[name] = int(dcpl.get_chunk()[0]) if chunked else 0
            # Reads of a compressed column span whole chunks (see _iter_rows).
            self._span_rows[name] = self._chunk_rows[name] if compressed else 0
        self._checked[name] = obj
        k = self._rec._learning()
        if k is not None:
            k.columns[(self.name, name)] = (self._chunk_rows[name], self._span_rows[name])
        return obj

    def _verify(self, name: str) -> None:
        if name in self._verified or not self._rec.verify:
            return
        # One pass in bounded blocks into one reused buffer; the digest is checked at the end.
        blocks, last = 0, None
        for _, data in self._iter_rows(name, self.block_rows_for(name), reuse=True):
            blocks, last = blocks + 1, data
        if blocks == 1 and last is not None and last.nbytes <= KEEP_VERIFIED_BYTES:
            # The whole column fitted one small block: reads serve from it, the bytes just
            # verified, instead of reading them from the file again.
            self._whole[name] = last

    def _slice(self, name: str, start: int | None, stop: int | None) -> np.ndarray:
        start = self.first if start is None else start
        stop = self.rows if stop is None else min(stop, self.rows)
        start = max(0, min(start, stop))
        if start < self.first and stop > start:
            raise UsageError(
                f"{self._rec.path}: stream {self.name!r} holds rows {self.first} to "
                f"{self.rows - 1} only (an extract); rows {start} to {self.first - 1} are in the "
                "recording it was cut from"
            )
        whole = self._whole.get(name)
        if whole is not None:
            part: np.ndarray = whole[start - self.first : stop - self.first].copy()
            return part
        ds = self._dataset(name)
        out = np.empty((stop - start, *ds.shape[1:]), dtype=ds.dtype)
        with _guard(self._rec.path, f"{self._where}/{name}", "read the column"):
            if self._maps.get(name) is not None:
                # Verified through its chunk map: read the same bytes the same way (HDF5's
                # own lookup of a damaged chunk index may disagree with its iteration).
                self._read_block(name, ds, start - self.first, out)
            else:
                _read_rows(ds, start - self.first, out)
        return out

    def read(self, column: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """Rows ``[start, stop)`` of ``column`` (clamped to the committed rows).

        ``start`` defaults to the stream's first row (``0`` except in extracts).
        """
        if column not in self.columns:
            raise UsageError(f"stream {self.name!r} has no column {column!r}")
        self._verify(column)
        return self._slice(column, start, stop)

    def present(
        self, column: str, start: int | None = None, stop: int | None = None
    ) -> np.ndarray | None:
        if not self.optional(column):
            return None
        name = column + F.PRESENT_SUFFIX
        self._verify(name)
        return self._slice(name, start, stop)

    def block_rows_for(self, name: str) -> int:
        """Rows of dataset ``name`` (a column or ``<column>@present``) in one streaming block.

        About :data:`BLOCK_BYTES` per block, rounded to whole chunks when a chunk is smaller,
        so no chunk is read twice and memory does not grow with the stream's length.
        """
        dtype, shape = self._expected(name)
        row_bytes = max(1, dtype.itemsize * math.prod(shape))
        rows = max(1, BLOCK_BYTES // row_bytes)
        self._dataset(name)
        chunk = self._chunk_rows[name]
        if 0 < chunk < rows:
            rows -= rows % chunk
        return rows

    def blocks(
        self,
        column: str,
        block_rows: int | None = None,
        *,
        reuse: bool = False,
        buffer: np.ndarray | None = None,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, rows)`` blocks of a column, verifying its checksum as it streams.

        With verification on, the last block is yielded only after the whole column
        matched its checksum, so a consumer never acts on the tail of a damaged column
        without an error following.

        Args:
            column: the column.
            block_rows: rows per block; ``None`` picks about 1 MiB per block.
            reuse: yield views of one buffer that the next block overwrites, so a pass
                allocates nothing per block; the consumer must copy what it keeps.
            buffer: a C-contiguous ``uint8`` array to serve as that buffer (implies
                ``reuse``), so one allocation serves column after column; ignored when
                smaller than a block.
        """
        if column not in self.columns:
            raise UsageError(f"stream {self.name!r} has no column {column!r}")
        rows = block_rows or self.block_rows_for(column)
        return self._iter_rows(column, rows, reuse or buffer is not None, buffer)

    def present_blocks(
        self,
        column: str,
        block_rows: int | None = None,
        *,
        reuse: bool = False,
        buffer: np.ndarray | None = None,
    ) -> Iterator[tuple[int, np.ndarray]] | None:
        """Like :meth:`blocks` for an optional column's presence mask; ``None`` if not optional."""
        if not self.optional(column):
            return None
        name = column + F.PRESENT_SUFFIX
        rows = block_rows or self.block_rows_for(name)
        return self._iter_rows(name, rows, reuse or buffer is not None, buffer)

    def _iter_rows(
        self, name: str, block_rows: int, reuse: bool, buffer: np.ndarray | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        if block_rows < 1:
            raise UsageError(f"block_rows must be >= 1, got {block_rows}")
        ds = self._dataset(name)
        where = f"{self._where}/{name}"
        h = xxhash.xxh3_64() if self._rec.verify and name not in self._verified else None
        row_shape, dtype = tuple(ds.shape[1:]), ds.dtype
        buf = None
        first = self.first
        if reuse:
            shape = (min(block_rows, self.rows - first), *row_shape)
            nbytes = dtype.itemsize * math.prod(shape)
            if (
                buffer is not None
                and 0 < nbytes <= buffer.nbytes
                and buffer.dtype == np.uint8
                and buffer.flags.c_contiguous
            ):
                # A buffer already written to is already backed by pages: no page faults.
                buf = buffer.reshape(-1)[:nbytes].view(dtype).reshape(shape)
            else:
                buf = np.empty(shape, dtype)
        span = self._span_rows.get(name, 0)
        if span > block_rows:
            # A compressed chunk is inflated whole whatever part of it is read: blocks smaller
            # than a chunk would inflate each chunk once per block (a crafted 256 MiB chunk
            # read in 1 MiB blocks took minutes). Read whole chunks, hand out the blocks.
            yield from self._iter_spans(ds, name, where, span, block_rows, h)
            return
        for lo in range(first, self.rows, block_rows):
            hi = min(self.rows, lo + block_rows)
            data = buf[: hi - lo] if buf is not None else np.empty((hi - lo, *row_shape), dtype)
            with _guard(self._rec.path, where, "read the column"):
                self._read_block(name, ds, lo - first, data)
            if h is not None:
                h.update(data.data)
                if hi >= self.rows:
                    self._check_digest(name, h)
            yield lo, data
        if h is not None and self.rows == first:
            self._check_digest(name, h)

    def _iter_spans(
        self, ds: Any, name: str, where: str, span: int, block_rows: int, h: Any
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Read whole chunks of ``span`` rows; yield them in blocks of ``block_rows``.

        Blocks start at ``first + k * block_rows`` whatever the span (a block may take rows
        from two spans), so a column's blocks line up with its presence mask's.
        """
        row_shape, dtype = tuple(ds.shape[1:]), ds.dtype
        first = self.first
        buf = np.empty((min(span, self.rows - first), *row_shape), dtype)
        buf_lo = buf_hi = first
        for start in range(first, self.rows, block_rows):
            stop = min(self.rows, start + block_rows)
            out = np.empty((stop - start, *row_shape), dtype)
            pos = start
            while pos < stop:
                if pos >= buf_hi:
                    buf_lo, buf_hi = buf_hi, min(self.rows, buf_hi + span)
                    data = buf[: buf_hi - buf_lo]
                    with _guard(self._rec.path, where, "read the column"):
                        _read_rows(ds, buf_lo - first, data)
                    if h is not None:
                        h.update(data.data)
                        if buf_hi >= self.rows:
                            self._check_digest(name, h)
                take = min(stop, buf_hi) - pos
                out[pos - start : pos - start + take] = buf[pos - buf_lo : pos - buf_lo + take]
                pos += take
            yield start, out

    def _check_digest(self, column: str, h: Any) -> None:
        if h.hexdigest() != self._checksums.get(column):
            raise ChecksumError(
                "stored data does not match its checksum (file damaged or edited); "
                "re-record it or restore it from a good copy",
                path=self._rec.path,
                obj=f"{self._where}/{column}",
            )
        self._verified.add(column)


def _chunk_offsets(
    ds: Any, rows_c: int, n_chunks: int, chunk_bytes: int, end: int
) -> np.ndarray | None:
    """File offsets of chunks ``0 .. n_chunks - 1`` of ``ds`` (see StreamReader._chunk_map).

    ``None`` unless each is stored once, unfiltered, ``chunk_bytes`` long, before ``end``.
    """
    infos: list[Any] = []
    try:
        ds.chunk_iter(infos.append)  # a bound method: no Python frame per chunk
    except (AttributeError, NotImplementedError, RuntimeError, OSError, ValueError):
        return None
    if len(infos) < n_chunks:
        return None  # an unallocated chunk reads as the fill value: HDF5 knows it
    if len(ds.shape) > 1 and any(any(i.chunk_offset[1:]) for i in infos):
        return None
    # One row per chunk: its first row, address, stored size, skipped-filter mask.
    table = np.array(
        [(i.chunk_offset[0], i.byte_offset, i.size, i.filter_mask) for i in infos], np.int64
    )
    table = table[table[:, 0] < n_chunks * rows_c]  # rows past the commit: never read
    if len(table) != n_chunks:
        return None
    first, where = table[:, 0], table[:, 1]
    offsets = np.full(n_chunks, -1, np.int64)
    offsets[first // rows_c] = where
    if (
        (first % rows_c).any()
        or (offsets < 0).any()
        or table[:, 3].any()
        or (table[:, 2] != chunk_bytes).any()
        or (where < 0).any()
        or (where > end - chunk_bytes).any()
    ):
        return None
    return offsets


def _stat_key(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _plain_offset(dsid: Any, arr: np.ndarray) -> int | None:
    """Where a dataset's bytes lie when stored as ``arr``'s plain contiguous bytes, else None.

    ``arr`` gives the dtype and size (it may be a zero-stride stand-in). Also ``None`` where
    the platform has no ``preadv`` to read them with.
    """
    if not hasattr(os, "preadv"):
        return None
    dcpl = dsid.get_create_plist()
    if dcpl.get_layout() != h5py.h5d.CONTIGUOUS or dcpl.get_nfilters():
        return None
    if dsid.get_storage_size() != arr.nbytes or dsid.get_type() != h5t.py_create(arr.dtype):
        return None
    offset = dsid.get_offset()
    return None if offset is None else int(offset)


# Times a reader re-opens a file that failed to open while a writer holds it (see Recording).
_LIVE_RETRIES = 8


class Recording:
    """A recording opened for reading.

    Opening validates the file (HDF5, written by replaykit, a supported format
    version, no structure that could reach other files or explode); stream
    data, snapshots and every attribute read are checked against their checksums.
    Every problem is raised as a :class:`~replaykit.errors.FileFormatError`
    subclass naming the file and the object inside it.

    Args:
        path: the ``.h5`` file.
        verify: check checksums on read. Pass ``False`` only for trusted files on
            speed-critical paths: structure checks (links, external storage, sizes)
            still run, but damaged bytes are then returned as they are. A file this
            process already opened with ``verify=True`` and that is unchanged since (same
            path, identity and root checksum, no writer holding it) is not checked again
            for its structure, root, snapshot attributes and commit records; array data read
            is checksummed every time (see :mod:`replaykit._format.known`).

    Example:
        >>> # with Recording("run.h5") as rec:
        >>> #     print(rec.meta["env_id"], [s.name for s in rec.snapshots])
    """

    def __init__(self, path: str | os.PathLike[str], *, verify: bool = True) -> None:
        from replaykit._format import safety as _safety

        self.path = Path(path)
        self.verify = verify
        self._snapshots: list[SnapshotInfo] | None = None
        # What verified opens of this unchanged file derived (see replaykit._format.known).
        self._known: _known.Known | None = None
        # A file another process is writing can fail to open when the open races one of its
        # commits (libhdf5 reads the file's end once, then metadata the commit moved past
        # it): retry a few times, then say plainly that the file is being written.
        for attempt in range(_LIVE_RETRIES + 1):
            before = _stat_key(self.path)
            try:
                self._open()
                return
            except FileFormatError as exc:
                if isinstance(exc, UnsupportedVersionError | NotARecordingError):
                    raise
                # Live now, or written while it was opened (a writer that just closed it).
                if not _safety.is_being_written(self.path) and _stat_key(self.path) == before:
                    raise
                if attempt == _LIVE_RETRIES:
                    if _safety.BEING_WRITTEN in str(exc):
                        raise
                    raise TruncatedFileError(_safety.BEING_WRITTEN, path=self.path) from None
                time.sleep(0.02 * (attempt + 1))

    def _open(self) -> None:
        from replaykit._format import safety as _safety

        self._known = None
        self._file = _safety.open_validated(self.path)
        try:
            with _guard(self.path, "/", "read the root attributes"):
                key = self._known_key()
                hit = _known.get(key) if key is not None else None
                if key is not None and hit is not None:
                    self._open_known(hit, key[-1])
                    return
                meta_text, provenance_text = self._read_root()
                ident = _safety.file_identity(self._file)
                if key is not None and self.verify and ident == key[1:6]:
                    # Unchanged while it was read: later opens may reuse what was verified.
                    self._known = _known.put(
                        key,
                        _known.Known(
                            ident,
                            self.format_version,
                            meta_text,
                            provenance_text,
                            self.created,
                            nbytes=len(meta_text) + len(provenance_text),
                        ),
                    )
        except BaseException:
            self._file.close()
            raise

    def _known_key(self) -> tuple[Any, ...] | None:
        """Return this file's key in :mod:`replaykit._format.known`; ``None``: not to be kept.

        The path, the open file's identity and the root checksum stored in it. A file a
        live writer holds (HDF5's write lock) is neither looked up nor kept.
        """
        from replaykit._format import safety as _safety

        ident = _safety.file_identity(self._file)
        if ident is None or _safety.is_being_written(self.path):
            return None
        stored = _get_attr(self._file.id, F.ROOT_CHECKSUM_ATTR)
        try:
            root_sum = "" if stored is None else _text(stored).strip()
        except (UnicodeError, TypeError):
            return None  # _read_root says what is wrong with it
        return (os.fspath(self.path), *ident, root_sum)

    def _open_known(self, hit: _known.Known, root_checksum: str) -> None:
        """Take the root from an earlier verified open of this unchanged file."""
        self._known = hit
        self.format_version = hit.format_version
        self.created = hit.created
        self.root_checksum = root_checksum
        # Parsed per open: each Recording owns (and may change) its dicts.
        self.provenance: dict[str, Any] = F.loads(hit.provenance_text)
        self.meta: dict[str, Any] = F.loads(hit.meta_text)

    def _learning(self) -> _known.Known | None:
        """Where to keep what this open verifies: only a verifying open of an unchanged file."""
        from replaykit._format import safety as _safety

        k = self._known
        if k is None or not self.verify or _safety.file_identity(self._file) != k.ident:
            return None
        return k

    def _read_root(self) -> tuple[str, str]:
        """Read and verify the root attributes; return the metadata and provenance texts."""
        fid = self._file.id
        fmt = _get_attr(fid, F.FORMAT_ATTR)
        if isinstance(fmt, bytes):
            fmt = fmt.decode("utf-8", "replace")
        if fmt != F.FORMAT_NAME:
            raise NotARecordingError(
                f"expected attribute {F.FORMAT_ATTR}={F.FORMAT_NAME!r}, found {fmt!r}; "
                "this HDF5 file was not written by replaykit (record one with "
                "RecordingWrapper or `replaykit record`)",
                path=self.path,
                obj="/",
            )
        version = _get_attr(fid, F.VERSION_ATTR)
        if not isinstance(version, (int, np.integer)) or isinstance(version, (bool, np.bool_)):
            raise FileFormatError(
                f"format version {version!r} is not an integer; the file is damaged",
                path=self.path,
                obj="/",
            )
        self.format_version = int(version)
        if self.format_version > F.FORMAT_VERSION:
            raise UnsupportedVersionError(
                f"file has format version {self.format_version}; this replaykit reads up to "
                f"{F.FORMAT_VERSION}; upgrade replaykit to read it",
                path=self.path,
                obj="/",
            )
        if self.format_version < F.OLDEST_VERSION:
            raise UnsupportedVersionError(
                f"file has format version {self.format_version}; replaykit formats start at "
                f"{F.OLDEST_VERSION} "
                "(the file is damaged or from a pre-release); record it again",
                path=self.path,
                obj="/",
            )
        raw = {}
        for k in (F.FORMAT_ATTR, F.VERSION_ATTR, F.CREATED_ATTR, F.PROVENANCE_ATTR, F.META_ATTR):
            v = version if k == F.VERSION_ATTR else _get_attr(fid, k)
            if v is None:
                raise TruncatedFileError(
                    f"root attribute {k!r} is missing; the file is damaged", path=self.path, obj="/"
                )
            raw[k] = int(v) if isinstance(v, np.integer) else _text(v)
        stored_sum = _get_attr(fid, F.ROOT_CHECKSUM_ATTR)
        #: the root checksum as stored (identifies the file's contents; extracts name it)
        self.root_checksum = "" if stored_sum is None else _text(stored_sum).strip()
        if self.verify and (stored_sum is None or _text(stored_sum).strip() != _root_checksum(raw)):
            raise ChecksumError(
                "root attributes do not match their checksum (file damaged or edited); "
                "re-record it or use a good copy",
                path=self.path,
                obj="/",
            )
        meta_text = self._unspill(fid, str(raw[F.META_ATTR]), F.META_ATTR, "/")
        try:
            self.provenance = F.loads(str(raw[F.PROVENANCE_ATTR]))
            self.meta = F.loads(meta_text)
        except (ValueError, RecursionError) as exc:
            raise FileFormatError(
                f"root metadata is not valid JSON ({_first_line(exc)}); the file is damaged",
                path=self.path,
                obj="/",
            ) from None
        if not isinstance(self.provenance, dict) or not isinstance(self.meta, dict):
            raise FileFormatError(
                "root metadata is not a JSON object; the file is damaged", path=self.path, obj="/"
            )
        _check_fields(self.meta, _META_TYPES, "root metadata", self.path, "/")
        self.created = str(raw[F.CREATED_ATTR])
        return meta_text, str(raw[F.PROVENANCE_ATTR])

    def _unspill(self, gid: Any, text: str, attr: str, where: str) -> str:
        """Return the JSON text an attribute holds, reading it from its slot when spilled.

        Version 3 files keep a long text in a slot dataset (layout.SPILL_TAG); the
        attribute's pointer, itself under the owner's checksum, carries the text's digest.
        """
        if self.format_version < F.SPILL_VERSION or not text.startswith('{"' + F.SPILL_TAG):
            return text
        try:
            ptr = F.loads(text)
            name, n, digest = ptr[F.SPILL_TAG], ptr[F.SPILL_BYTES], ptr[F.SPILL_DIGEST]
            if name not in F.spill_slots(attr) or not _is_count(n) or not isinstance(digest, str):
                raise ValueError("bad pointer")
        except (ValueError, KeyError, TypeError) as exc:
            raise FileFormatError(
                f"attribute {attr!r} holds a malformed spill pointer ({_first_line(exc)}); "
                "the file is damaged or forged",
                path=self.path,
                obj=where,
            ) from None
        where_slot = f"{where.rstrip('/')}/{name}"
        with _guard(self.path, where_slot, f"read the text of attribute {attr!r}"):
            dsid = h5py.h5o.open(gid, name.encode())
            if (
                not isinstance(dsid, h5py.h5d.DatasetID)
                or dsid.dtype != np.uint8
                or len(dsid.shape) != 1
                or dsid.shape[0] < n
                or n > self._file_size()
            ):
                raise FileFormatError(
                    f"slot for attribute {attr!r} is not a uint8 dataset of at least {n} "
                    "bytes; the file is damaged or forged",
                    path=self.path,
                    obj=where_slot,
                )
            buf = np.empty(n, np.uint8)
            _read_rows(dsid, 0, buf)
        if self.verify and _digest(buf.data) != digest:
            raise ChecksumError(
                f"text of attribute {attr!r} does not match its checksum (file damaged or "
                "edited); re-record it or use a good copy",
                path=self.path,
                obj=where_slot,
            )
        return buf.tobytes().decode("utf-8", "replace")

    def _file_size(self) -> int:
        try:
            return os.fstat(self._file.id.get_vfd_handle()).st_size
        except (OSError, RuntimeError, ValueError, TypeError):
            return 0

    # streams
    @property
    def stream_names(self) -> list[str]:
        """Streams holding a commit record.

        In a version 1 file a stream created after the last commit has none and is absent;
        version 2 writers give each stream a zero-row record when they create it.
        """
        names = self.__dict__.get("_stream_names")
        if names is None:
            with _guard(self.path, f"/{F.STREAMS_GROUP}", "list the streams"):
                names = self._stream_names = self._list_streams()
        return list(names)

    def _list_streams(self) -> list[str]:
        try:
            gid = h5py.h5o.open(self._file.id, F.STREAMS_GROUP.encode())
        except KeyError:
            gid = None
        if not isinstance(gid, h5py.h5g.GroupID):
            raise _missing_group(self.path, F.STREAMS_GROUP)
        commit = F.COMMIT_ATTR.encode()
        names = []
        for n in gid:
            if h5a.exists(h5py.h5o.open(gid, n), commit):
                names.append(n.decode("utf-8", "replace"))
            elif self.format_version >= F.PACK_VERSION:
                # Version 2 writers give each stream its record when they create it.
                raise FileFormatError(
                    "stream group has no commit record (version 2 writers create it with the "
                    "stream); the file is damaged",
                    path=self.path,
                    obj=f"/{F.STREAMS_GROUP}/{n.decode('utf-8', 'replace')}",
                )
        return names

    def has_stream(self, name: str) -> bool:
        names = self.__dict__.get("_stream_names")
        if names is not None:
            return name in names
        k = self._known
        if k is not None and name in k.has_stream:
            return k.has_stream[name]
        found = self._has_stream(name)
        k = self._learning()
        if k is not None:
            k.has_stream[name] = found
        return found

    def _has_stream(self, name: str) -> bool:
        # One stream's group and commit record, without listing the others.
        with _guard(self.path, F.stream_path(name), "look for the stream"):
            try:
                oid = h5py.h5o.open(self._file.id, F.stream_path(name).encode())
            except KeyError:
                return False
            if not isinstance(oid, h5py.h5g.GroupID):
                return False
            if h5a.exists(oid, F.COMMIT_ATTR.encode()):
                return True
        if self.format_version >= F.PACK_VERSION:
            self._list_streams()  # raises: a version 2 stream group always has a record
        return False

    def stream(self, name: str) -> StreamReader:
        with _guard(self.path, F.stream_path(name), "open the stream"):
            g = self._file.get(F.stream_path(name))
        if not isinstance(g, h5py.Group):
            raise TruncatedFileError(
                f"recording has no stream {name!r} (nothing of it was committed)",
                path=self.path,
                obj=F.stream_path(name),
            )
        return StreamReader(self, name, g)

    # snapshots
    @property
    def stray_snapshots(self) -> list[str]:
        """Temporary snapshot groups a killed writer left behind (ignored by every reader)."""
        with _guard(self.path, f"/{F.SNAPSHOTS_GROUP}", "list the snapshots"):
            g = self._file.get(F.SNAPSHOTS_GROUP)
            if not isinstance(g, h5py.Group):
                return []
            return [n for n in g if n.startswith(F.TMP_PREFIX)]

    @property
    def snapshots(self) -> list[SnapshotInfo]:
        """Committed snapshots in the order they were taken (metadata checksums verified)."""
        snaps = self._snapshots
        if snaps is None:
            k = self._known
            if k is not None and k.snapshots is not None:
                # Each open gets its own metadata dicts, as if it had listed them itself.
                snaps = self._snapshots = [SnapshotInfo(x.name, dict(x.meta)) for x in k.snapshots]
            else:
                with _guard(self.path, f"/{F.SNAPSHOTS_GROUP}", "list the snapshots"):
                    snaps = self._snapshots = self._list_snapshots()
                k = self._learning()
                if k is not None:
                    k.snapshots = [SnapshotInfo(x.name, dict(x.meta)) for x in snaps]
        return list(snaps)

    def _list_snapshots(self) -> list[SnapshotInfo]:
        g = self._file.get(F.SNAPSHOTS_GROUP)
        out: list[SnapshotInfo] = []
        if not isinstance(g, h5py.Group):
            raise _missing_group(self.path, F.SNAPSHOTS_GROUP)
        gid = g.id
        for bname in gid:  # low-level: names as bytes, no object-layer wrappers
            name = bname.decode("utf-8", "replace")
            if name.startswith(F.TMP_PREFIX):
                continue
            where = F.snapshot_path(name)
            sid = h5py.h5o.open(gid, bname)
            if not isinstance(sid, h5py.h5g.GroupID):
                raise FileFormatError(
                    "snapshot is not a group; the file is damaged", path=self.path, obj=where
                )
            meta, _, _ = self._snapshot_attrs(sid, where)
            if (
                self.verify
                and self.format_version >= F.PACK_VERSION
                and meta.get(F.SNAP_NAME) != name
            ):
                raise ChecksumError(
                    f"snapshot {name!r} holds the metadata of snapshot {meta.get(F.SNAP_NAME)!r} "
                    "(a damaged name); re-record it or use a good copy",
                    path=self.path,
                    obj=where,
                )
            if not isinstance(meta.get(F.SNAP_STEP, 0), int) or not isinstance(
                meta.get(F.SNAP_SEQ, 0), int
            ):
                raise FileFormatError(
                    "snapshot metadata has a non-integer step; the file is damaged",
                    path=self.path,
                    obj=where,
                )
            out.append(SnapshotInfo(name, dict(meta)))  # its own: the verified one may be kept
        out.sort(key=lambda s: (int(s.meta.get(F.SNAP_STEP, 0)), int(s.meta.get(F.SNAP_SEQ, 0))))
        return out

    def _snapshot_attrs(self, gid: Any, where: str) -> tuple[dict[str, Any], Any, dict[str, Any]]:
        """Return (meta, tree document, checksums) of a snapshot, attributes verified.

        Listing snapshots reads them all; loading one reuses what the listing verified.
        """
        k = self._known
        if k is not None:
            known = k.attrs.get(where)
            if known is not None:
                return cast(tuple[dict[str, Any], Any, dict[str, Any]], known)
        cache: dict[str, Any] = self.__dict__.setdefault("_attrs_cache", {})
        hit = cache.get(where)
        if hit is None:
            meta, doc, checksums, nbytes = self._read_snapshot_attrs(gid, where)
            hit = cache[where] = meta, doc, checksums
            k = self._learning()
            if k is not None and _known.grow(k, nbytes):
                k.attrs[where] = hit
        return cast(tuple[dict[str, Any], Any, dict[str, Any]], hit)

    def _read_snapshot_attrs(
        self, gid: Any, where: str
    ) -> tuple[dict[str, Any], Any, dict[str, Any], int]:
        """Meta, tree document and checksums of a snapshot, verified; and their text's size."""
        try:
            checksums_json = _text(_get_attr(gid, F.CHECKSUMS_ATTR))
            checksums = F.loads(checksums_json)
            tree_json = _text(_get_attr(gid, F.TREE_ATTR))
            meta_json = _text(_get_attr(gid, F.SNAPSHOT_ATTR))
            if not isinstance(checksums, dict):
                raise TypeError("checksums are not a JSON object")
        except (KeyError, ValueError, TypeError, RecursionError) as exc:
            raise FileFormatError(
                f"snapshot attributes missing or malformed ({type(exc).__name__}: "
                f"{_first_line(exc)}); "
                "the file is damaged",
                path=self.path,
                obj=where,
            ) from None
        if self.verify:
            attrs = {F.SNAPSHOT_ATTR: meta_json, F.TREE_ATTR: tree_json}
            if self.format_version >= F.PACK_VERSION:
                expected = _attrs_digest(
                    attrs,
                    checksums.get(F.LOGICAL_KEY),
                    checksums.get(F.LAYOUT_KEY),
                    checksums.get(F.PACK_KEY, {}),
                )
            else:
                logical_v1 = self._v1_logical(h5py.Group(gid), checksums)
                expected = _attrs_digest(attrs, logical_v1, None, None)
            if checksums.get(F.ATTRS_KEY) != expected:
                raise ChecksumError(
                    "snapshot attributes do not match their checksum (file damaged or edited); "
                    "re-record it or use a good copy",
                    path=self.path,
                    obj=where,
                )
        try:
            meta = F.loads(meta_json)
            doc = F.loads(tree_json)
        except (ValueError, RecursionError) as exc:
            raise FileFormatError(
                f"snapshot metadata is not valid JSON ({_first_line(exc)}); the file is damaged",
                path=self.path,
                obj=where,
            ) from None
        if not isinstance(meta, dict):
            raise FileFormatError(
                "snapshot metadata is not a JSON object; the file is damaged",
                path=self.path,
                obj=where,
            )
        _check_fields(meta, _SNAP_TYPES, "snapshot metadata", self.path, where)
        return meta, doc, checksums, len(checksums_json) + len(tree_json) + len(meta_json)

    @staticmethod
    def _v1_logical(g: h5py.Group, checksums: dict[str, Any]) -> dict[str, str]:
        """Version 1 keeps each array's logical dtype on its dataset."""
        logical: dict[int, str] = {}
        attr = F.LOGICAL_DTYPE_ATTR.encode()
        for key in checksums:
            if isinstance(key, str) and key.startswith(F.ARRAY_PREFIX) and key[1:].isdigit():
                try:
                    has = h5a.exists(h5py.h5o.open(g.id, key.encode()), attr)
                except (KeyError, ValueError, RuntimeError, OSError):
                    continue
                if has:
                    lg = g[key].attrs.get(F.LOGICAL_DTYPE_ATTR)
                    if lg is not None:
                        logical[int(key[1:])] = _text(lg)
        return {str(k): v for k, v in sorted(logical.items())}

    def snapshot_info(self, name: str | int | None = None) -> SnapshotInfo:
        """Look a snapshot up by name, index (``0`` first, ``-1`` last) or ``None`` (the first)."""
        snaps = self.snapshots
        if not snaps:
            raise UsageError(f"{self.path} holds no snapshots; record with snapshot_at=... ")
        if name is None:
            return snaps[0]
        if isinstance(name, int) and not isinstance(name, bool):
            try:
                return snaps[name]
            except IndexError:
                raise UsageError(
                    f"{self.path} holds {len(snaps)} snapshots; index {name} is out of range"
                ) from None
        for s in snaps:
            if s.name == name:
                return s
        names = ", ".join(s.name for s in snaps[:10])
        raise UsageError(f"{self.path} has no snapshot {name!r}; it has: {names}")

    def load_snapshot_encoded(
        self, name: str | int | None = None
    ) -> tuple[SnapshotInfo, tuple[Any, list[np.ndarray], dict[int, str]]]:
        """Return ``(info, (tree document, arrays, logical dtypes))``, checksums verified.

        The snapshot as stored, not decoded into live objects (no torch needed): what
        :meth:`RecordingWriter.copy_snapshot` writes back.
        """
        info = self.snapshot_info(name)
        where = F.snapshot_path(info.name)
        with _guard(self.path, where, "read the snapshot"):
            gid = h5py.h5o.open(self._file.id, where.encode())
            doc, arrays = self._load_tree(gid, where, decode=False)
            _, _, checksums = self._snapshot_attrs(gid, where)
            if self.format_version >= F.PACK_VERSION:
                logical = checksums.get(F.LOGICAL_KEY) or {}
            else:
                logical = self._v1_logical(h5py.Group(gid), checksums)
        return info, (doc, arrays, {int(k): str(v) for k, v in logical.items()})

    def load_snapshot(
        self,
        name: str | int | None = None,
        *,
        targets: Callable[[Mapping[str, tuple[np.dtype[Any], tuple[int, ...]]]], Any] | None = None,
        tensors: bool = True,
        mmap: bool = False,
    ) -> tuple[SnapshotInfo, Any]:
        """Return ``(info, state tree)`` of a snapshot, checksums verified.

        Args:
            name: snapshot name, index, or ``None`` (the first).
            targets: called with ``{tree path: (dtype, shape)}`` of the snapshot's large
                arrays before any is read; it returns ``{tree path: array}`` of writable,
                C-contiguous arrays of exactly that dtype and shape (live tensors' memory) to
                read those arrays straight into. The returned tree then holds those very
                arrays. Their checksums are verified as they are read: on a mismatch
                :class:`~replaykit.errors.ChecksumError` is raised and the targets hold
                undefined bytes.
            tensors: ``False``: tensors come back as the numpy arrays of their bytes, all
                checks made, without importing torch (for a file check).
            mmap: large arrays not read into ``targets`` come back as copy-on-write
                memory maps of the file (read when first touched; writes stay private) and
                their checksums are **not** verified. A file truncated while such an array
                is mapped kills the process on the next touch (``SIGBUS``): only for files
                nothing else writes. A file already too short is refused before mapping.
        """
        info = self.snapshot_info(name)
        where = F.snapshot_path(info.name)
        with _guard(self.path, where, "read the snapshot"):
            gid = h5py.h5o.open(self._file.id, where.encode())
            return info, self._load_tree(gid, where, targets, tensors, mmap=mmap)

    def _load_tree(
        self,
        gid: Any,
        where: str,
        targets: Any = None,
        tensors: bool = True,
        decode: bool = True,
        mmap: bool = False,
    ) -> Any:
        _, doc, checksums = self._snapshot_attrs(gid, where)
        names = [k for k in checksums if not k.startswith(F.CHECKSUM_META_PREFIX)]
        layouts = checksums.get(F.LAYOUT_KEY)
        if not isinstance(layouts, dict):
            if self.verify:
                raise ChecksumError(
                    "snapshot checksums lack the array layouts; the file is damaged or edited",
                    path=self.path,
                    obj=where,
                )
            layouts = None
        offsets = checksums.get(F.PACK_KEY) if self.format_version >= F.PACK_VERSION else {}
        if not isinstance(offsets, dict):
            raise FileFormatError(
                "snapshot checksums lack the pack offsets; the file is damaged or edited",
                path=self.path,
                obj=where,
            )
        k = self._known
        counted = k is not None and where in k.trees
        if self.verify and not counted and gid.get_num_objs() != len(names):
            # With the count equal, opening each listed name below proves the sets equal.
            raise ChecksumError(
                f"snapshot holds {gid.get_num_objs()} datasets, its checksums list "
                f"{len(names)}; the file is damaged or edited",
                path=self.path,
                obj=where,
            )
        pack = self._read_array(gid, F.PACK_DATASET, checksums, where) if offsets else None
        into = self._targets(doc, checksums, layouts, offsets, targets) if targets else {}
        arrays: list[np.ndarray] = []
        i = 0
        # h5py's low-level API: a snapshot holds many arrays, and the object layer costs
        # more per array than reading a small one.
        while True:
            key = f"{F.ARRAY_PREFIX}{i}"
            off = offsets.get(key)
            if off is not None:
                assert pack is not None
                arr = self._unpack(pack, key, off, layouts, where)
            elif gid.links.exists(key.encode()):
                target = into.get(i)
                mapped = self._map_array(gid, key, where) if mmap and target is None else None
                arr = (
                    mapped
                    if mapped is not None
                    else self._read_array(gid, key, checksums, where, target)
                )
            else:
                break
            if self.verify and layouts is not None and layouts.get(key) != _layout(arr):
                raise ChecksumError(
                    f"snapshot array has layout {_layout(arr)}, its checksums record "
                    f"{layouts.get(key)}; the file is damaged or edited",
                    path=self.path,
                    obj=f"{where}/{key}",
                )
            arrays.append(arr)
            i += 1
        if self.verify and layouts is not None and len(layouts) != i:
            raise ChecksumError(
                f"snapshot has {i} arrays, its checksums record {len(layouts)} layouts; "
                "the file is damaged or edited",
                path=self.path,
                obj=where,
            )
        if not counted and (k := self._learning()) is not None:
            k.trees.add(where)
        if not decode:
            return doc, arrays
        try:
            return _tree.decode(doc, arrays, tensors=tensors)
        except FileFormatError as exc:
            raise FileFormatError(str(exc), path=self.path, obj=where) from None

    def _targets(
        self, doc: Any, checksums: dict[str, Any], layouts: Any, offsets: Any, targets: Any
    ) -> dict[int, np.ndarray]:
        """Ask ``targets`` where to read the snapshot's large arrays; keep the fitting answers."""
        if not isinstance(layouts, dict) or all(k in offsets for k in layouts):
            return {}  # every array is packed (a small snapshot): nothing to offer
        logical = checksums.get(F.LOGICAL_KEY)
        offered: dict[str, tuple[np.dtype[Any], tuple[int, ...]]] = {}
        index: dict[str, int] = {}
        for path, i in _tree.array_paths(doc).items():
            key = f"{F.ARRAY_PREFIX}{i}"
            if key in offsets or (isinstance(logical, dict) and str(i) in logical):
                continue
            try:
                dtype, shape, _ = _parse_layout(layouts.get(key))
            except (ValueError, TypeError):
                continue
            offered[path] = (dtype, shape)
            index[path] = i
        out: dict[int, np.ndarray] = {}
        for path, arr in (targets(offered) or {}).items():
            if (
                path in offered
                and isinstance(arr, np.ndarray)
                and (arr.dtype, arr.shape) == offered[path]
                and arr.flags.c_contiguous
                and arr.flags.writeable
            ):
                out[index[path]] = arr
        return out

    def _read_array(
        self,
        gid: Any,
        key: str,
        checksums: dict[str, Any],
        where: str,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Read dataset ``key`` of a snapshot group whole (into ``out``), checksum verified.

        A contiguous, unfiltered dataset is read with plain reads straight into the
        destination, hashed chunk by chunk on the way; others go through HDF5. A small one
        whose place an earlier verified open of this unchanged file found is read from there
        with one ``preadv``, without opening the dataset; its checksum is verified all the same.
        """
        k = self._known
        spot = k.plain.get(f"{where}/{key}") if k is not None and out is None else None
        if spot is not None:
            arr = self._read_spot(spot, f"{where}/{key}")
            if self.verify:
                self._check_array(_array_digest(arr), checksums.get(key), where, key, False)
            return arr
        try:
            dsid = h5py.h5o.open(gid, key.encode())
        except KeyError:
            raise ChecksumError(
                f"snapshot lacks dataset {key!r} its checksums list; the file is damaged or edited",
                path=self.path,
                obj=where,
            ) from None
        if not isinstance(dsid, h5py.h5d.DatasetID):
            raise FileFormatError(
                "snapshot array is not a dataset; the file is damaged",
                path=self.path,
                obj=f"{where}/{key}",
            )
        if out is not None and (out.shape != dsid.shape or out.dtype != dsid.dtype):
            out = None
        arr = _rawio.empty(dsid.shape, dsid.dtype) if out is None else out
        digest = None
        if arr.size:
            digest = self._read_plain(dsid, arr)
            if digest is None:
                dsid.read(h5s.ALL, h5s.ALL, arr)
        if self.verify:
            if digest is None:
                digest = _array_digest(arr)
            self._check_array(digest, checksums.get(key), where, key, out is not None)
            if 0 < arr.nbytes < _rawio.MIN_BYTES and (k := self._learning()) is not None:
                offset = _plain_offset(dsid, arr)
                if offset is not None:
                    k.plain[f"{where}/{key}"] = (offset, arr.dtype.str, arr.shape)
        return arr

    def _check_array(
        self, digest: str, expected: Any, where: str, key: str, into_live: bool
    ) -> None:
        if expected != digest:
            raise ChecksumError(
                "snapshot array does not match its checksum (file damaged or edited); "
                "re-record it or use a good copy"
                + (
                    "; the objects being restored now hold undefined values: build them again"
                    if into_live
                    else ""
                ),
                path=self.path,
                obj=f"{where}/{key}",
            )

    def _map_array(self, gid: Any, key: str, where: str) -> np.ndarray | None:
        """Map dataset ``key`` copy-on-write (see ``mmap`` of :meth:`load_snapshot`).

        ``None`` where it is not stored as plain contiguous bytes (then it is read and
        verified as usual).
        """
        import mmap as _mmap

        try:
            dsid = h5py.h5o.open(gid, key.encode())
        except KeyError:
            return None  # _read_array says what is missing
        if not isinstance(dsid, h5py.h5d.DatasetID):
            return None
        dtype, shape = dsid.dtype, tuple(dsid.shape)
        if dtype.kind not in F.ALLOWED_KINDS or dtype.fields is not None or dtype.subdtype:
            return None
        nbytes = dtype.itemsize * math.prod(shape)
        if nbytes < _mmap.PAGESIZE:
            return None
        offset = _plain_offset(dsid, np.broadcast_to(np.zeros((), dtype), shape))
        if offset is None:
            return None
        fd = int(self._file.id.get_vfd_handle())
        size = os.fstat(fd).st_size
        if offset + nbytes > size:
            raise TruncatedFileError(
                f"snapshot array's {nbytes} bytes at offset {offset} end past the file's "
                f"{size} bytes (the file is truncated); refusing to map it",
                path=self.path,
                obj=f"{where}/{key}",
            )
        start = offset - offset % _mmap.ALLOCATIONGRANULARITY
        mm = _mmap.mmap(fd, offset + nbytes - start, access=_mmap.ACCESS_COPY, offset=start)
        arr: np.ndarray = np.frombuffer(
            mm, dtype, count=math.prod(shape), offset=offset - start
        ).reshape(shape)
        return arr

    def _read_spot(self, spot: tuple[int, str, tuple[int, ...]], where: str) -> np.ndarray:
        """Read a small contiguous dataset whose place is known (see :meth:`_read_array`)."""
        offset, dtype, shape = spot
        arr = np.empty(shape, np.dtype(dtype))
        with _guard(self.path, where, "read the snapshot array"):
            view = arr.reshape(-1).view(np.uint8).data
            n = os.preadv(int(self._file.id.get_vfd_handle()), [view], offset)
        if n != arr.nbytes:
            raise TruncatedFileError(
                f"snapshot array ends {arr.nbytes - n} bytes short (the file was truncated "
                "since it was opened)",
                path=self.path,
                obj=where,
            )
        return arr

    def _read_plain(self, dsid: Any, arr: np.ndarray) -> str | None:
        """Read a contiguous dataset's bytes into ``arr`` with ``preadv``; return their digest.

        ``None`` (nothing read) where the dataset is not stored as plain contiguous bytes
        of ``arr``'s size, or the platform has no ``preadv``.
        """
        if arr.nbytes < _rawio.MIN_BYTES:
            return None
        offset = _plain_offset(dsid, arr)
        if offset is None:
            return None
        h = xxhash.xxh3_64() if self.verify else None
        # The open file's own descriptor: the bytes come from the file HDF5 validated.
        fd = int(self._file.id.get_vfd_handle())
        _rawio.read_chunks(fd, offset, arr, h)
        return h.hexdigest() if h is not None else ""

    def _unpack(
        self, pack: np.ndarray, key: str, off: Any, layouts: dict[str, Any] | None, where: str
    ) -> np.ndarray:
        """Copy array ``key`` out of a snapshot's pack (its own memory, aligned, writable)."""
        try:
            if layouts is None:
                raise ValueError("no layouts")
            dtype, shape, n = _parse_layout(layouts.get(key))
            if not isinstance(off, int) or isinstance(off, bool) or off < 0:
                raise ValueError(f"bad offset {off!r}")
            if off + n > pack.size:
                raise ValueError(f"{n} bytes at offset {off} overrun the {pack.size}-byte pack")
        except (ValueError, TypeError) as exc:
            raise FileFormatError(
                f"packed snapshot array {key!r} is malformed ({exc}); the file is damaged",
                path=self.path,
                obj=f"{where}/{F.PACK_DATASET}",
            ) from None
        out: np.ndarray = pack[off : off + n].view(dtype).reshape(shape).copy()
        return out

    # layout
    def layout(self) -> dict[str, Any]:
        """Return the file's HDF5 object tree, for display (``replaykit inspect``).

        Nothing is verified here: this describes storage, it does not read data.

        Returns:
            Nested dicts: a group maps each member's name to a dict (a group) or a
            :class:`DatasetInfo` (a dataset), in the file's link order.
        """

        def walk(group: h5py.Group) -> dict[str, Any]:
            node: dict[str, Any] = {}
            for name, obj in group.items():
                if isinstance(obj, h5py.Group):
                    node[name] = walk(obj)
                elif isinstance(obj, h5py.Dataset):
                    node[name] = _dataset_info(obj)
            return node

        with _guard(self.path, "/", "list the file's objects"):
            return walk(self._file)

    def snapshot_storage_bytes(self, name: str) -> int:
        """Return the bytes a committed snapshot's datasets take on disk.

        Args:
            name: a snapshot name, as in :attr:`snapshots`.

        Returns:
            The summed storage size of the snapshot group's datasets.
        """
        where = F.snapshot_path(self.snapshot_info(name).name)
        with _guard(self.path, where, "measure the snapshot"):
            g = self._file[where]
            return sum(
                _dataset_info(o).storage_bytes for o in g.values() if isinstance(o, h5py.Dataset)
            )

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
