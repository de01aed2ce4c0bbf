"""The ``replaykit`` command line: record, replay, diff, inspect, check, demo.

Exit codes (the public contract):
    0: match / ok.
    1: diverged / mismatch (a replay or diff found a difference).
    2: usage or input error (bad arguments, a file that is not a sound recording); one line
       ``replaykit: error: ...`` on stderr, no traceback.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from replaykit.errors import DivergenceError, ReplaykitError, UsageError

EXIT_OK = 0
EXIT_DIVERGED = 1
EXIT_ERROR = 2

EXIT_CODES_HELP = (
    "Exit codes: 0 match/ok; 1 diverged/mismatch; 2 usage or input error "
    "(bad arguments, unreadable or damaged file)."
)

app = typer.Typer(
    name="replaykit",
    help="Record RL rollouts with mid-episode snapshots, restore them and verify bit-exactly.\n\n"
    + EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# Rich falls back to 80 columns when stdout is not a terminal, which folds the diff and
# inspect tables; pipes and CI logs get 120 unless COLUMNS says otherwise.
_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 120
out = Console(highlight=False, markup=False, soft_wrap=True, width=_WIDTH)
err = Console(stderr=True, highlight=False, markup=False)


def _version(value: bool) -> None:
    if value:
        from replaykit import __version__

        typer.echo(f"replaykit {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Record RL rollouts with mid-episode snapshots, restore them and verify bit-exactly."""


def _dump_json(doc: Any) -> None:
    # Stable output: sorted keys, fixed indent; non-finite floats are spelled as strings.
    typer.echo(json.dumps(doc, sort_keys=True, indent=2, default=_json_default, allow_nan=False))


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (Path, tuple)):
        return str(obj) if isinstance(obj, Path) else list(obj)
    return repr(obj)


def _finite(doc: Any) -> Any:
    """Replace NaN/inf floats with strings so the JSON stays standard."""
    if isinstance(doc, float) and doc != doc or doc in (float("inf"), float("-inf")):
        return repr(doc)
    if isinstance(doc, dict):
        return {k: _finite(v) for k, v in doc.items()}
    if isinstance(doc, (list, tuple)):
        return [_finite(v) for v in doc]
    return doc


def _parse_steps_list(value: str | None) -> str | None:
    """Validate ``--snapshot-at`` (a callback, so errors name the option)."""
    if not value:
        return value
    try:
        steps = [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise typer.BadParameter(
            f"expected comma-separated step numbers like 200,300; got {value!r}"
        ) from None
    if any(s < 0 for s in steps):
        raise typer.BadParameter(f"step numbers must be >= 0; got {value!r}")
    return value


@contextmanager
def _progress(total: int, label: str, enabled: bool) -> Iterator[Any]:
    if not enabled or total <= 0:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda: bar.advance(task)


@app.command(epilog=EXIT_CODES_HELP)
def record(
    env_id: Annotated[str, typer.Argument(help="A registered gymnasium env id, e.g. CartPole-v1.")],
    out_path: Annotated[Path, typer.Option("--out", "-o", help="The .h5 file to write.")],
    policy: Annotated[
        str, typer.Option(help="random, mlp, or module:callable (a factory taking (env, seed)).")
    ] = "random",
    seed: Annotated[int, typer.Option(help="Seed for the env, the policy and global RNGs.")] = 0,
    steps: Annotated[
        int, typer.Option(min=0, help="Steps to record (a cap with --episodes).")
    ] = 1000,
    snapshot_at: Annotated[
        str | None,
        typer.Option(
            "--snapshot-at",
            callback=_parse_steps_list,
            help="Comma-separated global steps to snapshot at: 200,300.",
        ),
    ] = None,
    snapshot_every: Annotated[
        int | None, typer.Option("--snapshot-every", min=1, help="Also snapshot every N steps.")
    ] = None,
    episodes: Annotated[
        int | None, typer.Option(min=1, help="Record this many whole episodes instead.")
    ] = None,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            help="Show a progress bar (default: when stderr is a terminal).",
        ),
    ] = None,
) -> None:
    """Record a seeded rollout of POLICY on ENV_ID, with snapshots, to one HDF5 file."""
    from replaykit._session.rollout import record_rollout

    at = [int(v) for v in (snapshot_at or "").replace(" ", "").split(",") if v]
    show = sys.stderr.isatty() if progress is None else progress
    total = episodes if episodes is not None else steps
    with _progress(total if episodes is None else 0, f"recording {env_id}", show) as tick:
        summary = record_rollout(
            env_id,
            policy,
            seed=seed,
            steps=steps if episodes is None else (steps if steps else 0),
            out=out_path,
            snapshot_at=at,
            snapshot_every=snapshot_every,
            episodes=episodes,
            on_step=tick,
        )
    snaps = ", ".join(summary.snapshots) if summary.snapshots else "none"
    out.print(
        f"recorded {summary.steps} steps, {summary.episodes} episodes, {summary.updates} updates "
        f"of {env_id} to {summary.path} ({summary.bytes / 1024:.0f} KiB); snapshots: {snaps}"
    )


