"""Record ``gymnasium.vector`` envs (sync and async), snapshot every sub-env, restore and verify.

A vector recording uses the same file format as a single-env one: the ``steps``
and ``resets`` streams hold batched columns whose first axis is the sub-env
index (``obs``, ``action``, ``reward``, ``terminated``, ``truncated``,
``episode``), plus:

* ``autoreset`` (``NEXT_STEP`` mode): which sub-envs' step was the reset step
  that follows the end of an episode; their action was ignored by the env.
* ``info/final_obs/...`` (``SAME_STEP`` mode): the last observation of the
  episodes that ended at that step (zeros where ``info/_final_obs`` is false),
  and ``info/final_info/...`` with their final infos.

A snapshot holds every sub-env's wrapper chain (as :func:`replaykit._state.envs.capture_chain`),
the vector env's pending autoresets and space RNGs, the global RNGs and the tracked objects.
For an :class:`~gymnasium.vector.AsyncVectorEnv` the sub-envs live in worker processes: build
them with :func:`capturable` so each answers ``replaykit_capture`` through ``vec.call``
(gymnasium's own pipe carries the numpy/JSON state tree; files never hold pickle).

Example:
    >>> import gymnasium as gym, tempfile, os
    >>> from gymnasium.vector import SyncVectorEnv
    >>> path = os.path.join(tempfile.mkdtemp(), "vec.h5")
    >>> fns = [lambda: gym.make("CartPole-v1")] * 2
    >>> vec = VectorRecordingWrapper(SyncVectorEnv(fns), path, seed=0, snapshot_at=[5])
    >>> obs, _ = vec.reset()
    >>> for _ in range(10):
    ...     obs, *_ = vec.step(vec.action_space.sample())
    >>> vec.close()
    >>> rep = restore_vector(path, vec_env=SyncVectorEnv(fns))
    >>> for _ in range(5):
    ...     _ = rep.env.step(rep.recorded_action(rep.step_count))
    >>> rep.verified_steps
    5
    >>> rep.close()
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, cast

import gymnasium as gym
import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv, VectorEnv

from replaykit._analysis.compare import Rule, Rules
from replaykit._format import layout as F
from replaykit._format.store import Recording, SnapshotInfo, StreamWriter
from replaykit._session import recorder
from replaykit._session.recorder import (
    LeafWriter,
    NotRecordableError,
    RecorderCore,
    column_writer,
    env_spec_json,
    json_options,
)
from replaykit._session.verifier import (
    DEFAULT_IGNORE,
    ReplayCore,
    as_rules,
    leaf_values,
    restoring,
    space_problems,
)
from replaykit._state import snapshot
from replaykit._state import spaces as _spaces
from replaykit.errors import CaptureError, StateMismatchError, UsageError

__all__ = ["SubEnv", "VectorRecordingWrapper", "VectorReplay", "capturable", "restore_vector"]

_VECTOR_NOTE = "vector env: the first axis of each value is the sub-env index"


class SubEnv(gym.Wrapper[Any, Any, Any, Any]):
    """Makes one sub-env of a vector env capturable and restorable from the parent process.

    Build an :class:`~gymnasium.vector.AsyncVectorEnv` with :func:`capturable` (which
    wraps each env thunk in this class) so its workers answer ``replaykit_capture``.
    The wrapper is transparent: it adds nothing to the captured chain.

    It also carries a sub-env's pending ``NEXT_STEP`` autoreset across a restore: an
    async worker keeps that flag in a local variable no call can reach, so a restored
    sub-env that was due to reset does the reset itself at its next ``step`` (returning
    reward 0 and no termination, exactly as the worker would).
    """

    _replaykit_transparent = True
    replaykit_incoming: Any = None

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        super().__init__(env)
        self._pending_reset = False

    def replaykit_adapter(self) -> str | None:
        """Return the name of the env adapter for this sub-env, or ``None``."""
        from replaykit._state import envs as envstate

        adapter = envstate.find_env_adapter(self.env.unwrapped)
        return None if adapter is None else adapter.name

    def replaykit_uncapturable(self) -> str | None:
        """Say why no snapshot of this sub-env's wrapper chain can be taken, or ``None``."""
        from replaykit._state import envs as envstate

        return envstate.uncapturable_layer(self.env)

    def replaykit_capture(self) -> Any:
        """Capture this sub-env's wrapper chain (a picklable state tree)."""
        from replaykit._state import envs as envstate

        return envstate.capture_chain(self.env)

    def replaykit_apply(self) -> None:
        """Restore the ``(chain state, pending reset)`` pair set in ``replaykit_incoming``."""
        from replaykit._state import envs as envstate

        incoming, self.replaykit_incoming = self.replaykit_incoming, None
        if incoming is None:
            raise UsageError("replaykit_apply() without replaykit_incoming; use restore_vector")
        state, pending = incoming
        envstate.restore_chain(self.env, state)
        self._pending_reset = bool(pending)

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        if self._pending_reset:
            self._pending_reset = False
            obs, info = self.env.reset()
            return obs, 0.0, False, False, info
        return self.env.step(action)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        self._pending_reset = False
        return self.env.reset(seed=seed, options=options)


