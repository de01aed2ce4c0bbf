r"""All text and table rendering of analysis results: the one place reports are worded.

Functions here take structured results and return strings (for exception messages and
assert helpers) or rich renderables (for the command line):

* :func:`divergence_report` / :func:`divergence_location`: a
  :class:`~replaykit._analysis.compare.DivergenceReport` (a replay that diverged).
* :func:`diff_text` / :func:`diff_renderables`: a
  :class:`~replaykit._analysis.compare.DiffResult` (two recordings compared).
* :func:`value_lines`: both values and the difference of one
  :class:`~replaykit._analysis.compare.Mismatch`.
* :func:`layer_divergence`: a :class:`~replaykit._analysis.layers.LayerDivergence`.
* :func:`record_summary`, :func:`replay_summary`, :func:`inspection_renderables`: the
  command line's other outputs.

Nothing here opens a file, compares arrays or imports torch; rich is imported only by the
functions that build rich renderables.

Example:
    >>> import numpy as np
    >>> from replaykit._analysis.compare import compare_arrays
    >>> m = compare_arrays(np.float32([1, 2]), np.float32([1, 3]))
    >>> print("\n".join(value_lines(m)))
    expected: 2.0 (bits 0x40000000) [float32]
    actual:   3.0 (bits 0x40400000) [float32]
    difference: abs 1, rel 0.5, 4194304 ULP, 1 of 2 elements differ
"""

from __future__ import annotations

import html
import os
import string
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from replaykit._format import layout as F

if TYPE_CHECKING:
    from rich.console import RenderableType

    from replaykit._analysis.compare import (
        DiffResult,
        DivergenceReport,
        KeyDivergence,
        Mismatch,
    )
    from replaykit._analysis.layers import LayerDivergence

__all__ = [
    "MAX_LISTED",
    "diff_first_line",
    "diff_renderables",
    "diff_text",
    "divergence_location",
    "divergence_report",
    "doctor_renderables",
    "escaped",
    "extract_summary",
    "failure_line",
    "folder_renderables",
    "folder_totals",
    "format_value",
    "inspection_renderables",
    "is_volatile",
    "layer_divergence",
    "location",
    "manifest_summary",
    "record_progress",
    "record_summary",
    "replay_summary",
    "report_findings_lines",
    "report_html",
    "setup_differences",
    "short_value",
    "stream_unit",
    "value_lines",
]

# How many setup differences or other differing keys a text report lists before "and N more".
MAX_LISTED = 8

# Provenance keys that differ between any two runs of a diff and explain nothing.
_VOLATILE_KEYS = ("created", "pid", "argv")
_VOLATILE_PREFIXES = ("git.",)

SETUP_TITLE = "setup (provenance) differences"
DIVERGENCES_TITLE = "first divergence per key (* = earliest)"


# --------------------------------------------------------------------------- small pieces


def stream_unit(stream: str) -> str:
    """Name one row of a stream: ``"step"``, ``"reset"``, ``"update"`` or ``"<stream> row"``.

    Example:
        >>> stream_unit("updates"), stream_unit("extra")
        ('update', 'extra row')
    """
    units = {F.STEPS: "step", F.RESETS: "reset", F.UPDATES: "update"}
    return units.get(stream, f"{stream} row")


def is_volatile(key: str) -> bool:
    """Whether a flattened provenance key differs between any two runs (and explains nothing).

    Example:
        >>> is_volatile("created"), is_volatile("git.revision"), is_volatile("versions.torch")
        (True, True, False)
    """
    return key in _VOLATILE_KEYS or key.startswith(_VOLATILE_PREFIXES)


def setup_differences(
    provenance: Iterable[tuple[str, Any, Any]],
) -> list[tuple[str, Any, Any]]:
    """Keep the provenance differences that may explain a divergence (drop volatile keys).

    Example:
        >>> setup_differences([("pid", 1, 2), ("versions.numpy", "2.0", "2.1")])
        [('versions.numpy', '2.0', '2.1')]
    """
    return [(k, a, b) for k, a, b in provenance if not is_volatile(k)]


def format_value(v: Any) -> str:
    """Format a table cell: ``""`` for ``None``, 9 significant digits for floats, else ``str``.

    Example:
        >>> format_value(None), format_value(0.1 + 0.2), format_value(3)
        ('', '0.3', '3')
    """
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.9g}"
    return str(v)


def short_value(v: Any) -> str:
    """Format a narrow table cell: 4 significant digits for floats, else :func:`format_value`.

    Example:
        >>> short_value(1 / 3), short_value(None)
        ('0.3333', '')
    """
    return f"{v:.4g}" if isinstance(v, float) else format_value(v)


def _value_with_bits(v: Any, dtype: str) -> str:
    """Spell a value in full, with its bit pattern for floats, and its dtype."""
    if isinstance(v, float):
        bits = ""
        if dtype in ("float32", "<f4"):
            bits = f" (bits 0x{np.float32(v).view(np.uint32):08x})"
        elif dtype in ("float64", "<f8"):
            bits = f" (bits 0x{np.float64(v).view(np.uint64):016x})"
        elif dtype == "bfloat16":
            bits = f" (bits 0x{np.float32(v).view(np.uint32) >> 16:04x})"
        return f"{v!r}{bits} [{dtype}]"
    return f"{v!r} [{dtype}]"


