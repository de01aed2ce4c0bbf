"""Recording: a gymnasium wrapper that writes every step, and snapshots on demand.

Example:
    >>> import gymnasium as gym, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "run.h5")
    >>> env = RecordingWrapper(gym.make("CartPole-v1"), path, seed=0, snapshot_at=[20])
    >>> obs, info = env.reset()
    >>> for _ in range(50):
    ...     obs, r, term, trunc, info = env.step(env.action_space.sample())
    ...     if term or trunc:
    ...         obs, info = env.reset()
    >>> env.close()
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np

from replaykit._format import layout as F
from replaykit._format.store import Column, RecordingWriter, StreamWriter
from replaykit._state import snapshot
from replaykit._state import spaces as _spaces
from replaykit.errors import CaptureError, UsageError

__all__ = ["RecordingWrapper", "UpdateLog", "env_spec_json", "nonfinite_meta", "to_array"]

_INT64_MAX = (1 << 63) - 1
_ndarray = np.ndarray
_BOOLS = frozenset({bool, np.bool_})
_NEVER = math.inf
# Observations up to this many bytes are batched per block by RecordingWrapper.step; larger
# ones (images) are copied straight into the column buffer, which is then the cheaper copy.
_DEFER_MAX_BYTES = 4096

# Unwrapped env classes whose simulator state outlives ``reset()``: these Box2D envs create
# their ``b2World`` once in ``__init__`` and only destroy and re-create bodies on reset, so the
# world's broad-phase tree and contact order carry every earlier episode's history into the
# next one (measured: BipedalWalker diverges in episode 3 when replayed from that episode's
# reset). Replay-from-reset must start at the recording's first reset for them. An env class
# of your own declares the same with ``replaykit_replay_scope = "recording"``.
_STATE_OUTLIVES_RESET: frozenset[str] = frozenset(
    {
        "gymnasium.envs.box2d.bipedal_walker.BipedalWalker",
        "gymnasium.envs.box2d.car_racing.CarRacing",
    }
)


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


def to_array(value: Any, what: str) -> tuple[np.ndarray, str | None]:
    """Convert a recorded value to ``(array, logical dtype)`` without changing its bits."""
    if isinstance(value, np.ndarray):
        arr = value
    elif isinstance(value, np.generic):
        arr = np.asarray(value)
    elif isinstance(value, bool):
        arr = np.asarray(value, dtype=np.bool_)
    elif isinstance(value, int):
        arr = np.asarray(value, dtype=np.int64)
    elif isinstance(value, float):
        arr = np.asarray(value, dtype=np.float64)
    elif type(value).__module__.startswith("torch") and hasattr(value, "dtype"):
        from replaykit._format.tree import tensor_to_numpy

        arr, name = tensor_to_numpy(value)
        if arr.dtype.kind == "u" and name not in ("uint8", "uint16", "uint32", "uint64"):
            return arr, name
        return arr, None
    elif isinstance(value, (list, tuple)) and all(
        isinstance(v, (int, float, bool, np.generic)) for v in value
    ):
        arr = np.asarray(value)
    else:
        raise CaptureError(
            f"{what} is a {type(value).__name__}; replaykit records numbers, arrays and tensors"
        )
    if arr.dtype.kind not in F.ALLOWED_KINDS:
        raise CaptureError(
            f"{what} has dtype {arr.dtype}; only numeric and bool values are recorded"
        )
    return arr, None


def env_spec_json(env: gym.Env[Any, Any]) -> dict[str, Any] | None:
    """Return the env's spec as JSON data (callables and other non-data values as their repr)."""
    spec = env.spec
    if spec is None:
        return None

    def data(v: Any) -> Any:
        if v is None or isinstance(v, (bool, int, str)):
            return v
        if isinstance(v, float):
            return v if math.isfinite(v) else repr(v)
        if isinstance(v, (list, tuple)):
            return [data(x) for x in v]
        if isinstance(v, dict):
            return {str(k): data(x) for k, x in v.items()}
        if isinstance(v, np.generic):
            return v.item()
        return {"$repr": repr(v)[:200]}

    wrappers = []
    for w in spec.additional_wrappers or ():
        wrappers.append(
            {"name": w.name, "entry_point": str(w.entry_point), "kwargs": data(w.kwargs)}
        )
    return {
        "id": spec.id,
        "entry_point": spec.entry_point
        if isinstance(spec.entry_point, str)
        else data(spec.entry_point),
        "kwargs": data(dict(spec.kwargs)),
        "max_episode_steps": spec.max_episode_steps,
        "reward_threshold": data(spec.reward_threshold),
        "nondeterministic": bool(spec.nondeterministic),
        "order_enforce": bool(spec.order_enforce),
        "disable_env_checker": bool(spec.disable_env_checker),
        "additional_wrappers": wrappers,
    }


