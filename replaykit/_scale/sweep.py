"""Many recordings at once: seed sweeps, and replay / check / diff over whole folders.

The work of one file is a plain function (:mod:`replaykit._scale.tasks`); the executor
(:mod:`replaykit._scale.executor`) runs it serially, in a local process pool, or as Ray
tasks on a cluster, and the results come back here as they finish. A folder of recordings
is described by its manifest (:mod:`replaykit._format.manifest`): a sweep writes it as
seeds finish, :func:`gather_manifest` writes one for recordings made any other way (a
user's own Ray actors with ``RecordingWrapper``), and the folder verbs read it when it is
there (else they take the folder's ``*.h5`` files).
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from replaykit._format import manifest as M
from replaykit._scale import executor, tasks
from replaykit._session.rollout import check_record_args, make_recorded_env
from replaykit.errors import ManifestError, UsageError

__all__ = [
    "FileResult",
    "FolderResult",
    "check_folder",
    "diff_folders",
    "gather_manifest",
    "parse_seeds",
    "record_sweep",
    "replay_folder",
]

#: Largest number of seeds one sweep takes (a manifest of this many entries stays small).
MAX_SEEDS = 100_000
# A sweep's manifest is rewritten at most this often while tasks finish (and at the end);
# less often when one rewrite takes longer than a fifth of this.
_MANIFEST_EVERY_S = 0.5


@dataclass
class FileResult:
    """What a folder verb found for one file (or, for ``diff``, one pair of files).

    Attributes:
        file: the file's name relative to its folder (``diff``: in the first folder; ``""``
            when only the second folder has it).
        status: ``"ok"``, ``"diverged"``, ``"bad"`` (damaged, hostile or not a
            recording), ``"missing"`` (listed in the manifest, not on disk), ``"unpaired"``
            (``diff``: no counterpart) or ``"failed"`` (a task that raised, or whose worker
            died in every try).
        detail: one line: what was verified, where it first diverged, or what is wrong.
        seed: the seed, when known.
        other: ``diff``: the paired file's name in the second folder.
        seconds: the task's own wall time.
        data: the task's other plain-data results (``first``: a ``diff``'s first divergence
            as JSON; ``snapshots``; ``rows``; a sweep's manifest entry).
    """

    file: str
    status: str
    detail: str = ""
    seed: int | None = None
    other: str | None = None
    seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Return the result as plain data."""
        return asdict(self)


@dataclass
class FolderResult:
    """The summary of a sweep or a folder verb: one :class:`FileResult` per file.

    Attributes:
        verb: ``"record"``, ``"replay"``, ``"check"`` or ``"diff"``.
        folder: the folder (``diff``: the first one).
        files: per file (or pair), sorted by name.
        other_folder: ``diff``: the second folder.
        backend: ``"serial"``, ``"process"`` or ``"ray"``.
        workers: the number of workers asked for.
        seconds: wall time of the whole run.
        manifest: the manifest read or written, if any.

    Example:
        >>> r = FolderResult("check", "runs", [FileResult("a.h5", "ok"), FileResult("b.h5", "bad")])
        >>> r.counts(), r.exit_code
        ({'ok': 1, 'bad': 1}, 2)
    """

    verb: str
    folder: str
    files: list[FileResult] = field(default_factory=list)
    other_folder: str | None = None
    backend: str = "serial"
    workers: int = 1
    seconds: float = 0.0
    manifest: str | None = None

    def counts(self) -> dict[str, int]:
        """How many files have each status (only statuses that occur)."""
        out: dict[str, int] = {}
        for f in self.files:
            out[f.status] = out.get(f.status, 0) + 1
        return out

    @property
    def ok(self) -> bool:
        """Whether every file is ``ok``."""
        return all(f.status == tasks.STATUS_OK for f in self.files)

    @property
    def exit_code(self) -> int:
        """The exit code, as for one file: 2 if any file is bad, else 1 if any diverged, else 0.

        Bad means bad, missing, unpaired or failed.
        """
        statuses = {f.status for f in self.files}
        if statuses - {tasks.STATUS_OK, tasks.STATUS_DIVERGED}:
            return 2
        return 1 if tasks.STATUS_DIVERGED in statuses else 0

    def to_json(self) -> dict[str, Any]:
        """Return the summary as plain data (what ``--json`` prints)."""
        return {
            "verb": self.verb,
            "folder": self.folder,
            "other_folder": self.other_folder,
            "backend": self.backend,
            "workers": self.workers,
            "seconds": self.seconds,
            "manifest": self.manifest,
            "ok": self.ok,
            "exit_code": self.exit_code,
            "totals": self.counts(),
            "files": [f.to_json() for f in self.files],
        }