def location(
    key: str,
    *,
    stream: str = F.STEPS,
    row: int | None = None,
    index: Sequence[int] = (),
    snapshot: str | None = None,
    episode: int | None = None,
    step_in_episode: int | None = None,
    at_step: int | None = None,
) -> str:
    """Build the "where it diverged" phrase shared by every report.

    Args:
        key: the key path (``obs``, ``resets/obs``, ``updates/probe/loss``).
        stream: the stream the row belongs to.
        row: the row in that stream.
        index: the first differing element.
        snapshot: the snapshot a replay started from.
        episode: the episode of a ``steps`` row.
        step_in_episode: the row's step within its episode.
        at_step: for ``resets``/``updates`` rows, the global step count they were logged at
            (an update logged at count 0, as in env-less training, gets no step).

    Example:
        >>> location("obs", row=7, index=(2,), episode=0, step_in_episode=7)
        "step 7, episode 0, step 7 of the episode, key 'obs', element [2]"
        >>> location("updates/probe/loss", stream="updates", row=3, at_step=40)
        "update 3 (logged after step 39), key 'updates/probe/loss'"
    """
    parts = []
    if snapshot is not None:
        parts.append(f"snapshot {snapshot!r}")
    if row is not None:
        here = f"{stream_unit(stream)} {row}"
        if at_step is not None and stream == F.RESETS:
            here += f" (before step {at_step})"
        elif at_step is not None and at_step > 0 and stream == F.UPDATES:
            here += f" (logged after step {at_step - 1})"
        parts.append(here)
    if episode is not None:
        ep = f"episode {episode}"
        if step_in_episode is not None:
            ep += f", step {step_in_episode} of the episode"
        parts.append(ep)
    parts.append(f"key {key!r}")
    if index:
        parts.append(f"element {list(index)}")
    return ", ".join(parts)


def value_lines(
    m: Mismatch,
    *,
    a_name: str = "expected",
    b_name: str = "actual",
    a_place: str = "the recording",
    b_place: str = "the replay",
    key: str = "",
) -> list[str]:
    """Both values of a mismatch with their bits and dtypes, and the difference.

    A digest (a ``uint64`` value whose key names a digest, such as ``params_digest``) is
    spelled as 16 hex digits, with no arithmetic difference: the distance between two hashes
    means nothing.

    Args:
        m: the mismatch.
        a_name: label of the expected (reference) value.
        b_name: label of the actual value.
        a_place: where the expected values come from (``"value not in ..."``).
        b_place: where the actual values come from (``"value missing from ..."``).
        key: the key that differs (digests are recognised by it).

    Example:
        >>> from replaykit._analysis.compare import Mismatch
        >>> value_lines(Mismatch("missing"), b_place="b")
        ['value missing from b']
        >>> m = Mismatch("value", expected=2**63, actual=5, expected_dtype="uint64",
        ...              actual_dtype="uint64", total=1, count=1)
        >>> for line in value_lines(m, key="update/params_digest"):
        ...     print(line)
        expected: digest 8000000000000000 [uint64]
        actual:   digest 0000000000000005 [uint64]
        difference: the digests differ
    """
    if m.reason == "dtype":
        return [f"expected dtype {m.expected_dtype}, found {m.actual_dtype}"]
    if m.reason == "shape":
        return [f"expected shape {m.expected_shape}, found {m.actual_shape}"]
    if m.reason == "missing":
        return [f"value missing from {b_place}"]
    if m.reason == "extra":
        return [f"value not in {a_place}"]
    width = max(len(a_name), len(b_name)) + 1
    if _is_digest(m, key):
        return [
            f"{a_name + ':':<{width}} digest {int(m.expected):016x} [{m.expected_dtype}]",
            f"{b_name + ':':<{width}} digest {int(m.actual):016x} [{m.actual_dtype}]",
            "difference: the digests differ"
            + (f", {m.count} of {m.total} elements differ" if m.total > 1 else ""),
        ]
    lines = [
        f"{a_name + ':':<{width}} {_value_with_bits(m.expected, m.expected_dtype)}",
        f"{b_name + ':':<{width}} {_value_with_bits(m.actual, m.actual_dtype)}",
    ]
    diff = []
    if m.abs_diff is not None:
        diff.append(f"abs {m.abs_diff:.6g}")
    if m.rel_diff is not None:
        diff.append(f"rel {m.rel_diff:.6g}")
    if m.ulp is not None:
        diff.append(f"{m.ulp} ULP")
    if m.abs_diff == 0:
        diff.append("equal values with different bits (signed zero or NaN payload)")
    if m.total > 1:
        diff.append(f"{m.count} of {m.total} elements differ")
    if diff:
        lines.append("difference: " + ", ".join(diff))
    return lines


def _is_digest(m: Mismatch, key: str) -> bool:
    """Whether a value mismatch is between two digests (uint64 under a key naming one)."""
    return (
        "digest" in key.rsplit("/", 1)[-1].lower()
        and m.expected_dtype in ("uint64", "<u8")
        and m.actual_dtype in ("uint64", "<u8")
        and isinstance(m.expected, (int, np.integer))
        and isinstance(m.actual, (int, np.integer))
    )


def _listed(items: Sequence[str], limit: int = MAX_LISTED) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


# --------------------------------------------------------------------------- replay reports


