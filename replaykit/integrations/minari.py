"""Export a single-env recording as a Minari dataset (``pip install "replaykit[minari]"``).

``replaykit export RUN.h5 --minari DATASET_ID`` (or :func:`export_minari`) writes a dataset
that ``minari.load_dataset(DATASET_ID)`` opens with the recorded observations, actions,
rewards, terminations, truncations and infos, bit for bit (JPEG encoding off), one Minari
episode per recorded reset (index 0 of observations and infos is the reset's).

Safety: Minari re-creates an env from the entry point in a dataset's metadata, which
executes code. The export writes an env spec only when the recorded env id is registered
with gymnasium in the exporting process with the same entry point and keyword arguments,
and then it writes the *registered* spec (the entry point comes from the registry, never
from the recording). Otherwise the dataset holds no env spec, only the spaces, rebuilt from
the recording's space descriptions (a ``Box`` without recorded bounds gets infinite ones).

Example:
    >>> import os, tempfile, gymnasium as gym, replaykit
    >>> os.environ["MINARI_DATASETS_PATH"] = tempfile.mkdtemp()
    >>> path = os.path.join(tempfile.mkdtemp(), "run.h5")
    >>> with replaykit.RecordingWrapper(gym.make("CartPole-v1"), path, seed=0) as env:
    ...     _ = env.reset()
    ...     for _ in range(30):
    ...         *_, term, trunc, _ = env.step(env.action_space.sample())
    ...         if term or trunc:
    ...             _ = env.reset()
    >>> ds = export_minari(path, "cartpole/replaykit-v0")
    >>> ds.total_steps
    30
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path as _Path
from typing import Any

import numpy as np

from replaykit._format import layout as F
from replaykit._format.store import Recording as _Recording
from replaykit.errors import MissingExtraError as _MissingExtraError
from replaykit.errors import UsageError as _UsageError

__all__ = ["MINARI_MISSING", "export_minari"]

MINARI_MISSING = (
    "replaykit.integrations.minari needs Minari, which is not installed; "
    'install it with: pip install "replaykit[minari]"'
)


def _minari() -> Any:
    try:
        import minari
    except ImportError:
        raise _MissingExtraError(MINARI_MISSING) from None
    return minari


def _space(doc: Any) -> Any:
    import gymnasium as gym

    kind = doc.get("type")
    if kind == "Dict":
        return gym.spaces.Dict({k: _space(v) for k, v in doc["spaces"].items()})
    if kind == "Tuple":
        return gym.spaces.Tuple([_space(v) for v in doc["spaces"]])
    if kind == "Discrete":
        return gym.spaces.Discrete(int(doc["n"]), start=int(doc.get("start", 0)))
    if kind == "Box":
        dt = np.dtype(doc["dtype"])
        lo, hi = (-np.inf, np.inf) if dt.kind == "f" else (np.iinfo(dt).min, np.iinfo(dt).max)
        return gym.spaces.Box(lo, hi, tuple(doc["shape"]), dt)
    if kind == "MultiBinary":
        return gym.spaces.MultiBinary(list(doc["shape"]))
    raise _UsageError(
        f"the recording's {kind} space has no Minari export; export recordings of Box, "
        "Discrete, MultiBinary, Dict and Tuple spaces"
    )


def _registered_spec(meta: Mapping[str, Any]) -> Any:
    """Return gymnasium's registered spec for the recorded env, or ``None`` if it differs."""
    import gymnasium as gym

    recorded = meta.get(F.META_ENV_SPEC)
    if not recorded or recorded.get(F.SPEC_ADDITIONAL_WRAPPERS):
        return None
    try:
        spec = gym.spec(recorded[F.SPEC_ID])
    except gym.error.Error:
        return None
    same = (
        isinstance(spec.entry_point, str)
        and spec.entry_point == recorded.get(F.SPEC_ENTRY_POINT)
        and dict(spec.kwargs) == recorded.get(F.SPEC_KWARGS)
        and spec.max_episode_steps == recorded.get(F.SPEC_MAX_EPISODE_STEPS)
    )
    return spec if same else None


def _nest(flat: Mapping[str, Any]) -> Any:
    """``{"a/b": x}`` -> ``{"a": {"b": x}}``; a single ``""`` key is the value itself."""
    if set(flat) == {""}:
        return flat[""]
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split("/")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _columns(stream: Any, prefix: str) -> list[str]:
    return sorted(c for c in stream.columns if c == prefix or c.startswith(prefix + "/"))


def _leaf(col: str, prefix: str) -> str:
    return col[len(prefix) + 1 :] if col != prefix else ""


