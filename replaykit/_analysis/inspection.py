"""What is in a recording (``replaykit inspect``) and whether it is sound (``replaykit check``).

Both read through :class:`~replaykit._format.store.Recording`, so every byte they look
at is checksum-verified, and both stream columns in bounded blocks so memory
stays flat whatever the file's length.

:func:`validate_file` takes a path and returns a plain, JSON-able report so it
can run in a child process (a sandbox) and send its answer back as JSON.

Example:
    >>> # summary = summarize("run.h5"); summary["snapshots"][0]["step"]
    >>> # report = validate_file("run.h5"); report.ok, report.problems
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from replaykit._format import layout as F

__all__ = ["nearest_snapshot", "summarize"]

# Rows per block when streaming a column; bounds memory per column.
BLOCK_ROWS = 65536


def _column_stats(stream: Any, column: str, block_rows: int) -> dict[str, Any]:
    """Dtype, shape and (for numeric columns) min/max/mean over present rows, in blocks."""
    from replaykit._analysis.compare import bf16_to_float

    info = stream.columns[column]
    out: dict[str, Any] = {
        "dtype": info[F.COLUMN_DTYPE],
        "shape": list(info[F.COLUMN_SHAPE]),
        "rows": stream.rows,
        "optional": bool(info.get(F.COLUMN_OPTIONAL)),
    }
    logical = stream.logical_dtype(column)
    count = 0
    present_rows = 0
    nan = 0
    total = 0.0
    lo_v: float | None = None
    hi_v: float | None = None
    numeric = True
    for start, rows in stream.blocks(column, block_rows):
        block = rows
        if out["optional"]:
            mask = stream.present(column, start, start + len(rows))
            block = rows[mask] if mask is not None else rows
        present_rows += len(block)
        if logical == "bfloat16":
            values = bf16_to_float(block)
        elif block.dtype.kind in "fiub":
            values = block
        else:
            numeric = False
            continue
        if values.size == 0:
            continue
        v = values.astype(np.float64, copy=False)
        finite = v[~np.isnan(v)]
        nan += int(v.size - finite.size)
        if finite.size:
            count += int(finite.size)
            total += float(finite.sum())
            bmin, bmax = float(finite.min()), float(finite.max())
            lo_v = bmin if lo_v is None else min(lo_v, bmin)
            hi_v = bmax if hi_v is None else max(hi_v, bmax)
    if out["optional"]:
        out["present_rows"] = present_rows
    if numeric:
        out["min"] = lo_v
        out["max"] = hi_v
        out["mean"] = total / count if count else None
        out["nan"] = nan
    return out


def _episodes(rec: Any, block_rows: int) -> list[dict[str, Any]]:
    """Per-episode length and return, streamed from the steps stream's episode/reward columns."""
    if not rec.has_stream(F.STEPS):
        return []
    st = rec.stream(F.STEPS)
    if F.EPISODE not in st:
        return []
    n_eps = rec.stream(F.RESETS).rows if rec.has_stream(F.RESETS) else 0
    lengths: dict[int, int] = {}
    returns: dict[int, float] = {}
    has_reward = F.REWARD in st and st.columns[F.REWARD][F.COLUMN_SHAPE] == []
    rewards = st.blocks(F.REWARD, block_rows) if has_reward else None
    for _, eps in st.blocks(F.EPISODE, block_rows):
        rw = next(rewards)[1].astype(np.float64) if rewards is not None else None
        ids, counts = np.unique(eps, return_counts=True)
        for i, c in zip(ids.tolist(), counts.tolist(), strict=True):
            lengths[i] = lengths.get(i, 0) + c
            if rw is not None:
                returns[i] = returns.get(i, 0.0) + float(rw[eps == i].sum())
    if rewards is not None:
        for _ in rewards:  # drain so the reward column's checksum is checked to the end
            pass
    out = []
    for e in range(max([n_eps, *(k + 1 for k in lengths)])):
        out.append({"episode": e, "steps": lengths.get(e, 0), "return": returns.get(e)})
    return out


