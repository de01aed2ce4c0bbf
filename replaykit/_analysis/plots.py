r"""The pictures of ``replaykit report`` and ``replaykit diff --plot``, drawn with matplotlib.

matplotlib is an optional dependency (``pip install "replaykit[plot]"``): it is imported
only here, only when a picture is drawn, and its absence is one
:class:`~replaykit.errors.UsageError` line saying what to install. Every function returns
the PNG's bytes; the caller decides where they go.

Example:
    >>> # from replaykit._analysis.report import analyze
    >>> # pngs = report_figures(analyze("run.h5"))  # {"episodes.png": b"\\x89PNG...", ...}
"""

from __future__ import annotations

import io
import math
import re
from typing import Any

import numpy as np

from replaykit._format import layout as F
from replaykit.errors import UsageError

__all__ = [
    "MATPLOTLIB_MISSING",
    "diff_figure",
    "file_name",
    "report_figures",
    "require_matplotlib",
]

#: The one line a command prints when matplotlib is missing.
MATPLOTLIB_MISSING = (
    "this command draws pictures with matplotlib, which is not installed: "
    + 'pip install "replaykit[plot]"'
)

_DPI = 100
_SNAPSHOT_COLOR = "#7a7a7a"
_FAILURE_COLOR = "#d62728"
_NONFINITE_COLOR = "#9467bd"


def require_matplotlib() -> Any:
    """Import matplotlib with the headless Agg backend, or raise the one-line install hint.

    Raises:
        UsageError: matplotlib is not installed.
    """
    try:
        import matplotlib
    except ImportError:
        raise UsageError(MATPLOTLIB_MISSING) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    plt = require_matplotlib()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def file_name(key: str) -> str:
    """Return the file name of a key's picture (``key-`` plus the key, slashes as dashes).

    Example:
        >>> file_name("updates/probe/layer/net.0/out")
        'key-updates-probe-layer-net.0-out.png'
    """
    return "key-" + re.sub(r"[^A-Za-z0-9._]+", "-", key).strip("-") + ".png"


def _marks(ax: Any, a: Any, stream: str) -> None:
    """Snapshots (grey dashed), the failure record (red) and first non-finite values (purple)."""
    for i, s in enumerate(a.snapshots):
        x = s["step"] if stream == F.STEPS else s.get("updates")
        if isinstance(x, int):
            ax.axvline(
                x, color=_SNAPSHOT_COLOR, ls="--", lw=0.8, label="snapshot" if i == 0 else None
            )
    if a.failure is not None and a.failure.get("step") is not None and stream == F.STEPS:
        ax.axvline(a.failure["step"], color=_FAILURE_COLOR, lw=1.2, label="failure")


def _series_axes(ax: Any, s: Any, a: Any) -> None:
    elements = s.mean.shape[1]
    colors = [f"C{i % 10}" for i in range(elements)]
    for j in range(elements):
        label = s.labels[j] or None
        ax.plot(s.x, s.mean[:, j], color=colors[j], lw=1.2, label=label)
        if np.any(s.hi[:, j] != s.lo[:, j]):
            ax.fill_between(s.x, s.lo[:, j], s.hi[:, j], color=colors[j], alpha=0.18, lw=0)
    _marks(ax, a, s.stream)
    for nf in a.nonfinite:
        if nf["key"] == s.key:
            x = nf["step"] if s.stream == F.STEPS else nf["row"]
            unit = "step" if s.stream == F.STEPS else "update"
            label = f"first {nf['value']} ({unit} {x})"
            ax.axvline(x, color=_NONFINITE_COLOR, lw=1.2, label=label)
    ax.set_xlabel("step" if s.stream == F.STEPS else "update")
    ax.set_title(s.key, fontsize=10, loc="left")
    ax.grid(alpha=0.3)
    finite = s.hi[np.isfinite(s.hi)]
    if finite.size and np.nanmin(np.abs(s.lo[np.isfinite(s.lo)]), initial=np.inf) > 0:
        lo = float(np.nanmin(s.lo))
        if lo > 0 and float(finite.max()) / lo > 1e3:  # noqa: PLR2004
            ax.set_yscale("log")
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=7, loc="best", ncol=2 if len(handles) > 4 else 1)  # noqa: PLR2004