# --------------------------------------------------------------------------- seeds

_SEED_PART = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_seeds(spec: str | Iterable[int]) -> list[int]:
    """Seeds from ``"0-999"``, ``"0,3,5-9"`` or an iterable of ints; sorted, no repeats.

    Example:
        >>> parse_seeds("0,3,5-7")
        [0, 3, 5, 6, 7]

    Raises:
        UsageError: a malformed part, a range that runs backwards, a seed outside
            ``0..2**63-1``, no seeds, or more than 100,000.
    """
    seeds: set[int] = set()
    if isinstance(spec, str):
        for part in spec.replace(" ", "").split(","):
            if not part:
                continue
            m = _SEED_PART.match(part)
            if m is None:
                raise UsageError(
                    f"--seeds: expected seeds like 0-999 or 0,3,5-9; got {part!r} in {spec!r}"
                )
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) is not None else lo
            if hi < lo:
                raise UsageError(f"--seeds: range {part!r} runs backwards; write {hi}-{lo}")
            if hi - lo + 1 > MAX_SEEDS:
                raise UsageError(f"--seeds: {part!r} is more than {MAX_SEEDS} seeds")
            seeds.update(range(lo, hi + 1))
    else:
        for s in spec:
            if isinstance(s, bool) or not isinstance(s, int):
                raise UsageError(f"seeds must be integers, got {s!r}")
            seeds.add(s)
    if not seeds:
        raise UsageError("no seeds given; pass --seeds like 0-99")
    if len(seeds) > MAX_SEEDS:
        raise UsageError(f"{len(seeds)} seeds is more than one sweep takes ({MAX_SEEDS})")
    for s in seeds:
        check_record_args(seed=s, steps=1, episodes=None)
    return sorted(seeds)


def seed_file_name(seed: int) -> str:
    """Return the file name a sweep writes for ``seed``: ``seed-000042.h5``."""
    return f"seed-{seed:06d}.h5"


# --------------------------------------------------------------------------- record


