"""What went wrong in a recording, found by streaming over it column by column (``report``).

:func:`analyze` reads a recording in bounded blocks (memory does not grow with its length) and
returns a :class:`Analysis`: findings as sentences with their evidence, plus the reduced data
the pictures are drawn from:

* returns and lengths per episode;
* any key over time (per bucket of rows: mean, min and max), with snapshots (and a failure
  record, when the file holds one) marked;
* the first non-finite value of every numeric column of every stream (row, step, element);
* policy collapse: an action histogram per window of steps, the entropy of probed
  logits / log-probs, and "the same action for X% of the last N steps";
* input normalisation: per-dimension mean, std, min and max of flat observations, flagging
  dimensions far from unit scale and constant ones;
* dynamic range (max ``|value|``) of update probes and layer digests over updates, whose
  growth by orders of magnitude is a finding.

Nothing here imports matplotlib; the pictures are :mod:`replaykit._analysis.plots`.

Example:
    >>> # a = analyze("run.h5"); [f.message for f in a.findings]
"""

from __future__ import annotations

import fnmatch
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from replaykit._format import layout as F
from replaykit.errors import UsageError

__all__ = [
    "BUCKETS",
    "Analysis",
    "Finding",
    "Series",
    "analyze",
    "check_report_dir",
    "report",
    "write_report",
]

#: Points per plotted series: rows are reduced into this many contiguous buckets.
BUCKETS = 1000
#: Windows of the action histogram.
ACTION_WINDOWS = 20
#: Share of one action over the last steps that counts as a collapsed policy.
COLLAPSE_SHARE = 0.95
#: The fewest steps a collapse finding is based on.
COLLAPSE_MIN_STEPS = 100
#: Observation dimensions with std or |mean| above this are "far from unit scale".
SCALE_LIMIT = 100.0
#: Growth of max |value| between the first and last tenth of updates that counts as exploding.
EXPLODE_FACTOR = 1e3
#: Flat observations with more dimensions than this (images) get no per-dimension statistics.
MAX_OBS_DIMS = 512
#: Elements a series keeps per row; wider values are reduced to their max |value|.
MAX_ELEMENTS = 8
#: Keys plotted by default (all update probes, step probes and the reward), at most.
MAX_DEFAULT_KEYS = 24
# Update probes that are schedules, whose growth over updates is by design.
_SCHEDULES = ("lr", "*learning_rate*", "*_lr", "lr_*", "*epsilon*", "*beta*", "*temperature*")
# Probe names whose values are read as action logits / log-probabilities / probabilities.
_LOGIT_NAMES = ("*logit*", "*log_prob*", "*logprob*", "*logp*", "*probs*")


@dataclass
class Finding:
    """One thing the report found, as a sentence with its evidence.

    Attributes:
        kind: ``"nonfinite"``, ``"collapse"``, ``"scale"``, ``"constant"`` or ``"exploding"``.
        key: the ``stream/column`` it is about.
        message: the sentence, with the evidence.
        step: the global step it points at, if any.
        update: the update index it points at, if any.
        element: the element index within the row, if any.
    """

    kind: str
    key: str
    message: str
    step: int | None = None
    update: int | None = None
    element: list[int] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "key": self.key,
            "message": self.message,
            "step": self.step,
            "update": self.update,
            "element": self.element,
        }


@dataclass
class Series:
    """One key reduced to buckets of rows: per bucket and element, mean, min and max.

    Attributes:
        key: ``stream/column``.
        stream: the stream (``steps`` rows are steps; ``updates`` rows are updates).
        x: the first row of each bucket.
        mean: ``(buckets, elements)`` means over finite values (NaN where none).
        lo: minima (NaN-ignoring).
        hi: maxima (NaN-ignoring).
        labels: one label per element (``"[2]"``, or ``"max|.|"`` for a reduced wide value).
    """

    key: str
    stream: str
    x: np.ndarray
    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    labels: list[str]
    integer: bool = False

    @property
    def max_abs(self) -> np.ndarray:
        """Max ``|value|`` per bucket over all elements."""
        with np.errstate(invalid="ignore"):
            out: np.ndarray = np.fmax(np.abs(self.lo), np.abs(self.hi)).max(axis=1, initial=-np.inf)
        return out