def _layout(rec: Any) -> dict[str, Any]:
    """Return the HDF5 object tree: groups as dicts, datasets as ``{dtype, shape, bytes}``."""
    from replaykit._format.store import DatasetInfo

    def render(node: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, obj in node.items():
            if isinstance(obj, DatasetInfo):
                out[name] = {
                    "dtype": obj.dtype,
                    "shape": list(obj.shape),
                    "bytes": obj.storage_bytes,
                }
            else:
                out[name + "/"] = render(obj)
        return out

    return render(rec.layout())


def nearest_snapshot(rec: Any, failure: dict[str, Any]) -> dict[str, Any] | None:
    """Return ``{name, step, episode, updates}`` of the newest snapshot before ``failure``.

    A snapshot precedes the failure when neither its step nor its update count is past the
    failure's; among those the last taken wins. A snapshot taken after the failure is never
    chosen, whatever the record names.
    """
    try:
        step, update = int(failure.get(F.FAILURE_STEP, 0)), int(failure.get(F.FAILURE_UPDATE, 0))
    except (TypeError, ValueError):
        return None
    best = None
    for s in rec.snapshots:
        if int(s.meta.get(F.SNAP_STEP, 0)) <= step and int(s.meta.get(F.SNAP_UPDATES, 0)) <= update:
            best = s
    if best is None:
        return None
    return {
        "name": best.name,
        "step": best.meta.get(F.SNAP_STEP),
        "episode": best.meta.get(F.SNAP_EPISODE),
        "updates": best.meta.get(F.SNAP_UPDATES),
    }


def summarize(path: str | os.PathLike[str], *, block_rows: int = BLOCK_ROWS) -> dict[str, Any]:
    """Describe a recording: layout, episodes, snapshots, provenance and per-column statistics.

    Args:
        path: the recording.
        block_rows: rows read per block when computing statistics.

    Returns:
        A JSON-able dict with top-level keys ``path``, ``bytes``, ``failure`` (the failure
        record or ``None``), ``failure_snapshot`` (the nearest snapshot before it, see
        :func:`nearest_snapshot`), ``format_version``,
        ``created``, ``env_id``, ``meta``, ``provenance``, ``streams``, ``episodes``,
        ``snapshots``, ``layout`` and ``findings`` (the sentences ``replaykit report`` leads
        with).
    """
    from replaykit._format.store import Recording

    with Recording(path) as rec:
        streams: dict[str, Any] = {}
        for sname in rec.stream_names:
            st = rec.stream(sname)
            streams[sname] = {
                "rows": st.rows,
                "columns": {c: _column_stats(st, c, block_rows) for c in st.columns},
            }
        snapshots = [
            {
                "name": s.name,
                "step": s.meta.get(F.SNAP_STEP),
                "episode": s.meta.get(F.SNAP_EPISODE),
                "step_in_episode": s.meta.get(F.SNAP_STEP_IN_EPISODE),
                "bytes": rec.snapshot_storage_bytes(s.name),
                "env_state": s.meta.get(F.SNAP_ENV_STATE),
                "tracked": list(s.meta.get(F.SNAP_TRACKED) or []),
            }
            for s in rec.snapshots
        ]
        failure = rec.meta.get(F.META_FAILURE)
        nearest = None
        if isinstance(failure, dict):
            nearest = nearest_snapshot(rec, failure)
        return {
            "path": str(path),
            "bytes": os.path.getsize(path),
            "failure": failure if isinstance(failure, dict) else None,
            "failure_snapshot": nearest,
            "format_version": rec.format_version,
            "created": rec.created,
            "env_id": rec.meta.get(F.META_ENV_ID),
            "meta": rec.meta,
            "provenance": rec.provenance,
            "streams": streams,
            "episodes": _episodes(rec, block_rows),
            "snapshots": snapshots,
            "layout": _layout(rec),
            "findings": _findings(path),
        }


def _findings(path: str | os.PathLike[str]) -> list[str]:
    """Return the report's findings (``replaykit report``), one sentence each."""
    from replaykit._analysis.report import analyze

    return [f.message for f in analyze(path, pictures=False).findings]
