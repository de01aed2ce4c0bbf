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
    "FAILURE_STILL_HAPPENS",
    "GOLDEN_MISMATCH_HINT",
    "GOLDEN_MISSING",
    "UPDATE_MODES",
    "FailureStillHappensError",
    "GoldenFiles",
    "GoldenMismatchError",
    "assert_fixed",
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


FAILURE_STILL_HAPPENS = (
    "the recorded failure still happens: {what}; the replay matched the recording bit for bit "
    "up to it ({verified} steps, {updates} updates verified). Fix the bug and this test passes"
)


class FailureStillHappensError(AssertionError):
    """:func:`assert_fixed` replayed to the recorded failure and it happened again.

    Example:
        >>> issubclass(FailureStillHappensError, AssertionError)
        True
    """


def _policy_body(rep: Any, policy: Any) -> Callable[[Any], None]:
    """One iteration of ``replaykit record``'s rollout loop, on a replay."""
    from replaykit._session.rollout import drive

    def body(r: Any) -> None:
        drive(
            r.env,
            policy,
            1,
            obs=r.obs,
            needs_reset=r.needs_reset,
            on_probe=r.probe,
            on_update=r.log_update,
        )

    return body


@contextlib.contextmanager
def _policy_replay(path: str | os.PathLike[str], spec: str) -> Iterator[tuple[Any, Any]]:
    """Restore the extract at ``path`` with the policy ``spec``, built as ``record`` does."""
    from replaykit._format import layout as F
    from replaykit._format.store import Recording
    from replaykit._session.policies import import_policy_module, resolve_policy
    from replaykit._session.replay import make_env, restore

    if ":" in spec:
        # The module may register the env the recording names: import it before make_env
        # (the spec comes from the test's code, never from the file).
        import_policy_module(spec)
    rec = Recording(path)
    try:
        user = rec.meta.get(F.META_USER) or {}
        seed = int(user.get("cli_seed") or rec.meta.get(F.META_SEED) or 0)
        env = make_env(rec)
        policy = resolve_policy(spec, env, seed)
        rep = restore(rec, None, env=env, track=policy.state_objects())
        yield rep, _policy_body(rep, policy)
    finally:
        rec.close()


def assert_fixed(
    replay: Any,
    loop_body: Callable[[Any], Any] | None = None,
    *,
    policy: str | None = None,
    check: Callable[[Any], bool] | None = None,
) -> int:
    """Replay a recorded failure bit-exactly up to its point, then assert it no longer happens.

    For a recording with a failure record (a flight recording, or an extract of one):
    ``loop_body(replay)`` is called, one iteration of your loop at a time, until the
    replay stands where the failure was recorded; every step and update on the way must
    match the recording bit for bit. Then the failing iteration runs once more:

    * a NaN/infinity (``kind`` ``nonfinite``) in a step or an update: it is *fixed* when
      that step or update now differs from the recorded one (a divergence there is the
      outcome this test wants), and *still happens* when it comes out bit-identical;
    * an exception: *fixed* when the iteration raises no exception of the recorded type
      (reaching the recording's end counts as past it), *still happens* when it does;
    * a failure marked with ``mark_failure``: ``check(replay)`` (your check, returning
      ``True`` while the failure is there) decides.

    A divergence *before* the failure point is raised as it is: the fix changed earlier
    steps (or the setup differs), so the fixture no longer reaches the failure; cut a new
    one with ``replaykit extract``.

    Args:
        replay: a restored :class:`~replaykit.Replay` / :class:`~replaykit.TrainingReplay`,
            or the path of a recording made by ``replaykit record`` (then pass ``policy``).
        loop_body: one iteration of your loop, given the replay (step ``replay.env``, log
            updates with ``replay.log_update``); not needed with ``policy``.
        policy: the recording's policy spec (``random``, ``mlp`` or ``module:callable``),
            built as ``replaykit record`` builds it; its module is imported.
        check: for marked failures: ``check(replay) -> bool``, true while it fails.

    Returns:
        The number of steps (training recordings: updates) verified.

    Raises:
        FailureStillHappensError: (an ``AssertionError``) the failure happened again.
        DivergenceError: the replay diverged before reaching the failure.
        UsageError: no failure record, or neither ``loop_body`` nor ``policy``.

    Example:
        >>> # def loop_body(rep):
        >>> #     obs, r, term, trunc, _ = rep.env.step(policy(rep.obs))
        >>> # assert_fixed(replaykit.restore("tests/data/bug.h5", env=..., track=...), loop_body)
        >>> # assert_fixed("tests/data/bug.h5", policy="mypkg.policies:make")
    """
    __tracebackhide__ = True
    if isinstance(replay, (str, os.PathLike)):
        if policy is None:
            raise errors.UsageError(
                "assert_fixed(path) needs policy='module:callable' (the policy the recording "
                "was made with); for your own loop pass a restored replay and loop_body"
            )
        with _policy_replay(replay, policy) as (rep, body):
            return _assert_fixed(rep, body, check)
    if loop_body is None:
        raise errors.UsageError("assert_fixed(replay, loop_body): pass one iteration of your loop")
    return _assert_fixed(replay, loop_body, check)


