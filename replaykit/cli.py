"""The ``replaykit`` command line (record, replay, diff, inspect, check, extract, doctor, ...).

Exit codes (the public contract):
    0: match / ok.
    1: diverged / mismatch (a replay or diff found a difference).
    2: usage or input error (bad arguments, a file that is not a sound recording, a write
       that failed); one line ``replaykit: error: ...`` on stderr, no traceback.
    130: interrupted (Ctrl-C); ``record`` says where the steps recorded so far are.

Commands parse their arguments, call the library and print what
:mod:`replaykit._analysis.render` makes of the result; no report is worded here.
"""

from __future__ import annotations

import functools
import importlib
import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Annotated, Any, NoReturn, TypeVar

import rich.console
import typer

from replaykit import errors

__all__ = [
    "EXIT_CODES_HELP",
    "EXIT_DIVERGED",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "app",
    "main",
]

EXIT_OK = 0
EXIT_DIVERGED = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = (
    "Exit codes: 0 match/ok; 1 diverged/mismatch; 2 usage or input error "
    "(bad arguments, unreadable or damaged file, a failed write); 130 interrupted (Ctrl-C)."
)

# The largest --seed: seeds are stored and restored as int64.
_SEED_MAX = (1 << 63) - 1
# Seconds between two progress lines when stderr is not a terminal.
_PROGRESS_EVERY_S = 5.0

_F = TypeVar("_F", bound=Callable[..., Any])

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


class _Console(rich.console.Console):
    """A console that lets a closed pipe end the command with exit 0 (see :func:`_guarded`)."""

    def on_broken_pipe(self) -> None:
        # rich's own handler exits 1 (which means "diverged" here); stop writing and let the
        # BrokenPipeError reach _guarded / main instead.
        self.quiet = True
        raise BrokenPipeError


_out = _Console(highlight=False, markup=False, soft_wrap=True, width=_WIDTH)
_err = _Console(stderr=True, highlight=False, markup=False)


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
    if isinstance(doc, float) and not math.isfinite(doc):
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