def record_sweep(
    env_id: str,
    policy: str,
    seeds: str | Iterable[int],
    out: str | os.PathLike[str],
    *,
    steps: int | None = 1000,
    episodes: int | None = None,
    snapshot_at: Sequence[int] = (),
    snapshot_every: int | None = None,
    compression: str | None = "gzip:1",
    overwrite: bool = False,
    workers: int = 1,
    backend: str | None = None,
    ray_address: str | None = None,
    tmp_dir: str | None = None,
    on_done: Callable[[FileResult], None] | None = None,
) -> FolderResult:
    """Record one rollout per seed into folder ``out``, with a manifest updated as seeds finish.

    Each seed is recorded exactly as ``replaykit record ENV_ID --seed S`` records it, by a
    task on a worker (this process, a local pool, or Ray), in a private temporary folder
    where the task runs, then copied into ``out`` under a temporary name and renamed to
    ``seed-NNNNNN.h5``. ``out/replaykit-manifest.json`` lists every finished seed (and
    every failed one, with its error line) and is rewritten atomically as they finish, so a
    driver that dies leaves a manifest of what finished.

    Args:
        env_id: a registered gymnasium env id.
        policy: ``random``, ``mlp`` or ``module:callable`` (importable on every worker).
        seeds: ``"0-999"``, ``"0,3,5-9"`` or an iterable of ints.
        out: the output folder (created if missing; its parent must exist).
        steps: step cap per recording.
        episodes: whole episodes per recording.
        snapshot_at: global steps to snapshot at.
        snapshot_every: also snapshot every N steps.
        compression: ``"gzip:1"`` (default, as ``replaykit record``), ``"gzip:LEVEL"``,
            ``"gzip"``, ``"lzf"`` or ``None``.
        overwrite: replace existing ``seed-*.h5`` files (else any existing one is refused
            before anything is recorded).
        workers: parallel workers (``--workers``).
        backend: ``"serial"``, ``"process"``, ``"ray"`` or ``None`` (automatic: Ray when an
            address is given or ``workers > 1`` with Ray installed; else a process pool for
            ``workers > 1``; else serial).
        ray_address: ``"auto"`` or ``"HOST:PORT"`` of a running Ray cluster (default: a
            local one started for this sweep).
        tmp_dir: where each worker writes before publishing (default: the system's).
        on_done: called with each seed's :class:`FileResult` as it finishes.

    Returns:
        A :class:`FolderResult` with verb ``"record"``: one entry per seed, ``ok`` or
        ``failed`` (with the error).

    Raises:
        UsageError: a bad argument, an unknown env id, or an existing output file
            (nothing is written).
        MissingExtraError: the Ray backend without Ray installed.

    Example:
        >>> # result = replaykit.record_sweep("CartPole-v1", "random", "0-19", "runs",
        >>> #                                 steps=200, snapshot_at=[100], workers=2)
        >>> # result.counts()
        >>> # {'ok': 20}
    """
    seed_list = parse_seeds(seeds)
    for s in seed_list:
        check_record_args(
            seed=s,
            steps=steps,
            episodes=episodes,
            snapshot_at=snapshot_at,
            snapshot_every=snapshot_every,
        )
    chosen = executor.choose_backend(backend, workers, ray_address)
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out {folder} is a file; pass a folder")
    if not folder.parent.is_dir():
        raise UsageError(f"--out {folder}: no such directory {folder.parent}; create it first")
    if compression is not None and not re.fullmatch(r"lzf|gzip(:[0-9])?", str(compression)):
        raise UsageError(
            f"compression must be gzip:LEVEL (LEVEL 0-9), gzip, lzf or none; got {compression!r}"
        )
    if ":" in policy and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    if ":" not in policy:
        make_recorded_env(env_id).close()  # an unknown id or a missing extra: said at once
    names = [seed_file_name(s) for s in seed_list]
    if not overwrite and folder.is_dir():
        taken = [n for n in names if os.path.lexists(folder / n)]
        if taken:
            raise UsageError(
                f"{folder / taken[0]} already exists ({len(taken)} of the {len(names)} files "
                "do); pass --force to replace them, or pick another --out"
            )
    folder.mkdir(exist_ok=True)
    info = {
        "env_id": env_id,
        "policy": policy,
        "steps": steps,
        "episodes": episodes,
        "snapshot_at": list(snapshot_at),
        "snapshot_every": snapshot_every,
        "seeds": len(seed_list),
    }
    manifest = M.Manifest(folder=folder, kind=M.KIND_SWEEP, info=info)
    if folder.joinpath(M.MANIFEST_NAME).exists():
        old = M.read_manifest(folder)
        keep = set(names)
        manifest.entries = [e for e in old.entries if e.file not in keep]
    payloads = [
        {
            "env_id": env_id,
            "policy": policy,
            "seed": s,
            "steps": steps,
            "episodes": episodes,
            "snapshot_at": list(snapshot_at),
            "snapshot_every": snapshot_every,
            "compression": compression,
            "out": str((folder / n).resolve()),
            "overwrite": overwrite,
            "tmp_dir": tmp_dir,
            "sys_path": [os.getcwd()],
        }
        for s, n in zip(seed_list, names, strict=True)
    ]
    start = time.perf_counter()
    results: dict[int, FileResult] = {}
    last_write, every = 0.0, _MANIFEST_EVERY_S
    try:
        for i, outcome in executor.run_tasks(
            tasks.record_task, payloads, backend=chosen, workers=workers, ray_address=ray_address
        ):
            entry, fr = _sweep_result(outcome, names[i], seed_list[i], folder)
            manifest.entries.append(entry)
            results[i] = fr
            if on_done is not None:
                on_done(fr)
            now = time.monotonic()
            if now - last_write >= every:
                M.write_manifest(manifest)
                last_write = time.monotonic()
                # A large manifest is rewritten less often: at most a fifth of the time is spent
                # rewriting it.
                every = max(_MANIFEST_EVERY_S, 4 * (last_write - now))
    except BaseException as exc:
        # Ctrl-C or a driver error: the manifest still lists every seed that finished.
        M.write_manifest(manifest)
        done = sum(e.status == M.STATUS_OK for e in manifest.entries)
        note = f"{done} finished recording(s) are listed in {manifest.path}"
        add_note = getattr(exc, "add_note", None)
        if add_note is not None:
            add_note(note)
        else:  # Python 3.10
            exc.__notes__ = [*getattr(exc, "__notes__", []), note]  # type: ignore[attr-defined]
        raise
    path = M.write_manifest(manifest)
    return FolderResult(
        verb="record",
        folder=str(folder),
        files=[results[i] for i in sorted(results)],
        backend=chosen,
        workers=workers,
        seconds=time.perf_counter() - start,
        manifest=str(path),
    )