@dataclass
class Analysis:
    """Everything :func:`analyze` found and reduced; see the module docstring."""

    path: str
    env_id: str | None
    steps: int
    updates: int
    episode_lengths: np.ndarray
    episode_returns: np.ndarray | None
    snapshots: list[dict[str, Any]]
    failure: dict[str, Any] | None
    nonfinite: list[dict[str, Any]]
    series: dict[str, Series]
    actions: dict[str, Any] | None
    entropy: Series | None
    obs_stats: dict[str, np.ndarray] | None
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    all_series: dict[str, Series] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "env_id": self.env_id,
            "steps": self.steps,
            "updates": self.updates,
            "episodes": len(self.episode_lengths),
            "findings": [f.to_json() for f in self.findings],
            "nonfinite": self.nonfinite,
            "snapshots": self.snapshots,
            "failure": self.failure,
            "notes": self.notes,
        }


# --------------------------------------------------------------------------------------------
# streaming helpers


class _Buckets:
    """Mean/min/max of a ``(rows, k)`` column per contiguous bucket of rows, fed block by block."""

    def __init__(self, rows: int, k: int) -> None:
        self.nb = max(1, min(BUCKETS, rows))
        self.rows = rows
        self.sum = np.zeros((self.nb, k))
        self.count = np.zeros((self.nb, k))
        self.lo = np.full((self.nb, k), np.nan)
        self.hi = np.full((self.nb, k), np.nan)

    def add(self, start: int, v: np.ndarray, rows: np.ndarray | None = None) -> None:
        """Add ``v`` (``(n, k)`` float64) for rows ``start..`` (or the given row numbers)."""
        if not len(v):
            return
        r = np.arange(start, start + len(v)) if rows is None else rows
        ids = (r * self.nb) // max(self.rows, 1)
        cuts = np.flatnonzero(np.diff(ids)) + 1
        starts = np.concatenate([[0], cuts])
        b = ids[starts]
        finite = np.isfinite(v)
        with np.errstate(invalid="ignore"):
            self.sum[b] += np.add.reduceat(np.where(finite, v, 0.0), starts, axis=0)
            self.count[b] += np.add.reduceat(finite.astype(np.float64), starts, axis=0)
            masked = np.where(finite, v, np.nan)
            self.lo[b] = np.fmin(self.lo[b], np.fmin.reduceat(masked, starts, axis=0))
            self.hi[b] = np.fmax(self.hi[b], np.fmax.reduceat(masked, starts, axis=0))

    def series(self, key: str, stream: str, labels: list[str]) -> Series:
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(self.count > 0, self.sum / np.maximum(self.count, 1), np.nan)
        x = (np.arange(self.nb) * max(self.rows, 1) + self.nb - 1) // self.nb
        return Series(key, stream, x, mean, self.lo, self.hi, labels)


def _as_float(block: np.ndarray, logical: str | None) -> np.ndarray | None:
    from replaykit._analysis.compare import bf16_to_float

    if logical == "bfloat16":
        out: np.ndarray = bf16_to_float(block).astype(np.float64)
        return out
    if block.dtype.kind in "fiub":
        return block.astype(np.float64, copy=False)
    return None


def _column_blocks(st: Any, column: str) -> Any:
    """Yield ``(start, float64 rows (n, elements), row numbers or None)`` of present rows."""
    n = st.block_rows_for(column)
    logical = st.logical_dtype(column)
    masks = st.present_blocks(column, n)
    for start, block in st.blocks(column, n):
        mask = next(masks)[1] if masks is not None else None
        v = _as_float(block, logical)
        if v is None:
            return
        v = v.reshape(len(v), -1)
        if mask is not None:
            rows = np.flatnonzero(mask) + start
            yield start, v[mask], rows
        else:
            yield start, v, None
    if masks is not None:
        for _ in masks:  # drain, so the mask's checksum is checked to its end
            pass


def _kind(dtype: Any) -> str:
    """NumPy's kind letter of a column dtype string (``""`` for a logical dtype like bfloat16)."""
    try:
        return str(np.dtype(dtype).kind)
    except TypeError:
        return ""