def _guarded(fn: _F) -> _F:
    """Wrap a command so a closed pipe and Ctrl-C end it the way Unix tools end.

    ``replaykit inspect a.h5 | head -1``: once the reader has gone, the rest of the output
    is dropped and the command exits 0 without a word. Ctrl-C: exit 130 with one line
    (plus where a recording's steps so far are, when ``record`` was interrupted).
    """

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BrokenPipeError:
            _quiet_stdout()
            raise typer.Exit(EXIT_OK) from None
        except KeyboardInterrupt as exc:
            _err.print(_with_notes("replaykit: interrupted", exc), markup=False, soft_wrap=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return run  # type: ignore[return-value]


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so flushing it at exit cannot fail on a closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # pragma: no cover - stdout without a descriptor
        pass


def _with_notes(message: str, exc: BaseException) -> str:
    """``message`` followed by the notes attached to ``exc`` (e.g. where a partial file is)."""
    notes = [str(n) for n in getattr(exc, "__notes__", ()) or ()]
    return "; ".join([message, *notes])


def _parse_compression(value: str) -> str:
    """Validate ``--compression``: ``none``, ``lzf``, ``gzip`` or ``gzip:LEVEL`` (0-9)."""
    v = value.strip().lower()
    if v in ("none", "lzf", "gzip"):
        return v
    name, _, level = v.partition(":")
    if name == "gzip" and level.isdigit() and 0 <= int(level) <= 9:  # noqa: PLR2004
        return f"gzip:{int(level)}"
    raise typer.BadParameter(f"expected none, lzf, gzip or gzip:LEVEL (LEVEL 0-9); got {value!r}")


def _existing_file(path: pathlib.Path) -> pathlib.Path:
    """Refuse a missing input file at once, before a command pays for its heavy imports."""
    if not path.exists():
        raise errors.UsageError(f"{path}: no such file; check the path")
    return path


class _RecordProgress:
    """Recording progress on stderr: a bar on a terminal, else a line every few seconds.

    Args:
        env_id: the env being recorded (the label).
        steps: the step cap, or ``None`` (the bar then shows no end).
        episodes: the episode count asked for, or ``None``.
        mode: ``"bar"``, ``"lines"`` or ``"off"``.
        every_s: seconds between two lines (``"lines"`` mode).
        clock: the time source (tests pass a fake one).
        console: where to print (default: stderr).
    """

    def __init__(
        self,
        env_id: str,
        steps: int | None,
        episodes: int | None,
        *,
        mode: str,
        every_s: float = _PROGRESS_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
        console: rich.console.Console | None = None,
    ) -> None:
        self.env_id, self.steps, self.episodes = env_id, steps, episodes
        self.mode, self.every_s, self.clock = mode, every_s, clock
        self.console = console or _err
        self._bar: Any = None
        self._task: Any = None
        self._start = self._last_t = clock()
        self._last_steps = 0
        # A bar redraws at most this often; a line prints every ``every_s``.
        self._gap = 0.1 if mode == "bar" else every_s

    def __enter__(self) -> _RecordProgress:
        self._start = self._last_t = self.clock()
        if self.mode == "bar":
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(bar_width=20),
                TextColumn("{task.fields[counts]}"),
                TimeRemainingColumn(),
                console=rich.console.Console(stderr=True),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(
                f"recording {self.env_id}",
                total=self.steps,
                counts=self._text(0, 0, 0, 0.0, label=False),
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def _text(
        self, steps: int, episodes: int, snapshots: int, rate: float, *, label: bool = True
    ) -> str:
        from replaykit._analysis import render

        return render.record_progress(
            self.env_id,
            steps=steps,
            steps_total=self.steps,
            episodes=episodes,
            episodes_total=self.episodes,
            snapshots=snapshots,
            steps_per_s=rate,
            label=label,
        )

    def update(self, steps: int, episodes: int, snapshots: int) -> None:
        """Note the counts after a step; redraw or print when it is time."""
        if self.mode == "off":
            return
        now = self.clock()
        if now - self._last_t < self._gap:
            return
        if self.mode == "bar":
            rate = steps / max(now - self._start, 1e-9)
        else:
            rate = (steps - self._last_steps) / max(now - self._last_t, 1e-9)
        self._last_t, self._last_steps = now, steps
        if self._bar is not None:
            counts = self._text(steps, episodes, snapshots, rate, label=False)
            self._bar.update(self._task, completed=steps, counts=counts)
        else:
            text = self._text(steps, episodes, snapshots, rate)
            self.console.print(f"replaykit: {text}", markup=False, highlight=False, soft_wrap=True)


# Options of the commands that take a folder (or a manifest) and fan out over workers.
_WorkersOpt = Annotated[
    int,
    typer.Option(
        "--workers",
        min=1,
        help="Folders and --seeds: files processed at once (Ray when installed, else a local "
        "process pool).",
    ),
]
_RayAddressOpt = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        metavar="auto|HOST:PORT",
        help="Folders and --seeds: run on this Ray cluster (default with --workers N: a local "
        'Ray started for this command; pip install "replaykit[ray]").',
    ),
]
_BackendOpt = Annotated[
    str | None,
    typer.Option(
        "--backend",
        metavar="serial|process|ray",
        help="Folders and --seeds: force an executor (default: ray for --ray-address or "
        "--workers N with Ray installed, process for --workers N without, else serial).",
    ),
]


def _is_folder_target(path: pathlib.Path) -> bool:
    """Tell whether ``path`` is a folder or a folder manifest (``replaykit-manifest.json``)."""
    from replaykit._format.manifest import MANIFEST_NAME

    return path.is_dir() or (path.is_file() and path.name == MANIFEST_NAME)


def _refuse_fan_out(workers: int, ray_address: str | None, backend: str | None) -> None:
    """Refuse the folder options on a single file (they would do nothing)."""
    if workers != 1 or ray_address is not None or backend is not None:
        raise errors.UsageError(
            "--workers, --ray-address and --backend apply to folders (and record --seeds); "
            "pass a folder or a manifest"
        )