def _make_sub(fn: Callable[[], gym.Env[Any, Any]]) -> SubEnv:
    return SubEnv(fn())


def capturable(
    env_fns: Iterable[Callable[[], gym.Env[Any, Any]]],
) -> list[Callable[[], SubEnv]]:
    """Wrap env thunks so each sub-env is a :class:`SubEnv` (needed for ``AsyncVectorEnv``).

    Example:
        >>> import gymnasium as gym
        >>> fns = capturable([lambda: gym.make("CartPole-v1")] * 2)
        >>> type(fns[0]()).__name__
        'SubEnv'
    """
    return [functools.partial(_make_sub, fn) for fn in env_fns]


# ----------------------------------------------------------------------------- helpers
def _kind(vec: VectorEnv[Any, Any, Any]) -> str:
    if isinstance(vec, SyncVectorEnv):
        return "sync"
    if isinstance(vec, AsyncVectorEnv):
        return "async"
    raise UsageError(
        f"expected a gymnasium SyncVectorEnv or AsyncVectorEnv, found {type(vec).__name__}; "
        "put VectorRecordingWrapper directly around the vector env"
    )


def _mode(vec: VectorEnv[Any, Any, Any]) -> AutoresetMode:
    mode = vec.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
    return mode if isinstance(mode, AutoresetMode) else AutoresetMode(mode)


def _capture_envs(vec: Any) -> list[Any]:
    from replaykit._state import envs as envstate

    if isinstance(vec, SyncVectorEnv):
        return [envstate.capture_chain(e) for e in vec.envs]
    _require_sub_envs(vec, CaptureError)
    # Asked first: a worker whose call raises is shut down for good, so the refusal is
    # raised here in the parent and the vector env stays usable.
    for i, why in enumerate(vec.call("replaykit_uncapturable")):
        if why is not None:
            raise CaptureError(f"sub-env {i}: {why}")
    return list(vec.call("replaykit_capture"))


def _adapters(vec: Any) -> list[str | None]:
    from replaykit._state import envs as envstate

    if isinstance(vec, SyncVectorEnv):
        out = []
        for e in vec.envs:
            a = envstate.find_env_adapter(e.unwrapped)
            out.append(None if a is None else a.name)
        return out
    _require_sub_envs(vec, CaptureError)
    return list(vec.call("replaykit_adapter"))


def _uncapturable(vec: Any) -> list[str | None]:
    from replaykit._state import envs as envstate

    if isinstance(vec, SyncVectorEnv):
        return [envstate.uncapturable_layer(e) for e in vec.envs]
    return list(vec.call("replaykit_uncapturable"))


def _require_sub_envs(vec: Any, error: type[Exception]) -> None:
    # Ask with has_wrapper_attr: a worker that raises (AttributeError) is shut down for good.
    if not all(vec.call("has_wrapper_attr", "replaykit_capture")):
        raise error(
            "expected async sub-envs wrapped in replaykit.SubEnv, found plain ones; "
            "build the vector env as AsyncVectorEnv(replaykit.capturable(env_fns))"
        )


def _space_items(vec: VectorEnv[Any, Any, Any]) -> list[tuple[str, gym.Space[Any]]]:
    return [
        ("action", vec.action_space),
        ("observation", vec.observation_space),
        ("single_action", vec.single_action_space),
        ("single_observation", vec.single_observation_space),
    ]


def _capture_vector(vec: VectorEnv[Any, Any, Any], autoreset: np.ndarray) -> dict[str, Any]:
    from replaykit._state.envs.generators import capture_space_rng

    return {
        F.VECTOR_KIND: _kind(vec),
        F.VECTOR_NUM_ENVS: int(vec.num_envs),
        F.VECTOR_AUTORESET_MODE: _mode(vec).value,
        "autoreset": autoreset.copy(),
        "spaces": {
            name: capture_space_rng(s, f"vector {name}_space") for name, s in _space_items(vec)
        },
    }


def _seeds(seed: int | Sequence[int | None] | None, n: int) -> list[int | None]:
    if seed is None:
        return [None] * n
    if isinstance(seed, (int, np.integer)):
        return [int(seed) + i for i in range(n)]
    return [None if s is None else int(s) for s in seed]