def open_writer(
    path: str | os.PathLike[str],
    fields: Mapping[str, Any],
    *,
    metadata: Mapping[str, Any] | None = None,
    **writer_options: Any,
) -> RecordingWriter:
    """Open a recording file with the metadata every recorder writes, plus ``fields``.

    The single-env, vector and env-less training recorders all start here, so the keys
    a reader relies on (``user``, ``skipped_info``, ``reset_options``, ``closed``) are
    spelled once.
    """
    from replaykit import provenance

    meta: dict[str, Any] = {
        **fields,
        "user": dict(metadata or {}),
        "skipped_info": [],
        "reset_options": {},
        "closed": False,
    }
    return RecordingWriter(path, meta=meta, provenance=provenance.collect(), **writer_options)


def env_fields(env: Any, spec: dict[str, Any] | None, seed: int | None) -> dict[str, Any]:
    """Metadata describing the recorded env: id, spec, class, seed and spaces."""
    return {
        "env_id": spec["id"] if spec else None,
        "env_spec": spec,
        "env_class": snapshot.kind_of(env.unwrapped),
        "seed": seed,
        "observation_space": _spaces.space_to_json(env.observation_space),
        "action_space": _spaces.space_to_json(env.action_space),
    }


class _LeafWriter:
    """Writes one leaf value per row into a column, refusing silent dtype or shape changes."""

    __slots__ = (
        "col",
        "buf",
        "dt",
        "shape",
        "what",
        "stream",
        "fast_type",
        "tensor_type",
        "tdtype",
    )

    def __init__(self, stream: StreamWriter, col: Column, what: str, first: Any = None) -> None:
        self.stream = stream
        self.col = col
        self.buf = col.buf
        self.dt = col.buf.dtype
        self.shape = col.shape
        self.what = what
        # A scalar class whose every value converts to exactly this column's dtype.
        self.fast_type: type | None = None
        if (
            col.logical is None
            and self.shape == ()
            and isinstance(first, (bool, int, float, np.generic))
        ):
            self.fast_type = type(first)
        # CPU tensors of a dtype numpy shares (probes such as logits) copy straight in.
        self.tensor_type: type | None = None
        self.tdtype: Any = None
        if col.logical is None and type(first).__module__.startswith("torch"):
            if getattr(first, "device", None) is not None and first.device.type == "cpu":
                self.tensor_type = type(first)
                self.tdtype = first.dtype

    def write(self, v: Any, p: int) -> None:
        c = v.__class__
        if c is np.ndarray:
            if v.dtype is self.dt and v.shape == self.shape:
                self.buf[p] = v
                return
        elif c is self.fast_type:
            self.buf[p] = v
            return
        elif (
            c is self.tensor_type
            and v.dtype is self.tdtype
            and v.shape == self.shape
            and v.device.type == "cpu"
        ):
            self.buf[p] = v.detach().numpy()
            return
        arr, logical = to_array(v, self.what)
        if (logical or arr.dtype) != (
            self.col.logical or self.col.dtype
        ) or arr.shape != self.shape:
            raise CaptureError(
                f"{self.what} changed from {self.col.logical or self.col.dtype}"
                f"{list(self.shape)} to "
                f"{logical or arr.dtype}{list(arr.shape)} at row {self.stream.rows}; replaykit "
                "records each key with one dtype and shape (exclude ragged info keys with "
                "ignore_info=...)"
            )
        self.buf[p] = arr