def _folder_done(result: Any, as_json: bool) -> NoReturn:
    """Print a folder verb's summary (table or JSON) and exit with its code."""
    from replaykit._analysis import render

    if as_json:
        _dump_json(_finite(result.to_json()))
    else:
        for part in render.folder_renderables(result):
            _out.print(part)
    raise typer.Exit(result.exit_code)


@app.command(
    "record",
    epilog="Limits: --steps N alone records N steps; --episodes N alone records N whole "
    "episodes, however long; with both, recording stops at whichever comes first; with "
    "neither, 1000 steps. The file is written as OUT.partial-PID beside OUT and renamed "
    "to OUT once complete. " + EXIT_CODES_HELP,
)
@_guarded
def _record(
    env_id: Annotated[str, typer.Argument(help="A registered gymnasium env id, e.g. CartPole-v1.")],
    out_path: Annotated[
        pathlib.Path,
        typer.Option("--out", "-o", help="The .h5 file to write (refused if it exists)."),
    ],
    policy: Annotated[
        str,
        typer.Option(
            help="random, mlp, or module:callable (a factory taking (env, seed)); the module "
            "is looked up in the current directory first, as python -m does."
        ),
    ] = "random",
    seed: Annotated[
        int,
        typer.Option(min=0, max=_SEED_MAX, help="Seed for the env, the policy and global RNGs."),
    ] = 0,
    steps: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Step cap (default: 1000 without --episodes, none with it).",
            show_default=False,
        ),
    ] = None,
    snapshot_at: Annotated[
        str | None,
        typer.Option(
            "--snapshot-at",
            callback=_parse_steps_list,
            help="Comma-separated global steps to snapshot at, each below --steps: 200,300.",
        ),
    ] = None,
    snapshot_every: Annotated[
        int | None, typer.Option("--snapshot-every", min=1, help="Also snapshot every N steps.")
    ] = None,
    keep_snapshots: Annotated[
        int | None,
        typer.Option(
            "--keep-snapshots",
            min=1,
            help="Flight mode: keep only the first and the last N --snapshot-every snapshots "
            "(the file stays bounded) and record a failure (exception, NaN) when one happens.",
        ),
    ] = None,
    episodes: Annotated[
        int | None,
        typer.Option(min=1, help="Record N whole episodes (no step cap unless --steps)."),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            "--overwrite",
            help="Replace an existing --out file (only once the new recording is complete).",
        ),
    ] = False,
    compression: Annotated[
        str,
        typer.Option(
            callback=_parse_compression,
            metavar="none|lzf|gzip[:LEVEL]",
            help="Lossless compression of the recorded streams (default gzip:1: deflate level "
            "1, compressed off the recording loop, about 200x smaller for Atari frames; "
            "gzip = gzip:4; lzf: h5py's own filter; none: largest files).",
        ),
    ] = "gzip:1",
    progress: Annotated[
        bool,
        typer.Option(
            "--progress/--no-progress",
            help="Show progress on stderr: a bar on a terminal, else a line every 5 s.",
        ),
    ] = True,
    seeds: Annotated[
        str | None,
        typer.Option(
            "--seeds",
            metavar="0-999|0,3,5-9",
            help="A sweep: one recording per seed, seed-NNNNNN.h5 in the --out folder, with a "
            "manifest (replaykit-manifest.json) updated as seeds finish.",
        ),
    ] = None,
    workers: _WorkersOpt = 1,
    ray_address: _RayAddressOpt = None,
    backend: _BackendOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="--seeds: print the summary as JSON.")
    ] = False,
) -> None:
    """Record a seeded rollout of POLICY on ENV_ID, with snapshots, to one HDF5 file."""
    from replaykit._analysis import render

    at = [int(v) for v in (snapshot_at or "").replace(" ", "").split(",") if v]
    if steps is None and episodes is None:
        steps = 1000
    if seeds is not None:
        if seed != 0:
            raise errors.UsageError("pass either --seed or --seeds, not both")
        if keep_snapshots is not None:
            raise errors.UsageError("--keep-snapshots records one run; drop it with --seeds")
        _record_sweep(
            env_id,
            policy,
            seeds,
            out_path,
            steps=steps,
            episodes=episodes,
            snapshot_at=at,
            snapshot_every=snapshot_every,
            compression=None if compression == "none" else compression,
            force=force,
            workers=workers,
            ray_address=ray_address,
            backend=backend,
            progress=progress,
            as_json=as_json,
        )
        return
    _refuse_fan_out(workers, ray_address, backend)
    if as_json:
        raise errors.UsageError("--json applies to record --seeds")
    # An unknown env id is said before the heavy imports (torch, h5py) below; with a
    # module:callable policy it is looked up after that module is imported (it may
    # register the env it drives).
    if ":" not in policy:
        from replaykit._session.envids import precheck_env_id

        precheck_env_id(env_id)
    if ":" in policy and os.getcwd() not in sys.path:
        # The user named this module on their own command line: find it the way `python -m`
        # does, with the current directory first on the path.
        sys.path.insert(0, os.getcwd())
    from replaykit._session.rollout import record_rollout

    mode = "off" if not progress else ("bar" if sys.stderr.isatty() else "lines")

    def started(partial: pathlib.Path) -> None:
        _err.print(
            f"replaykit: writing {partial} (renamed to {out_path} once complete)",
            markup=False,
            soft_wrap=True,
        )

    with _RecordProgress(env_id, steps, episodes, mode=mode) as shown:
        summary = record_rollout(
            env_id,
            policy,
            seed=seed,
            steps=steps,
            out=out_path,
            snapshot_at=at,
            snapshot_every=snapshot_every,
            episodes=episodes,
            overwrite=force,
            compression=None if compression == "none" else compression,
            on_start=started,
            on_progress=shown.update,
            keep_snapshots=keep_snapshots,
        )
    _out.print(render.record_summary(summary))