def _info_items(
    infos: Mapping[Any, Any],
    obs_leaves: list[_spaces.Leaf],
    batch: Mapping[str, np.ndarray],
    prefix: tuple[Any, ...] = (),
) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Flatten batched vector infos to ``(key parts, value)``.

    ``final_obs`` object arrays become zero-filled batches, one per observation leaf, keyed
    ``(("final_obs/<leaf>",),)``: a one-string tuple, the path replaykit made (never a
    user's key, which is a tuple of the user's keys).
    """
    for key, value in infos.items():
        if isinstance(value, Mapping):
            yield from _info_items(value, obs_leaves, batch, (*prefix, key))
        elif (
            not prefix
            and key == F.FINAL_OBS
            and isinstance(value, np.ndarray)
            and value.dtype == object
        ):
            for leaf in obs_leaves:
                out = np.zeros_like(batch[leaf.name])
                get = _spaces.getter(leaf.path)
                for i, o in enumerate(value):
                    if o is not None:
                        out[i] = get(o)
                yield (F.column_path(F.FINAL_OBS, leaf.name),), out
        else:
            yield (*prefix, key), value


def _flat_infos(
    infos: Mapping[Any, Any], obs_leaves: list[_spaces.Leaf], batch: Mapping[str, np.ndarray]
) -> dict[str, Any]:
    """Flattened infos keyed by their ``/``-joined column names (what replay compares)."""
    return {"/".join(map(str, k)): v for k, v in _info_items(infos, obs_leaves, batch)}


def _batch_dict(value: Any, leaves: list[_spaces.Leaf]) -> dict[str, np.ndarray]:
    return {name: np.asarray(v) for name, v in leaf_values(leaves, value).items()}


def _spec_of(vec: Any) -> dict[str, Any] | None:
    if isinstance(vec, SyncVectorEnv):
        return env_spec_json(vec.envs[0])
    spec = vec.get_attr("spec")[0]
    if spec is None:
        return None

    class _Holder:  # env_spec_json reads only ``.spec``
        pass

    h = _Holder()
    h.spec = spec  # type: ignore[attr-defined]
    return env_spec_json(h)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- recording
class VectorRecordingWrapper(RecorderCore, gym.vector.VectorWrapper):
    """Records a ``SyncVectorEnv`` or ``AsyncVectorEnv``: batched steps and snapshots.

    Every ``reset`` and ``step`` is written with a first axis of ``num_envs``;
    snapshots (at ``snapshot_at`` / ``snapshot_every`` step counts, or on
    :meth:`snapshot`) capture every sub-env, the pending autoresets, the space and
    global RNGs and the tracked objects. Each sub-env needs an env adapter
    (replay-from-reset is not offered for vector envs).

    Args:
        env: the vector env (async sub-envs built with :func:`capturable`).
        path: the ``.h5`` file to write.
        seed: seed for the first reset (sub-env ``i`` gets ``seed + i``) and for the spaces.
        snapshot_at: batched step counts after which to snapshot.
        snapshot_every: also snapshot every this many batched steps.
        track: ``{name: object}`` to include in snapshots.
        metadata: JSON-able data stored under ``meta["user"]``.
        ignore_info: info keys (``/``-joined) not to record.
        commit_every_steps: commit at least this often, in batched steps.
        commit_every_seconds: and at least this often, in seconds.
    """

    def __init__(
        self,
        env: VectorEnv[Any, Any, Any],
        path: str | os.PathLike[str],
        *,
        seed: int | None = None,
        snapshot_at: Iterable[int] = (),
        snapshot_every: int | None = None,
        track: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        ignore_info: Iterable[str] = (),
        commit_every_steps: int = F.STREAM_CHUNK_ROWS,
        commit_every_seconds: float = 5.0,
    ) -> None:
        super().__init__(env)

        kind = _kind(env)
        recorder.check_seed_and_schedule(seed, snapshot_every)
        missing = [i for i, a in enumerate(_adapters(env)) if a is None]
        if missing:
            raise CaptureError(
                f"sub-envs {missing} have no env adapter, so their state cannot be snapshotted; "
                "register one with replaykit._state.envs.register_env_adapter (vector recordings "
                "do not replay from reset)"
            )
        self._n = int(env.num_envs)
        self._mode = _mode(env)
        self._seed = seed
        self._schedule(snapshot_at, snapshot_every)
        # As for single envs: a wrapper no snapshot could capture is refused before the file
        # exists when snapshots or tracked objects are asked for, not at the first snapshot.
        if self._snapshot_at or snapshot_every is not None or track:
            for i, why in enumerate(_uncapturable(env)):
                if why is not None:
                    raise CaptureError(f"sub-env {i}: {why}")
        self._ignore_info = set(ignore_info)
        self._obs_leaves = _spaces.leaves_of(env.observation_space, "observation")
        self._act_leaves = _spaces.leaves_of(env.action_space, "action")
        self._single_obs_leaves = _spaces.leaves_of(env.single_observation_space, "observation")
        vector = {
            F.VECTOR_KIND: kind,
            F.VECTOR_NUM_ENVS: self._n,
            F.VECTOR_AUTORESET_MODE: self._mode.value,
        }
        self._open_env(
            env,
            _spec_of(env),
            seed,
            path,
            {F.META_VECTOR: vector, F.META_ENV_ADAPTER: None},
            metadata=metadata,
            commit_every_steps=commit_every_steps,
            commit_every_seconds=commit_every_seconds,
        )
        # (stream, column path) for obs, actions and scalars; (stream, key parts) for infos.
        self._writers: dict[tuple[str, Any], LeafWriter | None] = {}
        self._skipped: set[str] = set()
        self._t = 0
        self._reset_count = 0
        self._episodes = np.full(self._n, -1, dtype=np.int64)
        self._autoreset = np.zeros(self._n, dtype=np.bool_)
        self._last_was_reset = True
        # Bound column buffers for the batched path of step() (see _start_batched), and
        # its rows not yet in the buffers (see _fill_batched).
        self._vfast: tuple[Any, ...] | None = None
        self._vpending: list[tuple[bytes, ...]] = []
        for name, obj in (track or {}).items():
            self.track(name, obj)

    @property
    def step_count(self) -> int:
        """Batched steps recorded so far."""
        return self._t

    def log_update(self, **values: Any) -> int:
        """Record one training update's named values (``loss=...``); returns its index."""
        self._require_open()
        return self._update_log.log(self.step_count, values)

    def snapshot(self, name: str | None = None, *, extra: Any = None) -> str:
        """Snapshot every sub-env and everything tracked; returns the snapshot's name."""
        self._require_open()
        if self._reset_count == 0:
            raise UsageError("snapshot() before the first reset(); reset the vector env first")
        self._fill_batched()  # the episode counters and autoresets of the rows so far
        name = self._snapshot_name(name, "step", self._t)
        recorder = {
            F.SNAP_STEP: self._t,
            F.SNAP_EPISODE: self._reset_count - 1,
            F.SNAP_RESETS: self._reset_count,
            F.RECORDER_EPISODES: self._episodes.copy(),
            F.SNAP_LAST_WAS_RESET: self._last_was_reset,
            F.SNAP_UPDATES: self._update_log.count,
            F.SNAP_NEEDS_RESET: False,
            F.SNAP_SEQ: self._snap_seq,
        }
        env = {
            "vector": _capture_vector(self.env, self._autoreset),
            "envs": _capture_envs(self.env),
        }
        meta = {k: v for k, v in recorder.items() if k != F.RECORDER_EPISODES}
        meta[F.SNAP_ENV_STATE] = F.ENV_STATE_ADAPTER
        meta[F.SNAP_PENDING_AUTORESETS] = [int(i) for i in np.flatnonzero(self._autoreset)]
        return self._write_snapshot(
            name, meta, nonfinite=False, env=env, recorder=recorder, extra=extra
        )

    # ---------------------------------------------------------------- writing rows
    def _write(self, s: StreamWriter, key: str, value: Any, p: int, optional: bool) -> None:
        w = self._writers.get((s.name, key), _MISSING)
        if w is _MISSING:
            if optional:  # an info key: skipped when ignored or not a number or array
                name, ignore, skipped = key[len(F.INFO) + 1 :], self._ignore_info, self._skipped
                w = column_writer(
                    s, key, key, value, optional=True, name=name, ignore=ignore, skipped=skipped
                )
            else:
                w = column_writer(s, key, key, value)
            self._writers[(s.name, key)] = w
        if w is None:
            return
        if optional:
            w.write_present(value, p)
        else:
            w.write(value, p)

    def _write_obs_info(self, s: StreamWriter, obs: Any, infos: Mapping[str, Any], p: int) -> None:
        batch = _batch_dict(obs, self._obs_leaves)
        for leaf in self._obs_leaves:
            self._write(s, F.column_path(F.OBS, leaf.name), batch[leaf.name], p, False)
        self._write_infos(s, infos, batch, p)

    def _write_infos(
        self, s: StreamWriter, infos: Mapping[str, Any], batch: Mapping[str, np.ndarray], p: int
    ) -> None:
        """Write a call's batched infos into row ``p`` (``batch``: its observation leaves)."""
        items = list(_info_items(infos, self._single_obs_leaves, batch))
        # Every new key is checked before any column is created: a refused key leaves the
        # file as it was. Writers are looked up by the key's parts, so a key holding '/'
        # never reaches a nested key's column.
        for parts, _ in items:
            if (s.name, parts) not in self._writers:
                self._check_info_key(s, parts)
        for parts, value in items:
            self._write_info(s, parts, value, p)

    def _check_info_key(self, s: StreamWriter, parts: tuple[Any, ...]) -> None:
        key = "/".join(map(str, parts))
        generated = len(parts) == 1 and key.startswith(F.FINAL_OBS + "/")
        if key in self._ignore_info or generated:
            return
        recorder.check_info_key(s, parts, self._t)

    def _write_info(self, s: StreamWriter, parts: tuple[Any, ...], value: Any, p: int) -> None:
        """Write one info value; a value that is not recordable is skipped for this row."""
        w = self._writers.get((s.name, parts), _MISSING)
        name = "/".join(map(str, parts))
        if w is _MISSING:
            w = self._writers[(s.name, parts)] = column_writer(
                s,
                F.column_path(F.INFO, name),
                F.column_path(F.INFO, name),
                value,
                optional=True,
                name=name,
                ignore=self._ignore_info,
                skipped=self._skipped,
            )
        if w is None:
            return
        assert w.col.present is not None
        if w.col.present[p]:
            raise CaptureError(
                f"info key {name!r} at step {self._t} names a column another key of the same "
                "info dict already filled; rename one of them"
            )
        try:
            w.write(value, p)
        except NotRecordableError:
            # FORMAT.md: non-numeric values are skipped; @present records the absence.
            self._skipped.add(name)
            return
        w.col.present[p] = True

    def _discard_row(self, s: StreamWriter, p: int) -> None:
        """Undo what a refused call wrote into row ``p`` of the stream's optional columns."""
        for col in s.optional:
            assert col.present is not None
            col.present[p] = False
            col.buf[p] = 0

    # ---------------------------------------------------------------- gymnasium API
    def reset(
        self,
        *,
        seed: int | list[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[Any, dict[str, Any]]:
        self._require_open()
        self._fill_batched()  # the episode counters and autoresets this reset changes
        if seed is None and self._reset_count == 0 and self._seed is not None:
            seed = self._seed
        seeds = _seeds(seed, self._n)
        mask = None if options is None else options.get("reset_mask")
        saved_options = None if options is None else dict(options)
        obs, infos = self.env.reset(seed=cast(Any, seed), options=options)
        s = self._resets
        p = s.pos
        self._write_obs_info(s, obs, infos, p)
        s.column(F.RESET_STEP, np.dtype(np.int64), ()).buf[p] = self._t
        s.column(F.RESET_SEED, np.dtype(np.int64), (self._n,)).buf[p] = [
            -1 if x is None else x for x in seeds
        ]
        s.column(F.RESET_SEEDED, np.dtype(np.bool_), (self._n,)).buf[p] = [
            x is not None for x in seeds
        ]
        if saved_options is not None:
            opts = dict(self._writer.meta[F.META_RESET_OPTIONS])
            opts[str(self._reset_count)] = json_options(saved_options)
            self._writer.update_meta(**{F.META_RESET_OPTIONS: opts})
        s.end_row()
        which = (
            np.ones(self._n, dtype=np.bool_) if mask is None else np.asarray(mask, dtype=np.bool_)
        )
        self._episodes[which] += 1
        self._autoreset[which] = False
        self._reset_count += 1
        self._last_was_reset = True
        if self._t == 0 and self._reset_count == 1 and 0 in self._snapshot_at:
            self.snapshot()
        return obs, infos

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        if self._halted:
            self._require_open()
        vf = self._vfast
        if vf is None:
            return self._step_general(actions)
        obs, rewards, terms, truncs, infos = self.env.step(actions)
        a_dt, a_shape, o_dt, o_shape, r_dt, n_shape = vf[1], vf[2], vf[4], vf[5], vf[7], vf[8]
        if not (
            actions.__class__ is _ndarray
            and actions.dtype is a_dt
            and actions.shape == a_shape
            and obs.__class__ is _ndarray
            and obs.dtype is o_dt
            and obs.shape == o_shape
            and rewards.__class__ is _ndarray
            and rewards.dtype is r_dt
            and rewards.shape == n_shape
            and terms.__class__ is _ndarray
            and terms.dtype is _BOOL
            and terms.shape == n_shape
            and truncs.__class__ is _ndarray
            and truncs.dtype is _BOOL
            and truncs.shape == n_shape
        ):
            # Values of another class, dtype or shape than the columns': the general path
            # writes (or refuses) them value by value, exactly as at the first step. The
            # batched rows go first: they set the episode counters and autoresets it uses.
            self._fill_batched()
            return self._write_step(
                self._autoreset.copy(), actions, obs, rewards, terms, truncs, infos
            )
        s = self._steps
        p = s.pos
        if infos:
            try:
                self._write_infos(s, infos, {self._obs_leaves[0].name: obs}, p)
            except CaptureError as exc:
                self._discard_row(s, p)
                self._halt_after_refusal(exc)
                raise
        # The batched path: the row's arrays are copied now (the env or the caller may reuse
        # them) and go into the column buffers once per block (_fill_batched), where the
        # episode counters and autoresets of all its rows are computed at once.
        self._vpending.append(
            (
                actions.tobytes(),
                obs.tobytes(),
                rewards.tobytes(),
                terms.tobytes(),
                truncs.tobytes(),
            )
        )
        # StreamWriter.end_row, inlined.
        s.pos = p = p + 1
        s.rows += 1
        if p == s.check_at:
            s.checkpoint()
        t = self._t = self._t + 1
        self._last_was_reset = False
        if t >= self._next_snapshot:
            self._snapshot_if_due(t)
        return obs, rewards, terms, truncs, infos

    def _fill_batched(self) -> None:
        """Move the rows batched by :meth:`step` into the column buffers.

        Also brings the episode counters and pending autoresets up to date: per row, as
        the general path computes them (``NEXT_STEP``: a sub-env whose previous step ended
        its episode resets in this one, which starts its next episode; ``SAME_STEP``: an
        ending step starts the next episode), as cumulative sums over the rows.
        """
        pend = self._vpending
        n = len(pend)
        if not n:
            return
        vf = self._vfast
        assert vf is not None
        (
            a_buf,
            a_dt,
            a_shape,
            o_buf,
            o_dt,
            o_shape,
            r_buf,
            r_dt,
            n_shape,
            t_buf,
            u_buf,
            e_buf,
            ar_buf,
        ) = vf
        hi = self._steps.pos
        lo = hi - n  # batched rows are always the latest ones
        cols = [b"".join([r[j] for r in pend]) for j in range(5)]
        pend.clear()
        a_buf[lo:hi] = np.frombuffer(cols[0], a_dt).reshape(n, *a_shape)
        o_buf[lo:hi] = np.frombuffer(cols[1], o_dt).reshape(n, *o_shape)
        r_buf[lo:hi] = np.frombuffer(cols[2], r_dt).reshape(n, *n_shape)
        terms = np.frombuffer(cols[3], _BOOL).reshape(n, *n_shape)
        truncs = np.frombuffer(cols[4], _BOOL).reshape(n, *n_shape)
        t_buf[lo:hi] = terms
        u_buf[lo:hi] = truncs
        done = terms | truncs
        if ar_buf is not None:  # NEXT_STEP
            pending = np.empty_like(done)
            pending[0] = self._autoreset
            pending[1:] = done[:-1]
            ar_buf[lo:hi] = pending
            episodes = self._episodes + np.cumsum(pending, axis=0, dtype=np.int64)
            self._autoreset = done[-1].copy()
        elif self._mode == AutoresetMode.SAME_STEP:
            episodes = self._episodes + np.cumsum(done, axis=0, dtype=np.int64)
        else:
            episodes = np.broadcast_to(self._episodes, done.shape)
            self._autoreset = done[-1].copy()
        e_buf[lo:hi] = episodes
        self._episodes = episodes[-1].copy()

    def _step_general(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """Step and write the row value by value (the first step, and any other layout)."""
        pending = self._autoreset.copy()
        obs, rewards, terms, truncs, infos = self.env.step(actions)
        out = self._write_step(pending, actions, obs, rewards, terms, truncs, infos)
        if self._t == 1:
            self._start_batched()
        return out

    def _write_step(
        self,
        pending: np.ndarray,
        actions: Any,
        obs: Any,
        rewards: Any,
        terms: Any,
        truncs: Any,
        infos: dict[str, Any],
    ) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        s = self._steps
        p = s.pos
        try:
            act = _batch_dict(actions, self._act_leaves)
            for leaf in self._act_leaves:
                self._write(s, F.column_path(F.ACTION, leaf.name), act[leaf.name], p, False)
            self._write_obs_info(s, obs, infos, p)
            self._write(s, F.REWARD, np.asarray(rewards), p, False)
            self._write(s, F.TERMINATED, np.asarray(terms, dtype=np.bool_), p, False)
            self._write(s, F.TRUNCATED, np.asarray(truncs, dtype=np.bool_), p, False)
        except CaptureError as exc:
            self._discard_row(s, p)
            self._halt_after_refusal(exc)
            raise
        done = np.logical_or(terms, truncs)
        if self._mode == AutoresetMode.NEXT_STEP:
            self._episodes[pending] += 1
            self._write(s, F.AUTORESET, pending, p, False)
            self._autoreset = done
        elif self._mode == AutoresetMode.SAME_STEP:
            self._episodes[done] += 1
        else:
            self._autoreset = done
        self._write(s, F.EPISODE, self._episodes.copy(), p, False)
        s.end_row()
        self._t += 1
        self._last_was_reset = False
        if self._t >= self._next_snapshot:
            self._snapshot_if_due(self._t)
        return obs, rewards, terms, truncs, infos

    def _start_batched(self) -> None:
        """Bind the column buffers for the batched path of :meth:`step` (after the first step).

        Taken when the action and the observation are single arrays (Box, Discrete,
        MultiBinary and MultiDiscrete spaces: no Dict or Tuple leaves); rows of another
        layout, dtype or shape than the first step's go through the general path.
        """
        if (
            len(self._act_leaves) != 1
            or len(self._obs_leaves) != 1
            or self._act_leaves[0].path
            or self._obs_leaves[0].path
        ):
            return
        cols = self._steps.columns
        act = cols[F.column_path(F.ACTION, self._act_leaves[0].name)]
        obs = cols[F.column_path(F.OBS, self._obs_leaves[0].name)]
        rew, term, trunc, ep = (cols[k] for k in (F.REWARD, F.TERMINATED, F.TRUNCATED, F.EPISODE))
        if any(c.logical is not None for c in (act, obs, rew)):
            return  # bfloat16 and other logical dtypes: stored bits, converted per value
        ar = cols[F.AUTORESET].buf if self._mode == AutoresetMode.NEXT_STEP else None
        self._vfast = (
            act.buf,
            act.buf.dtype,
            act.shape,
            obs.buf,
            obs.buf.dtype,
            obs.shape,
            rew.buf,
            rew.buf.dtype,
            (self._n,),
            term.buf,
            trunc.buf,
            ep.buf,
            ar,
        )
        self._steps.before_write = self._fill_batched

    def _final_meta(self) -> dict[str, Any]:
        self._fill_batched()
        return {
            F.META_SKIPPED_INFO: sorted(self._skipped),
            F.META_STEPS: self._t,
            F.META_RESETS: self._reset_count,
        }

    def _close_wrapped(self, **kwargs: Any) -> None:
        self.env.close(**kwargs)


_MISSING: Any = object()
_ndarray = np.ndarray
_BOOL = np.dtype(np.bool_)


# ----------------------------------------------------------------------------- replay
class _VerifyingVectorWrapper(gym.vector.VectorWrapper):
    """Steps the restored vector env and checks every batched step against the recording."""

    def __init__(self, env: VectorEnv[Any, Any, Any], replay: VectorReplay) -> None:
        super().__init__(env)
        self._r = replay

    def reset(
        self,
        *,
        seed: int | list[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[Any, dict[str, Any]]:
        __tracebackhide__ = True
        return self._r._reset(seed, options)

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        __tracebackhide__ = True
        return self._r._step(actions)


class VectorReplay(ReplayCore):
    """A restored vector snapshot; step ``env`` and every batched step is verified.

    Attributes:
        env: the vector env to step (raises ``DivergenceError`` at the first difference).
        obs: the batched observation at the snapshot.
        step_count: the batched step index of the next step.
        verified_steps: batched steps verified so far.
        autoreset: per sub-env, whether its next step is a ``NEXT_STEP`` reset step.
    """

    def __init__(
        self,
        rec: Recording,
        snap: SnapshotInfo,
        vec: VectorEnv[Any, Any, Any],
        tree: Mapping[str, Any],
        rules: Rules,
        ignore: Iterable[str],
        owns: bool,
    ) -> None:
        pos = tree[F.TREE_RECORDER]
        super().__init__(
            rec,
            snap,
            pos,
            owns,
            rules=rules,
            ignore=ignore,
            extra=tree.get(F.TREE_EXTRA),
            note=_VECTOR_NOTE,
        )
        self._vec = vec
        self._n = int(vec.num_envs)
        self._mode = _mode(vec)
        self._reset_count = int(pos[F.SNAP_RESETS])
        self.episodes = np.array(pos[F.RECORDER_EPISODES], dtype=np.int64)
        self.autoreset = np.array(tree[F.TREE_ENV]["vector"]["autoreset"], dtype=np.bool_)
        self._obs_leaves = _spaces.leaves_of(vec.observation_space, "observation")
        self._act_leaves = _spaces.leaves_of(vec.action_space, "action")
        self._single_obs_leaves = _spaces.leaves_of(vec.single_observation_space, "observation")
        self.env = _VerifyingVectorWrapper(vec, self)
        if bool(pos[F.SNAP_LAST_WAS_RESET]):
            rows, i = self._resets, self._reset_count - 1
        else:
            rows, i = self._steps_rows(), self.step_count - 1
        self.obs = self._recorded(rows, F.OBS, self._obs_leaves, vec.observation_space, i)

    def recorded_action(self, i: int) -> Any:
        """Return the batched action recorded at step ``i``."""
        rows = self._steps_rows()
        return self._recorded(rows, F.ACTION, self._act_leaves, self._vec.action_space, i)

    def _where(self, stream: str = F.STEPS, row: int | None = None) -> dict[str, Any]:
        return {
            "stream": stream,
            "row": self.step_count if row is None else row,
            "episode": None,
            "k": None,
        }

    def _step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        __tracebackhide__ = True
        rows = self._next_step_rows()
        t = self.step_count
        where = self._where()
        self._check_leaves(rows, t, F.ACTION, _batch_dict(actions, self._act_leaves), where)
        if self._mode == AutoresetMode.NEXT_STEP and F.AUTORESET in rows.stream.columns:
            # The env's pending autoresets (restored from the snapshot) must match the recording's.
            self._v.check(F.AUTORESET, rows.get(F.AUTORESET, t)[0], self.autoreset, **where)
        obs, rewards, terms, truncs, infos = self._vec.step(actions)
        batch = _batch_dict(obs, self._obs_leaves)
        self._check_leaves(rows, t, F.OBS, batch, where)
        self._v.check(F.REWARD, rows.get(F.REWARD, t)[0], np.asarray(rewards), **where)
        self._v.check(
            F.TERMINATED, rows.get(F.TERMINATED, t)[0], np.asarray(terms, np.bool_), **where
        )
        self._v.check(
            F.TRUNCATED, rows.get(F.TRUNCATED, t)[0], np.asarray(truncs, np.bool_), **where
        )
        live = _flat_infos(infos, self._single_obs_leaves, batch)
        self._check_info(rows, t, live, "info", where)
        done = np.logical_or(terms, truncs)
        if self._mode == AutoresetMode.NEXT_STEP:
            self.episodes[self.autoreset] += 1
            self.autoreset = done
        elif self._mode == AutoresetMode.SAME_STEP:
            self.episodes[done] += 1
        else:
            self.autoreset = done
        self._v.check(F.EPISODE, rows.get(F.EPISODE, t)[0], self.episodes, **where)
        self.step_count += 1
        self.verified_steps += 1
        self.obs = obs
        return obs, rewards, terms, truncs, infos

    def _reset(
        self, seed: int | list[int | None] | None, options: dict[str, Any] | None
    ) -> tuple[Any, dict[str, Any]]:
        __tracebackhide__ = True
        r = self._reset_count
        rows = self._resets
        where = self._where(F.RESETS, r)
        seeds = _seeds(seed, self._n)
        self._check_reset(
            r,
            "resets",
            np.array([-1 if x is None else x for x in seeds], np.int64),
            np.array([x is not None for x in seeds], np.bool_),
            where,
        )
        mask = None if options is None else options.get("reset_mask")
        obs, infos = self._vec.reset(seed=cast(Any, seed), options=options)
        batch = _batch_dict(obs, self._obs_leaves)
        self._check_leaves(rows, r, F.OBS, batch, where, key_prefix="reset/")
        live = _flat_infos(infos, self._single_obs_leaves, batch)
        self._check_info(rows, r, live, "reset/info", where)
        which = np.ones(self._n, np.bool_) if mask is None else np.asarray(mask, np.bool_)
        self.episodes[which] += 1
        self.autoreset[which] = False
        self._reset_count += 1
        self.obs = obs
        return obs, infos

    def recorded_reset_args(self) -> tuple[list[int | None], dict[str, Any] | None]:
        """``(per-sub-env seeds, options)`` the recording passed to the next reset."""
        seeds, seeded, opts = self._recorded_reset(self._reset_count)
        return [int(s) if ok else None for s, ok in zip(seeds, seeded, strict=True)], opts


def _check_vector(rec: Recording, vec: VectorEnv[Any, Any, Any], saved: Mapping[str, Any]) -> None:
    problems = []
    if int(saved[F.VECTOR_NUM_ENVS]) != vec.num_envs:
        problems.append(f"num_envs: recorded {saved[F.VECTOR_NUM_ENVS]}, got {vec.num_envs}")
    if saved[F.VECTOR_AUTORESET_MODE] != _mode(vec).value:
        problems.append(
            f"autoreset_mode: recorded {saved[F.VECTOR_AUTORESET_MODE]}, got {_mode(vec).value}"
        )
    problems += space_problems(rec, vec.observation_space, vec.action_space)
    spec = rec.meta.get(F.META_ENV_SPEC) or {}
    live = _spec_of(vec)
    if spec and live and spec.get(F.SPEC_ID) != live.get(F.SPEC_ID):
        problems.append(f"env id: recorded {spec.get(F.SPEC_ID)!r}, got {live.get(F.SPEC_ID)!r}")
    if problems:
        raise StateMismatchError("vector env", problems)


def restore_vector(
    recording: Recording | str | os.PathLike[str],
    snapshot_id: str | int | None = None,
    *,
    vec_env: Any,
    track: Mapping[str, Any] | None = None,
    rules: Rules | Mapping[str, Rule] | None = None,
    ignore: Iterable[str] = DEFAULT_IGNORE,
    global_rngs: bool = True,
    verify: bool = True,
) -> VectorReplay:
    """Restore a vector snapshot into a freshly built vector env and verify from there.

    Args:
        recording: a path or an open :class:`~replaykit._format.store.Recording`.
        snapshot_id: snapshot name or index (``None``: the first).
        vec_env: a fresh vector env built like the recorded one (same sub-env count and
            autoreset mode; async sub-envs built with :func:`capturable`). It need not be reset.
        track: ``{name: object}`` built like the recorded tracked objects.
        rules: per-key tolerances; bit-exact by default.
        ignore: fnmatch patterns of keys never compared.
        global_rngs: also restore Python/NumPy/torch global RNG states.
        verify: check file checksums.

    Raises:
        StateMismatchError: the vector env or tracked objects do not fit the snapshot.
    """
    from replaykit._state.envs import restore_chain
    from replaykit._state.envs.generators import restore_space_rng

    with restoring(recording, verify) as (rec, owns):
        if not rec.meta.get(F.META_VECTOR):
            raise UsageError(
                f"{rec.path} is a single-env recording; restore it with replaykit.restore"
            )
        info, tree = rec.load_snapshot(snapshot_id)
        saved = tree[F.TREE_ENV]["vector"]
        _check_vector(rec, vec_env, saved)
        tracked = dict(track or {})
        snapshot.check_tracked_names(tree[F.TREE_TRACKED], tree.get(F.TREE_KINDS) or {}, tracked)
        states = tree[F.TREE_ENV]["envs"]
        autoreset = np.asarray(saved["autoreset"], dtype=np.bool_)
        if isinstance(vec_env, SyncVectorEnv):
            for e, state in zip(vec_env.envs, states, strict=True):
                restore_chain(e, state)
            vec_env._autoreset_envs = autoreset.copy()
            vec_env._terminations = np.zeros(vec_env.num_envs, dtype=np.bool_)
            vec_env._truncations = np.zeros(vec_env.num_envs, dtype=np.bool_)
        else:
            _kind(vec_env)
            pending = (
                autoreset if _mode(vec_env) == AutoresetMode.NEXT_STEP else np.zeros_like(autoreset)
            )
            _require_sub_envs(vec_env, UsageError)
            vec_env.set_attr(
                "replaykit_incoming", [(s, bool(p)) for s, p in zip(states, pending, strict=True)]
            )
            vec_env.call("replaykit_apply")
        for name, space in _space_items(vec_env):
            restore_space_rng(space, saved["spaces"][name], f"vector {name}_space")
        snapshot.restore(tree, tracked, global_rngs=global_rngs)
        return VectorReplay(rec, info, vec_env, tree, as_rules(rules), ignore, owns)
