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

from replaykit import _format as F
from replaykit import _spaces, snapshot
from replaykit.errors import CaptureError, UsageError
from replaykit.store import Column, RecordingWriter, StreamWriter

__all__ = ["RecordingWrapper", "env_spec_json", "to_array"]

_INT64_MAX = (1 << 63) - 1


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
        from replaykit._tree import tensor_to_numpy

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
        raise CaptureError(f"{what} has dtype {arr.dtype}; only numeric and bool values are recorded")
    return arr, None


def env_spec_json(env: gym.Env[Any, Any]) -> dict[str, Any] | None:
    """The env's spec as JSON data (callables and other non-data values as their repr)."""
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
        wrappers.append({"name": w.name, "entry_point": str(w.entry_point), "kwargs": data(w.kwargs)})
    return {
        "id": spec.id,
        "entry_point": spec.entry_point if isinstance(spec.entry_point, str) else data(spec.entry_point),
        "kwargs": data(dict(spec.kwargs)),
        "max_episode_steps": spec.max_episode_steps,
        "reward_threshold": data(spec.reward_threshold),
        "nondeterministic": bool(spec.nondeterministic),
        "order_enforce": bool(spec.order_enforce),
        "disable_env_checker": bool(spec.disable_env_checker),
        "additional_wrappers": wrappers,
    }