def _record_sweep(
    env_id: str,
    policy: str,
    seeds: str,
    out: pathlib.Path,
    *,
    progress: bool,
    as_json: bool,
    force: bool,
    **options: Any,
) -> None:
    """``record --seeds``: one recording per seed into the folder ``out``."""
    from replaykit._scale.sweep import record_sweep

    def done(f: Any) -> None:
        if progress:
            _err.print(
                f"replaykit: {f.file}: {f.status} ({f.detail})", markup=False, soft_wrap=True
            )

    result = record_sweep(env_id, policy, seeds, out, overwrite=force, on_done=done, **options)
    _folder_done(result, as_json)


def _snapshot_id(value: str, names: list[str]) -> str | int:
    """Return a snapshot name, or failing that an index (``0`` first, ``-1`` last)."""
    if value in names:
        return value
    try:
        return int(value)
    except ValueError:
        return value


@app.command("replay", epilog=EXIT_CODES_HELP)
@_guarded
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
    allow_env_kwarg: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-env-kwarg",
            metavar="NAME",
            help="Build the env with this recorded kwarg although it names a file, a module "
            "or a display (refused by default: a recording is untrusted input). Repeatable.",
        ),
    ] = None,
    workers: _WorkersOpt = 1,
    ray_address: _RayAddressOpt = None,
    backend: _BackendOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Folders: print the summary as JSON.")
    ] = False,
) -> None:
    """Restore snapshot(s) and verify the next steps bit-exactly (FILE, or every file of a DIR)."""
    _existing_file(file)
    if _is_folder_target(file):
        from replaykit._scale.sweep import replay_folder

        result = replay_folder(
            file,
            snapshot=snapshot,
            all_snapshots=all_snapshots,
            steps=steps,
            policy=policy,
            verify=verify,
            allow_env_kwargs=allow_env_kwarg or (),
            workers=workers,
            backend=backend,
            ray_address=ray_address,
        )
        _folder_done(result, as_json)
    _refuse_fan_out(workers, ray_address, backend)
    if as_json:
        raise errors.UsageError("--json applies to a folder; replay FILE prints text")
    if policy is not None and ":" in policy and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as for `record --policy`: the way `python -m` does
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
            s = replay_snapshot(
                file,
                sid,
                policy_spec=policy,
                steps=steps,
                verify=verify,
                allow_env_kwargs=allow_env_kwarg or (),
            )
        except errors.DivergenceError as exc:
            failed += 1
            _out.print(render.divergence_report(exc.report))
            continue
        _out.print(render.replay_summary(s))
    if failed:
        raise typer.Exit(EXIT_DIVERGED)