def _episodes_figure(a: Any, plt: Any) -> bytes | None:
    if not len(a.episode_lengths):
        return None
    rows = 2 if a.episode_returns is not None else 1
    fig, axes = plt.subplots(rows, 1, figsize=(8, 2.2 * rows + 0.4), sharex=True, squeeze=False)
    eps = np.arange(len(a.episode_lengths))
    panels = [("steps per episode", a.episode_lengths, "C1")]
    if a.episode_returns is not None:
        panels.insert(0, ("return per episode", a.episode_returns, "C0"))
    many = len(eps) > 200  # noqa: PLR2004
    k = max(1, len(eps) // 100)
    for ax, (title, values, color) in zip(axes[:, 0], panels, strict=True):
        if many:
            # Thousands of episodes: the raw values as a faint band, a running mean on top.
            ax.plot(eps, values, "-", color=color, lw=0.5, alpha=0.25)
            smooth = np.convolve(values.astype(np.float64), np.ones(k) / k, mode="valid")
            ax.plot(eps[k - 1 :], smooth, "-", color=color, lw=1.6, label=f"mean of {k} episodes")
            ax.legend(fontsize=7, loc="upper right")
        else:
            style = "-" if len(values) > 60 else "-o"  # noqa: PLR2004
            ax.plot(eps, values, style, color=color, lw=1, ms=3)
        ax.set_title(title, fontsize=10, loc="left")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("episode")
    fig.tight_layout()
    return _png(fig)


def _actions_figure(a: Any, plt: Any) -> bytes | None:
    act = a.actions
    if act is None:
        return None
    hist = act["hist"].astype(np.float64)
    shares = hist / np.maximum(hist.sum(axis=1, keepdims=True), 1)
    edges = act["edges"]
    rows = 2 if a.entropy is not None else 1
    fig, axes = plt.subplots(rows, 1, figsize=(8, 2.4 * rows + 0.4), squeeze=False)
    ax = axes[0, 0]
    left = np.array(edges[:-1])
    width = np.diff(edges)
    bottom = np.zeros(len(left))
    n = shares.shape[1]
    shown = range(n) if n <= 10 else np.argsort(-hist.sum(axis=0))[:10]  # noqa: PLR2004
    for k in shown:
        ax.bar(
            left,
            shares[:, k],
            width=width,
            bottom=bottom,
            align="edge",
            label=f"action {k}",
            color=f"C{int(k) % 10}",
            edgecolor="white",
            lw=0.4,
        )
        bottom += shares[:, k]
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of steps")
    ax.set_title(
        f"actions per window of {width.max() if len(width) else 0} steps", fontsize=10, loc="left"
    )
    ax.axvline(act["last_start"], color="black", lw=0.8, ls=":")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_xlabel("step")
    if a.entropy is not None:
        _series_axes(axes[1, 0], a.entropy, a)
        axes[1, 0].axhline(
            math.log(max(act["n"], 2)), color="black", lw=0.8, ls=":", label="max (uniform)"
        )
        axes[1, 0].set_ylabel("nats")
        axes[1, 0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _png(fig)


def _obs_figure(a: Any, plt: Any) -> bytes | None:
    st = a.obs_stats
    if st is None:
        return None
    d = len(st["mean"])
    fig, ax = plt.subplots(1, 1, figsize=(8, 3.2))
    x = np.arange(d)
    mag = np.maximum(np.abs(st["min"]), np.abs(st["max"]))
    ax.bar(x - 0.2, np.maximum(st["std"], 1e-12), width=0.4, color="C0", label="std")
    ax.bar(x + 0.2, np.maximum(mag, 1e-12), width=0.4, color="C1", alpha=0.7, label="max |value|")
    ax.axhline(1.0, color="black", lw=0.8, ls=":", label="unit scale")
    ax.set_yscale("log")
    ax.set_xlabel("observation dimension")
    ax.set_title("observations per dimension (log scale)", fontsize=10, loc="left")
    if d <= 40:  # noqa: PLR2004
        ax.set_xticks(x)
    for f in a.findings:
        if f.kind in ("scale", "constant") and f.element:
            ax.annotate(
                "!" if f.kind == "scale" else "const",
                (f.element[0], 1.0),
                xycoords=("data", "axes fraction"),
                ha="center",
                va="bottom",
                color=_FAILURE_COLOR,
                fontsize=10,
                fontweight="bold",
            )
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return _png(fig)


def _range_figure(a: Any, plt: Any) -> bytes | None:
    source = a.all_series
    keys = [k for k, s in source.items() if s.stream == F.UPDATES and not s.integer]
    if not keys:
        return None
    fig, ax = plt.subplots(1, 1, figsize=(8, 3.2))
    for i, k in enumerate(keys[:12]):
        s = source[k]
        m = s.max_abs
        ok = np.isfinite(m) & (m > 0)
        if ok.any():
            ax.plot(
                s.x[ok], m[ok], lw=1.2, color=f"C{i % 10}", label=k.removeprefix("updates/probe/")
            )
    _marks(ax, a, F.UPDATES)
    ax.set_yscale("log")
    ax.set_xlabel("update")
    ax.set_title("dynamic range of update probes: max |value| (log scale)", fontsize=10, loc="left")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return _png(fig)


def report_figures(a: Any) -> dict[str, bytes]:
    """Draw every picture of a report from an :class:`~replaykit._analysis.report.Analysis`.

    Returns:
        ``{file name: PNG bytes}`` in the order the report shows them: ``episodes.png``,
        ``actions.png``, ``observations.png``, ``dynamic-range.png`` (each only when the
        recording has that data) and one ``key-*.png`` per plotted key.
    """
    plt = require_matplotlib()
    out: dict[str, bytes] = {}
    for name, draw in (
        ("episodes.png", _episodes_figure),
        ("actions.png", _actions_figure),
        ("observations.png", _obs_figure),
        ("dynamic-range.png", _range_figure),
    ):
        png = draw(a, plt)
        if png is not None:
            out[name] = png
    for key, s in a.series.items():
        fig, ax = plt.subplots(1, 1, figsize=(8, 2.6))
        _series_axes(ax, s, a)
        fig.tight_layout()
        out[file_name(key)] = _png(fig)
    return out


def diff_figure(
    key: str,
    x: np.ndarray,
    va: np.ndarray,
    vb: np.ndarray,
    *,
    diverged_at: int,
    a_name: str,
    b_name: str,
    element: str,
    x_label: str = "step",
) -> bytes:
    """Both runs' values of one key over steps, the divergence marked, ``|a - b|`` (log) below.

    Args:
        key: the diverging key (the title).
        x: the steps (or rows) of the values.
        va: run A's values at ``x``.
        vb: run B's values at ``x``.
        diverged_at: the step of the first divergence.
        a_name: run A's label.
        b_name: run B's label.
        element: which element of the key is drawn (``""`` for a scalar).
        x_label: what the rows are (``"step"``, ``"update"``, ...).
    """
    plt = require_matplotlib()
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(8, 4.8), sharex=True, gridspec_kw={"height_ratios": [3, 2]}
    )
    top.plot(x, va, color="C0", lw=1.4, label=f"A: {a_name}")
    top.plot(x, vb, color="C1", lw=1.1, ls="--", label=f"B: {b_name}")
    for ax in (top, bottom):
        ax.axvline(diverged_at, color=_FAILURE_COLOR, lw=1, ls=":")
        ax.grid(alpha=0.3)
    top.annotate(
        f"first divergence: {x_label} {diverged_at}",
        (diverged_at, 1.0),
        xycoords=("data", "axes fraction"),
        xytext=(4, -12),
        textcoords="offset points",
        color=_FAILURE_COLOR,
        fontsize=8,
    )
    top.set_title(f"{key}{element}", fontsize=10, loc="left")
    top.legend(fontsize=7, loc="best")
    with np.errstate(invalid="ignore"):
        d = np.abs(va.astype(np.float64) - vb.astype(np.float64))
    pos = np.isfinite(d) & (d > 0)
    bottom.plot(x[pos], d[pos], ".", color=_FAILURE_COLOR, ms=3)
    bottom.set_yscale("log")
    bottom.set_ylabel("|A - B|")
    bottom.set_xlabel(x_label)
    if not pos.any():
        bottom.text(
            0.5,
            0.5,
            "no difference in this element",
            transform=bottom.transAxes,
            ha="center",
            fontsize=8,
        )
    fig.tight_layout()
    return _png(fig)
