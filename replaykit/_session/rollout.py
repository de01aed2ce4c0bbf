"""One rollout loop, used both to record and to replay, so both run the same code.

The loop, per iteration: reset if the episode ended; take any snapshot due at
this point; ``act``; log the policy's probes; ``step``; ``observe`` (which may
return a training update's values to log). Snapshots sit at the top of an
iteration, where the loop's only live state is the current observation.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from replaykit._format import layout as F
from replaykit._format.store import Recording
from replaykit._session.envids import unknown_env_id
from replaykit._session.policies import import_policy_module, resolve_policy
from replaykit._session.record import RecordingWrapper
from replaykit._session.replay import Replay, make_env, register_env_namespace, restore
from replaykit._state.envs import families
from replaykit.errors import PrefixEndError, UsageError

__all__ = [
    "SEED_MAX",
    "RecordSummary",
    "ReplaySummary",
    "check_output",
    "check_record_args",
    "drive",
    "make_recorded_env",
    "partial_path",
    "record_rollout",
    "replay_snapshot",
]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy's global generator and torch."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def drive(
    env: gym.Env[Any, Any],
    policy: Any,
    steps: int,
    *,
    obs: Any,
    needs_reset: bool,
    on_probe: Callable[[str, Any], None] | None = None,
    on_update: Callable[..., Any] | None = None,
    at_top: Callable[[], None] | None = None,
    on_step: Callable[[], None] | None = None,
) -> Any:
    """Run ``steps`` iterations of the rollout loop; returns the last observation."""
    for _ in range(steps):
        if needs_reset:
            obs, _ = env.reset()
            needs_reset = False
        if at_top is not None:
            at_top()
        action = policy.act(obs)
        if on_probe is not None:
            for name, value in policy.probes().items():
                on_probe(name, value)
        obs, reward, terminated, truncated, _ = env.step(action)
        update = policy.observe(obs, reward, terminated, truncated)
        if update and on_update is not None:
            on_update(**update)
        needs_reset = bool(terminated or truncated)
        if on_step is not None:
            on_step()
    return obs


@dataclass
class RecordSummary:
    """What :func:`record_rollout` wrote.

    Attributes:
        path: the recording, in its final place.
        env_id: the env recorded.
        steps: steps recorded.
        episodes: episodes started (the last one may be cut by the step cap).
        updates: training updates logged by the policy.
        snapshots: snapshot names, oldest first.
        bytes: the file's size.
        missed_snapshots: ``snapshot_at`` steps the run ended before (``episodes`` runs only:
            with a step cap such points are refused up front).
    """

    path: str
    env_id: str
    steps: int
    episodes: int
    updates: int
    snapshots: list[str] = field(default_factory=list)
    bytes: int = 0
    missed_snapshots: list[int] = field(default_factory=list)


#: Largest seed ``record_rollout`` accepts: seeds are stored and restored as int64.
SEED_MAX = (1 << 63) - 1

#: Message for ``replaykit replay`` on a recording made by a user's Python loop.
REPLAY_NEEDS_OWN_LOOP = (
    "{path} was recorded by a Python loop that tracks {tracked}, which the command line "
    "cannot rebuild; replay it with its own loop in Python (replaykit.restore(path, env=..., "
    "track={{...}}), then step rep.env), or pass --policy module:function to build them"
)


#: Message for ``replaykit replay`` on a Stable-Baselines3 recording.
REPLAY_SB3 = (
    "{path} was recorded by Stable-Baselines3's ReplaykitCallback; resume it in Python with "
    "replaykit.integrations.sb3.resume(path, snapshot, AlgoClass, env_fn)"
)


def check_record_args(
    *,
    seed: int,
    steps: int | None,
    episodes: int | None,
    snapshot_at: Iterable[int] = (),
    snapshot_every: int | None = None,
) -> list[int]:
    """Refuse numbers a recording cannot honour; returns the snapshot steps, sorted.

    ``steps=None`` means no step cap (then ``episodes`` must be given); with both, the
    recording stops at whichever limit comes first.

    Raises:
        UsageError: a seed outside ``0..2**63-1``, a negative or missing limit, or a
            snapshot point the step cap never reaches.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise UsageError(
            f"the seed must be an integer from 0 to {SEED_MAX} (it is stored as int64), "
            f"got {seed!r}; pass a smaller --seed"
        )
    if steps is None and episodes is None:
        raise UsageError("give a step cap, a number of episodes, or both")
    if steps is not None and steps < 0:
        raise UsageError(f"steps must be >= 0, got {steps}")
    if episodes is not None and episodes < 1:
        raise UsageError(f"episodes must be >= 1, got {episodes}")
    if snapshot_every is not None and snapshot_every < 1:
        raise UsageError(f"snapshot_every must be >= 1, got {snapshot_every}")
    at = sorted({int(s) for s in snapshot_at})
    if at and at[0] < 0:
        raise UsageError(f"snapshot steps must be >= 0, got {at[0]}")
    if steps is not None:
        late = [s for s in at if s >= steps]
        if late:
            raise UsageError(
                f"snapshot step {late[0]} is not within the {steps} steps recorded (a snapshot "
                f"at step t is taken before step t, so t must be below {steps}); lower "
                "--snapshot-at or raise --steps"
            )
        if snapshot_every is not None and snapshot_every >= steps:
            raise UsageError(
                f"--snapshot-every {snapshot_every} takes no snapshot within {steps} steps; "
                "pass a smaller interval or raise --steps"
            )
    return at