@app.command("diff", epilog=EXIT_CODES_HELP)
@_guarded
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
    plot: Annotated[
        pathlib.Path | None,
        typer.Option(
            "--plot",
            metavar="OUT.png",
            help="Draw both runs' values of the first divergent key, the divergence marked and "
            "|A - B| on a log axis below (needs matplotlib).",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing --plot file.")
    ] = False,
    workers: _WorkersOpt = 1,
    ray_address: _RayAddressOpt = None,
    backend: _BackendOpt = None,
) -> None:
    """Compare two recordings (or two folders, pair by pair); exit 1 if any differ."""
    _existing_file(a)
    _existing_file(b)
    if _is_folder_target(a) or _is_folder_target(b):
        if not (_is_folder_target(a) and _is_folder_target(b)):
            raise errors.UsageError("compare a file with a file, or a folder with a folder")
        if plot is not None:
            raise errors.UsageError("--plot draws one pair; pass two files")
        from replaykit._scale.sweep import diff_folders

        pairs = diff_folders(
            a,
            b,
            atol=atol,
            rtol=rtol,
            max_ulp=max_ulp,
            keys=key or None,
            workers=workers,
            backend=backend,
            ray_address=ray_address,
        )
        _folder_done(pairs, as_json)
    _refuse_fan_out(workers, ray_address, backend)
    if plot is not None:
        _check_plot_path(plot, force=force)
    from replaykit._analysis import render
    from replaykit._analysis.compare import Rule, Rules, diff_recordings

    rules = Rules(default=Rule(atol=atol, rtol=rtol, max_ulp=max_ulp))
    result = diff_recordings(a, b, rules=rules, keys=key or None)
    if as_json:
        _dump_json(_finite(result.to_json()))
    else:
        for part in render.diff_renderables(result):
            _out.print(part)
    if plot is not None:
        _write_diff_plot(a, b, result, plot)
    if not result.match:
        raise typer.Exit(EXIT_DIVERGED)


def _check_plot_path(plot: pathlib.Path, *, force: bool) -> None:
    """Refuse a --plot path that cannot be written, before anything is read."""
    if plot.suffix.lower() != ".png":
        raise errors.UsageError(f"--plot {plot}: expected a .png file name")
    if not plot.parent.is_dir():
        raise errors.UsageError(f"--plot {plot}: no such directory {plot.parent}")
    if plot.exists() and not force:
        raise errors.UsageError(f"--plot {plot} exists; pass --force to replace it")
    from replaykit._analysis.plots import require_matplotlib

    require_matplotlib()


def _write_diff_plot(a: pathlib.Path, b: pathlib.Path, result: Any, plot: pathlib.Path) -> None:
    from replaykit._analysis.compare import divergence_values
    from replaykit._analysis.plots import diff_figure

    first = result.first
    if first is None:
        _err.print(f"replaykit: the runs match; no plot written to {plot}", markup=False)
        return
    x, va, vb, element = divergence_values(a, b, first)
    at = first.row if first.row is not None else int(x[0])
    png = diff_figure(
        first.key if first.stream != "steps" else f"steps/{first.key}",
        x,
        va,
        vb,
        diverged_at=at,
        a_name=a.name,
        b_name=b.name,
        element=element,
        x_label="step" if first.stream == "steps" else first.stream.rstrip("s"),
    )
    tmp = plot.with_name(f".{plot.name}.partial-{os.getpid()}")
    try:
        tmp.write_bytes(png)
        os.replace(tmp, plot)
    finally:
        tmp.unlink(missing_ok=True)
    _err.print(f"replaykit: plot of {first.key}{element} written to {plot}", markup=False)


