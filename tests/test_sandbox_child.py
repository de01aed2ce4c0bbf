"""The sandbox child runs no code from the cwd and never outlives its parent (issue 18)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from replaykit._analysis import check
from replaykit._analysis.child import python_child_argv
from replaykit.errors import UnsafeFileError

SENTINELS = ("xxhash", "numpy", "h5py", "typer", "json", "replaykit", "sitecustomize")


pytestmark = pytest.mark.integration  # every test starts a child process


def _plant(d: Path) -> Path:
    """Write modules into ``d`` that leave a marker file if anything imports them."""
    marker = d / "IMPORTED"
    for name in SENTINELS:
        (d / f"{name}.py").write_text(
            f"open({str(marker)!r}, 'a').write({name!r} + '\\n')\nraise SystemExit(97)\n"
        )
    return marker


@pytest.fixture
def hostile_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    d = tmp_path / "bug-report"
    d.mkdir()
    marker = _plant(d)
    monkeypatch.chdir(d)
    return d, marker


def test_python_child_argv_is_isolated(hostile_cwd: tuple[Path, Path]) -> None:
    d, marker = hostile_cwd
    code = "import sys, numpy, h5py, xxhash; print(numpy.__file__); print(sys.flags.isolated)"
    argv = python_child_argv("replaykit._analysis.check", "--help")
    assert argv[:2] == [sys.executable, "-I"]
    out = subprocess.run(argv, cwd=d, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "replaykit._analysis.check" in out.stdout
    # A plain -I child with the same cwd imports the real packages too.
    out = subprocess.run(
        [sys.executable, "-I", "-c", code], cwd=d, capture_output=True, text=True, timeout=120
    )
    assert str(d) not in out.stdout and out.stdout.strip().endswith("1")
    assert not marker.exists(), marker.read_text()
    with pytest.raises(ValueError, match="replaykit module"):
        python_child_argv("os")


def test_sandbox_imports_nothing_from_cwd(
    small_recording: Path, hostile_cwd: tuple[Path, Path]
) -> None:
    d, marker = hostile_cwd
    shutil.copy(small_recording, d / "bug.h5")
    report = check.validate_file("bug.h5", sandbox=True)
    assert report.sandboxed and report.streams
    assert not marker.exists(), marker.read_text()


def test_check_console_script_imports_nothing_from_cwd(
    small_recording: Path, hostile_cwd: tuple[Path, Path]
) -> None:
    d, marker = hostile_cwd
    shutil.copy(small_recording, d / "bug.h5")
    exe = shutil.which("replaykit", path=os.path.dirname(sys.executable))
    if exe is None:
        pytest.skip("replaykit console script not installed")
    out = subprocess.run(
        [exe, "check", "bug.h5"], cwd=d, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert not marker.exists(), marker.read_text()


def test_demo_child_imports_nothing_from_cwd(hostile_cwd: tuple[Path, Path]) -> None:
    # `replaykit demo` replays its recording in a fresh Python process: that child must
    # not import the sentinels planted in the directory the user runs it from.
    d, marker = hostile_cwd
    exe = shutil.which("replaykit", path=os.path.dirname(sys.executable))
    if exe is None:
        pytest.skip("replaykit console script not installed")
    out = subprocess.run(
        [exe, "demo", "--out", "demo.h5"], cwd=d, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "bit-exact" in out.stdout
    assert not marker.exists(), marker.read_text()


# --------------------------------------------------------------------------- orphans

_PARENT = textwrap.dedent(
    """
    import sys
    from replaykit._analysis import check
    pidfile = sys.argv[2]
    script = (
        "import os, sys; open(%r, 'w').write(str(os.getpid())); "
        "print('replaykit-check-ready', flush=True)\\nwhile True: pass" % pidfile
    )
    check._sandbox_command = lambda p, m: [sys.executable, "-c", script]
    check.CPU_STARTUP_S = int(sys.argv[3])
    check.validate_file(sys.argv[1], sandbox=True, timeout=float(sys.argv[4]))
    """
)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _spinning_child(tmp_path: Path, rec: Path, cpu_startup: int, timeout: float) -> tuple:
    pidfile = tmp_path / "child.pid"
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, str(rec), str(pidfile), str(cpu_startup), str(timeout)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not (pidfile.exists() and pidfile.read_text()):
        assert time.monotonic() < deadline and parent.poll() is None
        time.sleep(0.05)
    return parent, int(pidfile.read_text())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_child_dies_with_its_parent(small_recording: Path, tmp_path: Path, sig: int) -> None:
    parent, child = _spinning_child(tmp_path, small_recording, 60, 600.0)
    assert _alive(child)
    parent.send_signal(sig)
    parent.wait(timeout=30)
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = _alive(child)
    if alive:
        os.kill(child, signal.SIGKILL)
    assert not alive, "the sandbox child outlived its parent"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX rlimits")
def test_child_cpu_limit_holds_without_parent_timeout(
    small_recording: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RLIMIT_CPU ends a spinning child on its own: the parent's timeout is far away."""
    script = "print('replaykit-check-ready', flush=True)\nwhile True: pass"
    monkeypatch.setattr(check, "_sandbox_command", lambda p, m: [sys.executable, "-c", script])
    # The CPU cap is timeout + 1 + CPU_STARTUP_S seconds: 3 s here, against a 20 s timeout.
    monkeypatch.setattr(check, "CPU_STARTUP_S", -18)
    t0 = time.monotonic()
    with pytest.raises(UnsafeFileError, match=r"SIGXCPU|SIGKILL"):
        check.validate_file(small_recording, sandbox=True, timeout=20.0)
    assert time.monotonic() - t0 < 30
