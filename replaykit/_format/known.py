"""What verified reads of an unchanged file derived, kept per process.

A test suite restores one golden file many times in one process; every open used to check
the root attributes against their checksum, list and verify every snapshot's attributes,
parse the state tree document and each stream's commit record again. A
:class:`~replaykit._format.store.Recording` opened with ``verify=True`` records here what it
derived (the root metadata text, the snapshot listing, each snapshot's verified
attributes and tree document, each stream's verified commit record, where plain
contiguous datasets lie), keyed by the path, the open file's identity
``(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)`` and the root checksum stored in it.
A later open of the same path whose identity and root checksum are unchanged reuses it.

What ``verify`` means on such an open: the file's *structure* (safety walk, root, snapshot
and commit-record checksums) was verified by an earlier open of this identical file in this
process and is not re-read; every array *data* read (snapshot arrays and packs, stream
columns) is still read from the file and checked against its checksum.

Any write to the file, a truncation, an append by a live writer, a rename onto the path or
a ``chmod`` changes ``st_ctime`` (set by the kernel; a user cannot set it back, unlike
``st_mtime``), so the file is verified again. A file another process holds open for
writing (HDF5's lock) is never served from here nor added. The residual risk: a file
changed in place by a writer that takes no lock, keeping its size, within the same
timestamp tick as the earlier open, on a kernel or file system with coarse timestamps (no
fine-grained ctime after a ``stat``); then a damaged *structure* would go unseen until its
data is read, whose checksums are still verified.

The cache is bounded: :data:`MAX_FILES` files and about :data:`MAX_BYTES` of parsed text,
least recently used first out.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MAX_BYTES", "MAX_FILES", "Known", "clear", "forget", "get", "grow", "put", "stats"]

# Files kept, and parsed text (JSON bytes) kept over all of them.
MAX_FILES = 8
MAX_BYTES = 8 << 20

Key = tuple[Any, ...]


@dataclass
class Known:
    """What verified reads of one unchanged file derived.

    Attributes:
        ident: the open file's identity when this was recorded.
        format_version: the root's format version.
        meta_text: the root metadata's JSON text (parsed again per open: callers may mutate).
        provenance_text: the provenance's JSON text.
        created: the root's creation time.
        snapshots: the verified snapshot listing, once listed.
        attrs: ``{snapshot path: (meta, tree document, checksums)}``, verified.
        trees: snapshot paths whose dataset count was checked against their checksums.
        commits: ``{stream: (first, rows, columns, checksums)}``, verified.
        columns: ``{(stream, dataset): (chunk rows, span rows)}``, checked.
        plain: ``{dataset path: (offset, dtype, shape)}`` of small contiguous unfiltered
            datasets, read with one ``preadv``.
        has_stream: ``{stream: present}``.
        nbytes: about how much text this holds.
    """

    ident: tuple[int, ...]
    format_version: int
    meta_text: str
    provenance_text: str
    created: str
    snapshots: list[Any] | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    trees: set[str] = field(default_factory=set)
    commits: dict[str, Any] = field(default_factory=dict)
    columns: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    plain: dict[str, tuple[int, str, tuple[int, ...]]] = field(default_factory=dict)
    has_stream: dict[str, bool] = field(default_factory=dict)
    nbytes: int = 0


_FILES: OrderedDict[Key, Known] = OrderedDict()
_LOCK = threading.Lock()
_TOTAL = [0]


def get(key: Key) -> Known | None:
    """Return what is known of the file ``key`` names (and mark it recently used)."""
    with _LOCK:
        hit = _FILES.get(key)
        if hit is not None:
            _FILES.move_to_end(key)
        return hit


def put(key: Key, known: Known) -> Known | None:
    """Keep ``known`` under ``key``; return it, or ``None`` when it is too large to keep."""
    with _LOCK:
        if known.nbytes > MAX_BYTES:
            return None
        old = _FILES.pop(key, None)
        if old is not None:
            _TOTAL[0] -= old.nbytes
        _FILES[key] = known
        _TOTAL[0] += known.nbytes
        _evict()
        return known if key in _FILES else None


def grow(known: Known, nbytes: int) -> bool:
    """Account ``nbytes`` more text to ``known``; ``False`` (nothing added) if over budget."""
    with _LOCK:
        if known.nbytes + nbytes > MAX_BYTES:
            return False
        known.nbytes += nbytes
        if any(v is known for v in _FILES.values()):
            _TOTAL[0] += nbytes
            _evict(keep=known)
        return True


def forget(path: str) -> None:
    """Forget what is known of ``path`` (a full check verifies everything again)."""
    with _LOCK:
        for key in [k for k in _FILES if k[0] == path]:
            _TOTAL[0] -= _FILES.pop(key).nbytes


def clear() -> None:
    """Forget every file (tests; a process that wants every open verified in full)."""
    with _LOCK:
        _FILES.clear()
        _TOTAL[0] = 0


def _evict(keep: Known | None = None) -> None:
    while _FILES and (len(_FILES) > MAX_FILES or _TOTAL[0] > MAX_BYTES):
        key = next(iter(_FILES))
        if _FILES[key] is keep:
            if len(_FILES) == 1:
                return
            _FILES.move_to_end(key)
            key = next(iter(_FILES))
        _TOTAL[0] -= _FILES.pop(key).nbytes


def stats() -> tuple[int, int]:
    """``(files, bytes)`` kept now."""
    with _LOCK:
        return len(_FILES), _TOTAL[0]
