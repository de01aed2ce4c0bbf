"""The folder manifest: one small checksummed JSON file naming a folder's recordings.

This is the only module that spells the manifest's names. ``docs/FORMAT.md`` ("Folder
manifest") is its normative description.

Layout (one JSON object, UTF-8)::

    {
      MANIFEST_FORMAT_KEY: MANIFEST_FORMAT,          "replaykit.manifest"
      MANIFEST_VERSION_KEY: MANIFEST_VERSION,        1
      MANIFEST_CHECKSUM_KEY: "<xxh3-64 hex>",        of canonical(body)
      MANIFEST_BODY_KEY: {
        BODY_CREATED: ISO 8601 time of the last write,
        BODY_KIND: KIND_SWEEP | KIND_GATHERED,
        BODY_INFO: {...},                            plain data (env id, policy, steps)
        BODY_ENTRIES: [ {ENTRY_*: ...}, ... ]        one per recording, sorted by file name
      }
    }

``canonical(x)`` is ``json.dumps(x, sort_keys=True, separators=(",", ":"),
ensure_ascii=True, allow_nan=False)`` encoded as ASCII. An entry names its file relative to
the manifest's folder; a reader refuses a name that is absolute, holds ``..``, a
backslash or a control character, or resolves (through symlinks) outside the folder.

A manifest is data: it is read with :func:`json.loads` only, its size is bounded before it
is read, and every field is type-checked.

Writes are atomic: the text goes to a temporary name in the same folder, is flushed and
``fsync``-ed, then renamed over the manifest (and the folder is ``fsync``-ed), so a reader,
or a driver that crashed mid-sweep, always finds a whole manifest: the previous one or the
new one.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Final

import xxhash

from replaykit.errors import ManifestError

__all__ = [
    "BODY_CREATED",
    "BODY_ENTRIES",
    "BODY_INFO",
    "BODY_KIND",
    "ENTRY_BYTES",
    "ENTRY_ERROR",
    "ENTRY_FILE",
    "ENTRY_PROVENANCE",
    "ENTRY_ROWS",
    "ENTRY_SEED",
    "ENTRY_SNAPSHOTS",
    "ENTRY_STATUS",
    "KIND_GATHERED",
    "KIND_SWEEP",
    "MANIFEST_BODY_KEY",
    "MANIFEST_CHECKSUM_KEY",
    "MANIFEST_FORMAT",
    "MANIFEST_FORMAT_KEY",
    "MANIFEST_MAX_BYTES",
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "MANIFEST_VERSION_KEY",
    "PROVENANCE_VOLATILE",
    "STATUS_FAILED",
    "STATUS_OK",
    "Manifest",
    "ManifestEntry",
    "canonical",
    "checked_name",
    "provenance_digest",
    "read_manifest",
    "resolve_in_folder",
    "write_manifest",
]

#: The manifest's file name inside its folder.
MANIFEST_NAME: Final = "replaykit-manifest.json"
MANIFEST_FORMAT: Final = "replaykit.manifest"
MANIFEST_VERSION: Final = 1
#: A manifest larger than this is refused before it is read (about 200,000 entries).
MANIFEST_MAX_BYTES: Final = 64 * 1024 * 1024

# Top-level keys.
MANIFEST_FORMAT_KEY: Final = "format"
MANIFEST_VERSION_KEY: Final = "version"
MANIFEST_CHECKSUM_KEY: Final = "checksum"
MANIFEST_BODY_KEY: Final = "body"

# Body keys.
BODY_CREATED: Final = "created"
BODY_KIND: Final = "kind"
BODY_INFO: Final = "info"
BODY_ENTRIES: Final = "entries"

#: Written by ``replaykit record --seeds`` (one entry per seed, failures included).
KIND_SWEEP: Final = "sweep"
#: Written by ``replaykit manifest DIR`` over recordings that are already there.
KIND_GATHERED: Final = "gathered"
_KINDS: Final = (KIND_SWEEP, KIND_GATHERED)

# Entry keys.
ENTRY_SEED: Final = "seed"  # int or null (a gathered file recorded without a seed)
ENTRY_FILE: Final = "file"  # relative POSIX name inside the folder
ENTRY_ROWS: Final = "rows"  # {stream: committed rows}
ENTRY_SNAPSHOTS: Final = "snapshots"  # [snapshot name, ...]
ENTRY_PROVENANCE: Final = "provenance"  # xxh3-64 hex of canonical(provenance) or ""
ENTRY_BYTES: Final = "bytes"  # the file's size when the entry was written
ENTRY_STATUS: Final = "status"  # STATUS_OK | STATUS_FAILED
ENTRY_ERROR: Final = "error"  # one line, or null

STATUS_OK: Final = "ok"
STATUS_FAILED: Final = "failed"
_STATUSES: Final = (STATUS_OK, STATUS_FAILED)

_ENTRY_TYPES: Final[dict[str, tuple[type, ...]]] = {
    ENTRY_SEED: (int, type(None)),
    ENTRY_FILE: (str,),
    ENTRY_ROWS: (dict,),
    ENTRY_SNAPSHOTS: (list,),
    ENTRY_PROVENANCE: (str,),
    ENTRY_BYTES: (int,),
    ENTRY_STATUS: (str,),
    ENTRY_ERROR: (str, type(None)),
}
# A file name in a manifest: at most this long, no control characters, no backslash.
_NAME_MAX: Final = 1024
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f\\]")


@dataclass
class ManifestEntry:
    """One recording of a folder, as its manifest lists it.

    Attributes:
        file: the file's name relative to the folder (POSIX separators).
        seed: the seed it was recorded with, or ``None``.
        rows: committed rows per stream.
        snapshots: snapshot names, oldest first.
        provenance: xxh3-64 hex digest of the recording's provenance (canonical JSON).
        bytes: the file's size in bytes.
        status: ``"ok"``, or ``"failed"`` when the task that should have written it failed.
        error: the failure, one line (``None`` when ok).

    Example:
        >>> e = ManifestEntry("seed-000003.h5", seed=3, rows={"steps": 200})
        >>> e.to_json()["file"], e.status
        ('seed-000003.h5', 'ok')
    """

    file: str
    seed: int | None = None
    rows: dict[str, int] = field(default_factory=dict)
    snapshots: list[str] = field(default_factory=list)
    provenance: str = ""
    bytes: int = 0
    status: str = STATUS_OK
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the entry as the manifest stores it."""
        return {
            ENTRY_SEED: self.seed,
            ENTRY_FILE: self.file,
            ENTRY_ROWS: dict(self.rows),
            ENTRY_SNAPSHOTS: list(self.snapshots),
            ENTRY_PROVENANCE: self.provenance,
            ENTRY_BYTES: self.bytes,
            ENTRY_STATUS: self.status,
            ENTRY_ERROR: self.error,
        }