def nonfinite_meta(tracked: Any, snapshot_name: str) -> dict[str, Any] | None:
    """Describe the first NaN/infinity in captured tracked state (``None`` if all finite).

    Warns with :class:`~replaykit.errors.ReplaykitWarning`: a snapshot of a run that already
    went non-finite is rarely the state one meant to keep.
    """
    from replaykit._state.modelstate import first_nonfinite

    bad = first_nonfinite(tracked)
    if bad is None:
        return None
    index = list(bad[1]) if isinstance(bad[1], tuple) else bad[1]
    import warnings

    from replaykit.errors import ReplaykitWarning

    warnings.warn(
        f"snapshot {snapshot_name!r}: tracked state holds a non-finite value ({bad[2]!r} at "
        f"{bad[0]} element {index}); the run had already diverged numerically here",
        ReplaykitWarning,
        stacklevel=3,
    )
    return {"path": bad[0], "index": index, "value": repr(bad[2])}


def first_nonfinite_value(values: Mapping[str, Any]) -> dict[str, Any] | None:
    """Find the first NaN/infinity among named values.

    Returns:
        ``{"probe", "index", "value"}`` of the first one, or ``None``.
    """
    for name, value in values.items():
        try:
            arr, logical = to_array(value, name)
        except CaptureError:
            continue
        if logical is not None or arr.dtype.kind not in "fc":
            continue
        bad = ~np.isfinite(arr)
        if bad.any():
            flat = int(np.flatnonzero(bad)[0])
            index = [int(i) for i in np.unravel_index(flat, arr.shape)] if arr.ndim else []
            return {"probe": name, "index": index, "value": repr(arr.reshape(-1)[flat].item())}
    return None


class UpdateLog:
    """Writes the ``updates`` stream of a recording (shared by every recorder).

    Args:
        writer: the recording's writer; the stream is created at the first update.
    """

    def __init__(self, writer: RecordingWriter) -> None:
        self._writer = writer
        self._stream: StreamWriter | None = None
        self.count = 0
        self.first_nonfinite: dict[str, Any] | None = None
        # Names in first-logged order: stream columns are stored sorted, and "the first probe
        # that differs" within one update means the first one the loop computed.
        self._order: list[str] = []

    def log(self, step: int, values: Mapping[str, Any]) -> int:
        """Append one update row tagged with ``step``; returns the update index."""
        s = self._stream
        if s is None:
            s = self._stream = self._writer.stream(F.UPDATES)
        p = s.pos
        step_col = s.column(F.UPDATE_STEP, np.dtype(np.int64), ())
        step_col.buf[p] = step
        for name, value in values.items():
            key = F.column_path(F.PROBE, name)
            arr, logical = to_array(value, f"update value {name!r}")
            if key not in s.columns:
                self._order.append(name)
                self._writer.update_meta(update_probe_order=list(self._order))
            col = s.column(key, arr.dtype, arr.shape, logical=logical, optional=True)
            w = _LeafWriter(s, col, f"update value {name!r}")
            w.write(value, p)
            assert col.present is not None
            col.present[p] = True
        s.end_row()
        if self.first_nonfinite is None:
            bad = first_nonfinite_value(values)
            if bad is not None:
                self.first_nonfinite = {"update": self.count, "step": step, **bad}
                self._writer.update_meta(first_nonfinite_update=self.first_nonfinite)
        self.count += 1
        return self.count - 1

    def set_user_metadata(self, key: str, value: Any) -> None:
        """Store JSON data under ``meta["user"][key]``."""
        user = dict(self._writer.meta.get("user") or {})
        user[key] = value
        self._writer.update_meta(user=user)


