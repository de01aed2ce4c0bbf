"""The one exception tree of replaykit.

Every error replaykit raises on purpose is a :class:`ReplaykitError`. Each
subclass also inherits the builtin exception that existing handlers expect, so
``except ValueError`` keeps working around code that now calls replaykit::

    ReplaykitError
    ├── UsageError (ValueError)              bad arguments or API misuse
    │   └── PrefixEndError                   a replay reached the end of an unclosed recording
    ├── MissingExtraError (ImportError)      an optional integration's library is not installed
    ├── FileFormatError (ValueError)         a file replaykit cannot read
    │   ├── NotARecordingError               not HDF5, or HDF5 not written by replaykit
    │   ├── TruncatedFileError               cut short, zero bytes, or never committed
    │   ├── UnsupportedVersionError          written by a newer (or unknown) format version
    │   ├── ChecksumError                    stored bytes do not match their checksum
    │   ├── UnsafeFileError                  external links/storage, virtual datasets, bombs, ...
    │   └── ManifestError                    a folder manifest that is damaged, unknown or hostile
    ├── CaptureError (TypeError)             state replaykit cannot capture (refuses, never guesses)
    ├── RestoreError (ValueError)            a snapshot does not fit the objects to restore into
    │   └── StateMismatchError               shapes, dtypes, keys, groups, env id or spec differ
    ├── RecordingWriteError (OSError)        a write failed (disk full, file-size limit)
    ├── ProvenanceError (RuntimeError)       library/device drift under the "error" policy
    └── DivergenceError (AssertionError)     a replay did not reproduce the recording
        └── NondeterministicEnvError         replay-from-reset met an env that is not deterministic

    ReplaykitWarning (UserWarning)           a result may be less exact than asked (never an error)

Messages are one line: what was expected, what was found, how to fix it.
Templates are module constants so tests can match them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from replaykit._analysis.compare import DivergenceReport

__all__ = [
    "REGISTER_ADAPTER_FIX",
    "STATE_MISMATCH_FIX",
    "CaptureError",
    "ChecksumError",
    "DivergenceError",
    "FileFormatError",
    "ManifestError",
    "MissingExtraError",
    "NondeterministicEnvError",
    "NotARecordingError",
    "PrefixEndError",
    "ProvenanceError",
    "RecordingWriteError",
    "ReplaykitError",
    "ReplaykitWarning",
    "RestoreError",
    "StateMismatchError",
    "TruncatedFileError",
    "UnsafeFileError",
    "UnsupportedVersionError",
    "UsageError",
]


class ReplaykitError(Exception):
    """Root of every error replaykit raises on purpose."""


class UsageError(ReplaykitError, ValueError):
    """The caller passed arguments replaykit cannot act on."""


class PrefixEndError(UsageError):
    """A replay reached the end of the committed prefix of a recording that was not closed.

    A recorder killed (or interrupted) mid-run leaves the rows of its last commit; steps
    and the training updates logged after them are separate streams, so the prefix may end
    between a step and its update. Everything before that point was verified; catch this
    error to treat the end of the prefix as the end of the replay.
    """


class MissingExtraError(ReplaykitError, ImportError):
    """An optional integration needs a library that is not installed (names the pip command)."""


class FileFormatError(ReplaykitError, ValueError):
    """A file is not a recording replaykit can read.

    Attributes:
        path: the file on disk (or ``None`` when unknown).
        obj: the object path inside the HDF5 file the problem was found at.
    """

    def __init__(self, message: str, *, path: Any = None, obj: str | None = None) -> None:
        self.path = None if path is None else str(path)
        self.obj = obj
        where = ""
        if self.path is not None:
            where = f"{self.path}"
            if obj:
                where += f" [{obj}]"
            where += ": "
        super().__init__(where + message)


class NotARecordingError(FileFormatError):
    """The file is not HDF5, or is HDF5 that replaykit did not write."""


class TruncatedFileError(FileFormatError):
    """The file is cut short, empty, or holds nothing committed."""


class UnsupportedVersionError(FileFormatError):
    """The file's format version is newer than (or unknown to) this replaykit."""


