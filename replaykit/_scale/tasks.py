"""The work of one file, as plain functions of plain data (what the executor ships).

Each function takes a dict and returns a dict, catches the errors a file can cause and
reports them in its result (``status`` and a one-line ``detail``), so one bad file never
stops the others. They run in whatever process the executor picks: this one, a spawned
pool worker, or a Ray worker on another machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from replaykit.errors import DivergenceError, FileFormatError, ReplaykitError, UsageError

__all__ = [
    "STATUS_BAD",
    "STATUS_DIVERGED",
    "STATUS_FAILED",
    "STATUS_MISSING",
    "STATUS_OK",
    "STATUS_UNPAIRED",
    "check_task",
    "describe_recording",
    "diff_task",
    "one_line",
    "publish",
    "record_task",
    "replay_task",
]

STATUS_OK = "ok"
STATUS_DIVERGED = "diverged"
STATUS_BAD = "bad"  # damaged, hostile or not a recording
STATUS_MISSING = "missing"  # listed in a manifest, not on disk
STATUS_UNPAIRED = "unpaired"  # diff: no counterpart in the other folder
STATUS_FAILED = "failed"  # the task itself failed (a policy's exception, a worker that died)


def one_line(exc: BaseException) -> str:
    """Return an exception as one line (its notes appended), at most 2,000 characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    notes = [" ".join(str(n).split()) for n in getattr(exc, "__notes__", ()) or ()]
    line = "; ".join([text, *notes])
    if not isinstance(exc, ReplaykitError):
        line = f"{type(exc).__name__}: {line}"
    return line[:2000]


def _use_sys_path(extra: list[str] | None) -> None:
    for p in reversed(extra or []):
        if p not in sys.path:
            sys.path.insert(0, p)


def describe_recording(path: str | os.PathLike[str], *, verify: bool = True) -> dict[str, Any]:
    """Return what a manifest entry says about a recording: rows, snapshots, provenance, bytes."""
    from replaykit._format import manifest as M
    from replaykit._format.store import Recording

    with Recording(path, verify=verify) as rec:
        rows = {name: int(rec.stream(name).rows) for name in rec.stream_names}
        snapshots = [s.name for s in rec.snapshots]
        digest = M.provenance_digest(rec.provenance)
        meta = rec.meta
    seed = meta.get("seed")
    user = meta.get("user") or {}
    if isinstance(user, dict) and isinstance(user.get("cli_seed"), int):
        seed = user["cli_seed"]
    return {
        M.ENTRY_ROWS: rows,
        M.ENTRY_SNAPSHOTS: snapshots,
        M.ENTRY_PROVENANCE: digest,
        M.ENTRY_BYTES: os.path.getsize(path),
        M.ENTRY_SEED: seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
    }


