"""The ``replaykit`` command line: record, replay, diff, inspect, check, demo.

Exit codes (the public contract):
    0: match / ok.
    1: diverged / mismatch (a replay or diff found a difference).
    2: usage or input error (bad arguments, a file that is not a sound recording); one line
       ``replaykit: error: ...`` on stderr, no traceback.

Commands parse their arguments, call the library and print what
:mod:`replaykit._analysis.render` makes of the result; no report is worded here.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import Annotated, Any

import rich.console
import typer

from replaykit import errors

__all__ = ["EXIT_CODES_HELP", "EXIT_DIVERGED", "EXIT_ERROR", "EXIT_OK", "app", "main"]

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
_out = rich.console.Console(highlight=False, markup=False, soft_wrap=True, width=_WIDTH)
_err = rich.console.Console(stderr=True, highlight=False, markup=False)


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
    if isinstance(obj, (pathlib.Path, tuple)):
        return str(obj) if isinstance(obj, pathlib.Path) else list(obj)
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


@contextlib.contextmanager
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
        console=rich.console.Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda: bar.advance(task)


@app.command("record", epilog=EXIT_CODES_HELP)
def _record(
    env_id: Annotated[str, typer.Argument(help="A registered gymnasium env id, e.g. CartPole-v1.")],
    out_path: Annotated[pathlib.Path, typer.Option("--out", "-o", help="The .h5 file to write.")],
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
    from replaykit._analysis import render
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
    _out.print(render.record_summary(summary))


def _snapshot_id(value: str, names: list[str]) -> str | int:
    """Return a snapshot name, or failing that an index (``0`` first, ``-1`` last)."""
    if value in names:
        return value
    try:
        return int(value)
    except ValueError:
        return value


@app.command("replay", epilog=EXIT_CODES_HELP)
def _replay(
    file: Annotated[pathlib.Path, typer.Argument(help="A recording made by `replaykit record`.")],
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
    from replaykit._analysis import render
    from replaykit._format.store import Recording
    from replaykit._session.rollout import replay_snapshot

    if all_snapshots and snapshot is not None:
        raise errors.UsageError("pass either --snapshot or --all, not both")
    with Recording(file, verify=verify) as rec:
        names = [s.name for s in rec.snapshots]
    if not names:
        raise errors.UsageError(
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
        except errors.DivergenceError as exc:
            failed += 1
            _out.print(render.divergence_report(exc.report))
            continue
        _out.print(render.replay_summary(s))
    if failed:
        raise typer.Exit(EXIT_DIVERGED)


@app.command("diff", epilog=EXIT_CODES_HELP)
def _diff(
    a: Annotated[pathlib.Path, typer.Argument(help="The reference recording.")],
    b: Annotated[pathlib.Path, typer.Argument(help="The recording to compare with it.")],
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
    from replaykit._analysis import render
    from replaykit._analysis.compare import Rule, Rules, diff_recordings

    rules = Rules(default=Rule(atol=atol, rtol=rtol, max_ulp=max_ulp))
    result = diff_recordings(a, b, rules=rules, keys=key or None)
    if as_json:
        _dump_json(_finite(result.to_json()))
    else:
        for part in render.diff_renderables(result):
            _out.print(part)
    if not result.match:
        raise typer.Exit(EXIT_DIVERGED)


@app.command("inspect", epilog=EXIT_CODES_HELP)
def _inspect(
    file: Annotated[pathlib.Path, typer.Argument(help="A recording.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Show a recording's layout, episodes, snapshots, provenance and per-key statistics."""
    from replaykit._analysis import render
    from replaykit._analysis.inspection import summarize

    s = summarize(file)
    if as_json:
        _dump_json(_finite(s))
        return
    for part in render.inspection_renderables(s):
        _out.print(part)


@app.command("check", epilog=EXIT_CODES_HELP)
def _check(
    file: Annotated[pathlib.Path, typer.Argument(help="The file to validate.")],
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
        _out.print(report.format())


@app.command("demo", epilog=EXIT_CODES_HELP)
def _demo(
    out_path: Annotated[
        pathlib.Path | None,
        typer.Option("--out", "-o", help="Where to write the recording (default: a temp dir)."),
    ] = None,
) -> None:
    """Record CartPole-v1 with the mlp policy, then restore mid-episode in a fresh process."""
    from replaykit._session.rollout import record_rollout

    tmp = None
    if out_path is None:
        tmp = tempfile.TemporaryDirectory(prefix="replaykit-demo-")
        out_path = pathlib.Path(tmp.name) / "demo.h5"
    try:
        _out.print(
            "1. recording CartPole-v1, mlp policy (trains as it goes), seed 0, 400 steps, "
            "snapshot at step 200 ..."
        )
        summary = record_rollout(
            "CartPole-v1", "mlp", seed=0, steps=400, out=out_path, snapshot_at=[200]
        )
        _out.print(
            f"   {summary.steps} steps, {summary.episodes} episodes, {summary.updates} training "
            f"updates -> {out_path} ({summary.bytes / 1024:.0f} KiB)"
        )
        cmd = [sys.executable, "-m", "replaykit", "replay", str(out_path), "--steps", "100"]
        _out.print("2. restoring the step-200 snapshot in a fresh process and verifying 100 steps:")
        _out.print("   " + " ".join(["python", *cmd[1:]]))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_child_env())
        for line in (proc.stdout + proc.stderr).strip().splitlines():
            _out.print("   " + line)
        if proc.returncode == EXIT_OK:
            _out.print(
                "result: bit-exact (observations, actions, rewards, policy outputs and "
                "training updates all match)"
            )
            return
        _out.print(f"result: NOT bit-exact (replay exited {proc.returncode})")
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
    _err.print(f"replaykit: error: {line}", markup=False, soft_wrap=True)
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
        _err.print(exc.format_message(), markup=False, highlight=False)
        return EXIT_ERROR
    except cx.ClickException as exc:
        return _error(exc.format_message())
    except errors.DivergenceError as exc:
        from replaykit._analysis import render

        _out.print(render.divergence_report(exc.report))
        return EXIT_DIVERGED
    except errors.ReplaykitError as exc:
        return _error(str(exc))
    except OSError as exc:
        return _error(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
    return int(rv) if isinstance(rv, int) else EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