def divergence_location(report: DivergenceReport) -> str:
    """Where a replay diverged: snapshot, row, episode, key and element.

    Example:
        >>> from replaykit._analysis.compare import DivergenceReport, Mismatch
        >>> r = DivergenceReport("reward", Mismatch("value", index=()), "bit-exact", row=5)
        >>> divergence_location(r)
        "step 5, key 'reward'"
    """
    return location(
        report.key,
        stream=report.stream,
        row=report.row,
        index=report.mismatch.index,
        snapshot=report.snapshot,
        episode=report.episode,
        step_in_episode=report.step_in_episode,
    )


def divergence_report(report: DivergenceReport) -> str:
    """Render the full first-divergence report of a replay (the message of a ``DivergenceError``).

    Names the source, snapshot, step, episode, key, element, both values, abs/rel/ULP
    difference, the rule used, any note and the setup differences that may explain it.

    Example:
        >>> import numpy as np
        >>> from replaykit._analysis.compare import DivergenceReport, compare_arrays
        >>> m = compare_arrays(np.int64([0, 1]), np.int64([0, 0]))
        >>> r = DivergenceReport("action", m, "bit-exact", source="run.h5", row=12)
        >>> print(divergence_report(r))
        diverged from run.h5 at step 12, key 'action', element [1]
          expected: 1 [int64]
          actual:   0 [int64]
          difference: abs 1, rel 1, 1 of 2 elements differ
          rule: bit-exact
    """
    src = f" from {report.source}" if report.source else ""
    lines = [f"diverged{src} at {divergence_location(report)}"]
    lines += ["  " + s for s in value_lines(report.mismatch, key=report.key)]
    lines.append(f"  rule: {report.rule}")
    if report.note:
        lines.append(f"  note: {report.note}")
    if report.provenance:
        lines.append("  setup differences that may explain it:")
        for k, a, b in report.provenance[:MAX_LISTED]:
            lines.append(f"    {k}: {a!r} (recorded) vs {b!r} (now)")
        if len(report.provenance) > MAX_LISTED:
            lines.append(f"    ... and {len(report.provenance) - MAX_LISTED} more")
    return "\n".join(lines)


def layer_divergence(found: LayerDivergence) -> str:
    """One sentence naming the first module whose output or gradient differs.

    Example:
        >>> from replaykit._analysis.layers import LayerDivergence
        >>> print(layer_divergence(LayerDivergence("net.1", "out", 0, "k", 1)))
        update 0: the output of module 'net.1' is the first to differ (event 1 in execution order; key 'k')
    """  # noqa: E501
    what = "output" if found.kind.startswith("out") else "gradient (w.r.t. its output)"
    return (
        f"update {found.update}: the {what} of module {found.module!r} is the first to differ "
        f"(event {found.index} in execution order; key {found.key!r})"
    )


# --------------------------------------------------------------------------- diff results


def _headline(result: DiffResult, a_name: str, b_name: str) -> str:
    if result.match:
        return f"recordings match ({result.compared_keys} keys compared, {result.rules})"
    return f"recordings differ: {a_name}={result.a} vs {b_name}={result.b} ({result.rules})"


def _key_location(d: KeyDivergence) -> str:
    return location(
        d.key,
        stream=d.stream,
        row=d.row,
        index=d.mismatch.index,
        episode=d.episode,
        step_in_episode=d.step_in_episode,
        at_step=d.at_step,
    )


def _summary_lines(result: DiffResult, a_name: str, b_name: str) -> list[str]:
    """Headline, first divergence in full, other keys, row counts and key sets."""
    lines = [_headline(result, a_name, b_name)]
    if result.match:
        return lines
    ordered = result.ordered()
    if ordered:
        first = ordered[0]
        lines.append("first divergence at " + _key_location(first))
        values = value_lines(
            first.mismatch,
            a_name=a_name,
            b_name=b_name,
            a_place=a_name,
            b_place=b_name,
            key=first.key,
        )
        lines += ["  " + s for s in values]
        lines.append(f"  rule: {first.rule}")
        if result.first_module is not None:
            lines.append(f"first divergent module: {layer_divergence(result.first_module)}")
        others = [f"{d.key} ({stream_unit(d.stream)} {d.row})" for d in ordered[1:]]
        if others:
            lines.append(f"other keys that differ: {_listed(others)}")
    for stream, (ra, rb) in sorted(result.rows.items()):
        if ra != rb:
            lines.append(f"{stream}: {ra} rows in {a_name}, {rb} rows in {b_name}")
    if result.only_in_a:
        lines.append(f"only in {a_name}: {', '.join(result.only_in_a)}")
    if result.only_in_b:
        lines.append(f"only in {b_name}: {', '.join(result.only_in_b)}")
    return lines


def _setup_lines(result: DiffResult, a_name: str, b_name: str) -> list[str]:
    setup = setup_differences(result.provenance)
    if not setup:
        return []
    lines = ["setup differences that may explain it:"]
    for k, va, vb in setup[:MAX_LISTED]:
        lines.append(f"  {k}: {va!r} ({a_name}) vs {vb!r} ({b_name})")
    if len(setup) > MAX_LISTED:
        lines.append(f"  ... and {len(setup) - MAX_LISTED} more")
    return lines


def _note_lines(result: DiffResult) -> list[str]:
    return [f"note: {note}" for note in result.notes]