@dataclass
class Manifest:
    """A folder's manifest.

    Attributes:
        folder: the folder the entries' names are relative to.
        kind: ``"sweep"`` or ``"gathered"``.
        entries: one per recording, sorted by file name.
        info: plain data about how the folder was made (env id, policy, steps).
        created: when the manifest was last written (ISO 8601, UTC).

    Example:
        >>> # m = replaykit.read_manifest("runs/")
        >>> # [(e.seed, e.file, e.status) for e in m.entries][:2]
        >>> # [(0, 'seed-000000.h5', 'ok'), (1, 'seed-000001.h5', 'ok')]
    """

    folder: Path
    kind: str
    entries: list[ManifestEntry] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    created: str = ""

    @property
    def path(self) -> Path:
        """The manifest file."""
        return self.folder / MANIFEST_NAME

    def by_seed(self) -> dict[int, ManifestEntry]:
        """Entries that carry a seed, by seed."""
        return {e.seed: e for e in self.entries if e.seed is not None}


def canonical(obj: Any) -> bytes:
    """Return the canonical bytes of plain JSON data (what the checksum is taken over).

    Example:
        >>> canonical({"b": 1, "a": [1, 2]})
        b'{"a":[1,2],"b":1}'
    """
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


#: Provenance keys left out of :func:`provenance_digest`: they differ between any two runs.
PROVENANCE_VOLATILE: Final = ("created", "pid", "argv", "git")


def provenance_digest(provenance: Any) -> str:
    """Return the xxh3-64 hex digest of a recording's setup: its provenance less volatile keys.

    The creation time, process id, command line and git state are left out, so two
    recordings made with the same library versions, device and determinism flags have the
    same digest and a folder's manifest shows at a glance whether its files share one setup.
    """
    if isinstance(provenance, dict):
        provenance = {k: v for k, v in provenance.items() if k not in PROVENANCE_VOLATILE}
    try:
        return xxhash.xxh3_64_hexdigest(canonical(provenance))
    except (TypeError, ValueError):
        return ""


