"""The command line never destroys a file, and every input error is one line with exit 2.

Each error case runs the real ``replaykit`` console script in a child process and checks
the exit code, that stderr holds exactly one ``replaykit: error:`` line and no traceback,
and that a file that was there before is byte-identical afterwards. Behaviour that needs
no child process (how --steps and --episodes compose, progress lines, compression) runs
in-process through :func:`replaykit.cli.main`.
"""

from __future__ import annotations

import hashlib
import io
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import pytest
import rich.console

from replaykit.cli import _RecordProgress, main

PRECIOUS = b"a recording someone needs\n" * 4096


def _script() -> list[str]:
    exe = shutil.which("replaykit", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "replaykit"]


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, **kw: object
) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ, COLUMNS="160", **(env or {}))
    kw.setdefault("stdout", subprocess.PIPE)
    return subprocess.run(
        [*_script(), *args],
        cwd=cwd,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        timeout=300,
        **kw,  # type: ignore[call-overload]
    )


def one_error(proc: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """Assert exit ``code``, exactly one error line and no traceback; return that line."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    errs = [ln for ln in proc.stderr.splitlines() if ln.startswith("replaykit: error: ")]
    assert len(errs) == 1, proc.stderr
    return errs[0]


def only_error(proc: subprocess.CompletedProcess[str]) -> str:
    """An input error: the one error line is all of stderr, and nothing was printed."""
    line = one_error(proc)
    assert proc.stderr.strip().splitlines() == [line], proc.stderr
    assert proc.stdout == ""
    return line


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def precious(tmp_path: Path) -> Iterator[Path]:
    """``a.h5``: a file the user has; every test checks it is byte-identical afterwards."""
    path = tmp_path / "a.h5"
    path.write_bytes(PRECIOUS)
    before = digest(path)
    yield path
    assert digest(path) == before
    # Nothing else was left beside it (no stub, no partial file).
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("a.h5")) == ["a.h5"]


# --------------------------------------------------------------------------- existing output


@pytest.mark.integration
def test_record_refuses_existing_output(precious: Path) -> None:
    line = only_error(run_cli("record", "CartPole-v1", "--out", "a.h5", cwd=precious.parent))
    assert "a.h5 already exists; pass --force" in line


@pytest.mark.integration
def test_demo_refuses_existing_output(precious: Path) -> None:
    line = only_error(run_cli("demo", "--out", "a.h5", cwd=precious.parent))
    assert "a.h5 already exists; pass --force" in line


@pytest.mark.integration
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--policy", "bogus"], "unknown policy 'bogus'"),
        (["--policy", "nosuchmodule:make"], "no module 'nosuchmodule' in the current directory"),
        (["--snapshot-at", "50", "--steps", "40"], "snapshot step 50 is not within the 40 steps"),
        (["--snapshot-every", "40", "--steps", "40"], "--snapshot-every 40 takes no snapshot"),
        (["--compression", "zstd"], "expected none, lzf, gzip or gzip:LEVEL"),
    ],
    ids=["policy", "policy-module", "snapshot-at", "snapshot-every", "compression"],
)
def test_bad_argument_with_force_keeps_existing_file(
    precious: Path, args: list[str], expected: str
) -> None:
    """--force replaces a file only with a complete recording: a bad argument touches nothing."""
    proc = run_cli("record", "CartPole-v1", *args, "--out", "a.h5", "--force", cwd=precious.parent)
    assert expected in only_error(proc)


# --------------------------------------------------------------------------- env id, seed, path


@pytest.mark.integration
def test_unknown_env_id(precious: Path) -> None:
    proc = run_cli("record", "CartPol-v1", "--out", "a.h5", "--force", cwd=precious.parent)
    line = only_error(proc)
    assert "unknown env id 'CartPol-v1'" in line and "Did you mean: `CartPole`" in line


@pytest.mark.integration
@pytest.mark.parametrize(
    ("env_id", "module", "extra"),
    [("HalfCheetah-v5", "mujoco", "mujoco"), ("LunarLander-v3", "Box2D", "box2d")],
)
def test_missing_env_extra_names_pip_install(
    precious: Path, tmp_path: Path, env_id: str, module: str, extra: str
) -> None:
    """A child process in which ``import mujoco`` fails, as without the extra."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(f"import sys\nsys.modules[{module!r}] = None\n")
    proc = run_cli(
        "record",
        env_id,
        "--out",
        "a.h5",
        "--force",
        cwd=precious.parent,
        env={"PYTHONPATH": str(site)},
    )
    line = only_error(proc)
    assert f"needs {module}, which is not installed" in line
    assert line.endswith(f'pip install "replaykit[{extra}]"')


@pytest.mark.integration
def test_oversized_seed(tmp_path: Path) -> None:
    proc = run_cli("record", "CartPole-v1", "--seed", str(1 << 64), "--out", "b.h5", cwd=tmp_path)
    assert "--seed" in only_error(proc)
    assert not list(tmp_path.iterdir())


@pytest.mark.integration
def test_output_in_missing_directory(tmp_path: Path) -> None:
    proc = run_cli("record", "CartPole-v1", "--out", "nodir/b.h5", cwd=tmp_path)
    line = only_error(proc)
    assert "directory nodir does not exist" in line
    assert "errno" not in line and "o_flags" not in line
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- policy lookup


POLICY_MODULE = """
class Zeros:
    def __init__(self, env, seed):
        self.action = env.action_space.sample() * 0

    def act(self, obs):
        return self.action


def make(env, seed):
    return Zeros(env, seed)
"""


@pytest.mark.integration
def test_policy_module_in_current_directory(tmp_path: Path) -> None:
    """`--policy mymod:make` finds ./mymod.py as `python -m` would; a file never names one."""
    (tmp_path / "mypolicy_cwd.py").write_text(POLICY_MODULE)
    proc = run_cli(
        "record",
        "CartPole-v1",
        "--policy",
        "mypolicy_cwd:make",
        "--steps",
        "30",
        "--snapshot-at",
        "10",
        "--out",
        "p.h5",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "recorded 30 steps" in proc.stdout
    # Replaying without --policy: the module named in the file is not imported.
    line = only_error(run_cli("replay", "p.h5", cwd=tmp_path))
    assert "never imports names from a file" in line
    proc = run_cli("replay", "p.h5", "--policy", "mypolicy_cwd:make", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.integration
def test_policy_code_that_raises_keeps_its_traceback(precious: Path) -> None:
    """A bug in the user's policy: its traceback (they need it), one error line, exit 2."""
    (precious.parent / "broken_policy.py").write_text(
        "def make(env, seed):\n    raise ValueError('bad layer size')\n"
    )
    proc = run_cli(
        "record",
        "CartPole-v1",
        "--policy",
        "broken_policy:make",
        "--out",
        "a.h5",
        "--force",
        cwd=precious.parent,
    )
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and "broken_policy.py" in proc.stderr
    errs = [ln for ln in proc.stderr.splitlines() if ln.startswith("replaykit: error: ")]
    assert errs == [
        "replaykit: error: unexpected ValueError: bad layer size; the traceback above shows "
        "where (report it if it is in replaykit)"
    ]


# --------------------------------------------------------------------------- fast errors, pipes


HEAVY = ("torch", "gymnasium", "h5py", "numpy")


@pytest.mark.integration
def test_replay_missing_file_reported_before_heavy_imports(tmp_path: Path) -> None:
    proc = run_cli("replay", "missing.h5", cwd=tmp_path, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert proc.returncode == 2
    imported = {
        ln.split("|")[-1].strip()
        for ln in proc.stderr.splitlines()
        if ln.startswith("import time:")
    }
    assert "replaykit.cli" in imported
    assert not {m for m in imported if m.split(".")[0] in HEAVY}, sorted(imported)
    errs = [ln for ln in proc.stderr.splitlines() if not ln.startswith("import time:")]
    assert errs == ["replaykit: error: missing.h5: no such file; check the path"]


@pytest.mark.integration
@pytest.mark.parametrize("command", [["inspect"], ["inspect", "--json"], ["diff"]])
def test_closed_pipe_exits_0_quietly(small_recording: Path, command: list[str]) -> None:
    """`replaykit inspect a.h5 | head -1`: the reader is gone before the first write."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    args = [*command, str(small_recording)]
    if command == ["diff"]:
        args.append(str(small_recording))
    try:
        proc = run_cli(*args, cwd=small_recording.parent, stdout=write_end)
    finally:
        os.close(write_end)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


# --------------------------------------------------------------------------- write errors, Ctrl-C


def _file_size_limit() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))


@pytest.mark.integration
def test_write_error_is_one_line_and_keeps_the_prefix(precious: Path) -> None:
    """A write that fails (here: the file-size limit) is exit 2 and one line naming the file."""
    proc = run_cli(
        "record",
        "CartPole-v1",
        "--steps",
        "50000",
        "--snapshot-every",
        "1000",
        "--compression",
        "none",
        "--no-progress",
        "--out",
        "b.h5",
        cwd=precious.parent,
        preexec_fn=_file_size_limit,
    )
    line = one_error(proc)
    partials = list(precious.parent.glob("b.h5.partial-*"))
    assert len(partials) == 1 and str(partials[0].name) in line
    assert "file-size limit" in line
    assert not (precious.parent / "b.h5").exists()
    # The start line said where the file was being written.
    assert f"writing {partials[0].name}" in proc.stderr


@pytest.mark.integration
def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_exits_130_and_names_the_partial_file(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            *_script(),
            "record",
            "CartPole-v1",
            "--episodes",
            "10000000",
            "--snapshot-every",
            "100",
            "--out",
            "b.h5",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A job started in the background by a non-interactive shell inherits SIGINT as
        # ignored, and Python keeps it ignored (as Unix tools do): give the child the
        # terminal's default whatever runs this suite.
        preexec_fn=_default_sigint,  # noqa: PLW1509 (only a signal reset before exec)
    )
    try:
        assert proc.stderr is not None
        start = proc.stderr.readline()
        assert "writing b.h5.partial-" in start, start
        time.sleep(1.0)  # some steps recorded
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("replaykit: interrupted; the ") and "b.h5.partial-" in last
    partial = tmp_path / last.rsplit(" ", 1)[-1]
    assert not (tmp_path / "b.h5").exists()
    # Stopped between two steps and closed: a whole, readable recording.
    from replaykit._format.store import Recording

    with Recording(partial) as rec:
        assert rec.stream("steps").rows > 0


# --------------------------------------------------------------------------- in-process behaviour


def _steps_and_episodes(path: Path) -> tuple[int, int]:
    from replaykit._format.store import Recording

    with Recording(path) as rec:
        return rec.stream("steps").rows, rec.stream("resets").rows


def test_episodes_alone_has_no_step_cap(tmp_path: Path) -> None:
    out = tmp_path / "e.h5"
    assert main(["record", "CartPole-v1", "--episodes", "70", "--no-progress", "-o", str(out)]) == 0
    steps, resets = _steps_and_episodes(out)
    assert resets == 70
    assert steps > 1000  # random CartPole episodes average ~20 steps: no default cap applied


def test_steps_and_episodes_stop_at_the_first(tmp_path: Path) -> None:
    out = tmp_path / "e.h5"
    args = ["record", "CartPole-v1", "--no-progress"]
    assert main([*args, "--episodes", "50", "--steps", "30", "-o", str(out)]) == 0
    assert _steps_and_episodes(out)[0] == 30
    out2 = tmp_path / "e2.h5"
    assert main([*args, "--episodes", "2", "--steps", "100000", "-o", str(out2)]) == 0
    steps, resets = _steps_and_episodes(out2)
    assert resets == 2 and steps < 1000


def test_force_replaces_only_with_a_complete_recording(tmp_path: Path) -> None:
    out = tmp_path / "a.h5"
    out.write_bytes(PRECIOUS)
    args = ["record", "CartPole-v1", "--steps", "20", "--no-progress", "-o", str(out)]
    assert main([*args, "--overwrite"]) == 0
    steps, _ = _steps_and_episodes(out)
    assert steps == 20
    assert [p.name for p in tmp_path.iterdir()] == ["a.h5"]


def test_summary_counts_many_snapshots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s.h5"
    args = ["record", "CartPole-v1", "--steps", "60", "--snapshot-every", "1", "--no-progress"]
    assert main([*args, "-o", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert (
        "snapshots: 59 (step-000001, step-000002, step-000003, ..., step-000058, step-000059)"
        in (line)
    )
    assert "step-000030" not in line


def test_progress_lines_when_not_a_terminal() -> None:
    now = [100.0]
    buf = io.StringIO()
    console = rich.console.Console(file=buf, width=300, markup=False, highlight=False)
    with _RecordProgress(
        "CartPole-v1", 1000, None, mode="lines", every_s=5.0, clock=lambda: now[0], console=console
    ) as shown:
        for step in range(1, 1001):
            now[0] += 0.01  # 100 steps/s: a line every 500 steps
            shown.update(step, step // 50, step // 400)
    lines = buf.getvalue().splitlines()
    assert lines == [
        "replaykit: recording CartPole-v1: 500/1,000 steps, 100 steps/s, 10 episodes, 1 snapshot",
        "replaykit: recording CartPole-v1: 1,000/1,000 steps, 100 steps/s, 20 episodes, "
        "2 snapshots",
    ]


def test_progress_off_prints_nothing() -> None:
    buf = io.StringIO()
    console = rich.console.Console(file=buf)
    with _RecordProgress("CartPole-v1", 10, None, mode="off", console=console) as shown:
        for step in range(10):
            shown.update(step, 0, 0)
    assert buf.getvalue() == ""


def _stream_filters(path: Path) -> set[str | None]:
    found: set[str | None] = set()

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset) and name.startswith("streams/") and "@" not in name:
            found.add(obj.compression)

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return found


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ([], "gzip"),
        (["--compression", "lzf"], "lzf"),
        (["--compression", "gzip"], "gzip"),
        (["--compression", "gzip:4"], "gzip"),
        (["--compression", "none"], None),
    ],
)
def test_compression_option(tmp_path: Path, option: list[str], expected: str | None) -> None:
    out = tmp_path / "c.h5"
    args = ["record", "CartPole-v1", "--steps", "20", "--no-progress", *option, "-o", str(out)]
    assert main(args) == 0
    assert _stream_filters(out) == {expected}


def test_recording_wrapper_refuses_existing_path_unless_overwrite(tmp_path: Path) -> None:
    import gymnasium as gym

    from replaykit import RecordingWrapper
    from replaykit.errors import UsageError

    path = tmp_path / "a.h5"
    path.write_bytes(PRECIOUS)
    with pytest.raises(UsageError, match="already exists"):
        RecordingWrapper(gym.make("CartPole-v1"), path, seed=0)
    assert path.read_bytes() == PRECIOUS
    rec = RecordingWrapper(gym.make("CartPole-v1"), path, seed=0, overwrite=True)
    rec.reset()
    rec.step(0)
    assert path.read_bytes() == PRECIOUS  # replaced only once closed
    rec.close()
    assert path.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"
