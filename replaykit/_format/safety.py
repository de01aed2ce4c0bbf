"""Validate a file's structure before any of its data is read.

libhdf5 is not hardened against crafted input, and some legal HDF5 features
make a reader touch *other* files (external links, external raw storage,
virtual datasets) or allocate far more than the file holds (huge declared
shapes, compression bombs). Every object is inspected through its link and
property lists, without following a link or reading a byte of data, and
anything outside the recording format is refused.
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path
from typing import Any

import h5py

from replaykit._format import layout as F
from replaykit._format.ohdr import vlen_attribute_bytes
from replaykit.errors import (
    NotARecordingError,
    ReplaykitError,
    TruncatedFileError,
    UnsafeFileError,
)

__all__ = [
    "BEING_WRITTEN",
    "changed_since_open",
    "file_identity",
    "is_being_written",
    "open_validated",
    "validate_structure",
]

# What a reader says when a file failed to read while another process holds it open for
# writing: the failure is a read racing a commit, not damage.
BEING_WRITTEN = (
    "is being written by another process right now (a live recording), and reading it raced "
    "a commit; read it again, or wait until the recording is closed"
)


def is_being_written(path: Path) -> bool:
    """Tell whether another process holds ``path`` open for writing (HDF5's write lock).

    libhdf5 takes an exclusive ``flock`` on a file it opens for writing (replaykit's
    writers keep the default locking); a shared lock that cannot be taken means a writer
    is live. Only asked after a read failed, so it costs nothing on the normal path.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


# Deflate cannot expand more than ~1032:1 (LZF far less), so declaring more than this many
# times the bytes stored is a crafted header, not compressed data.
MAX_EXPANSION = 1100
# One chunk is decompressed whole: cap it, so a single "gzip bomb" chunk cannot ask for
# gigabytes (replaykit writes chunks of at most max(1 MiB, one row)).
MAX_CHUNK_BYTES = 256 << 20
# A compressed chunk is inflated whole to read any row of it: replaykit writes chunks of 16
# rows or ~16 KiB, so a larger compressed chunk only serves to multiply the work of reading.
MAX_COMPRESSED_CHUNK_BYTES = 64 << 20
# Attributes replaykit writes are scalars.
MAX_ATTR_ELEMENTS = 1024
# Replaykit writes at most 5 attributes on an object (the root); opening attributes by index
# costs more the more an object has, so a crafted object with thousands made validation
# quadratic (146 s for 10k). More than this is refused before any is opened.
MAX_ATTRS_PER_OBJECT = 32
MAX_OBJECTS = 200_000
# Snapshots and streams are never deeper than this many groups below the root.
MAX_DEPTH = 64


def open_validated(path: Path) -> h5py.File:
    """Open ``path`` read-only after checking it is a structurally safe HDF5 file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NotARecordingError("no such file; check the path", path=path) from None
    except OSError as exc:
        raise NotARecordingError(f"cannot stat it ({_short(exc)})", path=path) from None
    if stat.S_ISDIR(st.st_mode):
        raise NotARecordingError("is a directory, not a recording file", path=path)
    size = st.st_size
    if size == 0:
        raise TruncatedFileError(
            "file is empty (0 bytes); the recording was never written", path=path
        )
    # A file this process validated, unchanged since (same identity), is HDF5: the signature
    # check (libhdf5 opening the file once more) is skipped. The identity is checked again
    # on the open file below, so a file replaced in between is validated in full.
    if _key(st) not in _VALIDATED:
        try:
            is_h5 = h5py.is_hdf5(os.fspath(path))
        except OSError:
            is_h5 = False
    else:
        is_h5 = True
    if not is_h5:
        raise NotARecordingError(
            "not an HDF5 file (no HDF5 signature); replaykit recordings are .h5 files written by "
            "replaykit record or the RecordingWrapper",
            path=path,
        )
    try:
        # No chunk cache: every reader streams whole chunks in blocks, so a per-dataset
        # cache (1 MiB each by default) would only add a copy per chunk and memory that
        # grows with the number of open columns.
        f = h5py.File(path, "r", locking=False, rdcc_nbytes=0)
    except ReplaykitError:
        raise
    except _RAW as exc:
        raise TruncatedFileError(
            f"HDF5 library cannot open it ({_short(exc)}); the file is truncated or damaged",
            path=path,
        ) from None
    try:
        key = _identity(f)
        if key is not None:
            _remember_open(path, key)
        if key is None or key not in _VALIDATED:
            validate_structure(f, path, size)
            if key is not None:
                _remember(key)
    except BaseException:
        f.close()
        raise
    return f


# Files this process already validated, by device, inode, size and modification and change
# times (ctime moves on every write, rename or chmod): a test suite restoring one golden file
# many times walks its structure once. Any change to the file makes a new key.
_VALIDATED: dict[tuple[int, ...], None] = {}
_VALIDATED_MAX = 256


def _key(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _identity(f: h5py.File) -> tuple[int, ...] | None:
    try:
        st = os.fstat(f.id.get_vfd_handle())
    except (OSError, RuntimeError, ValueError, TypeError):
        return None
    return _key(st)


def file_identity(f: h5py.File) -> tuple[int, ...] | None:
    """Return the open file's ``(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)``.

    Any write, truncation, rename onto the path or ``chmod`` changes it (``st_ctime`` is
    set by the kernel and cannot be set back by a user). ``None`` when the descriptor
    cannot be asked (a driver without one).
    """
    return _identity(f)


# The identity each path had when this process last opened it: a read that failed on a file
# that has changed since was racing its writer (a commit, or the close), not reading damage,
# even when the writer is gone by the time the failure is looked at.
_OPENED: dict[str, tuple[int, ...]] = {}


def _remember_open(path: Path, key: tuple[int, ...]) -> None:
    name = os.fspath(path)
    _OPENED.pop(name, None)
    if len(_OPENED) >= _VALIDATED_MAX:
        _OPENED.pop(next(iter(_OPENED)))
    _OPENED[name] = key


def changed_since_open(path: Path) -> bool:
    """Tell whether ``path`` changed on disk since this process last opened it for reading."""
    key = _OPENED.get(os.fspath(path))
    if key is None:
        return False
    try:
        st = os.stat(path)
    except OSError:
        return True
    return _key(st) != key


def _remember(key: tuple[int, ...]) -> None:
    if len(_VALIDATED) >= _VALIDATED_MAX:
        _VALIDATED.pop(next(iter(_VALIDATED)))
    _VALIDATED[key] = None


# What h5py and numpy raise on damaged headers; turned into FileFormatError subclasses.
_RAW = (OSError, RuntimeError, KeyError, ValueError, TypeError, UnicodeError, OverflowError)


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]


def validate_structure(f: h5py.File, path: Path, file_size: int) -> None:  # noqa: C901
    """Refuse links, storage, dtypes and sizes a recording never has."""
    # h5py's low-level API throughout: the object layer costs more per object than the
    # checks themselves, and every reader (a diff opens two files) pays this walk.
    count = 0

    # Snapshot arrays are read whole, so together they must fit in the file: a budget for the
    # whole file, not a per-dataset check (many datasets may alias the same stored bytes).
    whole_bytes = 0

    # One pass over every object, each link kind and object type refused where it is met:
    # splitting the walk would re-open objects (the cost this walk exists to keep low).
    def walk(gid: h5py.h5g.GroupID, name: str, depth: int) -> None:  # noqa: C901
        nonlocal count, whole_bytes
        if depth > MAX_DEPTH:
            raise UnsafeFileError("groups nest deeper than a recording's", path=path, obj=name)
        try:
            names = list(gid)
        except ReplaykitError:
            raise
        except _RAW as exc:
            raise TruncatedFileError(
                f"cannot list group ({_short(exc)})", path=path, obj=name
            ) from None
        for raw in names:
            count += 1
            if count > MAX_OBJECTS:
                raise UnsafeFileError(
                    f"file holds more than {MAX_OBJECTS} objects", path=path, obj=name
                )
            obj_path = f"{name.rstrip('/')}/{raw.decode('utf-8', 'replace')}"
            try:
                link_type = gid.links.get_info(raw).type
            except ReplaykitError:
                raise
            except _RAW as exc:
                raise TruncatedFileError(
                    f"cannot read link ({_short(exc)})", path=path, obj=obj_path
                ) from None
            if link_type == h5py.h5l.TYPE_EXTERNAL:
                raise UnsafeFileError(
                    "external link to another file; recordings never hold them",
                    path=path,
                    obj=obj_path,
                )
            if link_type == h5py.h5l.TYPE_SOFT:
                raise UnsafeFileError(
                    "soft link; recordings never hold them", path=path, obj=obj_path
                )
            if link_type != h5py.h5l.TYPE_HARD:
                raise UnsafeFileError(
                    f"user-defined link (type {link_type}); recordings never hold them",
                    path=path,
                    obj=obj_path,
                )
            try:
                oid = h5py.h5o.open(gid, raw)
            except ReplaykitError:
                raise
            except _RAW as exc:
                raise TruncatedFileError(
                    f"cannot open object ({_short(exc)})", path=path, obj=obj_path
                ) from None
            if isinstance(oid, h5py.h5g.GroupID):
                key = _object_key(oid, path, obj_path)
                if key in seen:
                    raise UnsafeFileError(
                        "group is linked twice (a hard-link cycle?); recordings are trees",
                        path=path,
                        obj=obj_path,
                    )
                seen.add(key)
                _check_attrs(oid, path, obj_path, text)
                walk(oid, obj_path, depth + 1)
            elif isinstance(oid, h5py.h5d.DatasetID):
                _check_attrs(oid, path, obj_path, text)
                whole_bytes += _check_dataset(oid, path, file_size, obj_path)
                if whole_bytes > file_size:
                    raise UnsafeFileError(
                        f"snapshot datasets declare {whole_bytes} bytes in all, more than the "
                        f"file's {file_size} (stored bytes used twice?); do not trust this file",
                        path=path,
                        obj=obj_path,
                    )
            else:
                kind = "Datatype" if isinstance(oid, h5py.h5t.TypeID) else type(oid).__name__
                raise UnsafeFileError(f"unexpected object type {kind}", path=path, obj=obj_path)

    seen: set[Any] = {_object_key(f.id, path, "/")}
    text = _TextBudget(f, file_size)
    try:
        _check_attrs(f.id, path, "/", text)
        walk(f.id, "/", 0)
    except RecursionError:
        raise UnsafeFileError("structure nests too deeply", path=path) from None


def _object_key(oid: Any, path: Path, where: str) -> Any:
    try:
        info = h5py.h5o.get_info(oid)
        return (info.fileno, getattr(info, "token", None) or getattr(info, "addr", None))
    except ReplaykitError:
        raise
    except _RAW as exc:
        raise TruncatedFileError(
            f"cannot read object header ({_short(exc)})", path=path, obj=where
        ) from None


class _TextBudget:
    """Declared sizes of variable-length text attributes, read from object headers first.

    libhdf5 inflates such an attribute to about five times its size in memory before any
    check can see it, so its size is read from the header's raw bytes and the whole file's
    text must fit in the file's own bytes (heap text is stored, never declared).
    """

    __slots__ = ("fd", "file_size", "total")

    def __init__(self, f: h5py.File, file_size: int) -> None:
        try:
            self.fd: int | None = f.id.get_vfd_handle()
        except (OSError, RuntimeError, ValueError, TypeError):
            self.fd = None
        self.file_size = file_size
        self.total = 0

    def check(self, oid: Any, name: str, path: Path, where: str) -> None:
        addr = getattr(h5py.h5o.get_info(oid), "addr", None)
        if self.fd is None or addr is None:  # pragma: no cover - not the sec2 driver
            return
        declared = vlen_attribute_bytes(self.fd, addr, name.encode("utf-8"))
        if declared is None:
            raise UnsafeFileError(
                f"text attribute {name!r} is not stored in its object header the way "
                "replaykit stores attributes (dense or shared storage?); do not trust this file",
                path=path,
                obj=where,
            )
        if declared > F.MAX_JSON_BYTES:
            raise UnsafeFileError(
                f"text attribute {name!r} declares {declared} bytes, more than the "
                f"{F.MAX_JSON_BYTES} any replaykit attribute has (a forged file?)",
                path=path,
                obj=where,
            )
        self.total += declared
        if self.total > self.file_size:
            raise UnsafeFileError(
                f"text attributes declare {self.total} bytes in all, more than the file's "
                f"{self.file_size}; do not trust this file",
                path=path,
                obj=where,
            )


def _check_attrs(oid: Any, path: Path, where: str, text: _TextBudget) -> None:
    try:
        n = h5py.h5a.get_num_attrs(oid)
        if n > MAX_ATTRS_PER_OBJECT:
            raise UnsafeFileError(
                f"object has {n} attributes; recording objects have at most "
                f"{MAX_ATTRS_PER_OBJECT} (a crafted file?)",
                path=path,
                obj=where,
            )
        for i in range(n):
            aid = h5py.h5a.open(oid, index=i)
            name = aid.name.decode("utf-8", "replace")
            dt = aid.dtype
            if dt.kind == "O":
                # Only plain variable-length strings are allowed among object dtypes.
                if h5py.check_string_dtype(dt) is None:
                    raise UnsafeFileError(
                        f"attribute {name!r} has an object dtype", path=path, obj=where
                    )
                text.check(oid, name, path, where)
            elif dt.kind not in F.ALLOWED_KINDS | {"S", "U"}:
                raise UnsafeFileError(
                    f"attribute {name!r} has dtype {dt} ({dt.kind})", path=path, obj=where
                )
            if aid.get_storage_size() > 64 << 20:
                raise UnsafeFileError(f"attribute {name!r} exceeds 64 MiB", path=path, obj=where)
            shape = aid.shape
            if shape is not None and math.prod(shape) > MAX_ATTR_ELEMENTS:
                raise UnsafeFileError(
                    f"attribute {name!r} has shape {shape}; recording attributes are scalars",
                    path=path,
                    obj=where,
                )
    except ReplaykitError:
        raise
    except _RAW as exc:
        raise TruncatedFileError(
            f"cannot read attributes ({_short(exc)})", path=path, obj=where
        ) from None


# A flat list of independent refusals, one per property of the dataset's header.
def _check_dataset(  # noqa: C901
    dsid: h5py.h5d.DatasetID, path: Path, file_size: int, where: str
) -> int:
    """Check one dataset's header; return the bytes a reader reads whole (0: a stream column)."""
    try:
        dt = dsid.dtype
        if dt.kind not in F.ALLOWED_KINDS or dt.fields is not None or dt.subdtype is not None:
            raise UnsafeFileError(
                f"dataset dtype {dt} is not a plain bool/int/float/complex type "
                "(recordings never hold objects, strings or compound types)",
                path=path,
                obj=where,
            )
        dcpl = dsid.get_create_plist()
        layout = dcpl.get_layout()
        if layout == h5py.h5d.VIRTUAL:
            raise UnsafeFileError(
                "virtual dataset (reads other files); recordings never hold them",
                path=path,
                obj=where,
            )
        if dcpl.get_external_count() > 0:
            raise UnsafeFileError(
                "dataset stores its data in external files; recordings never do",
                path=path,
                obj=where,
            )
        filters = [dcpl.get_filter(i)[0] for i in range(dcpl.get_nfilters())]
        unknown = [fid for fid in filters if fid not in F.ALLOWED_FILTERS]
        if unknown:
            raise UnsafeFileError(f"dataset uses unknown filter(s) {unknown}", path=path, obj=where)
        shape = dsid.shape
        if shape is None:
            raise UnsafeFileError("dataset has a null dataspace", path=path, obj=where)
        declared = math.prod(shape) * dt.itemsize  # exact: Python ints do not overflow
        compressed = any(fid in (1, 32000) for fid in filters)
        # Only the expansion check needs the stored size, and summing it walks the whole
        # chunk index; stream readers check committed rows against it when they open a column.
        stored = int(dsid.get_storage_size()) if compressed else 0
        if layout == h5py.h5d.CHUNKED:
            chunk = math.prod(dcpl.get_chunk()) * dt.itemsize
            if chunk > MAX_CHUNK_BYTES:
                raise UnsafeFileError(
                    f"dataset chunks of {chunk} bytes exceed {MAX_CHUNK_BYTES} "
                    "(a decompression bomb?); recordings use chunks of about 1 MiB",
                    path=path,
                    obj=where,
                )
        if declared > (1 << 40):
            raise UnsafeFileError(
                f"dataset declares {declared} bytes (over 1 TiB) in a {file_size}-byte file",
                path=path,
                obj=where,
            )
        if compressed and declared > max(stored * MAX_EXPANSION, 1 << 20):
            raise UnsafeFileError(
                f"dataset declares {declared} bytes from {stored} stored (a compression bomb?)",
                path=path,
                obj=where,
            )
        # Stream columns may declare rows beyond their last commit (a killed writer resized
        # them); readers read only committed rows and check those against stored bytes.
        # Anything else (snapshot arrays) is read whole, so it must fit in the file.
        in_stream = where.startswith(f"/{F.STREAMS_GROUP}/")
        if not in_stream and compressed:
            raise UnsafeFileError(
                "compressed dataset outside /streams (replaykit never compresses snapshot "
                "arrays; read whole, they could inflate far past the file); do not trust "
                "this file",
                path=path,
                obj=where,
            )
        if not in_stream and declared > file_size:
            raise UnsafeFileError(
                f"dataset declares {declared} bytes but the file has {file_size}",
                path=path,
                obj=where,
            )
        if in_stream and compressed and layout == h5py.h5d.CHUNKED:
            chunk = math.prod(dcpl.get_chunk()) * dt.itemsize
            if chunk > MAX_COMPRESSED_CHUNK_BYTES:
                raise UnsafeFileError(
                    f"compressed chunks of {chunk} bytes exceed {MAX_COMPRESSED_CHUNK_BYTES} "
                    "(each is inflated whole to read any row of it); recordings use chunks of "
                    "16 rows or about 16 KiB",
                    path=path,
                    obj=where,
                )
        return 0 if in_stream else declared
    except ReplaykitError:
        raise
    except _RAW as exc:
        raise TruncatedFileError(
            f"cannot read dataset header ({_short(exc)})", path=path, obj=where
        ) from None