def _snapshot_id(value: str, names: list[str]) -> str | int:
    """Return a snapshot name, or failing that an index (``0`` first, ``-1`` last)."""
    if value in names:
        return value
    try:
        return int(value)
    except ValueError:
        return value


@app.command(epilog=EXIT_CODES_HELP)
def replay(
    file: Annotated[Path, typer.Argument(help="A recording made by `replaykit record`.")],
    snapshot: Annotated[
        str | None,
        typer.Option(help="Snapshot name or index (0 first, -1 last); default: the first."),
    ] = None,
    all_snapshots: Annotated[bool, typer.Option("--all", help="Replay every snapshot.")] = False,
    steps: Annotated[
        int | None,
        typer.Option(min=0, help="Steps to verify after the snapshot (default: to the end)."),
    ] = None,
    policy: Annotated[
        str | None,
        typer.Option(
            help="Policy to replay with (default: the recorded built-in one). A module:callable "
            "policy is never imported because a file names it: pass it again here."
        ),
    ] = None,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify/--no-verify",
            help="Check stored checksums (--no-verify: for experiments on hand-edited files).",
        ),
    ] = True,
) -> None:
    """Restore snapshot(s) in this process and verify the next steps bit-exactly."""
    from replaykit._format.store import Recording
    from replaykit._session.rollout import replay_snapshot

    if all_snapshots and snapshot is not None:
        raise UsageError("pass either --snapshot or --all, not both")
    with Recording(file, verify=verify) as rec:
        names = [s.name for s in rec.snapshots]
    if not names:
        raise UsageError(
            f"{file} holds no snapshots; record with --snapshot-at or --snapshot-every"
        )
    ids: list[str | int | None] = (
        list(names)
        if all_snapshots
        else [None if snapshot is None else _snapshot_id(snapshot, names)]
    )
    failed = 0
    for sid in ids:
        try:
            s = replay_snapshot(file, sid, policy_spec=policy, steps=steps, verify=verify)
        except DivergenceError as exc:
            failed += 1
            out.print(exc.report.format())
            continue
        updates = f" and {s.verified_updates} updates" if s.verified_updates else ""
        out.print(
            f"snapshot {s.snapshot} (step {s.step}): {s.verified_steps} steps{updates} "
            "reproduced bit-exactly"
        )
    if failed:
        raise typer.Exit(EXIT_DIVERGED)


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else _fmt_value(v)


def _fmt_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.9g}"
    return str(v)


