"""Helpers for tests that replay recordings: assert helpers and golden recordings.

The pytest plugin (:mod:`replaykit.pytest_plugin`) exposes these as fixtures;
they work without pytest too, raising :class:`AssertionError` subclasses.

Example:
    >>> # rep = replaykit.restore("golden/run.h5", env=gym.make("CartPole-v1"), track={"model": m})
    >>> # assert_replay(rep, policy, steps=100)   # fails with the first-divergence report
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from replaykit import errors

if TYPE_CHECKING:
    from replaykit._analysis.compare import DiffResult, Rules
    from replaykit._session.replay import Replay

__all__ = [
    "GOLDEN_MISMATCH_HINT",
    "GOLDEN_MISSING",
    "UPDATE_MODES",
    "GoldenFiles",
    "GoldenMismatchError",
    "assert_recordings_match",
    "assert_replay",
    "describe_diff",
]

UPDATE_MODES = ("none", "missing", "failing", "all")

GOLDEN_MISSING = (
    "golden recording {path} does not exist; create it with "
    "`pytest --replaykit-update=missing` (then commit it)"
)
GOLDEN_MISMATCH_HINT = (
    "if this change is intended, re-record with `pytest --replaykit-update=failing`"
)


class GoldenMismatchError(AssertionError):
    """A fresh recording does not match its golden file."""


def describe_diff(result: DiffResult, *, a_name: str = "a", b_name: str = "b") -> str:
    """Plain-text report of :func:`replaykit.diff_recordings`' result.

    Names the first divergence (stream, step, episode, key, element, both values,
    abs/rel/ULP difference, rule), the first divergent module when layer digests were
    recorded, the other keys that differ, row-count and key-set differences, and setup
    (provenance) differences. The wording lives in :mod:`replaykit._analysis.render`.

    Args:
        result: the diff to describe.
        a_name: what to call the reference recording.
        b_name: what to call the other one.

    Example:
        >>> # res = replaykit.diff_recordings("golden/run.h5", "fresh.h5")
        >>> # print(describe_diff(res, a_name="golden", b_name="fresh"))
        >>> # recordings differ: golden=golden/run.h5 vs fresh=fresh.h5 (bit-exact for every key)
        >>> # first divergence at step 30, episode 0, step 30 of the episode, key 'action'
    """
    from replaykit._analysis import render

    return render.diff_text(result, a_name=a_name, b_name=b_name)


def assert_replay(
    replay: Replay,
    policy: Any,
    steps: int | None = None,
) -> int:
    """Step a restored replay on with ``policy`` and fail at the first divergence.

    Args:
        replay: from :func:`replaykit.restore` (or the ``replaykit_restore`` fixture).
        policy: ``callable(obs) -> action``, or an object with ``act(obs)`` and optionally
            ``probes()`` (checked per step) and ``observe(obs, reward, terminated, truncated)``
            (returning a training update's values, checked against the updates stream).
        steps: how many steps to verify; ``None`` verifies to the end of the recording.

    Returns:
        The number of steps verified.

    Raises:
        DivergenceError: (an ``AssertionError``) with the first-divergence report.
    """
    __tracebackhide__ = True
    act = getattr(policy, "act", None) or policy
    if not callable(act):
        raise errors.UsageError("policy must be callable(obs) or have an act(obs) method")
    probes = getattr(policy, "probes", None)
    observe = getattr(policy, "observe", None)
    n = replay.steps_left if steps is None else min(int(steps), replay.steps_left)
    obs = replay.obs
    try:
        for _ in range(n):
            if replay.needs_reset:
                seed, options = replay.recorded_reset_args()
                obs, _ = replay.env.reset(seed=seed, options=options)
            action = act(obs)
            if probes is not None:
                for name, value in probes().items():
                    replay.probe(name, value)
            obs, reward, terminated, truncated, _ = replay.env.step(action)
            if observe is not None:
                update = observe(obs, reward, terminated, truncated)
                if update:
                    replay.log_update(**update)
    except errors.DivergenceError as exc:
        # Re-raise from here so the traceback ends in the test, not in replaykit's frames.
        raise exc.with_traceback(None) from None
    return n


def assert_recordings_match(
    expected: str | os.PathLike[str],
    actual: str | os.PathLike[str],
    *,
    rules: Rules | None = None,
    keys: Iterable[str] | None = None,
) -> None:
    """Fail with a first-divergence report unless two recordings' streams match."""
    __tracebackhide__ = True
    from replaykit._analysis.compare import diff_recordings

    result = diff_recordings(expected, actual, rules=rules, keys=keys)
    if not result.match:
        raise GoldenMismatchError(describe_diff(result, a_name="expected", b_name="actual"))


def _lock_path(path: pathlib.Path) -> pathlib.Path:
    # The lock lives in the temp dir, keyed by the golden file's absolute path, so every
    # xdist worker on this machine takes the same lock and no lock files litter the repo.
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:24]
    return pathlib.Path(tempfile.gettempdir()) / f"replaykit-golden-{digest}.lock"


