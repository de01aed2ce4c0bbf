"""Validate a recording completely, optionally in a sandboxed child process.

:func:`validate_file` opens a recording the way every loader does (structure checks
first: no links to other files, no external storage, no virtual datasets, no
unknown filters, no sizes the file cannot hold), then reads every committed row of
every stream and every snapshot with their checksums verified. Nothing named in the
file is ever imported, instantiated or executed.

libhdf5 itself is not hardened against crafted input: it can hang or crash on a
malicious file. With ``sandbox=True`` the validation runs in a child process under a
time limit and an address-space limit, so a hang or crash becomes an
:class:`~replaykit.errors.UnsafeFileError` instead of taking the caller down. Check
files you did not write with the sandbox before opening them in-process.

Example:
    >>> # report = validate_file("bug-report.h5", sandbox=True)
    >>> # print(report.format())

Command line (what the sandbox runs): ``python -m replaykit._analysis.check [--json] FILE``,
started in isolated mode (:func:`replaykit._analysis.child.python_child_argv`: nothing in
the current directory is importable), killed with its parent (Linux ``PR_SET_PDEATHSIG``)
and under its own CPU-time limit, so a hang outlives neither the parent nor the timeout.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from replaykit import errors as E
from replaykit._analysis.child import python_child_argv

__all__ = ["CheckReport", "printable", "validate_file"]

DEFAULT_TIMEOUT = 120.0
DEFAULT_MEMORY_MB = 4096
# How long the sandbox child may take to start (importing numpy, h5py, torch, ...).
STARTUP_TIMEOUT = 300.0
_READY = "replaykit-check-ready"
# CPU seconds the sandbox child may spend beyond the validation timeout (interpreter start,
# imports): its RLIMIT_CPU, which holds even when the parent is gone.
CPU_STARTUP_S = 60
# Snapshot names a report's summary line lists.
_SHOWN_SNAPSHOTS = 8

# Error classes a sandboxed child may report, by name. A fixed table: a name read
# from the child's output is looked up here, never imported.
_ERRORS: dict[str, type[E.ReplaykitError]] = {
    cls.__name__: cls
    for cls in (
        E.FileFormatError,
        E.NotARecordingError,
        E.TruncatedFileError,
        E.UnsupportedVersionError,
        E.ChecksumError,
        E.UnsafeFileError,
        E.UsageError,
    )
}


@dataclass
class CheckReport:
    """What :func:`validate_file` found in a valid recording.

    Attributes:
        path: the file checked.
        format_version: its replaykit format version.
        created: when it was recorded (ISO 8601).
        env_id: the recorded env id, if any.
        streams: committed rows per stream.
        columns: number of columns per stream.
        snapshots: names of the committed snapshots, in order.
        stray_snapshots: temporary snapshot groups a killed writer left (ignored by readers).
        bytes_verified: bytes of array data read and checked against checksums.
        sandboxed: whether the check ran in a child process.
        seconds: wall time of the check.
    """

    path: str
    format_version: int
    created: str
    env_id: str | None
    streams: dict[str, int] = field(default_factory=dict)
    columns: dict[str, int] = field(default_factory=dict)
    snapshots: list[str] = field(default_factory=list)
    stray_snapshots: list[str] = field(default_factory=list)
    bytes_verified: int = 0
    sandboxed: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Always ``True``: an invalid file raises instead of returning a report."""
        return True

    def to_json(self) -> dict[str, Any]:
        """Return the report as JSON-able data."""
        return {"ok": True, **asdict(self)}

    def format(self) -> str:
        """Return a short human-readable summary (a few lines).

        Every string that came from the file is escaped (:func:`printable`): a name holding
        terminal escape sequences must not clear or recolour the reader's screen.
        """
        streams = ", ".join(f"{printable(k)}: {v} rows" for k, v in self.streams.items()) or "none"
        snaps = [printable(n) for n in self.snapshots[:_SHOWN_SNAPSHOTS]]
        lines = [
            f"{printable(self.path)}: OK (format v{self.format_version}, env "
            f"{printable(str(self.env_id))}, recorded {printable(self.created)})",
            f"  streams: {streams}",
            f"  snapshots: {len(self.snapshots)}"
            + (
                f" ({', '.join(snaps)}{', ...' if len(self.snapshots) > _SHOWN_SNAPSHOTS else ''})"
                if self.snapshots
                else ""
            ),
            f"  verified {self.bytes_verified} bytes of data against checksums"
            + (" in a sandboxed process" if self.sandboxed else ""),
        ]
        if self.stray_snapshots:
            lines.append(
                f"  note: {len(self.stray_snapshots)} unfinished snapshot(s) from a killed run "
                "are ignored"
            )
        return "\n".join(lines)