def _matches(key: str, patterns: list[str]) -> bool:
    """Match ``stream/column``; a steps column also by its bare name, as ``diff --key`` does."""
    bare = key[len(F.STEPS) + 1 :] if key.startswith(f"{F.STEPS}/") else None
    return any(
        fnmatch.fnmatchcase(key, p) or (bare is not None and fnmatch.fnmatchcase(bare, p))
        for p in patterns
    )


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return repr(v)
    if v == 0:
        return "0"
    a = abs(v)
    return f"{v:.3g}" if 1e-3 <= a < 1e5 else f"{v:.2e}"  # noqa: PLR2004


# --------------------------------------------------------------------------------------------
# the passes


def _scan_column(
    st: Any, column: str, want_series: bool
) -> tuple[dict[str, Any] | None, Series | None]:
    """One pass over a numeric column: its first non-finite value and (optionally) its series."""
    info = st.columns[column]
    k = math.prod(info[F.COLUMN_SHAPE]) if info[F.COLUMN_SHAPE] else 1
    wide = k > MAX_ELEMENTS
    buckets = _Buckets(st.rows, 1 if wide else k) if want_series else None
    first: dict[str, Any] | None = None
    numeric = False
    for start, v, rows in _column_blocks(st, column):
        numeric = True
        if first is None and v.size:
            bad = ~np.isfinite(v)
            if bad.any():
                i, j = (int(x) for x in np.argwhere(bad)[0])
                row = int(rows[i]) if rows is not None else start + i
                shape = tuple(info[F.COLUMN_SHAPE])
                element = [int(x) for x in np.unravel_index(j, shape)] if shape else []
                first = {"row": row, "element": element, "value": repr(float(v[i, j]))}
        if buckets is not None:
            if wide:
                with np.errstate(invalid="ignore"):
                    fin = np.where(np.isfinite(v), np.abs(v), np.nan)
                    red = np.fmax.reduce(fin, axis=1, keepdims=True)
                buckets.add(start, red, rows)
            else:
                buckets.add(start, v, rows)
    if not numeric:
        return None, None
    series = None
    if buckets is not None:
        shape = info[F.COLUMN_SHAPE]
        if wide:
            labels = ["max|.|"]
        elif not shape:
            labels = [""]
        else:
            labels = [
                "[" + ", ".join(str(int(i)) for i in np.unravel_index(j, shape)) + "]"
                for j in range(k)
            ]
        series = buckets.series(f"{st.name}/{column}", st.name, labels)
        series.integer = _kind(info[F.COLUMN_DTYPE]) in ("i", "u", "b")
    return first, series


def _sub_envs(rec: Any) -> int:
    """Sub-envs of a vector recording (its step columns hold one value per sub-env), else 0."""
    vec = rec.meta.get(F.META_VECTOR)
    n = vec.get("num_envs") if isinstance(vec, dict) else None
    return n if isinstance(n, int) and n > 0 else 0