def _sweep_result(
    outcome: dict[str, Any], name: str, seed: int, folder: Path
) -> tuple[M.ManifestEntry, FileResult]:
    """One finished seed: its manifest entry and its row of the summary."""
    entry = _entry_of(outcome, name, seed)
    if entry.status == M.STATUS_OK and not (folder / entry.file).exists():
        # Written on another machine into a folder this one does not share.
        host = (outcome.get("value") or {}).get("host", "another machine")
        entry.status = M.STATUS_FAILED
        entry.error = (
            f"written on {host} but not visible here: --out must be a folder every worker "
            "machine shares (the same path on a shared file system)"
        )
    fr = FileResult(
        file=entry.file,
        status=tasks.STATUS_OK if entry.status == M.STATUS_OK else tasks.STATUS_FAILED,
        detail=entry.error or _recorded_line(entry),
        seed=entry.seed,
        seconds=float((outcome.get("value") or {}).get("seconds") or 0.0),
        data=entry.to_json(),
    )
    return entry, fr


def _entry_of(outcome: dict[str, Any], name: str, seed: int) -> M.ManifestEntry:
    if not outcome.get("ok"):
        return M.ManifestEntry(
            file=name, seed=seed, status=M.STATUS_FAILED, error=str(outcome.get("error"))
        )
    v = outcome["value"]
    return M.ManifestEntry(
        file=name,
        seed=seed,
        rows=dict(v.get(M.ENTRY_ROWS) or {}),
        snapshots=list(v.get(M.ENTRY_SNAPSHOTS) or []),
        provenance=str(v.get(M.ENTRY_PROVENANCE) or ""),
        bytes=int(v.get(M.ENTRY_BYTES) or 0),
        status=str(v.get(M.ENTRY_STATUS) or M.STATUS_FAILED),
        error=v.get(M.ENTRY_ERROR),
    )


def _recorded_line(entry: M.ManifestEntry) -> str:
    steps = entry.rows.get("steps", 0)
    return f"{steps} steps, {len(entry.snapshots)} snapshot(s), {entry.bytes} bytes"


# --------------------------------------------------------------------------- gather


def gather_manifest(
    folder: str | os.PathLike[str], *, pattern: str = "*.h5", overwrite: bool = False
) -> M.Manifest:
    """Write a manifest for the recordings already in ``folder`` (``replaykit manifest DIR``).

    For recordings made any other way, e.g. by ``RecordingWrapper`` inside a user's own Ray
    actors, each writing its own file into a shared folder. Every file matching ``pattern``
    is opened (checksums verified); a file that is not a sound recording is listed with
    status ``failed`` and its error line. Symlinks that lead out of the folder are refused.

    Args:
        folder: the folder holding the recordings.
        pattern: which files to list (a glob, default ``*.h5``).
        overwrite: replace an existing manifest (else it is refused).

    Returns:
        The manifest written.

    Raises:
        UsageError: no such folder, or a manifest exists and ``overwrite`` is false.

    Example:
        >>> # m = replaykit.gather_manifest("runs/")
        >>> # [(e.file, e.seed, e.status) for e in m.entries]
    """
    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"{root}: no such folder")
    if (root / M.MANIFEST_NAME).exists() and not overwrite:
        raise UsageError(f"{root / M.MANIFEST_NAME} already exists; pass --force to write it again")
    manifest = M.Manifest(folder=root, kind=M.KIND_GATHERED, info={"pattern": pattern})
    for p in sorted(root.glob(pattern)):
        if not p.is_file() and not p.is_symlink():
            continue
        name = p.relative_to(root).as_posix()
        entry = M.ManifestEntry(file=name)
        try:
            M.resolve_in_folder(root, name)
            d = tasks.describe_recording(p)
            entry.seed = d[M.ENTRY_SEED]
            entry.rows = d[M.ENTRY_ROWS]
            entry.snapshots = d[M.ENTRY_SNAPSHOTS]
            entry.provenance = d[M.ENTRY_PROVENANCE]
            entry.bytes = d[M.ENTRY_BYTES]
        except ManifestError as exc:
            # A symlink out of the folder: never listed as one of its files.
            entry.file = name
            entry.status, entry.error = M.STATUS_FAILED, tasks.one_line(exc)
        except Exception as exc:
            entry.status, entry.error = M.STATUS_FAILED, tasks.one_line(exc)
        manifest.entries.append(entry)
    M.write_manifest(manifest)
    return manifest


