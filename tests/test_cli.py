"""The command line: key flows through the real console script, the rest in-process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
from typer.testing import CliRunner

from replaykit import __version__
from replaykit.cli import app, main

RUNNER = CliRunner()


def _script() -> list[str]:
    exe = shutil.which("replaykit", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "replaykit"]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="160")
    return subprocess.run(
        [*_script(), *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300
    )


RECORD_ARGS = [
    "record",
    "CartPole-v1",
    "--policy",
    "mlp",
    "--seed",
    "0",
    "--steps",
    "400",
    "--snapshot-at",
    "200",
]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """a.h5: CartPole-v1, mlp, seed 0, 400 steps, snapshot at 200 (recorded in-process)."""
    path = tmp_path_factory.mktemp("cli") / "a.h5"
    assert main([*RECORD_ARGS, "--out", str(path)]) == 0
    return path


@pytest.mark.integration
def test_record_then_replay_script(tmp_path: Path) -> None:
    proc = run_cli(*RECORD_ARGS, "--out", "a.h5", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "recorded 400 steps" in proc.stdout and "step-000200" in proc.stdout
    proc = run_cli("replay", "a.h5", "--steps", "100", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "100 steps" in proc.stdout and "bit-exactly" in proc.stdout


@pytest.mark.integration
def test_replay_not_a_file_exit_2_one_line(tmp_path: Path) -> None:
    (tmp_path / "not-a-file.txt").write_text("hello\n")
    proc = run_cli("replay", "not-a-file.txt", cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("replaykit: error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.integration
def test_diff_different_seeds_script(recorded: Path, tmp_path: Path) -> None:
    b = tmp_path / "b.h5"
    assert (
        main(
            [
                "record",
                "CartPole-v1",
                "--policy",
                "mlp",
                "--seed",
                "1",
                "--steps",
                "400",
                "--snapshot-at",
                "200",
                "--out",
                str(b),
            ]
        )
        == 0
    )
    proc = run_cli("diff", str(recorded), str(b), "--json", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["match"] is False
    assert doc["first"]["row"] == 0 and doc["first"]["key"] == "resets/obs"
    assert list(doc) == sorted(doc)
    proc = run_cli("diff", str(recorded), str(b), "--key", "obs", cwd=tmp_path)
    assert proc.returncode == 1
    assert "first divergence at step 0, episode 0" in proc.stdout
    assert "key 'obs'" in proc.stdout


@pytest.mark.integration
def test_demo_script(tmp_path: Path) -> None:
    proc = run_cli("demo", "--out", str(tmp_path / "demo.h5"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "100 steps" in proc.stdout and "result: bit-exact" in proc.stdout


def test_diff_identical_exit_0(recorded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diff", str(recorded), str(recorded)]) == 0
    assert "recordings match" in capsys.readouterr().out


def test_edited_value_no_verify_exit_1_names_step(
    recorded: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edited = tmp_path / "edited.h5"
    shutil.copyfile(recorded, edited)
    with h5py.File(edited, "r+") as f:
        f["streams/steps/reward"][250] = 2.0
    # Checksums catch the edit: an input error.
    assert main(["replay", str(edited), "--steps", "100"]) == 2
    err = capsys.readouterr().err
    assert "checksum" in err and err.count("\n") == 1
    assert main(["check", str(edited)]) == 2
    err = capsys.readouterr().err
    assert "reward" in err and "checksum" in err and err.count("\n") == 1
    # --no-verify lets the experiment run: the replay diverges at the edited step.
    assert main(["replay", str(edited), "--steps", "100", "--no-verify"]) == 1
    out = capsys.readouterr().out
    assert "step 250" in out and "key 'reward'" in out


def test_replay_all_and_index(recorded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(recorded), "--all", "--steps", "5"]) == 0
    assert main(["replay", str(recorded), "--snapshot", "-1", "--steps", "5"]) == 0
    assert capsys.readouterr().out.count("5 steps") == 2
    assert main(["replay", str(recorded), "--snapshot", "nope"]) == 2
    assert "has no snapshot 'nope'" in capsys.readouterr().err
    assert main(["replay", str(recorded), "--all", "--snapshot", "0"]) == 2


def test_replay_module_policy_must_be_passed_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "p.h5"
    spec = "replaykit._session.policies:RandomPolicy"
    assert (
        main(
            [
                "record",
                "CartPole-v1",
                "--policy",
                spec,
                "--steps",
                "30",
                "--snapshot-at",
                "10",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert main(["replay", str(out)]) == 2
    assert "pass --policy again" in capsys.readouterr().err
    assert main(["replay", str(out), "--policy", spec]) == 0


def test_inspect_json_and_text(recorded: Path) -> None:
    res = RUNNER.invoke(app, ["inspect", str(recorded), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert list(doc) == sorted(doc)
    assert doc["env_id"] == "CartPole-v1" and doc["format_version"] == 2
    (snap,) = doc["snapshots"]
    assert snap["name"] == "step-000200" and snap["step"] == 200 and snap["bytes"] > 0
    assert snap["env_state"] == "adapter"
    steps = doc["streams"]["steps"]
    assert steps["rows"] == 400
    assert steps["columns"]["reward"]["min"] == 1.0 and steps["columns"]["reward"]["mean"] == 1.0
    assert steps["columns"]["action"]["max"] == 1
    assert sum(e["steps"] for e in doc["episodes"]) == 400
    assert "snapshots/" in doc["layout"]
    res = RUNNER.invoke(app, ["inspect", str(recorded)])
    assert res.exit_code == 0
    assert "step-000200" in res.output and "steps/reward" in res.output


@pytest.mark.integration
def test_check_ok_and_bad(recorded: Path, tmp_path: Path) -> None:
    res = RUNNER.invoke(app, ["check", str(recorded), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["ok"] and doc["snapshots"] == ["step-000200"] and doc["sandboxed"] is True
    assert doc["streams"] == {"resets": doc["streams"]["resets"], "steps": 400, "updates": 12}
    cut = tmp_path / "cut.h5"
    cut.write_bytes(recorded.read_bytes()[:5000])
    assert main(["check", str(cut)]) == 2


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "x.h5")
    assert main(["record", "CartPole-v1", "--snapshot-at", "x,2", "--out", out]) == 2
    assert main(["record", "CartPole-v1", "--policy", "nope", "--out", out]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["diff", out]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 4 and all(x.startswith("replaykit: error: ") for x in lines), err
    assert "--snapshot-at" in lines[0] and "unknown policy" in lines[1]


def test_version_and_help_list_exit_codes() -> None:
    res = RUNNER.invoke(app, ["--version"])
    assert res.exit_code == 0 and __version__ in res.output
    res = RUNNER.invoke(app, ["--help"])
    assert res.exit_code == 0
    assert "Exit codes: 0 match/ok; 1 diverged/mismatch; 2 usage or input error" in res.output
    for verb in ("record", "replay", "diff", "inspect", "check", "demo"):
        assert verb in res.output
    assert "--no-verify" in RUNNER.invoke(app, ["replay", "--help"]).output


def test_record_help_documents_limits_and_interrupt() -> None:
    out = " ".join(RUNNER.invoke(app, ["record", "--help"], env={"COLUMNS": "200"}).output.split())
    assert "130 interrupted (Ctrl-C)" in out
    assert "--episodes N alone records N whole episodes, however long" in out
    assert "with both, recording stops at whichever comes first" in out
    for option in ("--force, --overwrite", "--compression", "--progress / --no-progress"):
        assert option in out