def _episodes(rec: _Recording) -> list[Any]:
    from minari.data_collector import EpisodeBuffer

    steps, resets = rec.stream(F.STEPS), rec.stream(F.RESETS)
    n, r = steps.rows, resets.rows
    read = {c: steps.read(c, 0, n) for c in steps.columns}
    rread = {c: resets.read(c, 0, r) for c in resets.columns}
    starts = [int(s) for s in rread[F.RESET_STEP]] + [n]
    obs_cols, act_cols = _columns(steps, F.OBS), _columns(steps, F.ACTION)
    info_keys = sorted({_leaf(c, F.INFO) for s in (steps, resets) for c in _columns(s, F.INFO)})
    buffers: list[Any] = []
    for e in range(r):
        lo, hi = starts[e], starts[e + 1]
        if hi <= lo:
            continue  # a reset with no step after it (the recording's last) ends no episode
        observations = {
            _leaf(c, F.OBS): np.concatenate([rread[c][e : e + 1], read[c][lo:hi]]) for c in obs_cols
        }
        infos = {}
        for key in info_keys:
            col = F.column_path(F.INFO, key)
            at_reset = col in resets.columns and bool(_present(resets, col, r)[e])
            step_present = (
                _present(steps, col, n)[lo:hi] if col in steps.columns else np.zeros(0, bool)
            )
            if not at_reset or col not in steps.columns or not step_present.all():
                raise _UsageError(
                    f"info key {key!r} is missing at some steps of episode {e}; Minari needs "
                    "every info key at every step: record with ignore_info=[...] for it"
                )
            if rread[col].dtype != read[col].dtype:
                raise _UsageError(
                    f"info key {key!r} is {rread[col].dtype} at reset but {read[col].dtype} at "
                    "steps; Minari stores one dtype per key and replaykit never converts"
                )
            infos[key] = np.concatenate([rread[col][e : e + 1], read[col][lo:hi]])
        seeded = bool(rread[F.RESET_SEEDED][e])
        buffers.append(
            EpisodeBuffer(
                id=len(buffers),
                seed=int(rread[F.RESET_SEED][e]) if seeded else None,
                observations=_nest(observations),
                actions=_nest({_leaf(c, F.ACTION): read[c][lo:hi] for c in act_cols}),
                rewards=read[F.REWARD][lo:hi],
                terminations=read[F.TERMINATED][lo:hi],
                truncations=read[F.TRUNCATED][lo:hi],
                infos=_nest(infos) if infos else {},
            )
        )
    return buffers


def _present(stream: Any, col: str, rows: int) -> np.ndarray:
    p = stream.present(col, 0, rows)
    return np.ones(rows, bool) if p is None else np.asarray(p, bool)


def export_minari(
    recording: str | os.PathLike[str],
    dataset_id: str,
    *,
    force: bool = False,
    author: str | None = None,
    description: str | None = None,
) -> Any:
    """Write a single-env recording as a Minari dataset; return the ``MinariDataset``.

    Args:
        recording: a ``.h5`` file from :class:`~replaykit.RecordingWrapper` (one env).
        dataset_id: the Minari id (``namespace/name-vN`` or ``name-vN``).
        force: replace an existing local dataset with this id (kept if the export fails).
        author: stored in the dataset's metadata.
        description: stored in the dataset's metadata.

    Raises:
        UsageError: a vector or training recording, a dataset that exists (without
            ``force``), an info key not present at every step.
        MissingExtraError: Minari is not installed.
    """
    minari = _minari()
    from minari.dataset.minari_dataset import parse_dataset_id
    from minari.storage import get_dataset_path

    try:
        parse_dataset_id(dataset_id)
    except Exception as exc:  # minari raises ValueError/AssertionError variously
        raise _UsageError(f"{dataset_id!r} is not a Minari dataset id ({exc})") from None
    target = _Path(get_dataset_path(dataset_id))
    if target.exists() and not force:
        raise _UsageError(
            f"a Minari dataset {dataset_id!r} exists at {target}; pass --force (force=True) "
            "to replace it"
        )
    with _Recording(recording) as rec:
        meta = rec.meta
        if meta.get(F.META_KIND) or meta.get(F.META_VECTOR) or not rec.has_stream(F.STEPS):
            raise _UsageError(
                f"{rec.path} is not a single-env recording (vector, SB3 or training); "
                "export a recording made with RecordingWrapper"
            )
        buffers = _episodes(rec)
        if not buffers:
            raise _UsageError(f"{rec.path} holds no steps to export")
        spec = _registered_spec(meta)
        obs_space = _space(meta[F.META_OBSERVATION_SPACE])
        act_space = _space(meta[F.META_ACTION_SPACE])
    backup = None
    if target.exists():
        backup = _Path(tempfile.mkdtemp(prefix=".replaykit-", dir=target.parent)) / "old"
        shutil.move(str(target), backup)
    try:
        with warnings.catch_warnings():
            # Minari warns about metadata it recommends (author e-mail, code permalink, ...).
            warnings.simplefilter("ignore", UserWarning)
            ds = minari.create_dataset_from_buffers(
                dataset_id,
                buffers,
                env=spec,
                observation_space=None if spec is not None else obs_space,
                action_space=None if spec is not None else act_space,
                algorithm_name="replaykit export",
                author=author,
                description=description or f"exported by replaykit from {_Path(recording).name}",
                jpeg_encoding=False,
            )
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        if backup is not None:
            shutil.move(str(backup), target)
        raise
    finally:
        if backup is not None:
            shutil.rmtree(backup.parent, ignore_errors=True)
    return ds