# --------------------------------------------------------------------------- folder verbs


@dataclass
class _Listed:
    """One file a folder verb will look at (or a reason it cannot)."""

    name: str
    path: Path | None
    seed: int | None = None
    problem: str | None = None  # a status (missing / bad) decided before any task runs
    detail: str = ""


def list_folder(target: str | os.PathLike[str]) -> tuple[Path, list[_Listed], str | None]:
    """List the files of a folder (or of a manifest): ``(folder, files, manifest path)``.

    With a manifest (``target`` is one, or the folder holds one) its entries are the files;
    otherwise the folder's ``*.h5`` files. A file that is missing, or a symlink that leads
    out of the folder, is listed with its problem.

    Raises:
        UsageError: ``target`` does not exist, or is a file that is not a manifest.
        ManifestError: the manifest is damaged, of an unknown version, or names a path
            outside its folder.
    """
    p = Path(target)
    if not p.exists():
        raise UsageError(f"{p}: no such file or folder; check the path")
    if p.is_file():
        if p.name != M.MANIFEST_NAME and p.suffix != ".json":
            raise UsageError(f"{p}: expected a folder or a {M.MANIFEST_NAME}")
        manifest_path: Path | None = p
        folder = p.parent
    else:
        folder = p
        manifest_path = p / M.MANIFEST_NAME if (p / M.MANIFEST_NAME).exists() else None
    listed: list[_Listed] = []
    if manifest_path is not None:
        manifest = M.read_manifest(manifest_path)
        for e in manifest.entries:
            path = M.resolve_in_folder(folder, e.file)
            item = _Listed(e.file, path, seed=e.seed)
            if e.status != M.STATUS_OK:
                item.problem, item.detail = tasks.STATUS_FAILED, f"not recorded: {e.error}"
            elif not path.exists():
                item.problem, item.detail = (
                    tasks.STATUS_MISSING,
                    "listed in the manifest, not on disk",
                )
            listed.append(item)
        return folder, listed, str(manifest_path)
    for f in sorted(folder.glob("*.h5")):
        name = f.name
        try:
            path = M.resolve_in_folder(folder, name)
        except ManifestError as exc:
            listed.append(_Listed(name, None, problem=tasks.STATUS_BAD, detail=tasks.one_line(exc)))
            continue
        listed.append(_Listed(name, path))
    return folder, listed, None


def _fan_out(
    verb: str,
    fn: Callable[[dict[str, Any]], dict[str, Any]],
    folder: Path,
    items: list[tuple[_Listed, dict[str, Any] | None, str | None]],
    *,
    workers: int,
    backend: str | None,
    ray_address: str | None,
    manifest: str | None,
    other_folder: str | None = None,
) -> FolderResult:
    """Run ``fn`` over every item with a payload; items without one keep their problem."""
    chosen = executor.choose_backend(backend, workers, ray_address)
    start = time.perf_counter()
    results: dict[int, FileResult] = {}
    runnable = [(k, payload) for k, (_, payload, _) in enumerate(items) if payload is not None]
    for k, (listed, payload, other) in enumerate(items):
        if payload is None:
            results[k] = FileResult(
                listed.name, listed.problem or tasks.STATUS_BAD, listed.detail, listed.seed, other
            )
    outcomes = executor.run_tasks(
        fn, [p for _, p in runnable], backend=chosen, workers=workers, ray_address=ray_address
    )
    for j, outcome in outcomes:
        k = runnable[j][0]
        listed, _, other = items[k]
        if outcome.get("ok"):
            v = dict(outcome["value"])
            results[k] = FileResult(
                file=listed.name,
                status=str(v.pop("status")),
                detail=str(v.pop("detail")),
                seed=listed.seed,
                other=other,
                seconds=float(v.pop("seconds", 0.0)),
                data=v,
            )
        else:
            results[k] = FileResult(
                listed.name, tasks.STATUS_FAILED, str(outcome.get("error")), listed.seed, other
            )
    return FolderResult(
        verb=verb,
        folder=str(folder),
        files=[results[k] for k in sorted(results)],
        other_folder=other_folder,
        backend=chosen,
        workers=workers,
        seconds=time.perf_counter() - start,
        manifest=manifest,
    )


