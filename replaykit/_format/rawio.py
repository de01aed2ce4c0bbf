"""Large sequential writes that bypass the page cache (``O_DIRECT``), for snapshot arrays.

A buffered write of a gigabyte first fills the page cache, and once the kernel's dirty-page
limits are reached it is throttled to the disk's pace anyway, so its speed swings with
whatever else the machine wrote lately (0.25-1.3 GB/s measured on one VM, run to run). Direct
I/O goes to the device at a steady rate and leaves the cache to the training run.

The store allocates a contiguous dataset at a 4096-byte aligned file offset without writing
it (HDF5 never touches its raw bytes), then hands the bytes here. Direct I/O needs aligned
memory, offsets and sizes: the bytes are copied through two page-aligned buffers (one being
filled while the other is written by a worker thread; both the copy and ``pwrite`` release
the GIL), and a tail shorter than a block is written through the page cache.

Where direct I/O is unavailable (no ``O_DIRECT`` on the platform, or a file system such as
tmpfs that refuses it) :meth:`DirectWriter.write` returns ``False`` and the caller writes
through HDF5 instead.

While the page cache has room, a buffered write returns faster (memory speed; the kernel
writes back in the background), so by default the store uses direct I/O only when
:func:`page_cache_has_room` says a buffered write of the snapshot would be throttled.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

ALIGN = 4096
CHUNK = 8 << 20
# Smaller arrays are not worth a second file descriptor and a thread hand-off.
MIN_BYTES = 1 << 20


def _meminfo_kib(text: str, key: str) -> int:
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise ValueError(f"no {key} in /proc/meminfo")


def page_cache_has_room(nbytes: int) -> bool:
    """Tell whether ``nbytes`` more dirty pages stay under the kernel's free-run limit (Linux).

    Below it, buffered writes are not throttled; the limit is halfway between the
    background and the hard dirty thresholds, as fractions of available memory (or the
    ``*_bytes`` settings when set). Anything unreadable (not Linux) answers ``True``.
    """
    try:
        with open("/proc/meminfo") as f:
            info = f.read()
        available = _meminfo_kib(info, "MemAvailable") * 1024
        queued = (_meminfo_kib(info, "Dirty") + _meminfo_kib(info, "Writeback")) * 1024

        def threshold(name: str) -> float:
            with open(f"/proc/sys/vm/{name}_bytes") as f:
                fixed = int(f.read())
            if fixed > 0:
                return float(fixed)
            with open(f"/proc/sys/vm/{name}_ratio") as f:
                return available * int(f.read()) / 100

        freerun = (threshold("dirty") + threshold("dirty_background")) / 2
    except (OSError, ValueError):
        return True
    return queued + nbytes < freerun


def empty(shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
    """Return an uninitialised array; a large one in memory without the huge-page advice.

    NumPy advises transparent huge pages for large arrays; where the kernel then compacts
    memory on first touch, a process's first gigabyte-sized read paid ~1.5 s more than the
    read itself (measured: a 1.2 GB restore took 2.1 s first, 0.5 s in plain 4 KiB pages).
    """
    dtype = np.dtype(dtype)
    nbytes = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    flags = getattr(mmap, "MAP_PRIVATE", None), getattr(mmap, "MAP_ANONYMOUS", None)
    if nbytes < MIN_BYTES or None in flags:
        return np.empty(shape, dtype)
    try:
        buf = mmap.mmap(-1, nbytes, flags=flags[0] | flags[1])  # type: ignore[operator]
    except (OSError, OverflowError, ValueError):
        raise MemoryError(f"cannot allocate {nbytes} bytes") from None
    return np.frombuffer(buf, dtype).reshape(shape)


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while len(view):
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


# Bytes per buffered write of :func:`write_chunks`: small enough to stay in the CPU cache
# between the scan, the hash and the copy into the page cache.
BUFFERED_CHUNK = 1 << 20


# Large arrays are read and written by this many threads: copying into or out of the page
# cache is CPU-bound, and pread/pwrite release the GIL.
READ_THREADS = 2
_READ_POOL: tuple[int, ThreadPoolExecutor] | None = None


def _read_pool() -> ThreadPoolExecutor:
    """Return the process's I/O pool, made on first use.

    A forked child gets a new one: its copy of the parent's pool has no threads and would
    never run a task.
    """
    global _READ_POOL  # noqa: PLW0603 - one pool per process
    pid = os.getpid()
    if _READ_POOL is None or _READ_POOL[0] != pid:
        _READ_POOL = (pid, ThreadPoolExecutor(READ_THREADS, thread_name_prefix="replaykit-io"))
    return _READ_POOL[1]


def write_chunks(fd: int, offset: int, data: np.ndarray, visitor: Any) -> None:
    """Write C-contiguous ``data``'s bytes at ``offset`` of ``fd`` through the page cache.

    One pass of bounded chunks: ``visitor.update(chunk)`` (hash, scan) sees each chunk in
    order, and the chunk is then handed to a small thread pool that writes it (copying into
    the page cache is CPU-bound; ``pwrite`` releases the GIL) while the next is visited.
    """
    flat = data.reshape(-1)
    step = max(1, BUFFERED_CHUNK // max(1, flat.itemsize))
    pool = _read_pool() if flat.size > step else None
    futures: list[Future[None]] = []
    try:
        for i in range(0, flat.size, step):
            chunk = flat[i : i + step].view(np.uint8).data
            visitor.update(chunk)
            if pool is None:
                _pwrite_all(fd, chunk, offset + i * flat.itemsize)
            else:
                futures.append(pool.submit(_pwrite_all, fd, chunk, offset + i * flat.itemsize))
    except BaseException:
        for f in futures:
            f.cancel()
        for f in futures:
            if not f.cancelled():
                f.exception()  # nothing still writes once this raises
        raise
    for f in futures:
        f.result()  # every chunk is written (or its error raised) before this returns


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    """Fill ``view`` from ``offset`` of ``fd``; return the bytes read (short only at EOF)."""
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got <= 0:
            break
        done += got
    return done


def pread_exactly(fd: int, view: memoryview, offset: int) -> None:
    """Fill ``view`` from ``offset`` of ``fd``; a file that ends first raises ``OSError``."""
    got = _pread_into(fd, view, offset)
    if got != len(view):
        raise OSError(f"file ends {len(view) - got} bytes short of a read at {offset}")


def read_chunks(fd: int, offset: int, out: np.ndarray, hasher: Any = None) -> None:
    """Read ``out.nbytes`` bytes at ``offset`` of ``fd`` straight into C-contiguous ``out``.

    Chunks are read by a small thread pool, a few ahead; ``hasher.update`` (if given) sees
    each chunk in order as soon as it is in. A file shorter than that raises
    :class:`OSError`.
    """
    view = out.reshape(-1).view(np.uint8).data
    n = len(view)
    step = BUFFERED_CHUNK * 4
    spans = [(pos, min(step, n - pos)) for pos in range(0, n, step)]
    if len(spans) <= 1:
        futures: list[Any] = []
        got = [_pread_into(fd, view, offset)] if n else []
    else:
        pool = _read_pool()
        futures = [
            pool.submit(_pread_into, fd, view[pos : pos + m], offset + pos) for pos, m in spans
        ]
        got = []
    try:
        for k, (pos, m) in enumerate(spans):
            read = futures[k].result() if futures else got[k]
            if read != m:
                raise OSError(f"file ends {n - pos - read} bytes short of an array at {offset}")
            if hasher is not None:
                hasher.update(view[pos : pos + m])
    except BaseException:
        for f in futures:
            f.cancel()
        for f in futures:
            if not f.cancelled():
                f.exception()  # nothing writes into ``out`` after this raises
        raise


class DirectWriter:
    """Writes arrays' bytes at given offsets of one file with direct I/O.

    Example:
        >>> # with DirectWriter(path) as dw:
        >>> #     if not dw.write(offset, array):
        >>> #         ...  # write it another way
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = os.fspath(path)
        self._fd: int | None = None
        self._tail_fd: int | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._bufs: list[mmap.mmap] = []
        self.available = hasattr(os, "O_DIRECT")

    def _open(self) -> bool:
        if self._fd is not None:
            return True
        try:
            self._fd = os.open(self._path, os.O_WRONLY | os.O_DIRECT)
        except OSError:
            self.available = False
            return False
        self._tail_fd = os.open(self._path, os.O_WRONLY)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="replaykit-direct-io")
        self._bufs = [mmap.mmap(-1, CHUNK) for _ in range(2)]
        return True

    def write(self, offset: int, data: np.ndarray, hasher: Any = None) -> bool:
        """Write C-contiguous ``data``'s bytes at ``offset``; ``False`` if direct I/O can't.

        ``hasher`` (an ``xxhash`` object), if given, is fed the bytes while they are
        written. On ``False`` some of the bytes may have been written (none is still being
        written); the caller writes them all again another way, and hashes them itself.
        """
        if not self.available or offset % ALIGN or not data.flags.c_contiguous:
            return False
        if not self._open():
            return False
        assert self._fd is not None and self._tail_fd is not None and self._pool is not None
        src = data.reshape(-1).view(np.uint8)
        n = src.size
        head = n - n % ALIGN
        pending: list[Future[None] | None] = [None, None]
        pos = 0
        k = 0
        try:
            while pos < head:
                m = min(CHUNK, head - pos)
                prev = pending[k]
                if prev is not None:
                    prev.result()  # this buffer's last write is done before it is refilled
                buf = self._bufs[k]
                chunk = src[pos : pos + m]
                np.copyto(np.frombuffer(buf, np.uint8, m), chunk)
                pending[k] = self._pool.submit(
                    _pwrite_all, self._fd, memoryview(buf)[:m], offset + pos
                )
                if hasher is not None:
                    hasher.update(chunk.data)  # overlaps the write just submitted
                pos += m
                k ^= 1
            for fut in pending:
                if fut is not None:
                    fut.result()
        except OSError:
            # EINVAL: this file system refuses direct I/O (alignment or not supported).
            # Nothing may still be writing when the caller rewrites the bytes.
            for fut in pending:
                if fut is not None:
                    fut.exception()
            self.available = False
            return False
        if head < n:
            tail = src[head:]
            _pwrite_all(self._tail_fd, tail.data, offset + head)
            if hasher is not None:
                hasher.update(tail.data)
        return True

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for fd in (self._fd, self._tail_fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._tail_fd = None
        for b in self._bufs:
            # A view may still live (a traceback's frame): the GC unmaps it then.
            with contextlib.suppress(BufferError):
                b.close()
        self._bufs = []

    def __enter__(self) -> DirectWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