class ChecksumError(FileFormatError):
    """Stored bytes do not match the checksum written with them."""


class UnsafeFileError(FileFormatError):
    """The file holds a structure replaykit refuses to read (could reach other files or explode)."""


class ManifestError(FileFormatError):
    """A folder manifest cannot be used: damaged, of an unknown version, or hostile.

    Raised for a checksum that does not match, an unknown format version, a manifest over
    the size limit, a field of the wrong type, or an entry naming a path outside its folder
    (``..``, an absolute path, a symlink that leads out).
    """


class CaptureError(ReplaykitError, TypeError):
    """Some state cannot be captured exactly, so no snapshot is written."""


class RestoreError(ReplaykitError, ValueError):
    """A snapshot cannot be restored into the objects given."""


# A state mismatch message names at most this many differences (then a count of the rest).
_SHOWN_MISMATCHES = 8


#: How to fix a :class:`StateMismatchError` unless the raiser knows better.
STATE_MISMATCH_FIX = "build the object exactly as it was when recorded, or record again"

#: The fix when the recording's adapter is not registered in the restoring process.
REGISTER_ADAPTER_FIX = (
    "the recording's state was captured by adapter {adapter!r}, which is not registered in "
    "this process: register it in this process before restoring, "
    "replaykit.{register}({cls}, adapter) with the adapter object named {adapter!r} "
    "(or import the module that registers it)"
)


class StateMismatchError(RestoreError):
    """Saved state does not fit the live object (shape, dtype, keys, env id, ...).

    Each difference reads ``<where>: recorded X, got Y``: *recorded* is the snapshot,
    *got* the live object.

    Args:
        what: the object that does not fit (``"model QNet"``, ``"tracked 'q' (model QNet)"``).
        mismatches: one line per difference.
        fix: what to do about it (default :data:`STATE_MISMATCH_FIX`).

    Attributes:
        what: the object that does not fit.
        mismatches: one human-readable line per difference.
        fix: what to do about it.
    """

    def __init__(self, what: str, mismatches: list[str], *, fix: str = STATE_MISMATCH_FIX) -> None:
        self.what = what
        self.mismatches = list(mismatches)
        self.fix = fix
        n = len(self.mismatches)
        shown = "; ".join(self.mismatches[:_SHOWN_MISMATCHES])
        more = f"; ... and {n - _SHOWN_MISMATCHES} more" if n > _SHOWN_MISMATCHES else ""
        super().__init__(
            f"{what} does not match the snapshot ({n} "
            f"difference{'s' if n != 1 else ''}): {shown}{more}; {fix}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_state_mismatch, (self.what, self.mismatches, self.fix))


def _state_mismatch(what: str, mismatches: list[str], fix: str) -> StateMismatchError:
    return StateMismatchError(what, mismatches, fix=fix)


class RecordingWriteError(ReplaykitError, OSError):
    """Writing a recording failed (disk full, file-size limit, I/O error).

    The writer stopped at the first failed write and closed the file without writing
    anything more, so the file keeps everything up to its last commit.
    """


class ProvenanceError(ReplaykitError, RuntimeError):
    """The replaying setup differs from the recording's under the 'error' drift policy."""


class DivergenceError(ReplaykitError, AssertionError):
    """A replay did not reproduce the recording.

    Attributes:
        report: the structured first-divergence report.
    """

    def __init__(self, report: DivergenceReport) -> None:
        self.report = report
        super().__init__(report.format())


class NondeterministicEnvError(DivergenceError):
    """Replay-from-reset found the env does not reproduce its own recorded observations."""


class ReplaykitWarning(UserWarning):
    """Something replaykit did may be less exact than asked (never raised as an error).

    For example CUDA RNG state that cannot be restored on a machine without CUDA, or a
    determinism setting applied too late to take effect.
    """