def replay_folder(
    target: str | os.PathLike[str],
    *,
    snapshot: str | None = None,
    all_snapshots: bool = False,
    steps: int | None = None,
    policy: str | None = None,
    verify: bool = True,
    allow_env_kwargs: Sequence[str] = (),
    workers: int = 1,
    backend: str | None = None,
    ray_address: str | None = None,
) -> FolderResult:
    """Replay every recording of a folder (``replaykit replay DIR``), one task per file.

    Each file is replayed as ``replaykit replay FILE`` replays it (the first snapshot,
    ``snapshot``, or ``all_snapshots``), verifying ``steps`` steps (default: to the end).

    Args:
        target: a folder, or its manifest.
        snapshot: snapshot name or index in every file (default: the first).
        all_snapshots: replay every snapshot of every file.
        steps: steps to verify after each snapshot.
        policy: the policy to replay with (``module:callable`` must be passed again).
        verify: check checksums.
        allow_env_kwargs: recorded env kwargs to allow although they name files.
        workers: parallel workers.
        backend: ``"serial"``, ``"process"``, ``"ray"`` or ``None`` (automatic).
        ray_address: ``"auto"`` or ``"HOST:PORT"`` of a running Ray cluster.

    Returns:
        A :class:`FolderResult`: per file ``ok``, ``diverged`` (with where), ``bad``,
        ``missing`` or ``failed``; ``exit_code`` as ``replaykit replay`` exits.

    Example:
        >>> # result = replaykit.replay_folder("runs/", workers=2)
        >>> # result.exit_code, result.counts()
        >>> # (0, {'ok': 20})
    """
    if all_snapshots and snapshot is not None:
        raise UsageError("pass either --snapshot or --all, not both")
    folder, listed, manifest = list_folder(target)
    executor.choose_backend(backend, workers, ray_address)
    sys_path = [os.getcwd()] if policy and ":" in policy else []
    items: list[tuple[_Listed, dict[str, Any] | None, str | None]] = []
    for item in listed:
        payload = None
        if item.problem is None and item.path is not None:
            payload = {
                "path": str(item.path),
                "snapshot": snapshot,
                "all": all_snapshots,
                "steps": steps,
                "policy": policy,
                "verify": verify,
                "allow_env_kwargs": list(allow_env_kwargs),
                "sys_path": sys_path,
            }
        items.append((item, payload, None))
    return _fan_out(
        "replay",
        tasks.replay_task,
        folder,
        items,
        workers=workers,
        backend=backend,
        ray_address=ray_address,
        manifest=manifest,
    )


def check_folder(
    target: str | os.PathLike[str],
    *,
    sandbox: bool = True,
    timeout: float = 120.0,
    memory_mb: int = 4096,
    workers: int = 1,
    backend: str | None = None,
    ray_address: str | None = None,
) -> FolderResult:
    """Validate every recording of a folder (``replaykit check DIR``), one task per file.

    Each file is checked as ``replaykit check FILE`` checks it: in a sandboxed child
    process (time and memory limits) unless ``sandbox=False``, so a hostile file is
    reported ``bad`` and the others are still verified.

    Args:
        target: a folder, or its manifest.
        sandbox: validate each file in a sandboxed child process.
        timeout: seconds each sandboxed check may take.
        memory_mb: each sandbox's address-space limit.
        workers: parallel workers.
        backend: ``"serial"``, ``"process"``, ``"ray"`` or ``None`` (automatic).
        ray_address: ``"auto"`` or ``"HOST:PORT"`` of a running Ray cluster.

    Returns:
        A :class:`FolderResult`: per file ``ok``, ``bad``, ``missing`` or ``failed``.

    Example:
        >>> # replaykit.check_folder("golden/").exit_code
        >>> # 0
    """
    folder, listed, manifest = list_folder(target)
    executor.choose_backend(backend, workers, ray_address)
    items: list[tuple[_Listed, dict[str, Any] | None, str | None]] = []
    for item in listed:
        payload = None
        if item.problem is None and item.path is not None:
            payload = {
                "path": str(item.path),
                "sandbox": sandbox,
                "timeout": timeout,
                "memory_mb": memory_mb,
            }
        items.append((item, payload, None))
    return _fan_out(
        "check",
        tasks.check_task,
        folder,
        items,
        workers=workers,
        backend=backend,
        ray_address=ray_address,
        manifest=manifest,
    )