def publish(src: Path, out: Path, *, overwrite: bool) -> None:
    """Copy the finished recording ``src`` to ``out`` atomically (never a half file).

    The copy goes to a hidden temporary name beside ``out``, is ``fsync``-ed, then takes
    ``out``'s name: with a hard link that fails if ``out`` exists (unless ``overwrite``,
    then with a rename over it).
    """
    from replaykit._session.rollout import move_into_place

    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        with open(src, "rb") as fin, open(tmp, "xb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            os.fsync(fout.fileno())
        move_into_place(tmp, out, overwrite=overwrite, keep_hint="pass --force to replace it")
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def record_task(p: dict[str, Any]) -> dict[str, Any]:
    """Record one seed into ``p["out"]``; returns its manifest entry (status and error too).

    The recording is written in a private temporary folder where this worker runs (``p
    ["tmp_dir"]`` or the system's), then published into the output folder (see
    :func:`publish`), so a worker killed mid-recording leaves nothing in the output folder.
    """
    from replaykit._format import manifest as M
    from replaykit._session.rollout import record_rollout

    _use_sys_path(p.get("sys_path"))
    out = Path(p["out"])
    entry: dict[str, Any] = {
        M.ENTRY_FILE: out.name,
        M.ENTRY_SEED: p["seed"],
        M.ENTRY_ROWS: {},
        M.ENTRY_SNAPSHOTS: [],
        M.ENTRY_PROVENANCE: "",
        M.ENTRY_BYTES: 0,
        M.ENTRY_STATUS: M.STATUS_OK,
        M.ENTRY_ERROR: None,
        "seconds": 0.0,
        "host": os.uname().nodename,
        "pid": os.getpid(),
    }
    start = time.perf_counter()
    local = Path(tempfile.mkdtemp(prefix="replaykit-record-", dir=p.get("tmp_dir")))
    try:
        tmp_out = local / out.name
        record_rollout(
            p["env_id"],
            p["policy"],
            seed=p["seed"],
            steps=p.get("steps"),
            episodes=p.get("episodes"),
            out=tmp_out,
            snapshot_at=p.get("snapshot_at") or (),
            snapshot_every=p.get("snapshot_every"),
            compression=p.get("compression"),
        )
        publish(tmp_out, out, overwrite=bool(p.get("overwrite")))
        described = describe_recording(out)
        described[M.ENTRY_SEED] = p["seed"]
        entry.update(described)
    except Exception as exc:
        entry[M.ENTRY_STATUS] = M.STATUS_FAILED
        entry[M.ENTRY_ERROR] = one_line(exc)
    finally:
        shutil.rmtree(local, ignore_errors=True)
    entry["seconds"] = time.perf_counter() - start
    return entry


@contextlib.contextmanager
def _outcome(out: dict[str, Any]) -> Iterator[None]:
    """Time the task's body into ``out``; an input error marks it bad, anything else failed."""
    start = time.perf_counter()
    try:
        yield
    except (FileFormatError, UsageError) as exc:
        out.update(status=STATUS_BAD, detail=one_line(exc))
    except Exception as exc:
        out.update(status=STATUS_FAILED, detail=one_line(exc))
    out["seconds"] = time.perf_counter() - start


def replay_task(p: dict[str, Any]) -> dict[str, Any]:
    """Replay one recording's snapshot(s) in this process, as ``replaykit replay FILE`` does."""
    from replaykit._analysis import render
    from replaykit._format.store import Recording
    from replaykit._session.rollout import replay_snapshot

    _use_sys_path(p.get("sys_path"))
    path = Path(p["path"])
    out: dict[str, Any] = {"status": STATUS_OK, "detail": "", "snapshots": [], "verified": 0}
    with _outcome(out):
        with Recording(path, verify=p.get("verify", True)) as rec:
            names = [s.name for s in rec.snapshots]
        if not names:
            raise UsageError(f"{path.name} holds no snapshots")
        wanted = p.get("snapshot")
        ids: list[Any]
        if p.get("all"):
            ids = list(names)
        elif wanted is None:
            ids = [None]
        elif wanted in names:
            ids = [wanted]
        else:
            try:
                ids = [int(wanted)]
            except ValueError:
                ids = [wanted]
        for sid in ids:
            try:
                s = replay_snapshot(
                    path,
                    sid,
                    policy_spec=p.get("policy"),
                    steps=p.get("steps"),
                    verify=p.get("verify", True),
                    allow_env_kwargs=p.get("allow_env_kwargs") or (),
                )
            except DivergenceError as exc:
                out["status"] = STATUS_DIVERGED
                where = render.divergence_location(exc.report)
                out["detail"] = f"diverged at {where}"
                out["snapshots"].append(exc.report.snapshot or str(sid))
                break
            out["snapshots"].append(s.snapshot)
            out["verified"] += s.verified_steps
        if out["status"] == STATUS_OK:
            out["detail"] = (
                f"{out['verified']} steps verified after {len(out['snapshots'])} snapshot(s)"
            )
    return out


def check_task(p: dict[str, Any]) -> dict[str, Any]:
    """Validate one file, in the sandboxed child by default (``replaykit check FILE``)."""
    from replaykit._analysis.check import validate_file

    out: dict[str, Any] = {"status": STATUS_OK, "detail": "", "snapshots": []}
    with _outcome(out):
        report = validate_file(
            p["path"],
            sandbox=p.get("sandbox", True),
            timeout=p.get("timeout", 120.0),
            memory_mb=p.get("memory_mb", 4096),
        )
        out["snapshots"] = list(report.snapshots)
        out["rows"] = dict(report.streams)
        out["detail"] = f"{report.bytes_verified} bytes verified"
    return out


def diff_task(p: dict[str, Any]) -> dict[str, Any]:
    """Compare two recordings (``replaykit diff A B``); the first divergence in one line."""
    from replaykit._analysis import render
    from replaykit._analysis.compare import Rule, Rules, diff_recordings

    out: dict[str, Any] = {"status": STATUS_OK, "detail": "", "first": None}
    with _outcome(out):
        rules = Rules(
            default=Rule(
                atol=p.get("atol", 0.0), rtol=p.get("rtol", 0.0), max_ulp=p.get("max_ulp", 0)
            )
        )
        result = diff_recordings(p["a"], p["b"], rules=rules, keys=p.get("keys") or None)
        out["detail"] = render.diff_first_line(result)
        if not result.match:
            out["status"] = STATUS_DIVERGED
            first = result.first
            out["first"] = None if first is None else first.to_json()
    return out