def diff_text(result: DiffResult, *, a_name: str = "a", b_name: str = "b") -> str:
    """Plain-text report of a :class:`~replaykit._analysis.compare.DiffResult`.

    Names the first divergence in time (stream, step, episode, key, element, both values,
    abs/rel/ULP difference, rule), the first divergent module when layer digests were
    recorded, the other keys that differ, row-count and key-set differences, setup
    (provenance) differences and notes.

    Args:
        result: from :func:`~replaykit._analysis.compare.diff_recordings`.
        a_name: what to call the reference recording (``"golden"``, ``"expected"``).
        b_name: what to call the other one.

    Example:
        >>> # print(diff_text(diff_recordings("golden.h5", "fresh.h5"), a_name="golden"))
        >>> # recordings differ: golden=golden.h5 vs b=fresh.h5 (bit-exact for every key)
        >>> # first divergence at step 30, episode 0, step 30 of the episode, key 'action'
        >>> # ...
    """
    lines = _summary_lines(result, a_name, b_name)
    if not result.match:
        lines += _setup_lines(result, a_name, b_name)
    lines += _note_lines(result)
    return "\n".join(lines)


def _divergence_table(result: DiffResult) -> Any:
    from rich.table import Table

    ordered = result.ordered()
    table = Table(title=DIVERGENCES_TITLE, title_justify="left")
    for col in ("key", "row", "ep:step", "index", "a", "b", "abs", "rel", "ULP"):
        table.add_column(col, no_wrap=col == "key")
    for i, d in enumerate(ordered):
        m = d.mismatch
        ep = "" if d.episode is None else f"{d.episode}:{d.step_in_episode}"
        if m.reason == "value":
            va, vb = short_value(m.expected), short_value(m.actual)
        elif m.reason in ("dtype", "shape"):
            va = f"{m.expected_dtype} {tuple(m.expected_shape)}"
            vb = f"{m.actual_dtype} {tuple(m.actual_shape)}"
        else:
            va, vb = ("", "missing") if m.reason == "missing" else ("missing", "")
        row = f"{d.row}" if d.stream == F.STEPS else f"{d.stream} {d.row}"
        table.add_row(
            ("* " if i == 0 else "") + d.key,
            row,
            ep,
            str(list(m.index)) if m.index else "",
            va,
            vb,
            short_value(m.abs_diff),
            short_value(m.rel_diff),
            format_value(m.ulp),
        )
    return table


def _setup_table(setup: list[tuple[str, Any, Any]]) -> Any:
    from rich.table import Table

    table = Table(title=SETUP_TITLE, title_justify="left")
    for col in ("key", "a", "b"):
        table.add_column(col, overflow="fold")
    for k, va, vb in setup:
        table.add_row(k, repr(va), repr(vb))
    return table


def diff_renderables(result: DiffResult) -> list[RenderableType]:
    """Return what ``replaykit diff`` prints, as rich renderables in order.

    A table of each differing key's first divergence (earliest first), a table of setup
    (provenance) differences, then the text summary of :func:`diff_text` without its setup
    section (the table holds it).

    Example:
        >>> # from rich.console import Console
        >>> # for part in diff_renderables(diff_recordings("a.h5", "b.h5")):
        >>> #     Console().print(part)
    """
    parts: list[RenderableType] = []
    if result.divergences:
        parts.append(_divergence_table(result))
    setup = setup_differences(result.provenance)
    if setup:
        parts.append(_setup_table(setup))
    parts.append("\n".join(_summary_lines(result, "a", "b") + _note_lines(result)))
    return parts


# --------------------------------------------------------------------------- other commands


def record_summary(summary: Any) -> str:
    """One line for ``replaykit record``: what was written where.

    Many snapshots are counted, with the first and last few named, never all listed.

    Args:
        summary: a ``RecordSummary`` (``path``, ``env_id``, ``steps``, ``episodes``,
            ``updates``, ``snapshots``, ``bytes``; optionally ``missed_snapshots``).

    Example:
        >>> from types import SimpleNamespace as S
        >>> record_summary(S(path="a.h5", env_id="CartPole-v1", steps=4, episodes=1, updates=0,
        ...                  snapshots=[], bytes=2048))
        'recorded 4 steps, 1 episodes, 0 updates of CartPole-v1 to a.h5 (2 KiB); snapshots: none'
        >>> names = [f"step-{i:06d}" for i in range(1, 1000)]
        >>> record_summary(S(path="a.h5", env_id="CartPole-v1", steps=1000, episodes=9,
        ...                  updates=0, snapshots=names, bytes=3 << 20)).split("; ")[1]
        'snapshots: 999 (step-000001, step-000002, step-000003, ..., step-000998, step-000999)'
    """
    snaps = _snapshot_list(list(summary.snapshots))
    missed = list(getattr(summary, "missed_snapshots", None) or ())
    tail = ""
    if missed:
        shown = ", ".join(str(s) for s in missed[:MAX_LISTED])
        more = f" and {len(missed) - MAX_LISTED} more" if len(missed) > MAX_LISTED else ""
        tail = f"; not reached (the run ended at step {summary.steps}): {shown}{more}"
    return (
        f"recorded {summary.steps} steps, {summary.episodes} episodes, {summary.updates} updates "
        f"of {summary.env_id} to {summary.path} ({_size(summary.bytes)}); snapshots: {snaps}"
        f"{tail}"
    )


def _snapshot_list(names: list[str], head: int = 3, last: int = 2) -> str:
    """``none``, every name when few, else the count with the first and last few names."""
    if not names:
        return "none"
    if len(names) <= head + last + 1:
        return ", ".join(names)
    return f"{len(names)} ({', '.join([*names[:head], '...', *names[-last:]])})"