@app.command(epilog=EXIT_CODES_HELP)
def diff(
    a: Annotated[Path, typer.Argument(help="The reference recording.")],
    b: Annotated[Path, typer.Argument(help="The recording to compare with it.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    atol: Annotated[
        float, typer.Option(min=0.0, help="Absolute tolerance (default: bit-exact).")
    ] = 0.0,
    rtol: Annotated[float, typer.Option(min=0.0, help="Relative tolerance.")] = 0.0,
    max_ulp: Annotated[
        int, typer.Option("--max-ulp", min=0, help="Largest ULP distance allowed.")
    ] = 0,
    key: Annotated[
        list[str] | None,
        typer.Option("--key", help="Compare only keys matching this fnmatch pattern (repeatable)."),
    ] = None,
) -> None:
    """Compare two recordings key by key; report each key's first divergence (exit 1 if any)."""
    from replaykit._analysis.compare import Rule, Rules, diff_recordings

    rules = Rules(default=Rule(atol=atol, rtol=rtol, max_ulp=max_ulp))
    result = diff_recordings(a, b, rules=rules, keys=key or None)
    module = _first_module(result)
    if as_json:
        doc = result.to_json()
        doc["first_module"] = module
        _dump_json(_finite(doc))
    else:
        _print_diff(result)
        if module:
            out.print(f"first divergent module: {module}")
    if not result.match:
        raise typer.Exit(EXIT_DIVERGED)


def _first_module(result: Any) -> str | None:
    """Name the first module that diverged when the runs recorded layer digests (LayerTracer)."""
    if not any(d.key.startswith("updates/probe/layer/") for d in result.divergences):
        return None
    from replaykit._analysis.layers import first_divergent_module  # imports torch: only now

    found = first_divergent_module(result)
    return None if found is None else found.describe()


def _print_diff(result: Any) -> None:
    from replaykit.testing import _volatile, describe_diff

    if result.divergences:
        first = result.first
        table = Table(title="first divergence per key (* = earliest)", title_justify="left")
        for col in ("key", "row", "ep:step", "index", "a", "b", "abs", "rel", "ULP"):
            table.add_column(col, no_wrap=col == "key")
        for d in sorted(result.divergences, key=lambda d: (d is not first, d.row or 0, d.key)):
            m = d.mismatch
            ep = "" if d.episode is None else f"{d.episode}:{d.step_in_episode}"
            if m.reason == "value":
                va, vb = _short(m.expected), _short(m.actual)
            elif m.reason in ("dtype", "shape"):
                va = f"{m.expected_dtype} {tuple(m.expected_shape)}"
                vb = f"{m.actual_dtype} {tuple(m.actual_shape)}"
            else:
                va, vb = ("", "missing") if m.reason == "missing" else ("missing", "")
            row = f"{d.row}" if d.stream == "steps" else f"{d.stream} {d.row}"
            table.add_row(
                ("* " if d is first else "") + d.key,
                row,
                ep,
                str(list(m.index)) if m.index else "",
                va,
                vb,
                _short(m.abs_diff),
                _short(m.rel_diff),
                _fmt_value(m.ulp),
            )
        out.print(table)
    setup = [p for p in result.provenance if not _volatile(p[0])]
    if setup:
        table = Table(title="setup (provenance) differences", title_justify="left")
        for col in ("key", "a", "b"):
            table.add_column(col, overflow="fold")
        for k, va, vb in setup:
            table.add_row(k, repr(va), repr(vb))
        out.print(table)
    # The plain-text summary (first divergence with full values, row counts, key sets).
    text = describe_diff(result)
    out.print(text.split("setup differences")[0].rstrip())
    for note in getattr(result, "notes", None) or []:
        out.print(f"note: {note}")


@app.command(epilog=EXIT_CODES_HELP)
def inspect(
    file: Annotated[Path, typer.Argument(help="A recording.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Show a recording's layout, episodes, snapshots, provenance and per-key statistics."""
    from replaykit._analysis.inspection import summarize

    s = summarize(file)
    if as_json:
        _dump_json(_finite(s))
        return
    out.print(
        f"{s['path']}: replaykit format v{s['format_version']}, {s['bytes'] / 1024:.0f} KiB, "
        f"env {s['env_id']}, created {s['created']}"
    )
    tree = Tree("layout")
    _add_tree(tree, s["layout"])
    out.print(tree)
    eps = s["episodes"]
    if eps:
        lengths = [e["steps"] for e in eps]
        out.print(
            f"episodes: {len(eps)} (steps per episode: min {min(lengths)}, max {max(lengths)}, "
            f"mean {sum(lengths) / len(lengths):.1f})"
        )
        table = Table(
            title="episodes" + (" (first 10)" if len(eps) > 10 else ""), title_justify="left"
        )
        for col in ("episode", "steps", "return"):
            table.add_column(col, justify="right")
        for e in eps[:10]:
            table.add_row(str(e["episode"]), str(e["steps"]), _fmt_value(e["return"]))
        out.print(table)
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
    out.print(table)
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
                _short(c.get("min")),
                _short(c.get("max")),
                _short(c.get("mean")),
            )
    out.print(table)
    table = Table(title="provenance", title_justify="left")
    table.add_column("key")
    table.add_column("value", overflow="fold")
    for k, v in _flatten(s["provenance"]):
        table.add_row(k, str(v))
    out.print(table)


def _add_tree(node: Tree, layout: dict[str, Any], depth: int = 0) -> None:
    for name, child in layout.items():
        if name.endswith("/") and depth == 1 and node.label == "snapshots/":
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


@app.command(epilog=EXIT_CODES_HELP)
def check(
    file: Annotated[Path, typer.Argument(help="The file to validate.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    sandbox: Annotated[
        bool,
        typer.Option(
            "--sandbox/--no-sandbox",
            help="Validate in a child process with time and memory limits (default), so a "
            "crafted file that hangs or crashes the HDF5 library cannot take this process down.",
        ),
    ] = True,
    timeout: Annotated[
        float, typer.Option(help="Seconds the sandboxed check may take.", min=1.0)
    ] = 120.0,
    memory_mb: Annotated[
        int, typer.Option("--memory-mb", help="Address-space limit of the sandbox.", min=256)
    ] = 4096,
) -> None:
    """Validate a file: structure, every stream column and snapshot, checksums (exit 2 if bad)."""
    from replaykit._analysis.check import validate_file

    report = validate_file(file, sandbox=sandbox, timeout=timeout, memory_mb=memory_mb)
    if as_json:
        _dump_json(report.to_json())
    else:
        out.print(report.format())


@app.command(epilog=EXIT_CODES_HELP)
def demo(
    out_path: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Where to write the recording (default: a temp dir)."),
    ] = None,
) -> None:
    """Record CartPole-v1 with the mlp policy, then restore mid-episode in a fresh process."""
    from replaykit._session.rollout import record_rollout

    tmp = None
    if out_path is None:
        tmp = tempfile.TemporaryDirectory(prefix="replaykit-demo-")
        out_path = Path(tmp.name) / "demo.h5"
    try:
        out.print(
            "1. recording CartPole-v1, mlp policy (trains as it goes), seed 0, 400 steps, "
            "snapshot at step 200 ..."
        )
        summary = record_rollout(
            "CartPole-v1", "mlp", seed=0, steps=400, out=out_path, snapshot_at=[200]
        )
        out.print(
            f"   {summary.steps} steps, {summary.episodes} episodes, {summary.updates} training "
            f"updates -> {out_path} ({summary.bytes / 1024:.0f} KiB)"
        )
        cmd = [sys.executable, "-m", "replaykit", "replay", str(out_path), "--steps", "100"]
        out.print("2. restoring the step-200 snapshot in a fresh process and verifying 100 steps:")
        out.print("   " + " ".join(["python", *cmd[1:]]))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_child_env())
        for line in (proc.stdout + proc.stderr).strip().splitlines():
            out.print("   " + line)
        if proc.returncode == EXIT_OK:
            out.print(
                "result: bit-exact (observations, actions, rewards, policy outputs and "
                "training updates all match)"
            )
            return
        out.print(f"result: NOT bit-exact (replay exited {proc.returncode})")
        raise typer.Exit(EXIT_DIVERGED)
    finally:
        if tmp is not None:
            tmp.cleanup()


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # Plain output from the child: its lines are re-printed inside ours.
    env.setdefault("NO_COLOR", "1")
    return env


def _error(message: str) -> int:
    line = " ".join(str(message).split())
    err.print(f"replaykit: error: {line}", markup=False, soft_wrap=True)
    return EXIT_ERROR


def _click_exceptions() -> Any:
    # typer >= 0.20 vendors click as typer._click; older typer uses click itself.
    try:
        return importlib.import_module("typer._click.exceptions")
    except ImportError:  # pragma: no cover - depends on the installed typer
        return importlib.import_module("click.exceptions")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 diverged, 2 error)."""
    cx = _click_exceptions()
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        rv = app(args=args, prog_name="replaykit", standalone_mode=False)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        return _error("aborted")
    except cx.NoArgsIsHelpError as exc:
        # A bare `replaykit` (or a group with no command) shows the help, as a usage error.
        err.print(exc.format_message(), markup=False, highlight=False)
        return EXIT_ERROR
    except cx.ClickException as exc:
        return _error(exc.format_message())
    except DivergenceError as exc:
        out.print(exc.report.format())
        return EXIT_DIVERGED
    except ReplaykitError as exc:
        return _error(str(exc))
    except OSError as exc:
        return _error(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
    return int(rv) if isinstance(rv, int) else EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
