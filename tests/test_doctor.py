"""``replaykit doctor``: real envs and policies, run twice and restored; each pathology found."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import pytest
import replaykit_envs  # noqa: F401  (registers replaykit/GlobalNoise-v0)
from replaykit_envs import diagnostics

import replaykit
from replaykit import cli


def _statuses(report: replaykit.DoctorReport) -> dict[str, str]:
    return {c.name: c.status for c in report.checks}


def test_cartpole_passes_every_check() -> None:
    report = replaykit.doctor(lambda: gym.make("CartPole-v1"), steps=60)
    assert report.ok
    st = _statuses(report)
    assert st["same seed, two runs"] == "PASS"
    assert st["snapshot/restore mid-episode"] == "PASS"
    assert st["global RNGs in step()"] == "PASS"
    assert "restored by adapter at step 30" in report.check("snapshot/restore mid-episode").detail


def test_global_rng_env_fails_with_the_step() -> None:
    report = replaykit.doctor(lambda: gym.make("replaykit/GlobalNoise-v0"), steps=40)
    assert not report.ok
    row = report.check("global RNGs in step()")
    assert row.status == "FAIL"
    assert "numpy global RNG (first at step 0)" in row.detail
    assert "self.np_random" in row.fix


def test_dropout_policy_fails_and_eval_policy_passes() -> None:
    bad = replaykit.doctor(lambda: gym.make("CartPole-v1"), diagnostics.dropout_policy, steps=20)
    row = bad.check("policy model")
    assert row.status == "FAIL"
    assert "Dropout, p=0.5" in row.detail
    assert "evaluation mode" in row.fix and "`eval` method" in row.fix
    good = replaykit.doctor(lambda: gym.make("CartPole-v1"), diagnostics.eval_policy, steps=20)
    assert good.check("policy model").status == "PASS"
    assert good.ok


def test_unadapted_wrapper_fails_and_unseeded_space_warns() -> None:
    class Opaque(gym.Wrapper):  # type: ignore[type-arg]
        pass

    def sampler(env: gym.Env, seed: int):  # type: ignore[type-arg]
        space = env.action_space  # deliberately never seeded
        return lambda obs: space.sample()

    report = replaykit.doctor(lambda: Opaque(gym.make("CartPole-v1")), sampler, steps=20)
    assert report.check("wrapper adapters").status == "FAIL"
    assert "Opaque" in report.check("wrapper adapters").detail
    assert report.check("snapshot/restore mid-episode").status == "FAIL"
    assert report.check("space RNGs").status == "WARN"
    assert report.check("same seed, two runs").status == "FAIL"


def test_clock_read_in_step_warns() -> None:
    import time

    class Clocked(gym.Wrapper):  # type: ignore[type-arg]
        def step(self, action):  # type: ignore[no-untyped-def]
            out = self.env.step(action)
            out[4]["t"] = time.perf_counter()
            return out

    replaykit.register_stateless_wrapper(Clocked)
    report = replaykit.doctor(lambda: Clocked(gym.make("CartPole-v1")), steps=10)
    row = report.check("clock and OS entropy in step()")
    assert row.status == "WARN"
    assert "time.perf_counter() (first at step 0)" in row.detail


def test_bad_arguments() -> None:
    with pytest.raises(replaykit.UsageError, match="steps must be an int >= 2"):
        replaykit.doctor(lambda: gym.make("CartPole-v1"), steps=1)
    with pytest.raises(replaykit.UsageError, match="policy must be a factory"):
        replaykit.doctor(lambda: gym.make("CartPole-v1"), object())  # type: ignore[arg-type]


@pytest.mark.mujoco
def test_mujoco_env_passes() -> None:
    pytest.importorskip("mujoco")
    report = replaykit.doctor(lambda: gym.make("Hopper-v5"), steps=40)
    assert report.ok, [c for c in report.checks if c.status != "PASS"]
    assert report.check("snapshot/restore mid-episode").status == "PASS"


@pytest.mark.atari
def test_ale_env_passes_with_a_sticky_action_warning() -> None:
    ale_py = pytest.importorskip("ale_py")
    gym.register_envs(ale_py)
    report = replaykit.doctor(lambda: gym.make("ALE/Pong-v5"), steps=40)
    assert report.ok
    assert report.check("snapshot/restore mid-episode").status == "PASS"
    assert report.check("sticky actions").status == "WARN"
    assert "repeat_action_probability=0.25" in report.check("sticky actions").detail


def test_cli_exit_codes_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["doctor", "CartPole-v1", "--steps", "20"]) == 0
    assert "all checks passed" in capsys.readouterr().out
    rc = cli.main(
        [
            "doctor",
            "CartPole-v1",
            "--steps",
            "20",
            "--json",
            "--policy",
            "replaykit_envs.diagnostics:dropout_policy",
        ]
    )
    assert rc == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False
    assert {c["name"]: c["status"] for c in doc["checks"]}["policy model"] == "FAIL"
    assert cli.main(["doctor", "NoSuchEnv-v9"]) == 2
    assert "unknown env id" in capsys.readouterr().err
    assert cli.main(["doctor", "CartPole-v1", "--steps", "1"]) == 2


def test_cudnn_benchmark_is_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    report = replaykit.doctor(lambda: gym.make("CartPole-v1"), steps=10)
    row = report.check("torch: cudnn.benchmark")
    # A failure where CUDA runs the model; a warning on a CPU-only machine.
    assert row.status == ("FAIL" if torch.cuda.is_available() else "WARN")
    assert "cudnn.benchmark = False" in row.fix
    assert report.flags["cudnn_benchmark"] is True


@pytest.mark.integration
def test_matplotlib_is_imported_only_by_the_commands_that_draw(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys, gymnasium as gym, replaykit\n"
        "from replaykit import cli\n"
        "replaykit.doctor(lambda: gym.make('CartPole-v1'), steps=10)\n"
        "assert cli.main(['record', 'CartPole-v1', '--out', 'r.h5', '--steps', '50',"
        " '--no-progress']) == 0\n"
        "assert cli.main(['inspect', 'r.h5']) == 0\n"
        "assert cli.main(['report', 'r.h5', '--json']) == 0\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'\n"
        "assert cli.main(['report', 'r.h5']) == 0\n"
        "assert 'matplotlib' in sys.modules\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