def _size(n: int) -> str:
    """Bytes in KiB, MiB or GiB: ``2 KiB``, ``31.9 MiB``."""
    if n < 1 << 20:
        return f"{n / 1024:.0f} KiB"
    if n < 1 << 30:
        return f"{n / (1 << 20):.1f} MiB"
    return f"{n / (1 << 30):.2f} GiB"


def record_progress(
    env_id: str,
    *,
    steps: int,
    steps_total: int | None,
    episodes: int,
    episodes_total: int | None,
    snapshots: int,
    steps_per_s: float,
    label: bool = True,
) -> str:
    """One progress line for ``replaykit record`` (``label=False``: the counts beside its bar).

    Example:
        >>> record_progress("CartPole-v1", steps=12000, steps_total=200000, episodes=3,
        ...                 episodes_total=None, snapshots=2, steps_per_s=3456.7)
        'recording CartPole-v1: 12,000/200,000 steps, 3,457 steps/s, 3 episodes, 2 snapshots'
    """
    of_steps = f"/{steps_total:,}" if steps_total is not None else ""
    of_eps = f"/{episodes_total:,}" if episodes_total is not None else ""
    counts = (
        f"{steps:,}{of_steps} steps, {steps_per_s:,.0f} steps/s, {episodes:,}{of_eps} episodes, "
        f"{snapshots:,} snapshot{'s' if snapshots != 1 else ''}"
    )
    return f"recording {env_id}: {counts}" if label else counts


def replay_summary(summary: Any) -> str:
    """One line for a snapshot that replayed bit-exactly.

    Args:
        summary: a ``ReplaySummary`` (``snapshot``, ``step``, ``verified_steps``,
            ``verified_updates``).

    Example:
        >>> from types import SimpleNamespace as S
        >>> replay_summary(S(snapshot="step-000200", step=200, verified_steps=5,
        ...                  verified_updates=0))
        'snapshot step-000200 (step 200): 5 steps reproduced bit-exactly'
    """
    updates = f" and {summary.verified_updates} updates" if summary.verified_updates else ""
    end = (
        "; replayed to the end of the committed prefix (the recording was not closed)"
        if getattr(summary, "prefix_end", False)
        else ""
    )
    return (
        f"snapshot {summary.snapshot} (step {summary.step}): {summary.verified_steps} steps"
        f"{updates} reproduced bit-exactly{end}"
    )


def _add_tree(node: Any, layout: dict[str, Any], depth: int = 0) -> None:
    for name, child in layout.items():
        if name.endswith("/") and depth == 1 and node.label == f"{F.SNAPSHOTS_GROUP}/":
            # A snapshot is a flat list of numbered arrays: one line says enough.
            arrays = [c for c in child.values() if "bytes" in c]
            size = sum(c["bytes"] for c in arrays)
            node.add(f"{name}  {len(arrays)} arrays, {size} B")
        elif name.endswith("/"):
            _add_tree(node.add(name), child, depth + 1)
        else:
            node.add(f"{name}  {child['dtype']} {tuple(child['shape'])}  {child['bytes']} B")