def checked_name(name: object, manifest: str | os.PathLike[str] | None = None) -> str:
    """Return ``name`` if it is a safe relative file name, else raise :class:`ManifestError`.

    Refused: not a string, empty, absolute, a ``..`` component, a backslash or a control
    character, or longer than 1024 characters.
    """
    where = f"{manifest}: " if manifest is not None else ""
    if not isinstance(name, str) or not name or len(name) > _NAME_MAX:
        raise ManifestError(
            f"{where}an entry's file name must be a non-empty string of at most {_NAME_MAX} "
            f"characters, found {str(name)[:80]!r}; rewrite the manifest with replaykit manifest"
        )
    pure = PurePosixPath(name)
    if pure.is_absolute() or name.startswith("/") or _BAD_NAME.search(name):
        raise ManifestError(
            f"{where}entry {name[:200]!r} names a path outside its folder (absolute, or a "
            "backslash or control character); a manifest may name only files inside its folder"
        )
    if any(part in ("..", "") for part in name.split("/")) or ".." in pure.parts:
        raise ManifestError(
            f"{where}entry {name[:200]!r} names a path outside its folder ('..' or an empty "
            "component); a manifest may name only files inside its folder"
        )
    return name


def resolve_in_folder(folder: str | os.PathLike[str], name: str) -> Path:
    """Return ``folder / name``, refusing a name that resolves (symlinks too) outside folder.

    Raises:
        ManifestError: ``name`` is not a safe relative name, or it (or a symlink on the way)
            leads outside ``folder``.
    """
    checked_name(name, Path(folder) / MANIFEST_NAME)
    root = Path(folder).resolve()
    target = (root / name).resolve()
    if target != root and root not in target.parents:
        raise ManifestError(
            f"{Path(folder) / name}: resolves to {target}, outside the folder {root} (a symlink "
            "out of the folder); a manifest may name only files inside its folder"
        )
    return root / name