def check_output(out: str | os.PathLike[str], *, overwrite: bool) -> Path:
    """Check that ``out`` can be written (touching nothing); returns it as a ``Path``.

    Raises:
        UsageError: its directory is missing or not writable, it is a directory, or it
            exists and ``overwrite`` is false.
    """
    path = Path(out)
    parent = path.parent
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise UsageError(
            f"directory {parent} {what}; create it first or pick another --out for {path.name}"
        )
    if path.is_dir():
        raise UsageError(f"{path} is a directory; pass a file path such as {path / 'run.h5'}")
    if os.path.lexists(path) and not overwrite:
        raise UsageError(
            f"{path} already exists; pass --force to replace it once the new recording is "
            "complete, or pick another --out"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"directory {parent} is not writable; pick another --out")
    return path


def partial_path(out: Path) -> Path:
    """Return a free name beside ``out`` for the recording while it is being written."""
    base = out.with_name(f"{out.name}.partial-{os.getpid()}")
    candidate, n = base, 0
    while os.path.lexists(candidate):
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def make_recorded_env(env_id: str, env_kwargs: Mapping[str, Any] | None = None) -> Any:
    """``gymnasium.make(env_id)``, with the errors a user can fix said in one line.

    Raises:
        UsageError: the id is not registered, or its env family's package is not installed
            (the message names the ``pip install "replaykit[EXTRA]"`` to run).
    """
    register_env_namespace(env_id)
    try:
        spec = gym.spec(env_id)
    except gym.error.Error as exc:
        raise unknown_env_id(env_id, _first_line(exc)) from None
    try:
        return gym.make(env_id, **dict(env_kwargs or {}))
    except gym.error.DependencyNotInstalled as exc:
        missing = _missing_module(exc)
        extra = _extra_for(str(spec.entry_point), missing)
        needs = f"needs {missing}, which is not installed" if missing else f"({_first_line(exc)})"
        fix = (
            f'install it: pip install "replaykit[{extra}]"'
            if extra
            else "install the package that provides it"
        )
        raise UsageError(f"env id {env_id!r} {needs}; {fix}") from None