def printable(text: str) -> str:
    r"""Return ``text`` with every non-printable character escaped (``\x1b``, ``\n``).

    Strings read from a file (env ids, snapshot and stream names, times) are printed to a
    terminal; escape sequences in them would be interpreted by it.

    Example:
        >>> printable("run\x1b[2J")
        'run\\x1b[2J'
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def validate_file(
    path: str | os.PathLike[str],
    *,
    sandbox: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    memory_mb: int = DEFAULT_MEMORY_MB,
) -> CheckReport:
    """Check a recording completely: structure, every committed row, every snapshot.

    Args:
        path: the ``.h5`` file.
        sandbox: run the check in a child process (``python -m replaykit._analysis.check``) with
            ``timeout`` and an address-space limit of ``memory_mb``; use it for files
            you did not write. A hang or crash of libhdf5 is then reported as
            :class:`~replaykit.errors.UnsafeFileError` instead of hanging or killing
            the caller.
        timeout: seconds the sandboxed check may run (after the child has started).
        memory_mb: address-space limit of the sandboxed child, in MiB (POSIX only).

    Returns:
        A :class:`CheckReport` describing the valid file.

    Raises:
        FileFormatError: (or a subclass: ``NotARecordingError``, ``TruncatedFileError``,
            ``UnsupportedVersionError``, ``ChecksumError``, ``UnsafeFileError``) naming
            the file, the object inside it, and the problem.
        UsageError: bad arguments.
    """
    if timeout <= 0 or memory_mb <= 0:
        raise E.UsageError(
            f"timeout and memory_mb must be positive, got {timeout!r} and {memory_mb!r}"
        )
    if sandbox:
        return _sandboxed(Path(path), timeout, memory_mb)
    return _validate(Path(path))


# Whole-file validations retried when a live recording's commit raced the read.
LIVE_RETRIES = 8


def _validate(path: Path) -> CheckReport:
    """Validate ``path``, reading a live recording again when a read raced a commit.

    A file another process is writing is validated as of its last commit; if every try
    races a commit, the error says the file is being written.
    """
    from replaykit._format import safety

    for attempt in range(LIVE_RETRIES + 1):
        before = _stat_key(path)
        try:
            return _validate_once(path)
        except E.FileFormatError as exc:
            if isinstance(exc, (E.UnsupportedVersionError, E.NotARecordingError)):
                raise
            # Live now, or written while it was read (a writer that just closed it).
            if not safety.is_being_written(path) and _stat_key(path) == before:
                raise
            if attempt == LIVE_RETRIES:
                if safety.BEING_WRITTEN in str(exc):
                    raise
                raise E.TruncatedFileError(safety.BEING_WRITTEN, path=path) from None
            time.sleep(0.02 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


def _stat_key(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _validate_once(path: Path) -> CheckReport:
    from replaykit._format import known
    from replaykit._format import layout as F
    from replaykit._format.store import Recording

    t0 = time.perf_counter()
    nbytes = 0
    # A check verifies every checksum, not what an earlier open of the file verified.
    known.forget(os.fspath(path))
    with Recording(path, verify=True) as rec:
        env_id = rec.meta.get(F.META_ENV_ID)
        report = CheckReport(
            path=str(path),
            format_version=rec.format_version,
            created=rec.created,
            env_id=env_id if isinstance(env_id, str) else None,
        )
        for name in rec.stream_names:
            s = rec.stream(name)
            report.streams[name] = s.rows
            report.columns[name] = len(s.columns)
            for col in s.columns:
                for _, block in s.blocks(col, 65536):
                    nbytes += block.nbytes
                present = s.present(col)
                if present is not None:
                    nbytes += present.nbytes
        for info in rec.snapshots:
            # Every check of a restore, but tensors stay arrays: no torch import.
            _, tree = rec.load_snapshot(info.name, tensors=False)
            nbytes += _tree_bytes(tree)
            report.snapshots.append(info.name)
        report.stray_snapshots = rec.stray_snapshots
    report.bytes_verified = nbytes
    report.seconds = time.perf_counter() - t0
    return report


def _tree_bytes(tree: Any) -> int:
    if isinstance(tree, dict):
        return sum(_tree_bytes(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(_tree_bytes(v) for v in tree)
    n = getattr(tree, "nbytes", None)
    if isinstance(n, int):
        return n
    numel = getattr(tree, "numel", None)
    if callable(numel):
        return int(numel()) * int(getattr(tree, "element_size", lambda: 1)())
    return 0


def _sandbox_command(path: Path, memory_mb: int) -> list[str]:
    """Return the child's command line (a function of its own so tests can swap the child)."""
    # Isolated mode, this replaykit loaded by location: nothing in the cwd is importable.
    return python_child_argv(
        "replaykit._analysis.check",
        "--json",
        "--sandboxed",
        "--memory-mb",
        str(memory_mb),
        os.fspath(path),
    )