def write_manifest(manifest: Manifest) -> Path:
    """Write ``manifest`` atomically into its folder; returns the manifest's path.

    The text goes to a temporary name beside the manifest, is ``fsync``-ed, then renamed
    over the old manifest; the folder is ``fsync``-ed after the rename.
    """
    for e in manifest.entries:
        checked_name(e.file, manifest.path)
    manifest.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    body = {
        BODY_CREATED: manifest.created,
        BODY_KIND: manifest.kind,
        BODY_INFO: manifest.info,
        BODY_ENTRIES: [e.to_json() for e in sorted(manifest.entries, key=lambda e: e.file)],
    }
    doc = {
        MANIFEST_FORMAT_KEY: MANIFEST_FORMAT,
        MANIFEST_VERSION_KEY: MANIFEST_VERSION,
        MANIFEST_CHECKSUM_KEY: xxhash.xxh3_64_hexdigest(canonical(body)),
        MANIFEST_BODY_KEY: body,
    }
    text = json.dumps(doc, sort_keys=True, indent=1, ensure_ascii=True, allow_nan=False) + "\n"
    path = manifest.path
    tmp = path.with_name(f".{MANIFEST_NAME}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - a platform without directory descriptors
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read and check a manifest (a manifest file, or a folder holding one).

    Args:
        path: ``replaykit-manifest.json``, or the folder holding it.

    Returns:
        The :class:`Manifest`, every entry's file name checked to lie inside the folder.

    Example:
        >>> # m = replaykit.read_manifest("runs/replaykit-manifest.json")
        >>> # m.kind, len(m.entries), m.by_seed()[3].file
        >>> # ('sweep', 20, 'seed-000003.h5')

    Raises:
        ManifestError: not a manifest, larger than 64 MiB, an unknown format version, a
            checksum that does not match, a field of the wrong type, or an entry naming a
            path outside its folder.
    """
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST_NAME
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise ManifestError(
            f"{p}: no such manifest; write one with replaykit manifest {p.parent}"
        ) from None
    if size > MANIFEST_MAX_BYTES:
        raise ManifestError(
            f"{p}: {size} bytes, over the {MANIFEST_MAX_BYTES}-byte limit of a manifest; "
            "split the folder"
        )
    with open(p, "rb") as fh:
        raw = fh.read(MANIFEST_MAX_BYTES + 1)
    if len(raw) > MANIFEST_MAX_BYTES:
        raise ManifestError(f"{p}: over the {MANIFEST_MAX_BYTES}-byte limit of a manifest")
    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ManifestError(
            f"{p}: not a replaykit manifest (not JSON: {str(exc)[:120]}); write one with "
            f"replaykit manifest {p.parent}"
        ) from None
    if not isinstance(doc, dict) or doc.get(MANIFEST_FORMAT_KEY) != MANIFEST_FORMAT:
        raise ManifestError(
            f"{p}: not a replaykit manifest (no {MANIFEST_FORMAT_KEY!r}: {MANIFEST_FORMAT!r}); "
            f"write one with replaykit manifest {p.parent}"
        )
    version = doc.get(MANIFEST_VERSION_KEY)
    if version != MANIFEST_VERSION or isinstance(version, bool):
        raise ManifestError(
            f"{p}: manifest version {repr(version)[:40]}, this replaykit reads version "
            f"{MANIFEST_VERSION}; upgrade replaykit or rewrite it with replaykit manifest"
        )
    body = doc.get(MANIFEST_BODY_KEY)
    digest = doc.get(MANIFEST_CHECKSUM_KEY)
    if not isinstance(body, dict) or not isinstance(digest, str):
        raise ManifestError(f"{p}: no body or checksum; rewrite it with replaykit manifest")
    try:
        found = xxhash.xxh3_64_hexdigest(canonical(body))
    except (ValueError, TypeError):
        found = "<not canonical JSON>"
    if found != digest:
        raise ManifestError(
            f"{p}: checksum mismatch (stored {digest[:32]}, computed {found}): the manifest was "
            f"changed or damaged; rewrite it with replaykit manifest {p.parent}"
        )
    return _parse_body(p, body)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_body(p: Path, body: dict[str, Any]) -> Manifest:
    kind = body.get(BODY_KIND)
    entries = body.get(BODY_ENTRIES)
    info = body.get(BODY_INFO)
    created = body.get(BODY_CREATED)
    if kind not in _KINDS or not isinstance(entries, list) or not isinstance(info, dict):
        raise ManifestError(
            f"{p}: the body must hold {BODY_KIND!r} (one of {list(_KINDS)}), {BODY_ENTRIES!r} "
            f"(a list) and {BODY_INFO!r} (an object); rewrite it with replaykit manifest"
        )
    out = Manifest(folder=p.parent, kind=str(kind), info=info, created=str(created or ""))
    seen: set[str] = set()
    for i, raw in enumerate(entries):
        entry = _parse_entry(p, i, raw)
        if entry.file in seen:
            raise ManifestError(f"{p}: entry {i} repeats file {entry.file!r}")
        seen.add(entry.file)
        resolve_in_folder(p.parent, entry.file)
        out.entries.append(entry)
    return out


def _parse_entry(p: Path, i: int, raw: object) -> ManifestEntry:
    if not isinstance(raw, dict) or set(raw) != set(_ENTRY_TYPES):
        raise ManifestError(
            f"{p}: entry {i} must be an object with exactly the keys {sorted(_ENTRY_TYPES)}"
        )
    for key, types in _ENTRY_TYPES.items():
        value = raw[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ManifestError(
                f"{p}: entry {i} field {key!r} has type {type(value).__name__}, expected "
                + " or ".join(t.__name__ for t in types)
            )
    rows, snaps = raw[ENTRY_ROWS], raw[ENTRY_SNAPSHOTS]
    if not all(isinstance(k, str) and _is_count(v) for k, v in rows.items()):
        raise ManifestError(f"{p}: entry {i} field {ENTRY_ROWS!r} must map names to counts")
    if not all(isinstance(s, str) for s in snaps):
        raise ManifestError(f"{p}: entry {i} field {ENTRY_SNAPSHOTS!r} must list names")
    if raw[ENTRY_STATUS] not in _STATUSES:
        raise ManifestError(
            f"{p}: entry {i} status {str(raw[ENTRY_STATUS])[:20]!r}, expected one of "
            f"{list(_STATUSES)}"
        )
    return ManifestEntry(
        file=checked_name(raw[ENTRY_FILE], p),
        seed=raw[ENTRY_SEED],
        rows=dict(rows),
        snapshots=list(snaps),
        provenance=raw[ENTRY_PROVENANCE],
        bytes=raw[ENTRY_BYTES],
        status=raw[ENTRY_STATUS],
        error=raw[ENTRY_ERROR],
    )


def _is_count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0