@app.command("inspect", epilog=EXIT_CODES_HELP)
@_guarded
def _inspect(
    file: Annotated[pathlib.Path, typer.Argument(help="A recording.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Show a recording's layout, episodes, snapshots, provenance and per-key statistics."""
    _existing_file(file)
    from replaykit._analysis import render
    from replaykit._analysis.inspection import summarize

    s = summarize(file)
    if as_json:
        _dump_json(_finite(s))
        return
    for part in render.inspection_renderables(s):
        _out.print(part)


@app.command("check", epilog=EXIT_CODES_HELP)
@_guarded
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
    workers: _WorkersOpt = 1,
    ray_address: _RayAddressOpt = None,
    backend: _BackendOpt = None,
) -> None:
    """Validate a file (or every file of a folder): structure, columns, snapshots, checksums."""
    if file.exists() and _is_folder_target(file):
        from replaykit._scale.sweep import check_folder

        result = check_folder(
            file,
            sandbox=sandbox,
            timeout=timeout,
            memory_mb=memory_mb,
            workers=workers,
            backend=backend,
            ray_address=ray_address,
        )
        _folder_done(result, as_json)
    _refuse_fan_out(workers, ray_address, backend)
    from replaykit._analysis.check import validate_file

    report = validate_file(file, sandbox=sandbox, timeout=timeout, memory_mb=memory_mb)
    if as_json:
        _dump_json(report.to_json())
    else:
        _out.print(report.format())


@app.command("manifest", epilog=EXIT_CODES_HELP)
@_guarded
def _manifest(
    folder: Annotated[pathlib.Path, typer.Argument(help="A folder of recordings.")],
    pattern: Annotated[
        str, typer.Option(help="Which files to list (a glob inside the folder).")
    ] = "*.h5",
    force: Annotated[
        bool, typer.Option("--force", help="Replace the folder's existing manifest.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest's entries.")] = False,
) -> None:
    """Write FOLDER/replaykit-manifest.json for recordings already there (e.g. from Ray actors)."""
    from replaykit._analysis import render
    from replaykit._scale.sweep import gather_manifest

    manifest = gather_manifest(folder, pattern=pattern, overwrite=force)
    if as_json:
        _dump_json(
            {"manifest": str(manifest.path), "entries": [e.to_json() for e in manifest.entries]}
        )
    else:
        _out.print(render.manifest_summary(manifest))
    if any(e.status != "ok" for e in manifest.entries):
        raise typer.Exit(EXIT_ERROR)


@app.command("doctor", epilog=EXIT_CODES_HELP)
@_guarded
def _doctor(
    env_id: Annotated[str, typer.Argument(help="A registered gymnasium env id, e.g. CartPole-v1.")],
    policy: Annotated[
        str,
        typer.Option(
            help="random, mlp, or module:callable (a factory taking (env, seed)), as for record."
        ),
    ] = "random",
    steps: Annotated[int, typer.Option(min=2, help="Steps per run.")] = 200,
    seed: Annotated[int, typer.Option(min=0, max=_SEED_MAX, help="The seed of both runs.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the checks as JSON.")] = False,
) -> None:
    """Check a setup replays bit-exactly before a long run: exit 1 if any check FAILs."""
    if ":" in policy and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as for `record --policy`
    from replaykit._analysis import render
    from replaykit._analysis.doctor import doctor
    from replaykit._session.policies import resolve_policy
    from replaykit._session.rollout import make_recorded_env

    make_recorded_env(env_id).close()  # an unknown id or a missing extra: exit 2 at once
    factory = None if policy == "random" else functools.partial(resolve_policy, policy)
    report = doctor(lambda: make_recorded_env(env_id), factory, seed=seed, steps=steps)
    if as_json:
        _dump_json(_finite(report.to_json()))
    else:
        for part in render.doctor_renderables(report):
            _out.print(part)
    if not report.ok:
        raise typer.Exit(EXIT_DIVERGED)


@app.command("report", epilog=EXIT_CODES_HELP)
@_guarded
def _report_cmd(
    file: Annotated[pathlib.Path, typer.Argument(help="A recording.")],
    out: Annotated[
        pathlib.Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Directory for report.html and its PNGs (default: FILE's name + '-report', "
            "beside it).",
            show_default=False,
        ),
    ] = None,
    key: Annotated[
        list[str] | None,
        typer.Option(
            "--key", help="Plot keys matching this fnmatch pattern, e.g. 'steps/obs' (repeatable)."
        ),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print the findings as JSON (writes no files unless --out)."),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Replace the files of an existing report in --out.")
    ] = False,
) -> None:
    """Find what went wrong in a recording; write one self-contained HTML page plus PNGs."""
    _existing_file(file)
    from replaykit._analysis import render
    from replaykit._analysis.report import analyze, check_report_dir, write_report

    if out is None and not as_json:
        out = file.with_name(file.stem + "-report")
    if out is not None:
        check_report_dir(out, force=force)  # before anything is read
        analysis, written = write_report(file, out, keys=key or None, force=force)
    else:
        analysis, written = analyze(file, keys=key or None), []
    if as_json:
        doc = analysis.to_json()
        doc["files"] = [str(p) for p in written]
        _dump_json(_finite(doc))
        return
    lines = render.report_findings_lines(analysis)
    _out.print(f"{len(lines)} finding(s) in {file}" + (":" if lines else ""))
    for line in lines:
        _out.print(f"- {line}")
    if written:
        _out.print(f"report: {written[0]} ({len(written) - 1} pictures beside it)")


@app.command("extract", epilog=EXIT_CODES_HELP)
@_guarded
def _extract(
    file: Annotated[pathlib.Path, typer.Argument(help="The recording to cut from.")],
    out: Annotated[
        pathlib.Path,
        typer.Option("--out", "-o", help="The small recording to write (refused if it exists)."),
    ],
    snapshot: Annotated[
        str | None,
        typer.Option(help="Start at this snapshot (default: the newest before the failure)."),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(min=0, help="Copy N steps after the snapshot instead of through the failure."),
    ] = None,
    through_failure: Annotated[
        bool,
        typer.Option(
            "--through-failure",
            help="Copy through the failure record (the default when the file holds one).",
        ),
    ] = False,
    pytest_file: Annotated[
        pathlib.Path | None,
        typer.Option("--pytest", help="Also write a pytest test replaying to the failure."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace existing --out / --pytest files.")
    ] = False,
) -> None:
    """Cut a small self-contained recording (one snapshot, the steps after it) from FILE."""
    _existing_file(file)
    if steps is not None and through_failure:
        raise errors.UsageError("pass either --steps or --through-failure, not both")
    from replaykit._analysis import render
    from replaykit._analysis.extract import extract

    result = extract(
        file,
        out,
        snapshot=snapshot,
        steps=steps,
        through_failure=through_failure or None,
        overwrite=force,
        pytest_path=pytest_file,
    )
    _out.print(render.extract_summary(result))


@app.command("export", epilog=EXIT_CODES_HELP)
@_guarded
def _export(
    file: Annotated[pathlib.Path, typer.Argument(help="A single-env recording.")],
    minari_id: Annotated[
        str | None,
        typer.Option(
            "--minari",
            metavar="DATASET_ID",
            help="Write a Minari dataset with this id (under MINARI_DATASETS_PATH); needs "
            'pip install "replaykit[minari]".',
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing dataset with this id.")
    ] = False,
) -> None:
    """Export a recording to another format: a Minari dataset (--minari DATASET_ID)."""
    if minari_id is None:
        raise errors.UsageError("say what to export to: --minari DATASET_ID")
    _existing_file(file)
    from replaykit.integrations.minari import export_minari

    ds = export_minari(file, minari_id, force=force)
    _out.print(
        f"wrote Minari dataset {minari_id}: {ds.total_episodes} episodes, {ds.total_steps} steps",
        markup=False,
    )


@app.command("demo", epilog=EXIT_CODES_HELP)
@_guarded
def _demo(
    out_path: Annotated[
        pathlib.Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Where to write the recording (default: a temp dir; refused if it exists).",
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", "--overwrite", help="Replace an existing --out file."),
    ] = False,
) -> None:
    """Record CartPole-v1 with the mlp policy, then restore mid-episode in a fresh process."""
    from replaykit._session.rollout import check_output, record_rollout

    tmp = None
    if out_path is not None:
        check_output(out_path, overwrite=force)  # before the first line is printed
    else:
        tmp = tempfile.TemporaryDirectory(prefix="replaykit-demo-")
        out_path = pathlib.Path(tmp.name) / "demo.h5"
    try:
        _out.print(
            "1. recording CartPole-v1, mlp policy (trains as it goes), seed 0, 400 steps, "
            "snapshot at step 200 ..."
        )
        summary = record_rollout(
            "CartPole-v1",
            "mlp",
            seed=0,
            steps=400,
            out=out_path,
            snapshot_at=[200],
            overwrite=force,
            compression="gzip:1",
        )
        _out.print(
            f"   {summary.steps} steps, {summary.episodes} episodes, {summary.updates} training "
            f"updates -> {out_path} ({summary.bytes / 1024:.0f} KiB)"
        )
        from replaykit._analysis.child import python_child_argv

        args = ["replay", str(out_path), "--steps", "100"]
        # Isolated mode: nothing in the current directory is imported by the child.
        cmd = python_child_argv("replaykit", *args)
        _out.print("2. restoring the step-200 snapshot in a fresh process and verifying 100 steps:")
        _out.print("   " + " ".join(["python", "-m", "replaykit", *args]))
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=_child_env())
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
    """Run the command line; returns the exit code (0 ok, 1 diverged, 2 error, 130 Ctrl-C)."""
    try:
        code = _run(argv)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader of our output went away (`replaykit inspect a.h5 | head -1`): done.
        _quiet_stdout()
        return EXIT_OK
    except KeyboardInterrupt as exc:
        _err.print(_with_notes("replaykit: interrupted", exc), markup=False, soft_wrap=True)
        return EXIT_INTERRUPTED
    return code


def _run(argv: Sequence[str] | None) -> int:
    """Run the app and turn every error a user can meet into its exit code and one line."""
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
    except Exception as exc:
        return _report(exc)
    return int(rv) if isinstance(rv, int) else EXIT_OK


def _report(exc: Exception) -> int:
    """Print what went wrong and return the exit code for it."""
    if isinstance(exc, errors.DivergenceError):
        from replaykit._analysis import render

        _out.print(render.divergence_report(exc.report))
        return EXIT_DIVERGED
    if isinstance(exc, errors.ReplaykitError):
        return _error(_with_notes(str(exc), exc))
    if isinstance(exc, OSError):
        what = f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
        return _error(_with_notes(what, exc))
    if isinstance(exc, RuntimeError) and _raised_in_h5py(exc):
        return _error(_with_notes(f"the HDF5 library failed: {exc}", exc))
    return _unexpected(exc)


def _raised_in_h5py(exc: BaseException) -> bool:
    """Whether ``exc`` was raised inside h5py (libhdf5 reports I/O failures that way)."""
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb.tb_frame.f_globals.get("__name__", "")
        tb = tb.tb_next
    return isinstance(last, str) and (last == "h5py" or last.startswith("h5py."))


def _unexpected(exc: BaseException) -> int:
    """Report a bug (in replaykit or in a policy's code): the traceback, then one line."""
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    return _error(
        f"unexpected {type(exc).__name__}: {exc}; the traceback above shows where (report it "
        "if it is in replaykit)"
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