class RecordingWrapper(gym.Wrapper[Any, Any, Any, Any]):
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
        path: the ``.h5`` file to write (replaced if it exists).
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
    # The next step count at which a snapshot may be due (recomputed after each check).
    _next_snapshot: float = 0

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
    ) -> None:
        super().__init__(env)
        from replaykit._state import envs as envstate

        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
            raise UsageError(f"seed must be a non-negative int, got {seed!r}")
        if snapshot_every is not None and snapshot_every < 1:
            raise UsageError(f"snapshot_every must be >= 1, got {snapshot_every}")
        self._snapshot_at = {int(s) for s in snapshot_at}
        if any(s < 0 for s in self._snapshot_at):
            raise UsageError("snapshot_at steps must be >= 0")
        self._snapshot_every = snapshot_every
        self._seed = seed
        self._tracked: dict[str, Any] = {}
        self._ignore_info = set(ignore_info)
        self._obs_leaves = _spaces.leaves_of(env.observation_space, "observation")
        self._act_leaves = _spaces.leaves_of(env.action_space, "action")
        self._has_adapter = envstate.find_env_adapter(env.unwrapped) is not None
        self._replay_scope = replay_scope(env)
        if seed is not None:
            env.action_space.seed(seed)
            env.observation_space.seed(seed)
        fields = env_fields(env, env_spec_json(env), seed)
        fields["env_adapter"] = getattr(envstate.find_env_adapter(env.unwrapped), "name", None)
        self._writer = open_writer(
            path,
            fields,
            metadata=metadata,
            commit_every_steps=commit_every_steps,
            commit_every_seconds=commit_every_seconds,
            fsync=fsync,
            compression=compression,
            direct_io=direct_io,
        )
        self.path = self._writer.path
        self._steps = self._writer.stream(F.STEPS)
        self._resets = self._writer.stream(F.RESETS)
        self._update_log = UpdateLog(self._writer)
        self._steps.on_block_full = self._writer.maybe_commit
        self._obs_w: list[_LeafWriter] | None = None
        self._act_w: list[_LeafWriter] | None = None
        self._reset_obs_w: list[_LeafWriter] | None = None
        self._reset_cols: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._scalar_cols: tuple[Column, Column, Column, Column] | None = None
        self._info_w: dict[str, _LeafWriter | None] = {}
        # Batched info path of step(): the flat keys, value classes and writers it expects.
        self._info_keys: tuple[str, ...] | None = None
        self._info_types: tuple[type, ...] = ()
        self._info_cols: list[_LeafWriter | None] = []
        self._reset_info_w: dict[str, _LeafWriter | None] = {}
        self._probes: dict[str, Any] = {}
        self._probe_w: dict[str, _LeafWriter] = {}
        self._t = 0
        self._episode = -1
        self._k = 0
        self._needs_reset = True
        self._episode_start_state: Any = None
        self._recording_start_state: Any = None
        self._snap_seq = 0
        self._skipped_info: set[str] = set()
        self._closed = False
        self._obs_get = [_spaces.getter(leaf.path) for leaf in self._obs_leaves]
        self._act_get = [_spaces.getter(leaf.path) for leaf in self._act_leaves]
        for name, obj in (track or {}).items():
            self.track(name, obj)

    # ------------------------------------------------------------------ public API
    @property
    def step_count(self) -> int:
        """Steps recorded so far (the global step index of the next step)."""
        return self._t

    @property
    def needs_reset(self) -> bool:
        """Whether the last step ended the episode (the next call should be ``reset``)."""
        return self._needs_reset

    @property
    def update_count(self) -> int:
        """Training updates logged so far."""
        return self._update_log.count

    @property
    def snapshot_names(self) -> list[str]:
        """Names of the snapshots written so far, oldest first."""
        return list(self._writer.snapshots)

    @property
    def episode(self) -> int:
        return self._episode

    def track(self, name: str, obj: Any) -> None:
        """Include ``obj`` in every snapshot under ``name``.

        Accepts torch modules, optimizers, LR schedulers, grad scalers,
        NumPy/torch/Python generators, NumPy arrays, dicts of arrays, and any
        object with ``state_dict``/``load_state_dict`` or
        ``__replaykit_state__``/``__replaykit_restore__``.
        """
        if not F.is_valid_name(name):
            raise UsageError(f"tracked name {name!r} must be non-empty, printable, without '/'")
        snapshot.capture_tracked(obj, name)  # refuse an uncapturable object now, not mid-run
        self._tracked[name] = obj

    def probe(self, name: str, value: Any) -> None:
        """Record a named value (logits, value estimate, ...) with the next step.

        On replay the same probe must come out bit-identical at the same step.
        """
        if name in self._probes:
            raise UsageError(f"probe {name!r} logged twice before one step")
        self._probes[name] = value

    def log_update(self, **values: Any) -> int:
        """Record one training update's named values (loss, grad norm, digests, ...).

        Updates form their own stream, numbered from 0, each tagged with the
        global step count at which it was logged. Returns the update index.
        The first NaN/infinity among the values is noted in the file's metadata
        under ``"first_nonfinite_update"``.
        """
        return self._update_log.log(self._t, values)

    def set_metadata(self, key: str, value: Any) -> None:
        """Store JSON data under ``meta["user"][key]`` in the file (written at the next commit)."""
        self._update_log.set_user_metadata(key, value)

    def snapshot(self, name: str | None = None, *, extra: Any = None) -> str:
        """Snapshot everything needed to continue from this point; returns its name."""
        if self._closed:
            raise UsageError("the recording is closed")
        if self._episode < 0:
            raise UsageError("snapshot() before the first reset(); reset the env first")
        if self._probes:
            raise UsageError(
                f"snapshot() between probe() and step(): probes {sorted(self._probes)} are "
                "pending; take the snapshot before logging the step's probes"
            )
        if name is None:
            name = f"step-{self._t:06d}"
            if name in self._writer.snapshots:
                name = f"{name}-{self._snap_seq}"
        recorder = {
            "step": self._t,
            "episode": self._episode,
            "step_in_episode": self._k,
            "updates": self._update_log.count,
            "needs_reset": self._needs_reset,
            "seq": self._snap_seq,
        }
        fallback = None
        if not self._has_adapter:
            fallback = {
                "episode_start": self._episode_start_state,
                "scope": self._replay_scope,
                "recording_start": (
                    self._recording_start_state if self._replay_scope == "recording" else None
                ),
            }
        from replaykit._state.modelstate import sharing

        # The tree goes straight to disk, so tensors need no copy first (half the time of a
        # large snapshot); nothing runs between capture and write that could change them.
        with sharing():
            tree = snapshot.capture(
                self.env, self._tracked, recorder, fallback=fallback, extra=extra
            )
            meta: dict[str, Any] = dict(recorder)
            has_env = tree["env"].get("env") is not None
            meta["env_state"] = "adapter" if has_env else "replay-from-reset"
            if not has_env:
                meta["replay_from"] = f"{self._replay_scope}-start"
            meta["tracked"] = sorted(self._tracked)
            meta["nonfinite"] = nonfinite_meta(tree["tracked"], name)
            meta["bytes"] = self._writer.write_snapshot(name, tree, meta)
        self._snap_seq += 1
        return name

    # ------------------------------------------------------------------ gymnasium API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        if self._closed:
            raise UsageError("the recording is closed")
        if seed is None and self._episode < 0 and self._seed is not None:
            seed = self._seed
        if seed is not None and not 0 <= int(seed) <= _INT64_MAX:
            raise UsageError(f"reset seed {seed} does not fit in int64")
        if self._probes:
            raise UsageError(
                f"probes {sorted(self._probes)} logged before reset(); log them before step()"
            )
        if not self._has_adapter:
            from replaykit._state import envs as envstate

            self._episode_start_state = envstate.capture_wrappers_and_rngs(self.env)
            if self._episode < 0:
                self._recording_start_state = self._episode_start_state
        obs, info = self.env.reset(seed=seed, options=options)
        self._episode += 1
        self._k = 0
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
            opts = dict(self._writer.meta["reset_options"])
            opts[str(self._episode)] = _json_options(options)
            self._writer.update_meta(reset_options=opts)
        s.end_row()
        if self._t in self._snapshot_at and self._t == 0 and self._episode == 0:
            self.snapshot()
        return obs, info

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        if self._closed:
            raise UsageError("the recording is closed")
        obs, reward, terminated, truncated, info = self.env.step(action)
        fast = self._fast
        s = self._steps
        p = s.pos
        if fast is not None:
            a_cls, a_dt, a_shape, o_dt, o_shape, r_types, o_buf = fast
        if (
            fast is not None
            and action.__class__ is a_cls
            and (a_dt is None or (action.dtype is a_dt and action.shape == a_shape))
            and obs.__class__ is _ndarray
            and obs.dtype is o_dt
            and obs.shape == o_shape
            and reward.__class__ in r_types
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
            else:
                ob = obs.tobytes()
            iv = None
            if info:
                # An info dict with the keys, order and value classes seen before (MuJoCo's
                # four floats every step) is batched too: ~0.4 us instead of ~0.7 us a key.
                if tuple(info) == self._info_keys:
                    iv = tuple(info.values())
                    if tuple(map(type, iv)) != self._info_types:
                        iv = None
                if iv is None:
                    self._write_info(s, self._info_w, info, p)
                    if self._info_keys is None:
                        self._learn_info_keys(info)
            self._pending.append(
                (
                    action if a_dt is None else action.tobytes(),
                    ob,
                    reward,
                    terminated,
                    truncated,
                    self._episode,
                    iv,
                )
            )
        else:
            if self._obs_w is None:
                self._init_step_columns(action, obs, reward, terminated, truncated)
            elif fast is not None:
                self._fill_pending()  # rows before this one, so they stay in order
            assert self._obs_w is not None and self._act_w is not None and self._scalar_cols
            for w, get in zip(self._act_w, self._act_get, strict=True):
                w.write(get(action), p)
            for w, get in zip(self._obs_w, self._obs_get, strict=True):
                w.write(get(obs), p)
            rew, term, trunc, ep = self._scalar_cols
            rew.buf[p] = reward
            term.buf[p] = terminated
            trunc.buf[p] = truncated
            ep.buf[p] = self._episode
            if info:
                self._write_info(s, self._info_w, info, p)
        if self._probes:
            self._write_probes(p)
        # StreamWriter.end_row, inlined: one method call is ~5% of the per-step budget.
        s.pos = p = p + 1
        s.rows += 1
        if p == s.check_at:
            s.checkpoint()
        t = self._t = self._t + 1
        self._k += 1
        if terminated or truncated:
            self._needs_reset = True
        if t >= self._next_snapshot:
            self._snapshot_if_due(t)
        return obs, reward, terminated, truncated, info

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                if self._probes:
                    self._probes.clear()
                self._writer.update_meta(
                    closed=True,
                    skipped_info=sorted(self._skipped_info),
                    steps=self._t,
                    episodes=self._episode + 1,
                    updates=self._update_log.count,
                )
                self._writer.close()
            finally:
                super().close()

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
    ) -> list[_LeafWriter]:
        out = []
        for leaf, get in zip(leaves, getters, strict=True):
            arr, logical = to_array(get(value), f"{prefix} {leaf.name or ''}".strip())
            key = F.column_path(prefix, leaf.name)
            col = s.column(key, arr.dtype, arr.shape, logical=logical)
            out.append(_LeafWriter(s, col, key, get(value)))
        return out

    def _init_step_columns(
        self, action: Any, obs: Any, reward: Any, terminated: Any, truncated: Any
    ) -> None:
        s = self._steps
        self._act_w = self._make_writers(s, F.ACTION, self._act_leaves, self._act_get, action)
        self._obs_w = self._make_writers(s, F.OBS, self._obs_leaves, self._obs_get, obs)
        rarr, _ = to_array(reward, "reward")
        if rarr.shape != ():
            raise CaptureError(f"reward has shape {rarr.shape}; a gymnasium reward is a scalar")
        rdt = np.dtype(np.float64) if isinstance(reward, (int, float)) else rarr.dtype
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
            # Reward classes whose values the batched np.array(..., dtype) converts exactly as
            # a per-row buffer store would.
            r_types = frozenset({type(reward), float, int, np.float64, np.float32})
            self._fast = (
                _ndarray if a_arr else a.fast_type,
                a.dt if a_arr else None,
                a.shape,
                o.dt,
                o.shape,
                r_types,
                o.buf if o.buf[0].nbytes > _DEFER_MAX_BYTES else None,
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
        infos = [(lo + i, r[6]) for i, r in enumerate(pend) if r[6] is not None]
        pend.clear()
        if infos:
            self._fill_info(infos, lo, hi)
        a, o = self._act_w[0], self._obs_w[0]
        if self._fast[1] is not None:
            a.buf[lo:hi] = np.frombuffer(b"".join(acts), a.dt).reshape(n, *a.shape)
        else:
            a.buf[lo:hi] = np.array(acts, dtype=a.dt)
        if self._fast[6] is None:
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
        cols: list[_LeafWriter | None] = []
        for k, v in info.items():
            w = self._info_w.get(k, _MISSING)
            if w is None:  # ignored or unrecordable key: its values are dropped
                cols.append(None)
            elif (
                w.__class__ is _LeafWriter
                and w.fast_type is not None
                and v.__class__ is w.fast_type
            ):
                cols.append(w)
            else:
                return
        self._info_cols = cols
        self._info_types = tuple(map(type, info.values()))
        self._info_keys = tuple(info)

    def _fill_info(self, infos: list[tuple[int, tuple[Any, ...]]], lo: int, hi: int) -> None:
        """Write batched info values (rows ``infos``, keys as learned) into their columns."""
        rows: Any = slice(lo, hi) if len(infos) == hi - lo else [r for r, _ in infos]
        for j, w in enumerate(self._info_cols):
            if w is None:
                continue
            values = [v[j] for _, v in infos]
            try:
                w.buf[rows] = np.array(values, dtype=w.dt)
            except OverflowError:
                # A Python int beyond int64: store row by row, so the error is the one the
                # per-step path raises (only later, at the block's end).
                for (r, _), value in zip(infos, values, strict=True):
                    w.write(value, r)
            w.col.present[rows] = True  # type: ignore[index]  # info columns are optional

    def _snapshot_if_due(self, t: int) -> None:
        # step() compares the step count with one precomputed number; the set lookup and the
        # modulo run only here.
        every = self._snapshot_every
        if t in self._snapshot_at or (every is not None and t % every == 0):
            self.snapshot()
        later = [s for s in self._snapshot_at if s > t]
        if every is not None:
            later.append((t // every + 1) * every)
        self._next_snapshot = min(later, default=_NEVER)

    def _write_info(
        self,
        s: StreamWriter,
        writers: dict[str, _LeafWriter | None],
        info: Mapping[str, Any],
        p: int,
    ) -> None:
        # Hot path (an env's info every step): a flat key seen before goes straight to its
        # writer; new, skipped and nested keys take the general path.
        for k, value in info.items():
            w = writers.get(k, _MISSING)
            if w.__class__ is _LeafWriter:
                w.write(value, p)
                w.col.present[p] = True  # type: ignore[index]  # info columns are optional
            elif w is not None:
                if isinstance(value, Mapping):
                    for key, v in _flat_info(value, str(k)):
                        self._write_info_key(s, writers, key, v, p)
                else:
                    self._write_info_key(s, writers, str(k), value, p)

    def _write_info_key(
        self, s: StreamWriter, writers: dict[str, _LeafWriter | None], key: str, value: Any, p: int
    ) -> None:
        w = writers.get(key, _MISSING)
        if w is _MISSING:
            if key in self._ignore_info:
                writers[key] = None
                return
            try:
                arr, logical = to_array(value, f"info {key!r}")
            except CaptureError:
                writers[key] = None
                self._skipped_info.add(key)
                return
            col = s.column(
                F.column_path(F.INFO, key), arr.dtype, arr.shape, logical=logical, optional=True
            )
            w = writers[key] = _LeafWriter(s, col, f"info {key!r}", value)
        if w is None:
            return
        w.write(value, p)
        assert w.col.present is not None
        w.col.present[p] = True

    def _write_probes(self, p: int) -> None:
        s = self._steps
        for name, value in self._probes.items():
            w = self._probe_w.get(name)
            if w is None:
                arr, logical = to_array(value, f"probe {name!r}")
                col = s.column(
                    F.column_path(F.PROBE, name),
                    arr.dtype,
                    arr.shape,
                    logical=logical,
                    optional=True,
                )
                w = self._probe_w[name] = _LeafWriter(s, col, f"probe {name!r}", value)
            w.write(value, p)
            assert w.col.present is not None
            w.col.present[p] = True
        self._probes.clear()


_MISSING: Any = object()


def _flat_info(info: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for k, v in info.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            yield from _flat_info(v, key)
        else:
            yield key, v


def _json_options(options: Mapping[str, Any]) -> Any:
    from replaykit._format.layout import dumps, loads

    try:
        return loads(dumps(options))
    except TypeError as exc:
        raise CaptureError(
            f"reset options must be JSON data to be recorded ({exc}); pass numbers, strings, "
            "lists and dicts"
        ) from None