@contextlib.contextmanager
def _atomic_target(path: pathlib.Path) -> Iterator[pathlib.Path]:
    """Yield a temp path next to ``path``; it replaces ``path`` (``os.replace``) on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


class GoldenFiles:
    """Check fresh recordings against golden files, re-recording them per ``update`` mode.

    Args:
        base: directory relative paths resolve against (the test file's directory).
        scratch: a directory for fresh recordings (the test's ``tmp_path``).
        update: ``"none"`` (a missing golden file fails), ``"missing"`` (record missing
            files), ``"failing"`` (also re-record files that do not match), ``"all"``.
        on_update: called with each golden path written.
    """

    def __init__(
        self,
        base: pathlib.Path,
        scratch: pathlib.Path,
        update: str = "none",
        on_update: Callable[[pathlib.Path], None] | None = None,
    ) -> None:
        if update not in UPDATE_MODES:
            raise errors.UsageError(
                f"update mode must be one of {', '.join(UPDATE_MODES)}; got {update!r}"
            )
        self.base = pathlib.Path(base)
        self.scratch = pathlib.Path(scratch)
        self.update = update
        self.on_update = on_update
        self._n = 0

    def path(self, golden: str | os.PathLike[str]) -> pathlib.Path:
        """Resolve ``golden`` against the test file's directory."""
        return self.base / golden

    def check(
        self,
        golden: str | os.PathLike[str],
        record: Callable[[pathlib.Path], Any],
        *,
        rules: Rules | None = None,
        keys: Iterable[str] | None = None,
    ) -> pathlib.Path:
        """Record with ``record(path)`` and compare with the golden file's streams.

        Args:
            golden: golden file path, relative to the test file's directory.
            record: the test's own code: writes a recording to the path it is given.
            rules: per-key tolerances (bit-exact by default).
            keys: fnmatch patterns of keys to compare (all by default).

        Returns:
            The golden file's path.

        Raises:
            GoldenMismatchError: the golden file is missing (mode ``none``) or differs.
        """
        __tracebackhide__ = True
        path = self.path(golden)
        if self.update == "all":
            self._write(path, record, force=True)
            return path
        if not path.exists():
            if self.update == "none":
                raise GoldenMismatchError(GOLDEN_MISSING.format(path=path))
            self._write(path, record, force=False)
            return path
        self._n += 1
        fresh = self.scratch / f"replaykit-fresh-{self._n}-{path.name}"
        record(fresh)
        problem = self._compare(path, fresh, rules, keys)
        if problem is None:
            return path
        if self.update == "failing":
            self._write(path, record, force=True, fresh=fresh)
            return path
        raise GoldenMismatchError(f"{problem}\n{GOLDEN_MISMATCH_HINT}")

    @staticmethod
    def _compare(
        golden: pathlib.Path, fresh: pathlib.Path, rules: Rules | None, keys: Iterable[str] | None
    ) -> str | None:
        from replaykit._analysis.compare import diff_recordings

        try:
            result = diff_recordings(golden, fresh, rules=rules, keys=keys)
        except errors.ReplaykitError as exc:
            return f"golden recording {golden} cannot be read: {exc}"
        if result.match:
            return None
        return describe_diff(result, a_name="golden", b_name="fresh")

    def _write(
        self,
        path: pathlib.Path,
        record: Callable[[pathlib.Path], Any],
        *,
        force: bool,
        fresh: pathlib.Path | None = None,
    ) -> None:
        from filelock import FileLock

        with FileLock(str(_lock_path(path))):
            # Another xdist worker may have written it while we waited for the lock.
            if not force and path.exists():
                return
            with _atomic_target(path) as tmp:
                if fresh is not None:
                    # Copy, not rename: the scratch dir may be on another filesystem.
                    shutil.copyfile(fresh, tmp)
                else:
                    record(tmp)
        if self.on_update is not None:
            self.on_update(path)
