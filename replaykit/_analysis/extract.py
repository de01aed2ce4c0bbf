"""``replaykit extract``: cut a small, self-contained recording (and a pytest test) from a run.

The extract holds one snapshot of the source, the steps, resets and updates that follow it
(through the failure record by default, or for a number of steps), the provenance and the
failure record: a normal recording (docs/FORMAT.md §3.1) that restores and verifies exactly
like the source, small enough to commit as test data.

Example:
    >>> # result = extract("run.h5", "tests/data/bug.h5", pytest_path="tests/test_bug.py")
    >>> # result.snapshot, result.steps, result.bytes
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from replaykit._format import layout as F
from replaykit.errors import UsageError

__all__ = ["ExtractResult", "extract", "pytest_source"]

# Policy specs the generated test may name: the builtins, or ``module:callable`` of dotted
# identifiers (anything else in a file's metadata gets the Python-loop skeleton instead).
_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_BUILTIN_POLICIES = ("random", "mlp")


@dataclass(frozen=True)
class ExtractResult:
    """What :func:`replaykit.extract` wrote.

    Attributes:
        path: the extracted recording.
        snapshot: the snapshot it starts from.
        first_step: the global step index of its first step row.
        steps: step rows it holds (``0`` for training recordings).
        updates: update rows it holds.
        failure: the failure record it carries, or ``None``.
        bytes: its size on disk.
        pytest_path: the test written with it, or ``None``.

    Example:
        >>> # r = replaykit.extract("run.h5", "tests/data/bug.h5")
        >>> # print(r.snapshot, r.first_step, r.steps, r.bytes)
    """

    path: Path
    snapshot: str
    first_step: int
    steps: int
    updates: int
    failure: dict[str, Any] | None
    bytes: int
    pytest_path: Path | None = None


def _check_args(
    source: Path, out: Path, steps: int | None, through_failure: bool | None, overwrite: bool
) -> None:
    if not source.is_file():
        raise UsageError(f"{source} does not exist (or is not a file); pass a recording")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
        raise UsageError(f"steps must be an int >= 0, got {steps!r}")
    if steps is not None and through_failure:
        raise UsageError("pass either steps or through_failure, not both")
    if out.exists() and not overwrite:
        raise UsageError(f"{out} already exists; pass --force (overwrite=True) to replace it")
    if out.exists() and out.resolve() == source.resolve():
        raise UsageError(f"{out} is the source recording; write the extract to another path")
    if not out.parent.is_dir():
        raise UsageError(f"{out.parent} is not a directory; create it first")


def _ranges(
    rec: Any, snap: Any, failure: dict[str, Any] | None, steps: int | None
) -> dict[str, tuple[int, int]]:
    """Return ``{stream: (first row, stop row)}`` to copy."""
    meta = snap.meta
    s = int(meta.get(F.SNAP_STEP, 0))
    e = int(meta.get(F.SNAP_EPISODE, -1))
    u = int(meta.get(F.SNAP_UPDATES, 0))
    # A restore mid-episode reads the observation the snapshot's step returned (row s - 1).
    mid = int(meta.get(F.SNAP_STEP_IN_EPISODE, 0)) > 0
    first_step, first_reset = (s - 1 if mid and s > 0 else s), max(e, 0)
    if meta.get(F.SNAP_ENV_STATE) == F.ENV_STATE_REPLAY_FROM_RESET:
        # Replay re-runs the recorded actions from the episode's (or recording's) start.
        if meta.get(F.SNAP_REPLAY_FROM) == "recording-start":
            first_step, first_reset = 0, 0
        else:
            first_step = int(rec.stream(F.RESETS).read(F.RESET_STEP, e, e + 1)[0])
    has_steps = rec.has_stream(F.STEPS)
    total_steps = rec.stream(F.STEPS).rows if has_steps else 0
    total_resets = rec.stream(F.RESETS).rows if rec.has_stream(F.RESETS) else 0
    total_updates = rec.stream(F.UPDATES).rows if rec.has_stream(F.UPDATES) else 0
    if steps is None and failure is not None:
        stop_step = min(total_steps, int(failure.get(F.FAILURE_STEP, 0)) + 1)
        stop_update = min(total_updates, int(failure.get(F.FAILURE_UPDATE, 0)) + 1)
        stop_reset = min(total_resets, int(failure.get(F.FAILURE_EPISODE, -1)) + 1)
    else:
        stop_step = min(total_steps, s + (steps or 0))
        stop_update = u
        if rec.has_stream(F.UPDATES) and total_updates:
            ust = rec.stream(F.UPDATES)
            logged = ust.read(F.UPDATE_STEP, max(u, ust.first), total_updates)
            stop_update = u + int((logged <= stop_step).sum()) if has_steps else total_updates
        stop_reset = first_reset + 1
        if has_steps and stop_step > s:
            last_ep = int(rec.stream(F.STEPS).read(F.EPISODE, stop_step - 1, stop_step)[0])
            stop_reset = last_ep + 1
        stop_reset = min(total_resets, stop_reset)
    out: dict[str, tuple[int, int]] = {}
    if has_steps:
        out[F.STEPS] = (first_step, max(first_step, stop_step))
    if rec.has_stream(F.RESETS):
        out[F.RESETS] = (first_reset, max(first_reset, stop_reset))
    if rec.has_stream(F.UPDATES):
        out[F.UPDATES] = (u, max(u, stop_update))
    return out


def extract(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    snapshot: str | None = None,
    steps: int | None = None,
    through_failure: bool | None = None,
    overwrite: bool = False,
    pytest_path: str | os.PathLike[str] | None = None,
) -> ExtractResult:
    """Cut a small self-contained recording from ``source``, starting at one snapshot.

    Args:
        source: the recording (a flight recording with a failure record, or any other).
        out: the file to write; refused if it exists unless ``overwrite``.
        snapshot: the snapshot to start from; default: the newest one taken before the
            failure record.
        steps: copy this many steps after the snapshot (and the updates and resets among
            them) instead of running through the failure.
        through_failure: copy through the failure record (the default when there is one).
        overwrite: replace an existing ``out`` (and ``pytest_path``).
        pytest_path: also write a ready-to-run pytest test for the failure there.

    Returns:
        What was written.

    Raises:
        UsageError: a bad argument, no such snapshot, no failure to run through, or an
            existing output.
        ChecksumError: the source fails its checksums (nothing is written).

    Example:
        >>> # a flight recording whose run failed (see RecordingWrapper(keep_snapshots=...))
        >>> # r = replaykit.extract("run.h5", "tests/data/bug.h5",
        >>> #                       pytest_path="tests/test_bug.py")
        >>> # r.snapshot, r.steps, r.failure["reason"]
    """
    from replaykit._format.store import Recording

    src, dst = Path(source), Path(out)
    test_path = Path(pytest_path) if pytest_path is not None else None
    _check_args(src, dst, steps, through_failure, overwrite)
    if test_path is not None:
        if test_path.exists() and not overwrite:
            raise UsageError(f"{test_path} already exists; pass --force to replace it")
        if test_path.suffix != ".py" or not test_path.parent.is_dir():
            raise UsageError(f"{test_path} must be a .py file in an existing directory")
    with Recording(src) as rec:
        failure = rec.meta.get(F.META_FAILURE)
        failure = failure if isinstance(failure, dict) else None
        if through_failure and failure is None:
            raise UsageError(f"{src} holds no failure record; pass --steps N instead")
        if steps is None and failure is None:
            raise UsageError(f"{src} holds no failure record; say how much to copy with --steps N")
        snap = _choose_snapshot(rec, snapshot, failure, steps)
        ranges = _ranges(rec, snap, failure, steps)
        reaches_failure = failure is not None and (
            steps is None or int(failure.get(F.FAILURE_STEP, 0)) < ranges.get(F.STEPS, (0, 0))[1]
        )
        meta = _extract_meta(rec, src, snap, ranges, failure if reaches_failure else None)
        _write_extract(rec, src, dst, snap, ranges, meta, overwrite)
        first_step, stop_step = ranges.get(F.STEPS, (0, 0))
        first_update, stop_update = ranges.get(F.UPDATES, (0, 0))
        user = rec.meta.get(F.META_USER) or {}
        result = ExtractResult(
            path=dst,
            snapshot=snap.name,
            first_step=first_step,
            steps=stop_step - first_step,
            updates=stop_update - first_update,
            failure=failure if reaches_failure else None,
            bytes=dst.stat().st_size,
        )
    if test_path is not None:
        text = pytest_source(
            dst,
            test_path,
            failure=result.failure,
            env_id=meta.get(F.META_ENV_ID),
            policy=user.get("policy") if isinstance(user, dict) else None,
            training=meta.get(F.META_KIND) == F.KIND_TRAINING,
            tracked=list(snap.meta.get(F.SNAP_TRACKED) or []),
        )
        _write_text(test_path, text, overwrite)
        result = ExtractResult(**{**result.__dict__, "pytest_path": test_path})
    return result


def _choose_snapshot(
    rec: Any, snapshot: str | None, failure: dict[str, Any] | None, steps: int | None
) -> Any:
    """Return the snapshot to start from: the one named, or the newest before the failure."""
    from replaykit._analysis.inspection import nearest_snapshot

    src = rec.path
    if snapshot is None:
        if failure is None:
            raise UsageError(f"{src}: name the snapshot to start from (--snapshot NAME)")
        near = nearest_snapshot(rec, failure)
        if near is None:
            raise UsageError(
                f"{src}: no snapshot precedes the failure at step "
                f"{failure.get(F.FAILURE_STEP)}; record with snapshot_every=... so one does"
            )
        snapshot = str(near["name"])
    snap = rec.snapshot_info(snapshot)
    after = failure is not None and (
        int(snap.meta.get(F.SNAP_STEP, 0)) > int(failure.get(F.FAILURE_STEP, 0))
        or int(snap.meta.get(F.SNAP_UPDATES, 0)) > int(failure.get(F.FAILURE_UPDATE, 0))
    )
    if after and steps is None:
        assert failure is not None
        raise UsageError(
            f"snapshot {snapshot!r} was taken after the failure (step "
            f"{failure.get(F.FAILURE_STEP)}); pick one before it, or pass --steps N"
        )
    return snap


def _extract_meta(
    rec: Any,
    src: Path,
    snap: Any,
    ranges: dict[str, tuple[int, int]],
    failure: dict[str, Any] | None,
) -> dict[str, Any]:
    """Return the extract's metadata: the source's, with counts, failure and provenance."""
    drop = (F.META_FAILURE, F.META_RETENTION, F.META_EXTRACT, F.META_CREATED)
    meta = {k: v for k, v in rec.meta.items() if k not in drop}
    stop_of = {name: stop for name, (_, stop) in ranges.items()}
    meta[F.META_CLOSED] = True
    for key, stream in ((F.META_STEPS, F.STEPS), (F.META_UPDATES, F.UPDATES)):
        if key in meta:
            meta[key] = stop_of.get(stream, 0)
    if F.META_EPISODES in meta:
        meta[F.META_EPISODES] = stop_of.get(F.RESETS, 0)
    if failure is not None:
        meta[F.META_FAILURE] = failure
    meta[F.META_EXTRACT] = {
        F.EXTRACT_SOURCE: src.name,
        F.EXTRACT_SOURCE_CHECKSUM: rec.root_checksum,
        F.EXTRACT_SNAPSHOT: snap.name,
        F.EXTRACT_FIRST: {name: first for name, (first, _) in ranges.items()},
    }
    return meta


def _write_extract(
    rec: Any,
    src: Path,
    dst: Path,
    snap: Any,
    ranges: dict[str, tuple[int, int]],
    meta: dict[str, Any],
    overwrite: bool,
) -> None:
    """Write the extract under a temporary name, check it, and move it to ``dst``."""
    from replaykit._format.store import RecordingWriter
    from replaykit.errors import ReplaykitError

    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        writer = RecordingWriter(tmp, meta=meta, provenance=dict(rec.provenance))
        try:
            for name in (F.STEPS, F.RESETS, F.UPDATES):
                if name in ranges:
                    writer.copy_stream(rec.stream(name), *ranges[name])
            for name in rec.stream_names:
                if name not in ranges:
                    writer.copy_stream(rec.stream(name), 0, 0)
            info, encoded = rec.load_snapshot_encoded(snap.name)
            writer.copy_snapshot(info.name, encoded, dict(info.meta))
        finally:
            writer.close()
        try:
            _self_check(tmp)
        except ReplaykitError as exc:
            raise UsageError(
                f"the extract of {src} did not pass its own check ({exc}); please report this"
            ) from None
        _publish(tmp, dst, overwrite)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _self_check(path: Path) -> None:
    """Read the written extract back as a reader would: every row and the snapshot, verified.

    The snapshot is checked as stored (checksums, layouts), not decoded into objects, so
    extracting needs no torch and stays small in memory.
    """
    from replaykit._format.store import Recording

    with Recording(path) as rec:
        for name in rec.stream_names:
            s = rec.stream(name)
            for col in s.columns:
                for _ in s.blocks(col):
                    pass
                blocks = s.present_blocks(col)
                for _ in blocks or ():
                    pass
        for info in rec.snapshots:
            rec.load_snapshot_encoded(info.name)


def _write_text(path: Path, text: str, overwrite: bool) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        _publish(tmp, path, overwrite)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _publish(tmp: Path, dst: Path, overwrite: bool) -> None:
    """Give the complete file ``tmp`` the name ``dst`` (the caller removes ``tmp`` after)."""
    if overwrite:
        os.replace(tmp, dst)
        return
    try:
        os.link(tmp, dst)  # exclusive: never replaces a file created meanwhile
    except FileExistsError:
        raise UsageError(f"{dst} appeared meanwhile; pass --force to replace it") from None


def _literal(text: str) -> str:
    """Return a Python string literal of ``text`` (data from a file never becomes code)."""
    return repr(str(text))


def _comment(text: Any) -> str:
    """One comment-safe line (no line breaks, control characters escaped)."""
    from replaykit._analysis.render import escaped

    return escaped(str(text)).replace("\n", " ")


def pytest_source(
    fixture: Path,
    test_path: Path,
    *,
    failure: dict[str, Any] | None,
    env_id: str | None,
    policy: Any,
    training: bool,
    tracked: list[str],
) -> str:
    """Return the text of a pytest test replaying ``fixture`` to its failure.

    With a policy spec recorded by ``replaykit record`` (a builtin or ``module:callable``),
    the test is ready to run; for a recording of a Python loop it is a skeleton whose only
    TODO is the loop body (one iteration of the user's loop).
    """
    from replaykit._analysis.render import failure_line

    try:
        rel = os.path.relpath(fixture.resolve(), test_path.resolve().parent)
    except ValueError:  # another drive (Windows)
        rel = str(fixture.resolve())
    what = failure_line(failure, None).split("; ")[0] if failure else "no failure record"
    name = re.sub(r"\W+", "_", fixture.stem).strip("_") or "fixture"
    head = [
        f'"""Regression test for a failure cut out by `replaykit extract`: {_comment(what)}.',
        "",
        "Expected-failure semantics: this test FAILS while the bug is present (the replay",
        "reaches the failure point bit-exactly and the recorded failure happens again), and",
        "PASSES once it is fixed (the replay reaches the failure point bit-exactly and the",
        "failure no longer happens). A divergence before that point fails it too: the fix",
        "changed earlier steps, or the setup differs; cut a new fixture then.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from pathlib import Path",
        "",
    ]
    fixture_line = f"FIXTURE = Path(__file__).parent / {_literal(Path(rel).as_posix())}"
    spec = policy if isinstance(policy, str) else None
    if spec is not None and (spec in _BUILTIN_POLICIES or _SPEC.match(spec)) and not training:
        body = [
            "import replaykit.testing",
            "",
            fixture_line,
            "",
            "",
            f"def test_{name}_failure_is_fixed() -> None:",
            f"    replaykit.testing.assert_fixed(FIXTURE, policy={_literal(spec)})",
            "",
        ]
        return "\n".join(head + body)
    objects = ", ".join(f"{_literal(t)}: ..." for t in tracked)
    if training:
        body = [
            "import replaykit",
            "import replaykit.testing",
            "",
            fixture_line,
            "",
            "",
            f"def test_{name}_failure_is_fixed() -> None:",
            "    # Build the objects your loop tracked, as your training script does.",
            f"    rep = replaykit.restore_training(FIXTURE, track={{{objects}}})",
            "",
            "    def loop_body(rep: replaykit.TrainingReplay) -> None:",
            "        # TODO: one iteration of your training loop, logging with rep.log_update(...)",
            "        raise NotImplementedError('paste one iteration of your loop here')",
            "",
            "    replaykit.testing.assert_fixed(rep, loop_body)",
            "",
        ]
    else:
        body = [
            "import gymnasium as gym",
            "import replaykit",
            "import replaykit.testing",
            "",
            fixture_line,
            "",
            "",
            f"def test_{name}_failure_is_fixed() -> None:",
            "    # Build the objects your loop tracked, as your training script does.",
            "    rep = replaykit.restore(",
            f"        FIXTURE, env=gym.make({_literal(env_id or 'ENV-ID')}), track={{{objects}}}",
            "    )",
            "",
            "    def loop_body(rep: replaykit.Replay) -> None:",
            "        # TODO: one iteration of your loop: act on rep.obs, rep.env.step(action)",
            "        # (rep.env.reset() when rep.needs_reset), probes and log_update as recorded.",
            "        raise NotImplementedError('paste one iteration of your loop here')",
            "",
            "    replaykit.testing.assert_fixed(rep, loop_body)",
            "",
        ]
    return "\n".join(head + body)