def _pairs(
    a: tuple[Path, list[_Listed], str | None], b: tuple[Path, list[_Listed], str | None]
) -> list[tuple[_Listed | None, _Listed | None]]:
    """Pair by seed when both folders have manifests (and seeds), else by file name."""
    (_, la, ma), (_, lb, mb) = a, b
    by_seed = (
        ma is not None
        and mb is not None
        and all(x.seed is not None for x in la)
        and all(x.seed is not None for x in lb)
    )

    def key(x: _Listed) -> Any:
        return x.seed if by_seed else x.name

    ka = {key(x): x for x in la}
    kb = {key(x): x for x in lb}
    order = sorted(set(ka) | set(kb), key=lambda k: (str(type(k)), k))
    return [(ka.get(k), kb.get(k)) for k in order]


def diff_folders(
    a: str | os.PathLike[str],
    b: str | os.PathLike[str],
    *,
    atol: float = 0.0,
    rtol: float = 0.0,
    max_ulp: int = 0,
    keys: Sequence[str] | None = None,
    workers: int = 1,
    backend: str | None = None,
    ray_address: str | None = None,
) -> FolderResult:
    """Compare two folders of recordings pair by pair (``replaykit diff DIR_A DIR_B``).

    Files are paired by seed when both folders have manifests, else by file name; a file
    without a counterpart is reported ``unpaired``. Each pair is compared as
    ``replaykit diff A B`` compares two files (bit-exact unless tolerances are given).

    Args:
        a: the reference folder (or its manifest).
        b: the folder to compare with it (or its manifest).
        atol: absolute tolerance.
        rtol: relative tolerance.
        max_ulp: largest ULP distance allowed.
        keys: compare only keys matching these fnmatch patterns.
        workers: parallel workers.
        backend: ``"serial"``, ``"process"``, ``"ray"`` or ``None`` (automatic).
        ray_address: ``"auto"`` or ``"HOST:PORT"`` of a running Ray cluster.

    Returns:
        A :class:`FolderResult` with verb ``"diff"``: per pair ``ok``, ``diverged`` (with
        the first divergence), ``bad``, ``missing`` or ``unpaired``.

    Example:
        >>> # r = replaykit.diff_folders("golden/", "fresh/", workers=2)
        >>> # [(f.file, f.detail) for f in r.files if f.status == "diverged"]
    """
    la = list_folder(a)
    lb = list_folder(b)
    executor.choose_backend(backend, workers, ray_address)
    items: list[tuple[_Listed, dict[str, Any] | None, str | None]] = []
    for xa, xb in _pairs(la, lb):
        if xa is None or xb is None:
            present = xa or xb
            assert present is not None
            side = "the second" if xa is not None else "the first"
            shown = _Listed(
                present.name if xa is not None else "",
                None,
                seed=present.seed,
                problem=tasks.STATUS_UNPAIRED,
                detail=f"no counterpart in {side} folder",
            )
            items.append((shown, None, None if xb is None else xb.name))
            continue
        if xa.problem is not None or xb.problem is not None:
            bad = xa if xa.problem is not None else xb
            shown = _Listed(xa.name, None, seed=xa.seed, problem=bad.problem, detail=bad.detail)
            items.append((shown, None, xb.name))
            continue
        payload = {
            "a": str(xa.path),
            "b": str(xb.path),
            "atol": atol,
            "rtol": rtol,
            "max_ulp": max_ulp,
            "keys": list(keys) if keys else None,
        }
        items.append((xa, payload, xb.name))
    return _fan_out(
        "diff",
        tasks.diff_task,
        la[0],
        items,
        workers=workers,
        backend=backend,
        ray_address=ray_address,
        manifest=la[2],
        other_folder=str(lb[0]),
    )
