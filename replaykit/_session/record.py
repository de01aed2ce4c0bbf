"""Recording: a gymnasium wrapper that writes every step, and snapshots on demand.

Example:
    >>> import gymnasium as gym, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "run.h5")
    >>> with RecordingWrapper(gym.make("CartPole-v1"), path, seed=0, snapshot_every=20) as env:
    ...     obs, info = env.reset()
    ...     while env.step_count < 50:
    ...         obs, r, term, trunc, info = env.step(env.action_space.sample())
    ...         if term or trunc:
    ...             obs, info = env.reset()
    >>> env.snapshot_names
    ['step-000020', 'step-000040']
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from replaykit._format import layout as F
from replaykit._format.store import Column, StreamWriter
from replaykit._session.recorder import (
    LeafWriter,
    NotRecordableError,
    RecorderCore,
    check_info_key,
    check_seed_and_schedule,
    column_writer,
    env_spec_json,
    exact_into,
    json_options,
    nonfinite_word,
    probe_name_problem,
    to_array,
)
from replaykit._state import spaces as _spaces
from replaykit._state.envs import families
from replaykit.errors import CaptureError, UsageError

__all__ = ["RecordingWrapper", "replay_scope"]

_INT64_MAX = (1 << 63) - 1
_ndarray = np.ndarray
_BOOLS = frozenset({bool, np.bool_})
# Observations up to this many bytes are batched per block by RecordingWrapper.step; larger
# ones (images) are copied straight into the column buffer, which is then the cheaper copy.
_DEFER_MAX_BYTES = 4096
# Python ints up to this magnitude are exact in float64 (the reward column's dtype).
_EXACT_INT = 2**53
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1

# Unwrapped env classes whose simulator state outlives ``reset()`` (the env-family table
# says which, and why): replay-from-reset must start at the recording's first reset for
# them. An env class of your own declares the same with ``replaykit_replay_scope = "recording"``.
_STATE_OUTLIVES_RESET: frozenset[str] = families.state_outlives_reset()


def replay_scope(env: gym.Env[Any, Any]) -> str:
    """Where replay-from-reset must start for ``env``: ``"episode"`` or ``"recording"``.

    ``"recording"`` for envs whose state carries over from one episode to the next
    (a persistent physics world), ``"episode"`` for the rest.
    """
    base = env.unwrapped
    if getattr(base, "replaykit_replay_scope", None) == "recording":
        return "recording"
    for cls in type(base).__mro__:
        if f"{cls.__module__}.{cls.__qualname__}" in _STATE_OUTLIVES_RESET:
            return "recording"
    return "episode"


class RecordingWrapper(RecorderCore, gym.Wrapper[Any, Any, Any, Any]):
    """Records every reset and step of ``env`` into an HDF5 file, with snapshots.

    The wrapper seeds the env (first reset) and its action and observation
    spaces, writes observations, actions, rewards, termination flags, numeric
    infos and episode boundaries in buffered blocks, and commits regularly so a
    killed run leaves a readable file. A *snapshot* captures everything needed to
    continue: the env and its wrappers, every RNG, and the objects you
    :meth:`track` (models, optimizers, schedulers, replay buffers, ...).

    Put it outermost: it captures the wrappers below it.

    Args:
        env: the env to record.
        path: the ``.h5`` file to write; must not exist unless ``overwrite`` is true.
        seed: seed for the first reset (when ``reset`` gets none) and for the spaces.
        snapshot_at: global step counts after which to snapshot (``0`` = after the first reset).
        snapshot_every: also snapshot every this many steps.
        track: ``{name: object}`` to include in snapshots (same as calling :meth:`track`).
        ignore_info: info keys (``/``-joined paths) not to record.
        commit_every_steps: commit (flush to disk) at least this often, in steps.
        commit_every_seconds: and at least this often, in seconds.
        fsync: also fsync each commit, for durability across power loss.
        metadata: JSON-able data stored in the file's metadata under ``"user"``.
        compression: ``None`` (default), ``"gzip"`` or ``"lzf"``: lossless compression of
            the recorded streams (smaller files, more CPU per block).
        direct_io: how snapshot arrays of 1 MiB and more reach the disk: ``None`` (default)
            with direct I/O only when the kernel's dirty pages are past their free-run
            limit, ``True`` always (bypassing the page cache), ``False`` never.
        overwrite: replace an existing file at ``path``, once this recording is closed (it is
            written under a temporary name beside it until then); ``False`` (default):
            refuse an existing path with :class:`~replaykit.errors.UsageError`.
        keep_snapshots: flight mode: keep only the first and the last ``keep_snapshots``
            of the periodic snapshots (``snapshot_every``, or :meth:`flight_snapshot`
            calls); older ones are dropped once a newer one is on disk, and their space is
            reused, so the file stays bounded on a long run. Nothing is dropped after a
            failure. ``None`` (default): keep every snapshot.
        detect_failures: write a failure record (:attr:`failure`) when an exception escapes
            the ``with`` block or the program, or a NaN/infinity appears in an observation,
            reward, probe or logged update (checked per block and before each periodic
            snapshot). Default: on in flight mode. :meth:`mark_failure` works either way.

    Example:
        >>> import gymnasium as gym, torch, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "run.h5")
        >>> model = torch.nn.Linear(4, 2)
        >>> env = RecordingWrapper(gym.make("CartPole-v1"), path, seed=1, track={"model": model})
        >>> obs, _ = env.reset()
        >>> obs, *_ = env.step(0)
        >>> env.snapshot()
        'step-000001'
        >>> env.close()
    """

    _replaykit_transparent = True
    # Bound buffers for the single-leaf fast path of step(), set at the first step (class
    # default so that __init__ stays untouched by it).
    _fast: tuple[Any, ...] | None = None
    _pending: list[tuple[Any, ...]]

    def __init__(
        self,
        env: gym.Env[Any, Any],
        path: str | os.PathLike[str],
        *,
        seed: int | None = None,
        snapshot_at: Iterable[int] = (),
        snapshot_every: int | None = None,
        track: Mapping[str, Any] | None = None,
        ignore_info: Iterable[str] = (),
        commit_every_steps: int = F.STREAM_CHUNK_ROWS,
        commit_every_seconds: float = 5.0,
        fsync: bool = False,
        metadata: Mapping[str, Any] | None = None,
        compression: str | None = None,
        direct_io: bool | None = None,
        overwrite: bool = False,
        keep_snapshots: int | None = None,
        detect_failures: bool | None = None,
    ) -> None:
        super().__init__(env)
        from replaykit._state import envs as envstate

        check_seed_and_schedule(seed, snapshot_every)
        self._schedule(snapshot_at, snapshot_every)
        if any(s < 0 for s in self._snapshot_at):
            raise UsageError("snapshot_at steps must be >= 0")
        self._seed = seed
        self._ignore_info = set(ignore_info)
        self._obs_leaves = _spaces.leaves_of(env.observation_space, "observation")
        self._act_leaves = _spaces.leaves_of(env.action_space, "action")
        self._has_adapter = envstate.find_env_adapter(env.unwrapped) is not None
        self._replay_scope = replay_scope(env)
        # A wrapper no snapshot could capture is refused now, before the file exists, when
        # snapshots or tracked objects are asked for (not at a snapshot 90,000 steps in).
        # Without them the steps are recorded (enough to diff two runs), and a later
        # track() or snapshot() raises the same error.
        self._uncapturable = envstate.uncapturable_layer(env)
        if self._uncapturable is not None and (
            self._snapshot_at or snapshot_every is not None or track
        ):
            raise CaptureError(self._uncapturable)
        self._open_env(
            env,
            env_spec_json(env),
            seed,
            path,
            {F.META_ENV_ADAPTER: getattr(envstate.find_env_adapter(env.unwrapped), "name", None)},
            metadata=metadata,
            commit_every_steps=commit_every_steps,
            commit_every_seconds=commit_every_seconds,
            fsync=fsync,
            compression=compression,
            direct_io=direct_io,
            overwrite=overwrite,
        )
        self._obs_w: list[LeafWriter] | None = None
        self._act_w: list[LeafWriter] | None = None
        self._reset_obs_w: list[LeafWriter] | None = None
        self._reset_cols: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._scalar_cols: tuple[Column, Column, Column, Column] | None = None
        self._info_w: dict[str, LeafWriter | None] = {}
        # Batched info path of step(): the flat keys, value classes and writers it expects.
        self._info_keys: tuple[str, ...] | None = None
        self._info_types: tuple[type, ...] = ()
        self._info_n = -1  # the learned keys' count (-1: none learned, no info matches)
        self._info_get: Callable[[Any], Any] = tuple
        self._info_cols: list[LeafWriter | None] = []
        self._reset_info_w: dict[str, LeafWriter | None] = {}
        self._probes: dict[str, Any] = {}
        self._probe_w: dict[str, LeafWriter | None] = {}
        # Batched probe path of step(): (name, dtype, shape) of each probe in the order the
        # first probed step logged them (empty: none batched), and their writers.
        self._probe_spec: tuple[tuple[str, np.dtype, tuple[int, ...]], ...] = ()
        self._probe_cols: list[LeafWriter] = []
        self._probe_learned = False
        self._t = 0
        self._episode = -1
        self._episode_start = 0  # the step count at the current episode's reset
        self._needs_reset = True
        self._episode_start_state: Any = None
        self._recording_start_state: Any = None
        self._skipped_info: set[str] = set()
        self._obs_get = [_spaces.getter(leaf.path) for leaf in self._obs_leaves]
        self._act_get = [_spaces.getter(leaf.path) for leaf in self._act_leaves]
        for name, obj in (track or {}).items():
            self.track(name, obj)
        # Rows of the current block already checked for NaN/infinity (flight mode), and the
        # steps at which the updates since the last check were logged.
        self._scan_pos = 0
        self._recent_updates: list[int] = []
        self._start_flight(keep_snapshots, snapshot_every, detect_failures)

    # ------------------------------------------------------------------ public API
    def track(self, name: str, obj: Any) -> None:
        """Include ``obj`` in every snapshot under ``name`` (see :meth:`RecorderCore.track`).

        Raises:
            CaptureError: ``obj`` cannot be captured, or a wrapper of the env has no state
                adapter, so no snapshot could be taken.
        """
        if self._uncapturable is not None:
            raise CaptureError(
                f"cannot track {name!r}: no snapshot of this env can be taken: {self._uncapturable}"
            )
        super().track(name, obj)

    @property
    def step_count(self) -> int:
        """Steps recorded so far (the global step index of the next step)."""
        return self._t

    @property
    def needs_reset(self) -> bool:
        """Whether the last step ended the episode (the next call should be ``reset``)."""
        return self._needs_reset

    @property
    def episode(self) -> int:
        """Index of the current episode (``-1`` before the first reset)."""
        return self._episode

    def probe(self, name: str, value: Any) -> None:
        """Record a named value (logits, value estimate, ...) with the next step.

        On replay the same probe must come out bit-identical at the same step.
        """
        if name in self._probes:
            raise UsageError(f"probe {name!r} logged twice before one step")
        if name not in self._probe_w and (
            problem := probe_name_problem(name, F.column_path(F.PROBE, name), self._steps)
        ):
            raise UsageError(f"probe name {name!r} {problem}; rename it")
        self._probes[name] = value

    def log_update(self, **values: Any) -> int:
        """Record one training update's named values (loss, grad norm, digests, ...).

        Updates form their own stream, numbered from 0, each tagged with the
        global step count at which it was logged. Returns the update index.
        The first NaN/infinity among the values is noted in the file's metadata
        under ``"first_nonfinite_update"``.
        """
        if self._detect:
            self._recent_updates.append(self._t)
        return self._update_log.log(self._t, values)

    def snapshot(self, name: str | None = None, *, extra: Any = None) -> str:
        """Snapshot everything needed to continue from this point; returns its name."""
        from replaykit._state import envs as envstate

        self._require_open()
        if self._episode < 0:
            raise UsageError("snapshot() before the first reset(); reset the env first")
        if self._probes:
            raise UsageError(
                f"snapshot() between probe() and step(): probes {sorted(self._probes)} are "
                "pending; take the snapshot before logging the step's probes"
            )
        name = self._snapshot_name(name, "step", self._t)
        recorder = {
            F.SNAP_STEP: self._t,
            F.SNAP_EPISODE: self._episode,
            F.SNAP_STEP_IN_EPISODE: self._t - self._episode_start,
            F.SNAP_UPDATES: self._update_log.count,
            F.SNAP_NEEDS_RESET: self._needs_reset,
            F.SNAP_SEQ: self._snap_seq,
        }
        chain = envstate.capture_chain(self.env)
        meta: dict[str, Any] = dict(recorder)
        fallback = None
        if chain.get("env") is not None:
            meta[F.SNAP_ENV_STATE] = F.ENV_STATE_ADAPTER
        else:
            meta[F.SNAP_ENV_STATE] = F.ENV_STATE_REPLAY_FROM_RESET
            meta[F.SNAP_REPLAY_FROM] = f"{self._replay_scope}-start"
            if not self._has_adapter:
                fallback = {
                    F.FALLBACK_EPISODE_START: self._episode_start_state,
                    F.FALLBACK_SCOPE: self._replay_scope,
                    F.FALLBACK_RECORDING_START: (
                        self._recording_start_state if self._replay_scope == "recording" else None
                    ),
                }
        return self._write_snapshot(
            name, meta, env=chain, recorder=recorder, fallback=fallback, extra=extra
        )

    # ------------------------------------------------------------------ gymnasium API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        self._require_open()
        if seed is None and self._episode < 0 and self._seed is not None:
            seed = self._seed
        if seed is not None and not 0 <= int(seed) <= _INT64_MAX:
            raise UsageError(f"reset seed {seed} does not fit in int64")
        if self._probes:
            raise UsageError(
                f"probes {sorted(self._probes)} logged before reset(); log them before step()"
            )
        if not self._has_adapter and self._uncapturable is None:
            from replaykit._state import envs as envstate

            self._episode_start_state = envstate.capture_wrappers_and_rngs(self.env)
            if self._episode < 0:
                self._recording_start_state = self._episode_start_state
        obs, info = self.env.reset(seed=seed, options=options)
        self._episode += 1
        self._episode_start = self._t
        self._needs_reset = False
        s = self._resets
        p = s.pos
        if self._reset_obs_w is None:
            self._reset_obs_w = self._make_writers(s, F.OBS, self._obs_leaves, self._obs_get, obs)
        for w, get in zip(self._reset_obs_w, self._obs_get, strict=True):
            w.write(get(obs), p)
        cols = self._reset_cols
        if cols is None:
            cols = self._reset_cols = (
                s.column(F.RESET_STEP, np.dtype(np.int64), ()).buf,
                s.column(F.RESET_SEED, np.dtype(np.int64), ()).buf,
                s.column(F.RESET_SEEDED, np.dtype(np.bool_), ()).buf,
            )
        cols[0][p] = self._t
        cols[1][p] = -1 if seed is None else int(seed)
        cols[2][p] = seed is not None
        if info:
            self._write_info(s, self._reset_info_w, info, p)
        if options is not None:
            opts = dict(self._writer.meta[F.META_RESET_OPTIONS])
            opts[str(self._episode)] = json_options(options)
            self._writer.update_meta(**{F.META_RESET_OPTIONS: opts})
        s.end_row()
        if self._detect and self._failure is None:
            self._check_reset_obs(obs)
        if self._t in self._snapshot_at and self._t == 0 and self._episode == 0:
            self.snapshot()
        return obs, info

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:  # noqa: C901
        # One function on purpose: the fast path's budget is ~1 us, and a method call costs
        # ~0.1 us of it.
        if self._halted:
            self._require_open()
        obs, reward, terminated, truncated, info = self.env.step(action)
        fast = self._fast
        s = self._steps
        p = s.pos
        if fast is not None:
            a_cls, a_dt, a_shape, o_dt, o_shape, r_types, o_buf, o_cls = fast
        if (
            fast is not None
            and action.__class__ is a_cls
            and (a_dt is None or (action.dtype is a_dt and action.shape == a_shape))
            and (
                obs.__class__ is _ndarray and obs.dtype is o_dt and obs.shape == o_shape
                if o_cls is None
                # A scalar observation (Discrete: Taxi, FrozenLake); ints must fit int64.
                else obs.__class__ is o_cls and (o_cls is not int or _I64_MIN <= obs <= _I64_MAX)
            )
            and reward.__class__ in r_types
            and (reward.__class__ is not int or -_EXACT_INT <= reward <= _EXACT_INT)
            and terminated.__class__ in _BOOLS
            and truncated.__class__ in _BOOLS
        ):
            # The common case (one action leaf, one observation leaf, types as at the first
            # step): append the row to a list and fill the column buffers once per block in
            # _fill_pending. The budget is ~2 us per step, and a NumPy scalar store costs
            # ~100 ns where a list append costs ~30 ns. Arrays are copied now (tobytes), as
            # the env or the caller may reuse or mutate them after step() returns.
            if o_buf is not None:
                o_buf[p] = obs  # large observations: copy once, straight into the buffer
                ob = None
            elif o_cls is None:
                ob = obs.tobytes()
            else:
                ob = obs  # an immutable scalar
            iv = pv = None
            if info:
                # An info dict with the keys, order and value classes seen before (MuJoCo's
                # four floats every step) is batched too: ~0.4 us instead of ~0.7 us a key.
                if len(info) == self._info_n:
                    try:
                        iv = self._info_get(info)  # the learned keys' values, in learned order
                    except KeyError:
                        pass
                    else:
                        if tuple(map(type, iv)) != self._info_types:
                            iv = None
                if iv is None:
                    self._row_info(info, p)
            if self._probes:
                pv = self._probe_row(p)
            self._pending.append(
                (
                    action if a_dt is None else action.tobytes(),
                    ob,
                    reward,
                    terminated,
                    truncated,
                    self._episode,
                    iv,
                    pv,
                )
            )
        else:
            try:
                self._write_step_slow(action, obs, reward, terminated, truncated, info, p)
            except CaptureError as exc:
                self._discard_row(p)
                self._halt_after_refusal(exc)
                raise
        # StreamWriter.end_row, inlined: one method call is ~5% of the per-step budget.
        s.pos = p = p + 1
        s.rows += 1
        if p == s.check_at:
            if p == s.block and self._detect:
                self._scan_failures()  # the block's rows, before they leave the buffers
            s.checkpoint()
            if s.pos == 0:
                self._scan_pos = 0
        t = self._t = self._t + 1
        if terminated or truncated:
            self._needs_reset = True
        if t >= self._next_snapshot:
            self._snapshot_if_due(t)
        return obs, reward, terminated, truncated, info

    def _row_info(self, info: Mapping[str, Any], p: int) -> None:
        """Write row ``p``'s info value by value (when the fast path of step() cannot batch it)."""
        try:
            self._write_info(self._steps, self._info_w, info, p)
            if self._info_keys is None:
                self._learn_info_keys(info)
        except CaptureError as exc:
            self._discard_row(p)
            self._halt_after_refusal(exc)
            raise

    def _probe_row(self, p: int) -> list[bytes] | None:
        """Take row ``p``'s probes for the fast path of :meth:`step`.

        Returns:
            The probes' bytes, to batch, when they have the names, order, dtypes and shapes
            learned at the first probed step; ``None`` when they were written here.
        """
        probes = self._probes
        spec = self._probe_spec
        if len(probes) == len(spec):
            pv: list[bytes] = []
            for i, (k, v) in enumerate(probes.items()):  # no zip(): it costs more than this
                name, dt, shape = spec[i]
                if (
                    k != name
                    or v.__class__ is not _ndarray
                    or v.dtype is not dt
                    or v.shape != shape
                ):
                    break
                pv.append(v.tobytes())  # a copy now: the caller may reuse the array
            else:
                probes.clear()
                return pv
        try:
            self._write_probes(p)
        except CaptureError as exc:
            self._discard_row(p)
            self._halt_after_refusal(exc)
            raise
        return None

    def _write_step_slow(
        self,
        action: Any,
        obs: Any,
        reward: Any,
        terminated: Any,
        truncated: Any,
        info: Mapping[str, Any],
        p: int,
    ) -> None:
        """Write step row ``p`` value by value (first step; rows the fast path cannot take)."""
        if self._obs_w is None:
            self._init_step_columns(action, obs, reward, terminated, truncated)
        elif self._fast is not None:
            self._fill_pending()  # rows before this one, so they stay in order
        assert self._obs_w is not None and self._act_w is not None and self._scalar_cols
        for w, get in zip(self._act_w, self._act_get, strict=True):
            w.write(get(action), p)
        for w, get in zip(self._obs_w, self._obs_get, strict=True):
            w.write(get(obs), p)
        rew, term, trunc, ep = self._scalar_cols
        rew.buf[p] = self._checked_reward(reward, rew.dtype)
        term.buf[p] = terminated
        trunc.buf[p] = truncated
        ep.buf[p] = self._episode
        if info:
            self._write_info(self._steps, self._info_w, info, p)
        if self._probes:
            self._write_probes(p)

    def _checked_reward(self, reward: Any, dt: np.dtype) -> np.ndarray:
        """Return ``reward`` as a 0-d array of ``dt``, refusing any value that would change.

        A reward of another type than the column's is stored only when every value of its
        type converts exactly (float32 into float64, a Python int that fits); otherwise it
        is refused at this step, never rounded: replay would then blame the env for a
        difference the recorder made.
        """
        arr, logical = to_array(reward, "reward")
        if reward.__class__ is int and not exact_into(reward, arr, dt):
            raise CaptureError(
                f"reward {reward} at step {self._t} does not fit the reward column's {dt} "
                "exactly; replaykit never rounds: return smaller int rewards, or floats"
            )
        if logical is not None or arr.shape != () or not exact_into(reward, arr, dt):
            got = f"{logical or arr.dtype}{list(arr.shape) if arr.shape else ''}"
            raise CaptureError(
                f"reward changed from {dt} to {got} ({reward!r}) at step {self._t}; replaykit "
                f"stores rewards with the first step's dtype and never rounds: return rewards "
                f"of one type (cast them consistently, e.g. with float() or np.{dt}())"
            )
        return arr.astype(dt)

    def _discard_row(self, p: int) -> None:
        """Undo what a refused step wrote into row ``p`` of the optional columns.

        Required columns are overwritten by the next step; an optional column's present
        flag (and its value) would otherwise stay set, and show up in the next row.
        """
        for col in self._steps.optional:
            assert col.present is not None
            col.present[p] = False
            col.buf[p] = 0
        self._probes.clear()

    # ------------------------------------------------------------------ failures
    def _position(self) -> dict[str, Any]:
        return {
            F.FAILURE_STEP: self._t,
            F.FAILURE_EPISODE: self._episode,
            F.FAILURE_UPDATE: self._update_log.count,
        }

    def _scan_failures(self) -> None:
        """Check the rows of the current block not checked yet for NaN/infinity.

        Observations, rewards and probes: the first non-finite element (lowest row, then
        column order) becomes the failure record, at its own row's step and episode.
        """
        s = self._steps
        lo, hi = self._scan_pos, s.pos
        self._scan_pos = hi
        recent, self._recent_updates = self._recent_updates, []
        if hi <= lo or self._failure is not None or self._obs_w is None:
            return
        if self._fast is not None:
            self._fill_pending()
        self._record_first_nonfinite(s, lo, hi, recent, episodes=True)

    def _check_reset_obs(self, obs: Any) -> None:
        for get, leaf in zip(self._obs_get, self._obs_leaves, strict=True):
            try:
                arr, logical = to_array(get(obs), "observation")
            except CaptureError:
                continue
            if logical is not None or arr.dtype.kind not in "fc":
                continue
            bad = ~np.isfinite(arr.reshape(-1))
            if bad.any():
                flat = int(np.flatnonzero(bad)[0])
                index = [int(i) for i in np.unravel_index(flat, arr.shape)] if arr.ndim else []
                key = F.column_path(F.OBS, leaf.name)
                value = arr.reshape(-1)[flat].item()
                self._record_failure(
                    {
                        F.FAILURE_KIND: F.FAILURE_NONFINITE,
                        F.FAILURE_WHERE: "reset-obs",
                        F.FAILURE_KEY: key,
                        F.FAILURE_INDEX: index,
                        F.FAILURE_VALUE: repr(value),
                        F.FAILURE_REASON: f"reset {key} {nonfinite_word(value)}",
                    }
                )
                return

    def _final_meta(self) -> dict[str, Any]:
        if self._fast is not None:
            self._fill_pending()  # batched info rows may add skipped keys
        return {
            F.META_SKIPPED_INFO: sorted(self._skipped_info),
            F.META_STEPS: self._t,
            F.META_EPISODES: self._episode + 1,
            F.META_UPDATES: self._update_log.count,
        }

    def _close_wrapped(self, **kwargs: Any) -> None:
        self._probes.clear()
        gym.Wrapper.close(self)

    def __del__(self) -> None:  # pragma: no cover - best effort on interpreter exit
        try:
            if not self._closed:
                self._writer.commit()
        except Exception:
            pass

    # ------------------------------------------------------------------ internals
    def _make_writers(
        self,
        s: StreamWriter,
        prefix: str,
        leaves: list[_spaces.Leaf],
        getters: list[Callable[[Any], Any]],
        value: Any,
    ) -> list[LeafWriter]:
        out = []
        for leaf, get in zip(leaves, getters, strict=True):
            arr, logical = to_array(get(value), f"{prefix} {leaf.name or ''}".strip())
            key = F.column_path(prefix, leaf.name)
            col = s.column(key, arr.dtype, arr.shape, logical=logical)
            out.append(LeafWriter(s, col, key, get(value)))
        return out

    def _init_step_columns(
        self, action: Any, obs: Any, reward: Any, terminated: Any, truncated: Any
    ) -> None:
        s = self._steps
        rarr, logical = to_array(reward, "reward")
        if rarr.shape != () or logical is not None:
            raise CaptureError(
                f"reward has shape {rarr.shape} and dtype {logical or rarr.dtype}; a gymnasium "
                "reward is a scalar number"
            )
        rdt = np.dtype(np.float64) if isinstance(reward, (int, float)) else rarr.dtype
        act_w = self._make_writers(s, F.ACTION, self._act_leaves, self._act_get, action)
        obs_w = self._make_writers(s, F.OBS, self._obs_leaves, self._obs_get, obs)
        self._act_w, self._obs_w = act_w, obs_w
        self._scalar_cols = (
            s.column(F.REWARD, rdt, ()),
            s.column(F.TERMINATED, np.dtype(np.bool_), ()),
            s.column(F.TRUNCATED, np.dtype(np.bool_), ()),
            s.column(F.EPISODE, np.dtype(np.int64), ()),
        )
        if (
            len(self._act_w) == 1
            and len(self._obs_w) == 1
            and not self._act_leaves[0].path
            and not self._obs_leaves[0].path
        ):
            a, o = self._act_w[0], self._obs_w[0]
            a_arr = a.fast_type is None  # an ndarray action (Box, MultiDiscrete, ...)
            # Reward classes the batched np.array(..., dtype) converts exactly. A Python int
            # (Taxi, CliffWalking) is exact in float64 up to 2**53, which step() checks; a
            # larger one takes the per-row path, which refuses it at its step.
            r_types = frozenset(
                {float, int, np.float64, np.float32} if rdt == np.float64 else {type(reward)}
            )
            self._fast = (
                _ndarray if a_arr else a.fast_type,
                a.dt if a_arr else None,
                a.shape,
                o.dt,
                o.shape,
                r_types,
                o.buf if o.fast_type is None and o.buf[0].nbytes > _DEFER_MAX_BYTES else None,
                o.fast_type,
            )
            self._pending = []
            s.before_write = self._fill_pending

    def _fill_pending(self) -> None:
        """Move the rows batched by the fast path of :meth:`step` into the column buffers."""
        pend = self._pending
        n = len(pend)
        if not n:
            return
        assert self._fast is not None and self._act_w and self._obs_w and self._scalar_cols
        hi = self._steps.pos
        lo = hi - n  # batched rows are always the latest ones: slow rows fill them first
        # One comprehension per field: zip(*pend) over a block costs twice as much.
        acts = [r[0] for r in pend]
        obs = [r[1] for r in pend]
        rews = [r[2] for r in pend]
        terms = [r[3] for r in pend]
        truncs = [r[4] for r in pend]
        eps = [r[5] for r in pend]
        ivs = [r[6] for r in pend]
        pvs = [r[7] for r in pend]
        pend.clear()
        if ivs.count(None) != n:
            self._fill_info(ivs, lo)
        if pvs.count(None) != n:
            self._fill_probes(pvs, lo)
        a, o = self._act_w[0], self._obs_w[0]
        if self._fast[1] is not None:
            a.buf[lo:hi] = np.frombuffer(b"".join(acts), a.dt).reshape(n, *a.shape)
        else:
            a.buf[lo:hi] = np.array(acts, dtype=a.dt)
        if self._fast[7] is not None:
            o.buf[lo:hi] = np.array(obs, dtype=o.dt)
        elif self._fast[6] is None:
            o.buf[lo:hi] = np.frombuffer(b"".join(obs), o.dt).reshape(n, *o.shape)
        rew, term, trunc, ep = self._scalar_cols
        rew.buf[lo:hi] = np.array(rews, dtype=rew.buf.dtype)
        term.buf[lo:hi] = np.array(terms, dtype=np.bool_)
        trunc.buf[lo:hi] = np.array(truncs, dtype=np.bool_)
        ep.buf[lo:hi] = eps

    def _learn_info_keys(self, info: Mapping[str, Any]) -> None:
        """Remember a flat info dict's keys and value classes for the batched path of step().

        Keys whose writer takes one scalar class (``float``, ``int``, ``bool``, a NumPy
        scalar type) qualify: one batched ``np.array`` per block converts them exactly.
        """
        cols: list[LeafWriter | None] = []
        for k, v in info.items():
            w = self._info_w.get(k, _MISSING)
            if w is None:  # ignored or unrecordable key: its values are dropped
                cols.append(None)
            elif (
                w.__class__ is LeafWriter and w.fast_type is not None and v.__class__ is w.fast_type
            ):
                cols.append(w)
            else:
                return
        keys = tuple(info)
        self._info_cols = cols
        self._info_types = tuple(map(type, info.values()))
        self._info_keys = keys
        self._info_n = len(keys)
        # One C call returns the values of the learned keys (a tuple: itemgetter of one key
        # returns the bare value, so that key is asked for twice and the copy ignored).
        self._info_get = (
            operator.itemgetter(*keys) if len(keys) > 1 else operator.itemgetter(*keys, *keys)
        )
        if len(keys) == 1:
            self._info_types += self._info_types

    def _fill_info(self, ivs: list[tuple[Any, ...] | None], lo: int) -> None:
        """Write batched info values (``ivs``: one per row from ``lo``, keys as learned)."""
        rows, infos = _batched_rows(ivs, lo)
        for j, w in enumerate(self._info_cols):
            if w is None:
                continue
            values = [v[j] for v in infos]
            try:
                w.buf[rows] = np.array(values, dtype=w.dt)
            except OverflowError:
                # A Python int beyond int64: not recordable, so that row is skipped (its
                # present flag stays false), as the per-step path does.
                assert w.col.present is not None
                at = range(rows.start, rows.stop) if isinstance(rows, slice) else rows
                for r, value in zip(at, values, strict=True):
                    try:
                        w.write(value, r)
                    except NotRecordableError:
                        self._skipped_info.add(w.name)
                    else:
                        w.col.present[r] = True
                continue
            w.col.present[rows] = True  # type: ignore[index]  # info columns are optional

    def _fill_probes(self, pvs: list[list[bytes] | None], lo: int) -> None:
        """Write batched probe bytes (``pvs``: one per row from ``lo``, names as learned)."""
        rows, probes = _batched_rows(pvs, lo)
        for j, w in enumerate(self._probe_cols):
            data = np.frombuffer(b"".join([v[j] for v in probes]), w.dt)
            w.buf[rows] = data.reshape(len(probes), *w.shape)
            w.col.present[rows] = True  # type: ignore[index]  # probe columns are optional

    def _learn_probe_keys(self) -> None:
        """Remember the pending probes' names, dtypes and shapes for the fast path of step().

        Probes that are NumPy arrays of their column's dtype and shape qualify (logits,
        value estimates as arrays); any other probes leave every row on the per-row path.
        """
        cols, spec = [], []
        for name, v in self._probes.items():
            w = self._probe_w.get(name)
            if (
                w is None
                or w.col.logical is not None
                or v.__class__ is not _ndarray
                or v.dtype is not w.dt
                or v.shape != w.shape
            ):
                return  # the spec stays empty: these probes are written row by row
            cols.append(w)
            spec.append((name, w.dt, w.shape))
        self._probe_cols, self._probe_spec = cols, tuple(spec)

    def _write_info(
        self,
        s: StreamWriter,
        writers: dict[Any, LeafWriter | None],
        info: Mapping[str, Any],
        p: int,
    ) -> None:
        # Hot path (an env's info every step): a flat key seen before goes straight to its
        # writer; new, skipped and nested keys take the general path. Writers of nested keys
        # are stored under a tuple of the key's parts, so a flat key that holds '/' never
        # reaches a nested key's column (nor the other way round).
        rest: list[tuple[Any, Any]] | None = None
        for k, value in info.items():
            w = writers.get(k, _MISSING)
            if w.__class__ is LeafWriter:
                try:
                    w.write(value, p)
                except NotRecordableError:
                    if isinstance(value, Mapping):  # a dict where a value was: refused below
                        rest = [*(rest or ()), (k, value)]
                        continue
                    # FORMAT.md: non-numeric values are skipped; @present records the absence.
                    self._skipped_info.add(k)
                    continue
                w.col.present[p] = True  # type: ignore[index]  # info columns are optional
            elif w is not None:
                rest = [*(rest or ()), (k, value)]
        if rest is not None:
            self._write_info_rest(s, writers, rest, p)

    def _write_info_rest(
        self,
        s: StreamWriter,
        writers: dict[Any, LeafWriter | None],
        rest: list[tuple[Any, Any]],
        p: int,
    ) -> None:
        """Write the info items the hot path left: new keys, nested dicts, skipped keys.

        Every new key is checked before any column is created, so a refused key leaves
        the file as it was.
        """
        leaves: list[tuple[tuple[Any, ...], Any]] = []
        for k, value in rest:
            if isinstance(value, Mapping):
                leaves.extend(_flat_parts(value, (k,)))
            else:
                leaves.append(((k,), value))
        for parts, _ in leaves:
            if (parts[0] if len(parts) == 1 else parts) not in writers:
                self._check_info_key(s, parts)
        for parts, value in leaves:
            self._write_info_key(s, writers, parts, value, p)

    def _write_info_key(
        self,
        s: StreamWriter,
        writers: dict[Any, LeafWriter | None],
        parts: tuple[Any, ...],
        value: Any,
        p: int,
    ) -> None:
        lookup: Any = parts[0] if len(parts) == 1 else parts
        w = writers.get(lookup, _MISSING)
        if w is _MISSING:
            w = writers[lookup] = self._info_writer(s, parts, value)
        if w is None:
            return
        assert w.col.present is not None
        if w.col.present[p]:
            key = "/".join(map(str, parts))
            raise CaptureError(
                f"info key {key!r} at step {self._t} names a column another key of the same "
                "info dict already filled; rename one of them"
            )
        try:
            w.write(value, p)
        except NotRecordableError:
            self._skipped_info.add(w.name)
            return
        w.col.present[p] = True

    def _info_writer(
        self, s: StreamWriter, parts: tuple[Any, ...], value: Any
    ) -> LeafWriter | None:
        """Create the column of a new info key (checked by :meth:`_check_info_key`)."""
        key = "/".join(map(str, parts))
        if key in self._ignore_info:
            return None
        return column_writer(
            s,
            F.column_path(F.INFO, key),
            f"info {key!r}",
            value,
            optional=True,
            name=key,
            skipped=self._skipped_info,
        )

    def _check_info_key(self, s: StreamWriter, parts: tuple[Any, ...]) -> None:
        if "/".join(map(str, parts)) not in self._ignore_info:
            check_info_key(s, parts, self._t)

    def _write_probes(self, p: int) -> None:
        s = self._steps
        for name, value in self._probes.items():
            w = self._probe_w.get(name)
            if w is None:
                w = self._probe_w[name] = column_writer(
                    s, F.column_path(F.PROBE, name), f"probe {name!r}", value, optional=True
                )
            assert w is not None
            w.write_present(value, p)
        if not self._probe_learned and self._fast is not None:
            self._probe_learned = True
            self._learn_probe_keys()
        self._probes.clear()


_MISSING: Any = object()


def _batched_rows(values: list[Any], lo: int) -> tuple[Any, list[Any]]:
    """Return the rows (a slice when every row has one) and the values that are not ``None``."""
    if None not in values:
        return slice(lo, lo + len(values)), values
    rows = [lo + i for i, v in enumerate(values) if v is not None]
    return rows, [v for v in values if v is not None]


def _flat_parts(info: Mapping[Any, Any], prefix: tuple[Any, ...]) -> Any:
    """Yield ``(key parts, value)`` for every leaf of a nested info dict under ``prefix``."""
    for k, v in info.items():
        if isinstance(v, Mapping):
            yield from _flat_parts(v, (*prefix, k))
        else:
            yield (*prefix, k), v