def _flatten(doc: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(doc, dict):
        items: list[tuple[str, Any]] = []
        for k, v in doc.items():
            items += _flatten(v, f"{prefix}{k}.")
        return items
    return [(prefix[:-1], doc)]


def escaped(text: Any, *, keep_newlines: bool = False) -> str:
    """Return ``text`` with control and other unprintable characters escaped (ESC as x1b).

    Text stored in a recording (an exception's message, a traceback, a reason) is data from
    another process: it is shown as text, never as terminal control sequences.
    """
    out = []
    for ch in str(text):
        if (ch == "\n" and keep_newlines) or ch.isprintable():
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def _n(v: Any) -> str:
    """Return an int with a space every three digits (``90 001``); other values as str."""
    return f"{v:,}".replace(",", " ") if isinstance(v, int) and not isinstance(v, bool) else str(v)


def extract_summary(result: Any) -> str:
    """Return what ``replaykit extract`` prints: the file written, what it holds, the test.

    Example:
        >>> # print(extract_summary(replaykit.extract("run.h5", "bug.h5")))
    """
    lines = [
        f"wrote {result.path} ({_size(result.bytes)}): snapshot {escaped(result.snapshot)!r}, "
        f"steps {_n(result.first_step)} to {_n(result.first_step + result.steps - 1)} "
        f"({_n(result.steps)} steps, {_n(result.updates)} updates)"
        if result.steps
        else f"wrote {result.path} ({_size(result.bytes)}): snapshot "
        f"{escaped(result.snapshot)!r}, {_n(result.updates)} updates"
    ]
    if result.failure:
        lines.append(f"through the failure: {escaped(result.failure.get(F.FAILURE_REASON))}")
    if result.pytest_path is not None:
        lines.append(f"wrote {result.pytest_path}: run it with pytest {result.pytest_path}")
    return "\n".join(lines)


def failure_line(failure: dict[str, Any], nearest: dict[str, Any] | None) -> str:
    """One line for a failure record and its nearest earlier snapshot.

    Example:
        >>> failure_line({"step": 90001, "episode": 412, "update": 5623, "reason": "reward NaN"},
        ...              {"name": "step-089000", "step": 89000})
        "failed at step 90 001 (episode 412, update 5 623): reward NaN; nearest snapshot 'step-089000' at step 89 000"
    """  # noqa: E501
    reason = escaped(failure.get(F.FAILURE_REASON, "?"))
    if failure.get(F.FAILURE_EPISODE, -1) == -1 and not failure.get(F.FAILURE_STEP):
        # A training recording (no env): updates are the only position.
        line = f"failed at update {_n(failure.get(F.FAILURE_UPDATE))}: {reason}"
    else:
        where = f"failed at step {_n(failure.get(F.FAILURE_STEP))}"
        extra = []
        if failure.get(F.FAILURE_EPISODE, -1) != -1:
            extra.append(f"episode {_n(failure.get(F.FAILURE_EPISODE))}")
        extra.append(f"update {_n(failure.get(F.FAILURE_UPDATE))}")
        line = f"{where} ({', '.join(extra)}): {reason}"
    if nearest is None:
        return line + "; no snapshot precedes it"
    return (
        f"{line}; nearest snapshot {escaped(nearest['name'])!r} at step {_n(nearest['step'])}"
        + (f" (update {_n(nearest['updates'])})" if nearest.get("updates") else "")
    )


def inspection_renderables(s: dict[str, Any]) -> list[RenderableType]:
    """Return what ``replaykit inspect`` prints for a summary from ``inspection.summarize``.

    A header line, the layout tree, episode statistics and table, snapshots, per-key
    statistics and provenance.

    Example:
        >>> # from replaykit._analysis.inspection import summarize
        >>> # for part in inspection_renderables(summarize("run.h5")):
        >>> #     Console().print(part)
    """
    from rich.table import Table
    from rich.text import Text
    from rich.tree import Tree

    parts: list[RenderableType] = []
    if s.get("failure"):
        # Text() never interprets markup: the record's text is data, shown as it is stored
        # (control characters escaped).
        parts.append(Text(failure_line(s["failure"], s.get("failure_snapshot")), style="bold"))
        tb = s["failure"].get(F.FAILURE_TRACEBACK)
        if isinstance(tb, str) and tb:
            parts.append(Text(escaped(tb, keep_newlines=True).rstrip("\n")))
    parts.append(
        f"{s['path']}: replaykit format v{s['format_version']}, {s['bytes'] / 1024:.0f} KiB, "
        f"env {s['env_id']}, created {s['created']}"
    )
    findings = s.get("findings") or []
    if findings:
        parts.append(f"findings ({len(findings)}; pictures: replaykit report):")
        parts.extend(f"  - {line}" for line in findings)
    tree = Tree("layout")
    _add_tree(tree, s["layout"])
    parts.append(tree)
    eps = s["episodes"]
    if eps:
        lengths = [e["steps"] for e in eps]
        parts.append(
            f"episodes: {len(eps)} (steps per episode: min {min(lengths)}, max {max(lengths)}, "
            f"mean {sum(lengths) / len(lengths):.1f})"
        )
        first = 10  # episodes listed in the table
        table = Table(
            title="episodes" + (f" (first {first})" if len(eps) > first else ""),
            title_justify="left",
        )
        for col in ("episode", "steps", "return"):
            table.add_column(col, justify="right")
        for e in eps[:first]:
            table.add_row(str(e["episode"]), str(e["steps"]), format_value(e["return"]))
        parts.append(table)
    table = Table(title="snapshots", title_justify="left")
    for col in ("name", "step", "episode", "bytes", "env state", "tracked"):
        table.add_column(col)
    for snap in s["snapshots"]:
        table.add_row(
            snap["name"],
            str(snap["step"]),
            str(snap["episode"]),
            str(snap["bytes"]),
            str(snap["env_state"]),
            ", ".join(snap["tracked"]),
        )
    parts.append(table)
    table = Table(title="keys", title_justify="left")
    for col in ("stream/key", "dtype", "shape", "rows", "min", "max", "mean"):
        table.add_column(col, no_wrap=col == "stream/key")
    for sname, st in s["streams"].items():
        for col, c in st["columns"].items():
            rows = str(c["rows"]) if "present_rows" not in c else f"{c['present_rows']}/{c['rows']}"
            table.add_row(
                f"{sname}/{col}",
                c["dtype"],
                str(tuple(c["shape"])),
                rows,
                short_value(c.get("min")),
                short_value(c.get("max")),
                short_value(c.get("mean")),
            )
    parts.append(table)
    table = Table(title="provenance", title_justify="left")
    table.add_column("key")
    table.add_column("value", overflow="fold")
    for k, v in _flatten(s["provenance"]):
        table.add_row(k, str(v))
    parts.append(table)
    return parts


# --------------------------------------------------------------------------- diagnostics


def doctor_renderables(report: Any) -> list[RenderableType]:
    """Return what ``replaykit doctor`` prints for a ``doctor.DoctorReport``.

    A table of PASS/WARN/FAIL rows with the fix for each, then one verdict line.

    Example:
        >>> # for part in doctor_renderables(doctor(lambda: gym.make("CartPole-v1"))):
        >>> #     Console().print(part)
    """
    from rich.table import Table

    table = Table(
        title=f"replaykit doctor: {report.env}, seed {report.seed}, {report.steps} steps per run",
        title_justify="left",
    )
    table.add_column("status", no_wrap=True)
    table.add_column("check", no_wrap=True)
    table.add_column("finding", overflow="fold")
    table.add_column("fix", overflow="fold")
    styles = {"PASS": "green", "WARN": "yellow", "FAIL": "bold red"}
    for c in report.checks:
        table.add_row(c.status, c.name, c.detail, c.fix, style=styles.get(c.status))
    fails = sum(c.status == "FAIL" for c in report.checks)
    warns = sum(c.status == "WARN" for c in report.checks)
    if fails:
        verdict = (
            f"{fails} check(s) failed, {warns} warning(s): a replay of this setup will diverge"
        )
    elif warns:
        verdict = f"all checks passed, {warns} warning(s): replays should be bit-exact"
    else:
        verdict = "all checks passed: replays of this setup should be bit-exact"
    return [table, verdict]


def report_findings_lines(analysis: Any) -> list[str]:
    """One line per finding of a report (``replaykit report`` and ``inspect`` print these).

    Example:
        >>> # report_findings_lines(analyze("run.h5"))
        >>> # ['steps/probe/logits[1] is nan first at step 123: ...']
    """
    return [f.message for f in analysis.findings]


_FIGURE = string.Template(
    '<figure><img alt="$alt" src="data:image/png;base64,$data">'
    "<figcaption>$caption</figcaption></figure>"
)
_SECTION = string.Template('<section id="$id">\n<h2>$title</h2>\n$body\n</section>')
_FINDING = string.Template('<li class="kind-$kind">$message</li>')
_ROW = string.Template("<tr>$cells</tr>")


def _figure(pngs: dict[str, bytes], name: str, caption: str) -> str:
    import base64

    if name not in pngs:
        return ""
    return _FIGURE.substitute(
        alt=html.escape(name),
        data=base64.b64encode(pngs[name]).decode("ascii"),
        caption=html.escape(caption),
    )


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    head = _ROW.substitute(cells="".join(f"<th>{html.escape(h)}</th>" for h in header))
    body = [
        _ROW.substitute(
            cells="".join(
                f"<td{' class=key' if i == 0 else ''}>{html.escape(c)}</td>"
                for i, c in enumerate(r)
            )
        )
        for r in rows
    ]
    return "<table>\n" + "\n".join([head, *body]) + "\n</table>"


def report_html(analysis: Any, pngs: dict[str, bytes]) -> str:
    """Return the self-contained HTML page of a report: findings first, then the pictures.

    Every picture is embedded as a ``data:`` URI, so the one file opens anywhere, without
    network access. The page is filled from ``string.Template`` pieces and every value is
    escaped.

    Args:
        analysis: an :class:`~replaykit._analysis.report.Analysis`.
        pngs: ``{file name: PNG bytes}`` from :func:`replaykit._analysis.plots.report_figures`.

    Example:
        >>> # page = report_html(analyze("run.h5"), report_figures(analysis))
    """
    from importlib import resources

    from replaykit._analysis.plots import file_name

    a = analysis
    page = string.Template(
        resources.files("replaykit._analysis").joinpath("report.html").read_text("utf-8")
    )
    findings = [
        _FINDING.substitute(kind=html.escape(f.kind), message=html.escape(f.message))
        for f in a.findings
    ] or [
        '<li class="none">No findings: no non-finite values, no collapsed policy, no '
        "un-normalised or constant observation, no exploding update probe.</li>"
    ]
    notes = "".join(f"<p>{html.escape(n)}</p>" for n in a.notes)
    sections = []
    if "episodes.png" in pngs:
        n = len(a.episode_lengths)
        sections.append(
            _SECTION.substitute(
                id="episodes",
                title="Episodes",
                body=_figure(pngs, "episodes.png", f"return and length of each of {n} episodes"),
            )
        )
    marks = "; dashed lines are snapshots" if a.snapshots else ""
    keys = [
        _figure(pngs, file_name(k), f"{k}: mean per bucket of rows, min-max band shaded{marks}")
        for k in a.series
    ]
    if keys:
        sections.append(
            _SECTION.substitute(id="keys", title="Keys over time", body="\n".join(keys))
        )
    if "actions.png" in pngs:
        act = a.actions
        sections.append(
            _SECTION.substitute(
                id="actions",
                title="Policy: actions and entropy",
                body=_figure(
                    pngs,
                    "actions.png",
                    f"share of each action per window; over the last {act['last_n']} steps "
                    f"(right of the dotted line) action {act['top_action']} has {act['share']:.0%}",
                ),
            )
        )
    if a.obs_stats is not None:
        st = a.obs_stats
        rows = [
            (f"obs[{i}]", *(short_value(float(st[k][i])) for k in ("mean", "std", "min", "max")))
            for i in range(min(len(st["mean"]), 64))
        ]
        body = _figure(
            pngs,
            "observations.png",
            "std and max |value| per observation dimension; the dotted line is unit scale",
        )
        sections.append(
            _SECTION.substitute(
                id="observations",
                title="Input normalisation",
                body=body + "\n" + _table(("dimension", "mean", "std", "min", "max"), rows),
            )
        )
    nf_rows = [
        (
            nf["key"],
            str(nf["step"]),
            "" if nf["update"] is None else str(nf["update"]),
            str(nf["element"]) if nf["element"] else "-",
            nf["value"],
        )
        for nf in a.nonfinite
    ]
    sections.append(
        _SECTION.substitute(
            id="nonfinite",
            title="First non-finite value per key",
            body=_table(("key", "step", "update", "element", "value"), nf_rows)
            if nf_rows
            else "<p>Every numeric value in every stream is finite.</p>",
        )
    )
    if "dynamic-range.png" in pngs:
        sections.append(
            _SECTION.substitute(
                id="dynamic-range",
                title="Dynamic range over updates",
                body=_figure(
                    pngs,
                    "dynamic-range.png",
                    "max |value| per bucket of updates for every update probe (loss, grad "
                    "norm, learning rate, layer digests)",
                ),
            )
        )
    snaps = ", ".join(f"{s['name']} (step {s['step']})" for s in a.snapshots) or "none"
    summary = (
        f"{a.path}: env {a.env_id or '(none)'}, {a.steps} steps, {len(a.episode_lengths)} "
        f"episodes, {a.updates} updates; snapshots: {snaps}"
        + (f"; failure at step {a.failure['step']}: {a.failure['message']}" if a.failure else "")
    )
    return page.substitute(
        title=html.escape(os.path.basename(a.path)),
        summary=html.escape(summary),
        findings="\n".join(findings),
        notes=notes,
        sections="\n".join(sections),
    )


# --------------------------------------------------------------------------- folders


def diff_first_line(result: DiffResult) -> str:
    """One line for a compared pair: the match, or where it first diverged and both values.

    Example:
        >>> # diff_first_line(diff_recordings("a/seed-1.h5", "b/seed-1.h5"))
        >>> # "step 12, key 'action', element [0]: 1 vs 0"
    """
    if result.match:
        return f"match ({result.compared_keys} keys)"
    first = result.first
    if first is not None:
        m = first.mismatch
        if m.reason == "value":
            values = f"{short_value(m.expected)} vs {short_value(m.actual)}"
        else:
            values = f"{m.reason} differs"
        return f"{_key_location(first)}: {values}"
    for stream, (ra, rb) in sorted(result.rows.items()):
        if ra != rb:
            return f"{stream}: {ra} rows vs {rb} rows"
    only = [
        *(f"only in a: {k}" for k in result.only_in_a),
        *(f"only in b: {k}" for k in result.only_in_b),
    ]
    return "; ".join(only[:2]) or "differ"


# Status words of a folder table, in the order the totals list them.
FOLDER_STATUSES = ("ok", "diverged", "bad", "missing", "unpaired", "failed")


def folder_renderables(result: Any) -> list[RenderableType]:
    """Return the summary of a folder verb: one row per file (or pair), then the totals.

    ``result`` is a :class:`~replaykit._scale.sweep.FolderResult`: ``verb``, ``files``
    (each with ``file``, ``other``, ``seed``, ``status``, ``detail``, ``seconds``),
    ``backend``, ``workers``, ``seconds``.
    """
    from rich.table import Table

    pair = result.verb == "diff"
    table = Table(
        title=f"replaykit {result.verb}: {escaped(result.folder)}"
        + (f" vs {escaped(result.other_folder)}" if pair else "")
    )
    table.add_column("file")
    if pair:
        table.add_column("other")
    table.add_column("seed", justify="right")
    table.add_column("status")
    table.add_column("first divergence" if pair else "detail", overflow="fold")
    table.add_column("s", justify="right")
    for f in result.files:
        row = [escaped(f.file or "-")]
        if pair:
            row.append(escaped(f.other or "-"))
        row += [
            "-" if f.seed is None else str(f.seed),
            f.status.upper() if f.status != "ok" else "ok",
            escaped(f.detail),
            f"{f.seconds:.2f}",
        ]
        table.add_row(*row)
    return [table, folder_totals(result)]


def folder_totals(result: Any) -> str:
    """Return the totals line of a folder verb: counts per status, backend and wall time.

    Example:
        >>> from types import SimpleNamespace as NS
        >>> r = NS(verb="check", files=[NS(status="ok"), NS(status="bad")], backend="serial",
        ...        workers=1, seconds=1.5)
        >>> folder_totals(r)
        'check: 2 files: 1 ok, 1 bad (serial, 1 worker, 1.5 s)'
    """
    counts = {s: 0 for s in FOLDER_STATUSES}
    for f in result.files:
        counts[f.status] = counts.get(f.status, 0) + 1
    parts = [f"{n} {s}" for s, n in counts.items() if n]
    unit = "pair" if result.verb == "diff" else "file"
    unit += "" if len(result.files) == 1 else "s"
    workers = f"{result.workers} worker{'s' if result.workers != 1 else ''}"
    return (
        f"{result.verb}: {len(result.files)} {unit}: {', '.join(parts) or 'none'} "
        f"({result.backend}, {workers}, {result.seconds:.1f} s)"
    )


def manifest_summary(manifest: Any) -> str:
    """Say what ``replaykit manifest DIR`` wrote: the path, the counts, and each failed file.

    Example:
        >>> from types import SimpleNamespace as NS
        >>> m = NS(path="runs/replaykit-manifest.json", entries=[NS(file="a.h5", status="ok",
        ...        error=None, rows={"steps": 10})])
        >>> print(manifest_summary(m))
        wrote runs/replaykit-manifest.json: 1 recording(s), 10 steps in all
    """
    ok = [e for e in manifest.entries if e.status == "ok"]
    bad = [e for e in manifest.entries if e.status != "ok"]
    steps = sum(int(e.rows.get(F.STEPS, 0)) for e in ok)
    lines = [f"wrote {escaped(manifest.path)}: {len(ok)} recording(s), {steps} steps in all"]
    if bad:
        lines[0] += f"; {len(bad)} file(s) are not sound recordings:"
        lines += [f"  {escaped(e.file)}: {escaped(e.error)}" for e in bad]
    return "\n".join(lines)