def _missing_module(exc: BaseException) -> str | None:
    """Return the top-level name of the module whose failed import is behind ``exc``."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ImportError) and cur.name:
            return cur.name.split(".")[0]
        cur = cur.__cause__ or cur.__context__
    return None


def _extra_for(entry_point: str, module: str | None) -> str | None:
    """Return the pip extra of the env family of ``entry_point`` or ``module``, if any."""

    def norm(name: str) -> str:
        return name.lower().replace("-", "_")

    parts = {norm(p) for p in entry_point.replace(":", ".").split(".")}
    for fam in families.FAMILIES:
        if not fam.extra:
            continue
        names = {norm(fam.name), *(norm(d) for d in fam.distributions)}
        if (module is not None and norm(module) in names) or norm(fam.name) in parts:
            return fam.extra
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _add_note(exc: BaseException, note: str) -> None:
    """Attach ``note`` to ``exc`` (``BaseException.add_note`` where Python has it)."""
    add = getattr(exc, "add_note", None)
    if add is not None:
        add(note)
    else:  # Python 3.10
        exc.__notes__ = [*getattr(exc, "__notes__", []), note]  # type: ignore[attr-defined]


def move_into_place(tmp: Path, out: Path, *, overwrite: bool, keep_hint: str | None = None) -> None:
    """Rename the finished recording ``tmp`` to ``out``.

    Without ``overwrite``, a file that appeared at ``out`` while recording is never
    replaced: a hard link claims the name only if it is free. ``keep_hint`` ends the error
    line then (default: ``tmp`` is kept; rename it yourself).
    """
    if overwrite:
        os.replace(tmp, out)
        return
    hint = keep_hint or f"the new recording is {tmp}: rename it yourself"
    try:
        os.link(tmp, out)
    except FileExistsError:
        raise UsageError(f"{out} appeared while recording and was left as it is; {hint}") from None
    except OSError:
        # No hard links on this file system: check, then rename (a narrow race remains).
        if os.path.lexists(out):
            raise UsageError(
                f"{out} appeared while recording and was left as it is; {hint}"
            ) from None
        os.replace(tmp, out)
        return
    os.unlink(tmp)


class _DeferInterrupt:
    """Turn the first Ctrl-C into a stop at the next step boundary (main thread only).

    The loop polls :attr:`hit` between steps and raises :class:`KeyboardInterrupt` there,
    so the file closes on a whole step. A second Ctrl-C interrupts at once.
    """

    def __init__(self) -> None:
        self.hit = False
        self._old: Any = None

    def __enter__(self) -> _DeferInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.getsignal(signal.SIGINT)
            if self._old is signal.default_int_handler:
                signal.signal(signal.SIGINT, self._handle)
            else:
                self._old = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.hit = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _open_recording(
    env: Any,
    tmp: Path,
    seed: int,
    policy_spec: str,
    compression: str | None,
    keep_snapshots: int | None = None,
) -> RecordingWrapper:
    """Create the recording at ``tmp``; ``compression`` may be ``gzip:LEVEL``."""
    return RecordingWrapper(
        env,
        tmp,
        seed=seed,
        metadata={"policy": policy_spec, "cli_seed": seed},
        compression=compression,
        keep_snapshots=keep_snapshots,
    )


def record_rollout(
    env_id: str,
    policy_spec: str,
    *,
    seed: int,
    steps: int | None,
    out: str | os.PathLike[str],
    snapshot_at: Iterable[int] = (),
    snapshot_every: int | None = None,
    episodes: int | None = None,
    env_kwargs: dict[str, Any] | None = None,
    overwrite: bool = False,
    compression: str | None = None,
    on_start: Callable[[Path], None] | None = None,
    on_progress: Callable[[int, int, int], None] | None = None,
    keep_snapshots: int | None = None,
) -> RecordSummary:
    """Record ``policy_spec`` on ``env_id`` to ``out``.

    Every argument is checked, the env built and the policy resolved before anything is
    written. The recording is written to :func:`partial_path` beside ``out`` and renamed
    into place once complete; a run that fails or is interrupted keeps the steps recorded
    so far there (the exception carries a note saying where) unless it recorded none.

    Args:
        env_id: a registered gymnasium id.
        policy_spec: ``random``, ``mlp`` or ``module:callable`` (see
            :func:`~replaykit._session.policies.resolve_policy`).
        seed: seeds the env, the spaces, the policy and the global RNGs.
        steps: step cap (``None``: none; then ``episodes`` is required).
        out: the file to write.
        snapshot_at: steps at which to snapshot (each below ``steps``).
        snapshot_every: also snapshot every this many steps.
        episodes: stop when this many episodes have ended (or at ``steps``, if sooner).
        env_kwargs: keyword arguments for ``gymnasium.make``.
        overwrite: replace an existing ``out`` (only once the new recording is complete).
        compression: the writer's stream compression (``None``, ``"lzf"``, ``"gzip"`` or
            ``"gzip:LEVEL"``).
        on_start: called with the temporary path once the file is created.
        on_progress: called after each step with (steps, episodes, snapshots) so far.
        keep_snapshots: flight mode: keep the first and the last N ``snapshot_every``
            snapshots, and write a failure record (an exception, a NaN/infinity).

    Raises:
        UsageError: a bad argument, an existing ``out`` without ``overwrite``, a missing
            directory, an unknown env id or a missing env extra (nothing was written).
        KeyboardInterrupt: Ctrl-C; the recording stops between two steps and the file
            under the temporary name is closed whole.
    """
    at = check_record_args(
        seed=seed,
        steps=steps,
        episodes=episodes,
        snapshot_at=snapshot_at,
        snapshot_every=snapshot_every,
    )
    out_path = check_output(out, overwrite=overwrite)
    seed_everything(seed)
    if ":" in policy_spec:
        # The policy's module may register the env it drives: import it (resolve_policy
        # would, a moment later) before the env id is looked up.
        import_policy_module(policy_spec)
    env = make_recorded_env(env_id, env_kwargs)
    try:
        policy = resolve_policy(policy_spec, env, seed)
        tmp = partial_path(out_path)
        rec = _open_recording(env, tmp, seed, policy_spec, compression, keep_snapshots)
    except BaseException:
        env.close()
        raise
    if on_start is not None:
        on_start(tmp)
    try:
        with _DeferInterrupt() as stop:
            missed, snaps = _run(
                rec, policy, steps, episodes, at, snapshot_every, stop, on_progress
            )
        summary = RecordSummary(
            path=str(out_path),
            env_id=env_id,
            steps=rec.step_count,
            episodes=rec.episode + 1,
            updates=rec.update_count,
            snapshots=snaps,
            missed_snapshots=missed,
        )
        rec.close()
    except BaseException as exc:
        _stopped(rec, tmp, exc)
        raise
    move_into_place(tmp, out_path, overwrite=overwrite)
    summary.bytes = os.path.getsize(out_path)
    return summary


def _run(
    rec: RecordingWrapper,
    policy: Any,
    steps: int | None,
    episodes: int | None,
    at: list[int],
    snapshot_every: int | None,
    stop: _DeferInterrupt,
    on_progress: Callable[[int, int, int], None] | None,
) -> tuple[list[int], list[str]]:
    """Run the loop of :func:`record_rollout`; returns (missed snapshot steps, names)."""
    for name, obj in policy.state_objects().items():
        rec.track(name, obj)
    due = set(at)
    names: list[str] = []

    def at_top() -> None:
        t = rec.step_count
        if t in due:
            names.append(rec.snapshot())
        elif snapshot_every and t > 0 and t % snapshot_every == 0:
            # Flight mode keeps the first and the last few (a plain recording keeps all).
            name = rec.flight_snapshot()
            if name is not None:
                names.append(name)

    obs, _ = rec.reset()
    needs_reset = False
    while True:
        if stop.hit:
            raise KeyboardInterrupt
        if steps is not None and rec.step_count >= steps:
            break
        # --episodes N: stop when the N-th episode ends, before resetting into another.
        if episodes is not None and needs_reset and rec.episode + 1 >= episodes:
            break
        obs = drive(
            rec,
            policy,
            1,
            obs=obs,
            needs_reset=needs_reset,
            on_probe=rec.probe,
            on_update=rec.log_update,
            at_top=at_top,
        )
        needs_reset = rec.needs_reset
        if on_progress is not None:
            done = rec.episode + (1 if needs_reset else 0)
            on_progress(rec.step_count, done, len(names))
    return [s for s in at if s >= rec.step_count], names


def _stopped(rec: RecordingWrapper, tmp: Path, exc: BaseException) -> None:
    """Close what a failed or interrupted recording wrote; keep it if it holds any step."""
    steps = rec.step_count
    try:
        # As leaving a `with` block would: an exception becomes the failure record (flight
        # mode), then the file is closed.
        rec.__exit__(type(exc), exc, exc.__traceback__)
        closed = True
    except Exception:  # the writer failed already (disk full): its last commit stays
        closed = False
    if steps == 0:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        return
    if os.path.exists(tmp):
        kept = f"the {steps} steps recorded before that are" if closed else "its last commit is"
        _add_note(exc, f"{kept} in {tmp}")


@dataclass
class ReplaySummary:
    snapshot: str
    step: int
    verified_steps: int
    verified_updates: int
    # The replay stopped at the end of the committed prefix of a recording that was not
    # closed (a killed recorder), before the update or reset that followed it.
    prefix_end: bool = False


def replay_snapshot(
    path: str | os.PathLike[str],
    snapshot_id: str | int | None,
    *,
    policy_spec: str | None = None,
    steps: int | None = None,
    rules: Any = None,
    verify: bool = True,
    allow_env_kwargs: Collection[str] = (),
) -> ReplaySummary:
    """Restore one snapshot and verify the next ``steps`` steps (default: up to 100 or the end).

    Raises :class:`~replaykit.errors.DivergenceError` at the first difference.
    ``verify=False`` skips checksum checks (for experiments on hand-edited files).
    ``allow_env_kwargs`` names recorded env kwargs to use although they are not plain data
    (see :func:`~replaykit._session.replay.make_env`).
    """
    with Recording(path, verify=verify) as rec:
        if rec.meta.get(F.META_KIND) == F.KIND_SB3:
            raise UsageError(REPLAY_SB3.format(path=path))
        recorded_policy = (rec.meta.get("user") or {}).get("policy")
        if policy_spec is None and not recorded_policy:
            tracked = sorted({n for s in rec.snapshots for n in s.meta.get(F.SNAP_TRACKED) or ()})
            if tracked:
                raise UsageError(REPLAY_NEEDS_OWN_LOOP.format(path=path, tracked=tracked))
        spec = policy_spec or recorded_policy or "random"
        if ":" in spec and policy_spec is None:
            raise UsageError(
                f"{path} was recorded with policy {spec!r}; replaykit never imports names from a "
                "file: pass --policy again to replay it"
            )
        seed = int((rec.meta.get("user") or {}).get("cli_seed") or rec.meta.get("seed") or 0)
        env = make_env(rec, allow_kwargs=allow_env_kwargs)
        policy = resolve_policy(spec, env, seed)
        rep: Replay = restore(rec, snapshot_id, env=env, track=policy.state_objects(), rules=rules)
        n = rep.steps_left if steps is None else steps
        n = min(n, rep.steps_left)
        prefix_end = False
        try:
            drive(
                rep.env,
                policy,
                n,
                obs=rep.obs,
                needs_reset=rep.needs_reset,
                on_probe=rep.probe,
                on_update=rep.log_update,
            )
        except PrefixEndError:
            prefix_end = True
        return ReplaySummary(
            rep.snapshot.name,
            rep.snapshot.step,
            rep.verified_steps,
            rep.verified_updates,
            prefix_end,
        )
