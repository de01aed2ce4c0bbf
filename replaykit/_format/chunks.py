"""Deflate-compressed stream columns, compressed off the recording thread.

HDF5 runs a dataset's filters inside its write call, holding Python's GIL: with image
observations, compressing each block stalled the env loop (an lzf-compressed Pong
recording ran at 0.76x of an uncompressed one). A column written with the standard
shuffle + deflate pipeline instead hands each full chunk to a worker thread, which
shuffles and deflates it (ISA-L or zlib, both release the GIL), and writes the
result with HDF5's direct chunk write. The bytes on disk are exactly what HDF5's own
filters would have written, so any HDF5 reader with the standard deflate filter reads
the file: HDF5's filter pipeline is only bypassed on the way in.

Crash safety is that of HDF5's own path: rows reach the file chunk by chunk between
commits, and a commit first waits for every chunk of the rows it records (the last,
partly filled chunk is compressed and written then, and rewritten once it fills).

Example:
    >>> import numpy as np
    >>> raw = np.arange(6, dtype="<u2")
    >>> import zlib
    >>> list(zlib.decompress(encode_chunk(raw, 2, 1)))  # low bytes, then high bytes
    [0, 1, 2, 3, 4, 5, 0, 0, 0, 0, 0, 0]
"""

from __future__ import annotations

import functools
import zlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, cast

import numpy as np

# Full chunks a column may have queued for compression before the writer waits for the
# oldest (bounds memory: a Pong chunk is 16 frames, 1.6 MB).
MAX_IN_FLIGHT = 8

# The deflate levels a chunk is re-encoded with when its size would equal the size of the
# partial version of it written at an earlier commit (see DeflateColumn._write).
_OTHER_LEVELS = (2, 3, 1, 4, 5, 6, 7, 8, 9)


@functools.cache
def compressor(level: int) -> Callable[[Any, int], bytes]:
    """Return the function that deflates a chunk at ``level``.

    Levels 1-3 use ISA-L (the ``isal`` package, the ``fast`` extra) where it is installed:
    on Atari frames its level 1 is ~12x faster than zlib's and compresses better than zlib's
    level 3. Other levels, or without it, zlib. Both release the GIL and write zlib's
    stream format, which HDF5's deflate filter reads; only the compressed bytes differ.
    """
    if 1 <= level <= 3:  # noqa: PLR2004 - ISA-L's levels
        try:
            from isal import isal_zlib
        except ImportError:
            pass
        else:
            return cast("Callable[[Any, int], bytes]", isal_zlib.compress)
    return zlib.compress


def encode_chunk(raw: np.ndarray, itemsize: int, level: int) -> bytes:
    """Return ``raw`` as HDF5's shuffle then deflate filters store it in a chunk.

    The shuffle filter groups the first bytes of every element, then the second bytes,
    and so on (nothing to do for one-byte elements); deflate is zlib's stream format,
    header and checksum included (``compress2``).
    """
    data = raw.reshape(-1).view(np.uint8)
    if itemsize > 1:
        data = np.ascontiguousarray(data.reshape(-1, itemsize).T)
    return compressor(level)(data, level)


def new_pool() -> ThreadPoolExecutor:
    """One worker thread: compression overlaps the env loop on a second core."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="replaykit-deflate")


class DeflateColumn:
    """Writes the rows of one chunked, shuffle + deflate filtered dataset chunk by chunk.

    Args:
        dsid: the dataset (chunked along rows, ``chunk_rows`` rows a chunk, filters
            shuffle then deflate, no others).
        chunk_rows: rows per chunk.
        rows: rows already in the dataset (fill value: the column did not exist yet).
        level: the deflate level.
        pool: returns the executor that compresses chunks.
    """

    def __init__(
        self,
        dsid: Any,
        chunk_rows: int,
        rows: int,
        level: int,
        pool: Callable[[], ThreadPoolExecutor],
    ) -> None:
        self._dsid = dsid
        dtype = np.dtype(dsid.dtype)
        self._shape = tuple(int(s) for s in dsid.shape[1:])
        self._itemsize = dtype.itemsize
        self._rows = chunk_rows
        self._level = level
        self._pool = pool
        # The chunk being filled: its index, its rows so far (rows before the column
        # existed are zeros, the fill value), and the buffer holding them.
        self._chunk = rows // chunk_rows
        self._filled = rows % chunk_rows
        self._stage = np.zeros((chunk_rows, *self._shape), dtype)
        self._pending: deque[tuple[int, np.ndarray, Future[bytes]]] = deque()
        # Chunk index -> stored size of the partly filled version written at a commit.
        self._partial: dict[int, int] = {}
        # (chunk, rows) of the partly filled chunk last written.
        self._written = (-1, 0)

    def append(self, data: np.ndarray, start: int) -> None:
        """Append C-contiguous ``data`` as rows ``start, start + len(data), ...``.

        Full chunks go to the worker; chunks it has finished are written now.
        """
        n = len(data)
        self._dsid.set_extent((start + n, *self._shape))
        i = 0
        while i < n:
            take = min(n - i, self._rows - self._filled)
            if self._filled == 0 and take == self._rows:
                full = data[i : i + take].copy()
            else:
                self._stage[self._filled : self._filled + take] = data[i : i + take]
                self._filled += take
                if self._filled < self._rows:
                    break
                full = self._stage
                self._stage = np.zeros(full.shape, full.dtype)
                self._filled = 0
            i += take
            self._submit(full)
        self._drain(wait=False)

    def _submit(self, raw: np.ndarray) -> None:
        fut = self._pool().submit(encode_chunk, raw, self._itemsize, self._level)
        self._pending.append((self._chunk, raw, fut))
        self._chunk += 1
        while len(self._pending) > MAX_IN_FLIGHT:
            self._write(*self._pending.popleft(), partial=False)

    def _drain(self, *, wait: bool) -> None:
        while self._pending and (wait or self._pending[0][2].done()):
            self._write(*self._pending.popleft(), partial=False)

    def flush(self) -> None:
        """Write every row appended so far (the last chunk partly filled, if it is).

        A partly filled chunk already written with these rows (no row since the last
        commit) is not written again.
        """
        self._drain(wait=True)
        if self._filled and self._written != (self._chunk, self._filled):
            self._written = (self._chunk, self._filled)
            raw = self._stage
            payload = encode_chunk(raw, self._itemsize, self._level)
            self._write(self._chunk, raw, payload, partial=True)

    def cancel(self) -> None:
        """Drop queued chunks (the writer failed; nothing more is written)."""
        for _, _, fut in self._pending:
            fut.cancel()
        self._pending.clear()

    def _write(
        self, index: int, raw: np.ndarray, payload: bytes | Future[bytes], *, partial: bool
    ) -> None:
        if isinstance(payload, Future):
            payload = payload.result()
        before = self._partial.pop(index, None)
        if before == len(payload):
            # libhdf5 overwrites a filtered chunk in place when its new size equals the old
            # one: a kill in the middle of that write would tear rows an earlier commit
            # recorded. A stored size of its own puts the new version in fresh space.
            for level in _OTHER_LEVELS:
                other = encode_chunk(raw, self._itemsize, level)
                if len(other) != before:
                    payload = other
                    break
        if partial:
            self._partial[index] = len(payload)
        offset = (index * self._rows,) + (0,) * len(self._shape)
        self._dsid.write_direct_chunk(offset, payload, 0)