def _sandboxed(path: Path, timeout: float, memory_mb: int) -> CheckReport:
    proc = subprocess.Popen(
        _sandbox_command(path, memory_mb),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        # Only async-signal-safe C calls resolved in the parent (see _child_limits).
        preexec_fn=_child_limits(timeout),  # noqa: PLW1509
    )
    assert proc.stdout is not None and proc.stderr is not None
    out = b""
    started = False
    deadline = time.monotonic() + STARTUP_TIMEOUT
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                _kill(proc)
                what = "validation" if started else "the sandbox process's start"
                limit = timeout if started else STARTUP_TIMEOUT
                raise E.UnsafeFileError(
                    f"{what} did not finish within {limit:g} s (libhdf5 may hang on crafted "
                    "input); do not open this file outside a sandbox, or pass a longer "
                    "timeout if it is just very large",
                    path=path,
                )
            ready, _, _ = select.select([proc.stdout], [], [], left)
            if not ready:
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            out += chunk
            if not started and (_READY + "\n").encode() in out:
                started = True
                out = out.split((_READY + "\n").encode(), 1)[1]
                deadline = time.monotonic() + timeout
        rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        _kill(proc)
        raise E.UnsafeFileError(
            f"validation did not finish within {timeout:g} s (libhdf5 may hang on crafted "
            "input); do not open this file outside a sandbox",
            path=path,
        ) from None
    finally:
        err = proc.stderr.read() if proc.poll() is not None else b""
        proc.stdout.close()
        proc.stderr.close()
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        raise E.UnsafeFileError(
            f"validation crashed with {name} (signal {-rc}): libhdf5 cannot read this file "
            "safely; do not open it outside a sandbox",
            path=path,
        )
    try:
        result = json.loads(out.decode("utf-8").strip().splitlines()[-1])
    except (ValueError, IndexError, UnicodeDecodeError):
        tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        raise E.UnsafeFileError(
            f"sandboxed validation failed without a result (exit code {rc}: {tail[0][:200]}); "
            "do not open this file outside a sandbox",
            path=path,
        ) from None
    if not isinstance(result, dict):
        raise E.UnsafeFileError("sandboxed validation returned garbage", path=path)
    if result.get("ok") is True:
        fields = {k: v for k, v in result.items() if k in CheckReport.__dataclass_fields__}
        report = CheckReport(**fields)
        report.sandboxed = True
        return report
    cls = _ERRORS.get(str(result.get("error")), E.FileFormatError)
    message = str(result.get("message", "invalid file"))
    if issubclass(cls, E.FileFormatError):
        # The child's message already names the file and object; keep them as attributes.
        exc = cls(message)
        exc.path = os.fspath(path)
        exc.obj = result.get("obj") if isinstance(result.get("obj"), str) else None
        raise exc
    raise cls(message)


def _child_limits(timeout: float) -> Any:
    """Return a ``preexec_fn`` that ties the sandbox child to its parent and caps its CPU.

    Runs in the child between fork and exec (so it holds for whatever the child runs):
    Linux ``PR_SET_PDEATHSIG`` kills the child with SIGKILL when the parent dies (Ctrl-C,
    SIGTERM, SIGKILL of ``replaykit check``), and ``RLIMIT_CPU`` ends a spinning child
    after ``timeout`` plus :data:`CPU_STARTUP_S` seconds of CPU even with no parent left to
    enforce the timeout. Everything it calls is resolved here, in the parent: between fork
    and exec only async-signal-safe C calls are made.
    """
    import resource

    parent = os.getpid()
    soft = int(timeout) + 1 + CPU_STARTUP_S
    prctl = None
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):  # pragma: no cover - no libc prctl
            prctl = None
    setrlimit, getrlimit, cpu = resource.setrlimit, resource.getrlimit, resource.RLIMIT_CPU

    def preexec() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent:  # the parent died before the line above
                os._exit(1)
        hard = getrlimit(cpu)[1]
        want = soft if hard == resource.RLIM_INFINITY else min(soft, hard)
        setrlimit(cpu, (want, want + 5 if hard == resource.RLIM_INFINITY else hard))

    return preexec


_PR_SET_PDEATHSIG = 1


def _kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


def _limit_memory(memory_mb: int) -> None:
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return
    limit = int(memory_mb) << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def main(argv: list[str] | None = None) -> int:
    """``python -m replaykit._analysis.check [--json] [--memory-mb N] FILE``: 0 valid, 2 not."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m replaykit._analysis.check", description=__doc__)
    ap.add_argument("file")
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    ap.add_argument("--memory-mb", type=int, default=None, help="address-space limit (MiB)")
    ap.add_argument("--sandboxed", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    # Import everything the check needs before limiting memory and announcing readiness,
    # so the parent's timeout measures the check, not interpreter start-up.
    import replaykit._format.store  # noqa: F401

    if args.memory_mb:
        _limit_memory(args.memory_mb)
    if args.sandboxed:
        print(_READY, flush=True)
    try:
        report = _validate(Path(args.file))
    except E.ReplaykitError as exc:
        obj = getattr(exc, "obj", None)
        if args.json:
            print(
                json.dumps(
                    {"ok": False, "error": type(exc).__name__, "message": str(exc), "obj": obj}
                )
            )
        else:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    except MemoryError:
        msg = f"{args.file}: validation needs more than {args.memory_mb} MiB (a crafted size?)"
        if args.json:
            print(json.dumps({"ok": False, "error": "UnsafeFileError", "message": msg}))
        else:
            print(f"error: {msg}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        print(report.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