class _LeafWriter:
    """Writes one leaf value per row into a column, refusing silent dtype or shape changes."""

    __slots__ = ("col", "buf", "dt", "shape", "what", "stream", "fast_type")

    def __init__(self, stream: StreamWriter, col: Column, what: str, first: Any = None) -> None:
        self.stream = stream
        self.col = col
        self.buf = col.buf
        self.dt = col.buf.dtype
        self.shape = col.shape
        self.what = what
        # A scalar class whose every value converts to exactly this column's dtype.
        self.fast_type: type | None = None
        if col.logical is None and self.shape == () and isinstance(
            first, (bool, int, float, np.generic)
        ):
            self.fast_type = type(first)

    def write(self, v: Any, p: int) -> None:
        c = v.__class__
        if c is np.ndarray:
            if v.dtype is self.dt and v.shape == self.shape:
                self.buf[p] = v
                return
        elif c is self.fast_type:
            self.buf[p] = v
            return
        arr, logical = to_array(v, self.what)
        if (logical or arr.dtype) != (self.col.logical or self.col.dtype) or arr.shape != self.shape:
            raise CaptureError(
                f"{self.what} changed from {self.col.logical or self.col.dtype}{list(self.shape)} to "
                f"{logical or arr.dtype}{list(arr.shape)} at row {self.stream.rows}; replaykit "
                "records each key with one dtype and shape (exclude ragged info keys with "
                "ignore_info=...)"
            )
        self.buf[p] = arr


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
    ) -> None:
        super().__init__(env)
        from replaykit import envstate, provenance

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
        if seed is not None:
            env.action_space.seed(seed)
            env.observation_space.seed(seed)
        spec = env_spec_json(env)
        meta = {
            "env_id": spec["id"] if spec else None,
            "env_spec": spec,
            "env_class": snapshot.kind_of(env.unwrapped),
            "seed": seed,
            "observation_space": _spaces.space_to_json(env.observation_space),
            "action_space": _spaces.space_to_json(env.action_space),
            "env_adapter": getattr(envstate.find_env_adapter(env.unwrapped), "name", None),
            "user": dict(metadata or {}),
            "skipped_info": [],
            "reset_options": {},
            "closed": False,
        }
        self._writer = RecordingWriter(
            path,
            meta=meta,
            provenance=provenance.collect(),
            commit_every_steps=commit_every_steps,
            commit_every_seconds=commit_every_seconds,
            fsync=fsync,
        )
        self.path = self._writer.path
        self._steps = self._writer.stream(F.STEPS)
        self._resets = self._writer.stream(F.RESETS)
        self._updates_stream: StreamWriter | None = None
        self._steps.on_block_full = self._writer.maybe_commit
        self._obs_w: list[_LeafWriter] | None = None
        self._act_w: list[_LeafWriter] | None = None
        self._reset_obs_w: list[_LeafWriter] | None = None
        self._scalar_cols: tuple[Column, Column, Column, Column] | None = None
        self._info_w: dict[str, _LeafWriter | None] = {}
        self._reset_info_w: dict[str, _LeafWriter | None] = {}
        self._probes: dict[str, Any] = {}
        self._probe_w: dict[str, _LeafWriter] = {}
        self._t = 0
        self._episode = -1
        self._k = 0
        self._updates = 0
        self._needs_reset = True
        self._episode_start_state: Any = None
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
        """
        s = self._updates_stream
        if s is None:
            s = self._updates_stream = self._writer.stream(F.UPDATES)
        p = s.pos
        step_col = s.column(F.UPDATE_STEP, np.dtype(np.int64), ())
        step_col.buf[p] = self._t
        for name, value in values.items():
            key = F.column_path(F.PROBE, name)
            arr, logical = to_array(value, f"update value {name!r}")
            col = s.column(key, arr.dtype, arr.shape, logical=logical, optional=True)
            w = _LeafWriter(s, col, f"update value {name!r}")
            w.write(value, p)
            assert col.present is not None
            col.present[p] = True
        s.end_row()
        self._updates += 1
        return self._updates - 1

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
            "updates": self._updates,
            "needs_reset": self._needs_reset,
            "seq": self._snap_seq,
        }
        fallback = None
        if not self._has_adapter:
            fallback = {"episode_start": self._episode_start_state}
        tree = snapshot.capture(
            self.env, self._tracked, recorder, fallback=fallback, extra=extra
        )
        meta = dict(recorder)
        meta["env_state"] = "adapter" if tree["env"].get("env") is not None else "replay-from-reset"
        meta["tracked"] = sorted(self._tracked)
        from replaykit.modelstate import first_nonfinite

        bad = first_nonfinite(tree["tracked"])
        meta["nonfinite"] = None if bad is None else {"path": bad[0], "index": list(bad[1]) if isinstance(bad[1], tuple) else bad[1], "value": repr(bad[2])}
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
            raise UsageError(f"probes {sorted(self._probes)} logged before reset(); log them before step()")
        if not self._has_adapter:
            from replaykit import envstate

            self._episode_start_state = envstate.capture_wrappers_and_rngs(self.env)
        obs, info = self.env.reset(seed=seed, options=options)
        self._episode += 1
        self._k = 0
        self._needs_reset = False
        s = self._resets
        p = s.pos
        if self._reset_obs_w is None:
            self._reset_obs_w = self._make_writers(s, F.OBS, self._obs_leaves, self._obs_get, obs)
        for w, get in zip(self._reset_obs_w, self._obs_get):
            w.write(get(obs), p)
        s.column(F.RESET_STEP, np.dtype(np.int64), ()).buf[p] = self._t
        s.column(F.RESET_SEED, np.dtype(np.int64), ()).buf[p] = -1 if seed is None else int(seed)
        s.column(F.RESET_SEEDED, np.dtype(np.bool_), ()).buf[p] = seed is not None
        if info:
            self._write_info(s, self._reset_info_w, info, p)
        if options is not None:
            opts = self._writer._meta["reset_options"]
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
        s = self._steps
        p = s.pos
        if self._obs_w is None:
            self._init_step_columns(action, obs, reward, terminated, truncated)
        assert self._obs_w is not None and self._act_w is not None and self._scalar_cols
        for w, get in zip(self._act_w, self._act_get):
            w.write(get(action), p)
        for w, get in zip(self._obs_w, self._obs_get):
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
        s.end_row()
        self._t += 1
        self._k += 1
        if terminated or truncated:
            self._needs_reset = True
        if self._t in self._snapshot_at or (
            self._snapshot_every is not None and self._t % self._snapshot_every == 0
        ):
            self.snapshot()
        return obs, reward, terminated, truncated, info

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                if self._probes:
                    self._probes.clear()
                self._writer.update_meta(
                    closed=True, skipped_info=sorted(self._skipped_info), steps=self._t,
                    episodes=self._episode + 1, updates=self._updates,
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
        for leaf, get in zip(leaves, getters):
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

    def _write_info(
        self, s: StreamWriter, writers: dict[str, _LeafWriter | None], info: Mapping[str, Any], p: int
    ) -> None:
        for key, value in _flat_info(info):
            w = writers.get(key, _MISSING)
            if w is _MISSING:
                if key in self._ignore_info:
                    writers[key] = None
                    continue
                try:
                    arr, logical = to_array(value, f"info {key!r}")
                except CaptureError:
                    writers[key] = None
                    self._skipped_info.add(key)
                    continue
                col = s.column(F.column_path(F.INFO, key), arr.dtype, arr.shape, logical=logical, optional=True)
                w = writers[key] = _LeafWriter(s, col, f"info {key!r}", value)
            if w is None:
                continue
            assert isinstance(w, _LeafWriter)
            w.write(value, p)
            assert w.col.present is not None
            w.col.present[p] = True

    def _write_probes(self, p: int) -> None:
        s = self._steps
        for name, value in self._probes.items():
            w = self._probe_w.get(name)
            if w is None:
                arr, logical = to_array(value, f"probe {name!r}")
                col = s.column(F.column_path(F.PROBE, name), arr.dtype, arr.shape, logical=logical, optional=True)
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
    from replaykit._format import dumps, loads

    try:
        return loads(dumps(options))
    except TypeError as exc:
        raise CaptureError(
            f"reset options must be JSON data to be recorded ({exc}); pass numbers, strings, "
            "lists and dicts"
        ) from None