def _episodes(rec: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """Length and return of every episode (of every sub-env, for a vector recording)."""
    if not rec.has_stream(F.STEPS):
        return np.zeros(0, np.int64), None
    st = rec.stream(F.STEPS)
    k = _sub_envs(rec)
    per_row = [k] if k else []
    if F.EPISODE not in st or st.columns[F.EPISODE][F.COLUMN_SHAPE] != per_row:
        return np.zeros(0, np.int64), None
    has_reward = F.REWARD in st and st.columns[F.REWARD][F.COLUMN_SHAPE] == per_row
    n = st.block_rows_for(F.EPISODE)
    rewards = st.blocks(F.REWARD, n) if has_reward else None
    lengths = np.zeros(0, np.int64)
    returns = np.zeros(0, np.float64)
    for _, eps in st.blocks(F.EPISODE, n):
        rw = next(rewards)[1].astype(np.float64).reshape(-1) if rewards is not None else None
        if not len(eps):
            continue
        e = eps.astype(np.int64)
        if e.min() < 0:
            continue
        # Sub-env i's episode j gets the id j * k + i: one id per episode of any sub-env.
        e = (e * k + np.arange(k)).reshape(-1) if k else e
        top = int(e.max()) + 1
        if top > len(lengths):
            lengths = np.concatenate([lengths, np.zeros(top - len(lengths), np.int64)])
            returns = np.concatenate([returns, np.zeros(top - len(returns))])
        lengths += np.bincount(e, minlength=len(lengths))
        if rw is not None:
            returns += np.bincount(e, weights=rw, minlength=len(returns))
    if rewards is not None:
        for _ in rewards:
            pass
    if k:
        seen = lengths > 0
        lengths, returns = lengths[seen], returns[seen]
    return lengths, (returns if has_reward else None)


def _discrete_n(rec: Any, st: Any) -> int | None:
    space = rec.meta.get(F.META_ACTION_SPACE)
    info = st.columns.get(F.ACTION)
    k = _sub_envs(rec)
    if (
        info is None
        or info[F.COLUMN_SHAPE] != ([k] if k else [])
        or _kind(info[F.COLUMN_DTYPE]) not in ("i", "u", "b")
    ):
        return None
    if k:
        return 0  # one discrete action per sub-env; the count is learned from the data
    if isinstance(space, dict) and isinstance(space.get("n"), int) and space.get("start", 0) == 0:
        return int(space["n"])
    return 0  # discrete, size unknown: learned from the data


def _actions(rec: Any) -> dict[str, Any] | None:
    """Count actions per window, and the share of the commonest action over the last steps."""
    if not rec.has_stream(F.STEPS):
        return None
    st = rec.stream(F.STEPS)
    if F.ACTION not in st or st.rows == 0:
        return None
    n = _discrete_n(rec, st)
    if n is None:
        return None
    rows = st.rows
    windows = max(1, min(ACTION_WINDOWS, rows))
    last_n = min(1000, max(rows // 4, 1))
    hist = np.zeros((windows, max(n, 1)), np.int64)
    last = np.zeros(max(n, 1), np.int64)
    for start, raw in st.blocks(F.ACTION):
        a2 = raw.astype(np.int64).reshape(len(raw), -1)  # one column per sub-env
        a = a2.reshape(-1)
        if a.size and a.min() < 0:
            return None
        top = int(a.max()) + 1 if a.size else 0
        if top > hist.shape[1]:
            hist = np.pad(hist, ((0, 0), (0, top - hist.shape[1])))
            last = np.pad(last, (0, top - len(last)))
        row = np.arange(start, start + len(a2))
        wid = np.repeat((row * windows) // rows, a2.shape[1])
        np.add.at(hist, (wid, a), 1)
        tail = a2[row >= rows - last_n].reshape(-1)
        last += np.bincount(tail, minlength=len(last))
    edges = [(w * rows) // windows for w in range(windows + 1)]
    top_action = int(last.argmax())
    share = float(last[top_action] / max(last.sum(), 1))
    return {
        "hist": hist,
        "edges": edges,
        "n": hist.shape[1],
        "last_n": last_n,
        "last_start": rows - last_n,
        "top_action": top_action,
        "share": share,
        "distinct_before": int((hist[:-1].sum(axis=0) > 0).sum()) if windows > 1 else 0,
    }


def _entropy(rec: Any) -> tuple[str, Series, float] | None:
    """Entropy of the first probed logits/log-probs/probs per step; mean over the last steps."""
    if not rec.has_stream(F.STEPS):
        return None
    st = rec.stream(F.STEPS)
    prefix = f"{F.PROBE}/"
    for column, info in st.columns.items():
        name = column[len(prefix) :] if column.startswith(prefix) else None
        shape = info[F.COLUMN_SHAPE]
        if name is None or len(shape) != 1 or shape[0] < 2:  # noqa: PLR2004
            continue
        if not any(fnmatch.fnmatchcase(name.lower(), p) for p in _LOGIT_NAMES):
            continue
        is_probs = fnmatch.fnmatchcase(name.lower(), "*probs*") and "log" not in name.lower()
        buckets = _Buckets(st.rows, 1)
        last_n = min(1000, max(st.rows // 4, 1))
        tail_sum, tail_count = 0.0, 0
        for start, v, rows in _column_blocks(st, column):
            with np.errstate(all="ignore"):
                if is_probs:
                    p = v / v.sum(axis=1, keepdims=True)
                else:
                    z = v - v.max(axis=1, keepdims=True)
                    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
                h = -(np.where(p > 0, p * np.log(p), 0.0)).sum(axis=1, keepdims=True)
            buckets.add(start, h, rows)
            r = rows if rows is not None else np.arange(start, start + len(v))
            sel = (r >= st.rows - last_n) & np.isfinite(h[:, 0])
            tail_sum += float(h[sel, 0].sum())
            tail_count += int(sel.sum())
        series = buckets.series(f"entropy of {F.STEPS}/{column}", F.STEPS, ["entropy"])
        tail = tail_sum / tail_count if tail_count else float("nan")
        return f"{F.STEPS}/{column}", series, tail
    return None


def _obs_stats(rec: Any) -> dict[str, np.ndarray] | None:
    """Per-dimension count, mean, std, min, max of flat numeric observations (chunked Welford)."""
    if not rec.has_stream(F.STEPS):
        return None
    st = rec.stream(F.STEPS)
    info = st.columns.get(F.OBS)
    k = _sub_envs(rec)
    shape = list(info[F.COLUMN_SHAPE]) if info is not None else []
    if k and shape[:1] == [k]:
        shape = shape[1:]  # a vector recording: one observation per sub-env
    if info is None or len(shape) > 1:
        return None
    d = shape[0] if shape else 1
    if d > MAX_OBS_DIMS:
        return None
    count = np.zeros(d)
    mean = np.zeros(d)
    m2 = np.zeros(d)
    lo = np.full(d, np.inf)
    hi = np.full(d, -np.inf)
    for _, rows_v, _ in _column_blocks(st, F.OBS):
        v = rows_v.reshape(-1, d)
        fin = np.isfinite(v)
        n_b = fin.sum(axis=0).astype(np.float64)
        if not n_b.any():
            continue
        x = np.where(fin, v, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_b = np.where(n_b > 0, x.sum(axis=0) / np.maximum(n_b, 1), 0.0)
            m2_b = (np.where(fin, v - mean_b, 0.0) ** 2).sum(axis=0)
        total = count + n_b
        delta = mean_b - mean
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(total > 0, mean + delta * n_b / np.maximum(total, 1), mean)
            m2 = m2 + m2_b + delta**2 * count * n_b / np.maximum(total, 1)
        count = total
        lo = np.minimum(lo, np.where(fin, v, np.inf).min(axis=0))
        hi = np.maximum(hi, np.where(fin, v, -np.inf).max(axis=0))
    if not count.any():
        return None
    std = np.sqrt(m2 / np.maximum(count, 1))
    return {"count": count, "mean": mean, "std": std, "min": lo, "max": hi}


def _failure(rec: Any) -> dict[str, Any] | None:
    """Return the failure record, when the file holds one (written by flight-mode recordings)."""
    raw = rec.meta.get(F.META_FAILURE)
    if not isinstance(raw, dict):
        return None
    step = raw.get(F.FAILURE_STEP)
    text = raw.get(F.FAILURE_REASON) or raw.get(F.FAILURE_MESSAGE) or raw.get(F.FAILURE_KIND)
    return {
        "step": step if isinstance(step, int) else None,
        "message": str(text or "failure"),
    }


# --------------------------------------------------------------------------------------------
# findings


def _nonfinite_findings(found: list[dict[str, Any]]) -> list[Finding]:
    out = []
    for f in found:
        where = (
            f"update {f['update']} (step {f['step']})"
            if f["stream"] == F.UPDATES
            else f"step {f['step']}"
        )
        element = f"[{', '.join(str(i) for i in f['element'])}]" if f["element"] else ""
        out.append(
            Finding(
                "nonfinite",
                f["key"],
                f"{f['key']}{element} is {f['value']} first at {where}: the first non-finite "
                "value in this key; restore the snapshot before it to see what produced it",
                step=f["step"],
                update=f.get("update"),
                element=f["element"],
            )
        )
    return out


def _collapse_finding(
    actions: dict[str, Any], entropy: tuple[str, Series, float] | None
) -> list[Finding]:
    n_seen = int((actions["hist"].sum(axis=0) > 0).sum())
    if actions["last_n"] < COLLAPSE_MIN_STEPS or actions["share"] < COLLAPSE_SHARE:
        return []
    if max(actions["n"], n_seen) < 2:  # noqa: PLR2004
        return []
    start, n = actions["last_start"], actions["last_n"]
    extra = ""
    if entropy is not None and math.isfinite(entropy[2]):
        extra = (
            f"; the entropy of {entropy[0]} over those steps is {_fmt(entropy[2])} nats "
            f"(at most {_fmt(math.log(actions['n']))})"
        )
    return [
        Finding(
            "collapse",
            f"{F.STEPS}/{F.ACTION}",
            f"the policy predicts action {actions['top_action']} for {actions['share']:.0%} of "
            f"the last {n} steps (steps {start}-{start + n - 1}), of {actions['n']} actions"
            f"{extra}: a policy that does not learn predicts the same thing most of the time",
            step=start,
        )
    ]


def _constant_actions(rec: Any) -> list[Finding]:
    """Continuous actions: a finding when the last steps all took one and the same action."""
    if not rec.has_stream(F.STEPS):
        return []
    st = rec.stream(F.STEPS)
    if F.ACTION not in st or _kind(st.columns[F.ACTION][F.COLUMN_DTYPE]) != "f":
        return []
    last_n = min(1000, max(st.rows // 4, 1))
    if last_n < COLLAPSE_MIN_STEPS:
        return []
    start = st.rows - last_n
    tail = st.read(F.ACTION, start, st.rows).reshape(last_n, -1)
    if not (tail == tail[0]).all():
        return []
    shown = ", ".join(_fmt(float(v)) for v in tail[0][:4]) + (", ..." if tail.shape[1] > 4 else "")  # noqa: PLR2004
    return [
        Finding(
            "collapse",
            f"{F.STEPS}/{F.ACTION}",
            f"the policy took the same action [{shown}] in every one of the last {last_n} steps "
            f"(steps {start}-{st.rows - 1}): a policy that does not learn predicts the same "
            "thing most of the time (saturated outputs look like this too)",
            step=start,
        )
    ]


def _obs_findings(stats: dict[str, np.ndarray], steps: int) -> list[Finding]:
    out = []
    key = f"{F.STEPS}/{F.OBS}"
    for i in range(len(stats["mean"])):
        mean, std, lo, hi = (float(stats[k][i]) for k in ("mean", "std", "min", "max"))
        if steps >= 2 and lo == hi:  # noqa: PLR2004
            out.append(
                Finding(
                    "constant",
                    key,
                    f"obs[{i}] is constant ({_fmt(lo)} in all {steps} steps): it carries no "
                    "information to the policy",
                    element=[i],
                )
            )
        elif max(std, abs(mean)) > SCALE_LIMIT:
            out.append(
                Finding(
                    "scale",
                    key,
                    f"obs[{i}] has std {_fmt(std)} (mean {_fmt(mean)}, range [{_fmt(lo)}, "
                    f"{_fmt(hi)}]): inputs are not normalised; scale it to about unit range "
                    "(e.g. gymnasium.wrappers.NormalizeObservation)",
                    element=[i],
                )
            )
    return out


def _exploding(series: dict[str, Series], updates: int) -> list[Finding]:
    if updates < 10:  # noqa: PLR2004
        return []
    out = []
    for key, s in series.items():
        name = key.rsplit("/", 1)[-1].lower()
        schedule = any(fnmatch.fnmatchcase(name, p) for p in _SCHEDULES)
        if s.stream != F.UPDATES or s.integer or schedule:
            continue
        m = s.max_abs
        tenth = max(1, len(m) // 10)
        with np.errstate(invalid="ignore"):
            first = float(np.nanmax(m[:tenth], initial=-np.inf))
            last = float(np.nanmax(m[-tenth:], initial=-np.inf))
        if not (math.isfinite(first) and math.isfinite(last)) or first <= 0:
            continue
        if last > EXPLODE_FACTOR * max(first, 1e-12):
            lo_u, hi_u = int(s.x[-tenth]), updates - 1
            out.append(
                Finding(
                    "exploding",
                    key,
                    f"{key} max |value| grew from {_fmt(first)} (first updates) to {_fmt(last)} "
                    f"(updates {lo_u}-{hi_u}): its dynamic range is exploding; lower the "
                    "learning rate or clip gradients",
                    update=lo_u,
                )
            )
    return out


# --------------------------------------------------------------------------------------------
# entry point


def _default_keys(rec: Any) -> list[str]:
    keys: list[str] = []
    if rec.has_stream(F.STEPS) and F.REWARD in rec.stream(F.STEPS):
        keys.append(f"{F.STEPS}/{F.REWARD}")
    for sname in (F.UPDATES, F.STEPS):
        if rec.has_stream(sname):
            cols = rec.stream(sname).columns
            keys += [f"{sname}/{c}" for c, info in cols.items() if _plottable(c, info)]
    return keys


def _plottable(column: str, info: dict[str, Any]) -> bool:
    """Say whether a column is a probe worth plotting: not a 64-bit hash (a digest)."""
    dtype = info[F.COLUMN_DTYPE]
    is_hash = _kind(dtype) == "u" and np.dtype(dtype).itemsize == 8  # noqa: PLR2004
    return column.startswith(F.PROBE) and not is_hash


def _step_of(rec: Any, stream: str, row: int) -> int | None:
    if stream == F.STEPS:
        return row
    st = rec.stream(stream)
    col = F.UPDATE_STEP if stream == F.UPDATES else F.RESET_STEP
    if col not in st:
        return None
    return int(st.read(col, row, row + 1)[0])


def analyze(
    path: str | os.PathLike[str],
    *,
    keys: list[str] | None = None,
    pictures: bool = True,
) -> Analysis:
    """Stream over a recording and find what a person debugging it would look for.

    Args:
        path: the recording.
        keys: ``fnmatch`` patterns of ``stream/column`` keys to reduce for plotting (default:
            the reward, every step probe and every update probe, at most
            :data:`MAX_DEFAULT_KEYS`). Findings always cover every column.
        pictures: reduce the plotted keys; ``False`` computes the findings only.

    Returns:
        An :class:`Analysis`, findings first in the order: non-finite values, policy
        collapse, exploding dynamic range, un-normalised and constant observations.
    """
    from replaykit._format.store import Recording

    notes: list[str] = []
    with Recording(path) as rec:
        if not pictures:
            plotted = []
        elif keys:
            all_keys = [f"{s}/{c}" for s in rec.stream_names for c in rec.stream(s).columns]
            plotted = [k for k in all_keys if _matches(k, keys)]
            if not plotted:
                notes.append(f"no key matches {', '.join(keys)}; keys: {', '.join(all_keys)}")
        else:
            plotted = _default_keys(rec)
            if len(plotted) > MAX_DEFAULT_KEYS:
                notes.append(
                    f"{len(plotted)} keys, {MAX_DEFAULT_KEYS} plotted; choose with --key PATTERN"
                )
                plotted = plotted[:MAX_DEFAULT_KEYS]
        nonfinite: list[dict[str, Any]] = []
        series: dict[str, Series] = {}
        for sname in rec.stream_names:
            st = rec.stream(sname)
            for column in st.columns:
                key = f"{sname}/{column}"
                dyn = sname == F.UPDATES and _plottable(column, st.columns[column])
                want = key in plotted or dyn
                if not want and _kind(st.columns[column][F.COLUMN_DTYPE]) in ("i", "u", "b"):
                    continue  # integers are always finite: nothing to find, nothing to draw
                first, s = _scan_column(st, column, want)
                if s is not None:
                    series[key] = s
                if first is not None:
                    step = _step_of(rec, sname, first["row"])
                    nonfinite.append(
                        {
                            "stream": sname,
                            "key": key,
                            "row": first["row"],
                            "step": step,
                            "update": first["row"] if sname == F.UPDATES else None,
                            "element": first["element"],
                            "value": first["value"],
                        }
                    )
        ordered = {k: series[k] for k in plotted if k in series}
        lengths, returns = _episodes(rec)
        actions = _actions(rec)
        box_findings = _constant_actions(rec) if actions is None else []
        entropy = _entropy(rec)
        obs = _obs_stats(rec)
        steps = rec.stream(F.STEPS).rows if rec.has_stream(F.STEPS) else 0
        updates = rec.stream(F.UPDATES).rows if rec.has_stream(F.UPDATES) else 0
        snapshots = [
            {
                "name": s.name,
                "step": s.meta.get(F.SNAP_STEP),
                "updates": s.meta.get(F.SNAP_UPDATES),
            }
            for s in rec.snapshots
        ]
        failure = _failure(rec)
        env_id = rec.meta.get(F.META_ENV_ID)
    nonfinite.sort(key=lambda f: (f["step"] if f["step"] is not None else -1, f["key"]))
    findings = _nonfinite_findings(nonfinite)
    if actions is not None:
        findings += _collapse_finding(actions, entropy)
    findings += box_findings
    findings += _exploding(series, updates)
    if obs is not None:
        findings += _obs_findings(obs, steps)
    return Analysis(
        path=str(path),
        env_id=env_id if isinstance(env_id, str) else None,
        steps=steps,
        updates=updates,
        episode_lengths=lengths,
        episode_returns=returns,
        snapshots=snapshots,
        failure=failure,
        nonfinite=nonfinite,
        series=ordered,
        actions=actions,
        entropy=entropy[1] if entropy is not None else None,
        obs_stats=obs,
        findings=findings,
        notes=notes,
        all_series=series,
    )


# --------------------------------------------------------------------------------------------
# writing a report


REPORT_HTML = "report.html"


def report(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    keys: list[str] | None = None,
    force: bool = False,
) -> Analysis:
    """Find what went wrong in a recording; with ``out``, also write its HTML report.

    The Python form of ``replaykit report``: findings as sentences with their evidence
    (first non-finite values, policy collapse, exploding update probes, un-normalised or
    constant observations), streamed over the file in bounded memory. With ``out``, one
    self-contained ``report.html`` (images embedded) and its PNGs are written there, each
    under a temporary name renamed once complete (matplotlib needed).

    Args:
        path: the recording.
        out: a directory for ``report.html`` and the PNGs; ``None`` computes the findings
            only (no matplotlib needed).
        keys: ``fnmatch`` patterns of ``stream/column`` keys to plot.
        force: replace the files of an existing report in ``out``.

    Returns:
        The :class:`Analysis`: ``findings`` first, then what the pictures are drawn from.

    Raises:
        UsageError: ``out`` cannot be used or holds a report (without ``force``), or
            matplotlib is missing when ``out`` is given.

    Example:
        >>> import replaykit
        >>> # analysis = replaykit.report("run.h5")
        >>> # for finding in analysis.findings:
        >>> #     print(finding.message)
        >>> # replaykit.report("run.h5", "run-report")  # report.html and PNGs
    """
    if out is None:
        return analyze(path, keys=keys, pictures=False)
    analysis, _ = write_report(path, out, keys=keys, force=force)
    return analysis


def check_report_dir(out: Path, *, force: bool) -> None:
    """Refuse an output directory that cannot be written, before anything is read.

    Raises:
        UsageError: its parent does not exist, it is a file, or it already holds a report
            (without ``force``).
    """
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a directory; pass another --out")
    if not out.parent.is_dir():
        raise UsageError(f"{out.parent}: no such directory; create it or pass another --out")
    if (out / REPORT_HTML).exists() and not force:
        raise UsageError(
            f"{out / REPORT_HTML} exists; pass --force to replace the report in {out}, or "
            "another --out"
        )


def write_report(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    keys: list[str] | None = None,
    force: bool = False,
) -> tuple[Analysis, list[Path]]:
    """Analyse a recording and write ``report.html`` (self-contained) plus its PNGs to ``out``.

    Each file is written under a temporary name in ``out`` and renamed once complete; an
    existing file is replaced only with ``force``.

    Returns:
        The analysis and the paths written (the HTML first).

    Raises:
        UsageError: ``out`` cannot be used, a file would be replaced without ``force``, or
            matplotlib is not installed.
    """
    from replaykit._analysis import plots, render

    out_dir = Path(out)
    check_report_dir(out_dir, force=force)
    plots.require_matplotlib()
    analysis = analyze(path, keys=keys)
    pngs = plots.report_figures(analysis)
    page = render.report_html(analysis, pngs)
    files = {REPORT_HTML: page.encode("utf-8"), **pngs}
    clash = [n for n in files if (out_dir / n).exists()]
    if clash and not force:
        raise UsageError(
            f"{out_dir} already holds {', '.join(clash[:3])}; pass --force to replace them"
        )
    out_dir.mkdir(exist_ok=True)
    written = []
    for name, data in files.items():
        target = out_dir / name
        tmp = out_dir / f".{name}.partial-{os.getpid()}"
        try:
            tmp.write_bytes(data)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        written.append(target)
    return analysis, written