def _assert_fixed(  # noqa: C901 - one decision per failure kind, read top to bottom
    rep: Any, body: Callable[[Any], Any], check: Any
) -> int:
    __tracebackhide__ = True
    from replaykit._analysis.render import failure_line
    from replaykit._format import layout as F

    failure = rep.recording.meta.get(F.META_FAILURE)
    if not isinstance(failure, dict):
        raise errors.UsageError(
            f"{rep.recording.path} holds no failure record; assert_fixed replays to a recorded "
            "failure (record in flight mode, or call mark_failure, then replaykit extract)"
        )
    kind = failure.get(F.FAILURE_KIND)
    if kind == F.FAILURE_MARKED and check is None:
        raise errors.UsageError(
            "the failure was marked with mark_failure(); pass check=callable(replay) -> bool "
            "(true while the failure happens) so assert_fixed can tell"
        )
    f_step = int(failure.get(F.FAILURE_STEP, 0))
    f_update = int(failure.get(F.FAILURE_UPDATE, 0))
    on_update = failure.get(F.FAILURE_WHERE) == "update"
    training = not rep.recording.has_stream(F.STEPS)
    what = failure_line(failure, None).split("; ")[0]
    exc_type = str(failure.get(F.FAILURE_EXC_TYPE) or "")

    def before_failure() -> bool:
        if on_update or training:
            return bool(rep.update_count < f_update)
        return bool(rep.step_count < f_step)

    def same_exception(exc: BaseException) -> bool:
        return f"{type(exc).__module__}.{type(exc).__qualname__}" == exc_type

    def still() -> FailureStillHappensError:
        return FailureStillHappensError(
            FAILURE_STILL_HAPPENS.format(
                what=what, verified=rep.verified_steps, updates=rep.verified_updates
            )
        )

    try:
        while before_failure():
            body(rep)
    except errors.DivergenceError:
        raise
    except Exception as exc:
        if kind == F.FAILURE_EXCEPTION and same_exception(exc):
            raise still() from exc
        raise
    # The failing iteration.
    if kind == F.FAILURE_NONFINITE:
        try:
            body(rep)
        except errors.DivergenceError:
            return int(rep.verified_updates if training else rep.verified_steps)  # fixed
        raise still()
    if kind == F.FAILURE_EXCEPTION:
        try:
            body(rep)
        except errors.DivergenceError:
            return int(rep.verified_steps)
        except errors.UsageError:
            if rep.steps_left == 0 or (training and rep.updates_left == 0):
                return int(rep.verified_steps)  # ran past the recording: past the failure
            raise
        except Exception as exc:
            if same_exception(exc):
                raise still() from exc
            raise
        return int(rep.verified_updates if training else rep.verified_steps)
    if check is not None and check(rep):
        raise still()
    return int(rep.verified_updates if training else rep.verified_steps)


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
