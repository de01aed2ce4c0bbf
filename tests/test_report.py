"""``replaykit report``: recordings with known pathologies, each finding at the right step/key.

Every recording here is real: made by ``replaykit record`` or ``RecordingWrapper`` around real
gymnasium envs, read back through the checksummed reader. A healthy recording gives no finding.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import replaykit_envs  # noqa: F401
from replaykit_envs import diagnostics

import replaykit
from replaykit import cli
from replaykit._analysis.report import analyze

pytest.importorskip("matplotlib")


def _record(tmp_path: Path, policy: str, steps: int = 1000, name: str = "run.h5") -> Path:
    out = tmp_path / name
    rc = cli.main(
        [
            "record",
            "CartPole-v1",
            "--out",
            str(out),
            "--policy",
            policy,
            "--steps",
            str(steps),
            "--snapshot-at",
            str(steps // 2),
            "--no-progress",
        ]
    )
    assert rc == 0
    return out


def _kinds(path: Path) -> list[tuple[str, str]]:
    return [(f.kind, f.key) for f in analyze(path).findings]


def test_nan_in_a_step_probe_is_found_at_its_step_and_element(tmp_path: Path) -> None:
    path = _record(tmp_path, "replaykit_envs.diagnostics:nan_policy")
    (f,) = analyze(path).findings
    assert (f.kind, f.key, f.step, f.element) == (
        "nonfinite",
        "steps/probe/logits",
        diagnostics.NAN_AT,
        [1],
    )
    assert f"steps/probe/logits[1] is nan first at step {diagnostics.NAN_AT}" in f.message


def test_nan_and_explosion_in_updates(tmp_path: Path) -> None:
    path = tmp_path / "train.h5"
    env = replaykit.RecordingWrapper(gym.make("CartPole-v1"), path, seed=0)
    env.reset()
    env.action_space.seed(0)
    for t in range(200):
        _, _, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            env.reset()
        if t % 4 == 3:
            u = t // 4
            loss = np.float32(np.nan) if u == 37 else np.float32(1.0 / (u + 1))
            env.log_update(loss=loss, grad_norm=np.float32(1.5**u), lr=np.float32(1e-6 * 2**u))
    env.close()
    a = analyze(path)
    by_key = {(f.kind, f.key): f for f in a.findings}
    nan = by_key["nonfinite", "updates/probe/loss"]
    assert nan.update == 37 and nan.step == 152
    assert "updates/probe/loss is nan first at update 37 (step 152)" in nan.message
    grow = by_key["exploding", "updates/probe/grad_norm"]
    assert "grew from" in grow.message
    # A learning-rate schedule grows by design: not a finding.
    assert ("exploding", "updates/probe/lr") not in by_key
    assert ("exploding", "updates/probe/loss") not in by_key


def test_collapsed_policy_is_found(tmp_path: Path) -> None:
    path = _record(tmp_path, "replaykit_envs.diagnostics:collapsing_policy", steps=1200)
    (f,) = analyze(path).findings
    assert f.kind == "collapse"
    assert f.step == 900  # the last quarter: steps 900-1199, all after COLLAPSE_AT
    assert "predicts action 0 for 100% of the last 300 steps (steps 900-1199)" in f.message
    assert "entropy of steps/probe/logits" in f.message


def test_unnormalised_observation_dimension_is_found(tmp_path: Path) -> None:
    path = tmp_path / "scaled.h5"
    env = replaykit.RecordingWrapper(
        diagnostics.ScaleDimension(gym.make("CartPole-v1"), dim=2, factor=1e4), path, seed=0
    )
    env.reset()
    env.action_space.seed(0)
    for _ in range(500):
        _, _, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            env.reset()
    env.close()
    findings = analyze(path).findings
    assert [(f.kind, f.element) for f in findings] == [("scale", [2])]
    with replaykit.Recording(path) as rec:
        std = float(rec.stream("steps").read("obs")[:, 2].astype(np.float64).std())
    assert std > 100
    assert f"obs[2] has std {std:.2e} (" in findings[0].message
    assert "inputs are not normalised" in findings[0].message


@pytest.mark.parametrize("policy", ["random", pytest.param("mlp", marks=pytest.mark.integration)])
def test_healthy_recordings_have_no_findings(tmp_path: Path, policy: str) -> None:
    path = _record(tmp_path, policy, steps=2000)
    assert analyze(path).findings == []


@pytest.mark.integration
@pytest.mark.parametrize(
    "example",
    ["reinforce_cartpole", "dqn_cartpole", "ppo_cartpole", "sac_pendulum", "supervised_dataloader"],
)
def test_examples_recordings_have_no_findings(tmp_path: Path, example: str) -> None:
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / f"{example}.h5"
    proc = subprocess.run(
        [sys.executable, str(root / "examples" / f"{example}.py"), "--out", str(out)],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    a = analyze(out)
    assert a.findings == [], [f.message for f in a.findings]
    assert a.steps + a.updates > 0


@pytest.mark.integration  # draws every picture: a few seconds
def test_report_writes_one_self_contained_page_and_pngs(tmp_path: Path) -> None:
    path = _record(tmp_path, "replaykit_envs.diagnostics:nan_policy", steps=400)
    out = tmp_path / "rep"
    assert cli.main(["report", str(path), "--out", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "http://" not in page and "https://" not in page  # nothing fetched from a network
    for section in ("findings", "episodes", "keys", "actions", "observations", "nonfinite"):
        assert f'id="{section}"' in page
    assert f"is nan first at step {diagnostics.NAN_AT}" in page
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', page)
    assert {name for name, _ in images} == {p.name for p in out.glob("*.png")}
    for name, data in images:
        assert base64.b64decode(data) == (out / name).read_bytes()
        assert (out / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    # An existing report is not replaced without --force.
    before = (out / "report.html").stat().st_mtime_ns
    assert cli.main(["report", str(path), "--out", str(out)]) == 2
    assert (out / "report.html").stat().st_mtime_ns == before
    assert cli.main(["report", str(path), "--out", str(out), "--force"]) == 0


def test_report_json_and_key_patterns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _record(tmp_path, "replaykit_envs.diagnostics:nan_policy", steps=300)
    capsys.readouterr()
    assert cli.main(["report", str(path), "--json", "--key", "steps/obs"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["files"] == []
    assert [f["kind"] for f in doc["findings"]] == ["nonfinite"]
    assert doc["findings"][0]["step"] == diagnostics.NAN_AT
    assert list(analyze(path, keys=["steps/obs"]).series) == ["steps/obs"]
    # A steps column also by its bare name, as diff --key takes it.
    assert list(analyze(path, keys=["obs", "updates/*"]).series) == ["steps/obs"]


def test_report_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["report", str(tmp_path / "missing.h5")]) == 2
    path = _record(tmp_path, "random", steps=50)
    assert cli.main(["report", str(path), "--out", str(tmp_path / "no" / "such")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_inspect_mentions_each_finding(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _record(tmp_path, "replaykit_envs.diagnostics:nan_policy", steps=300)
    capsys.readouterr()
    assert cli.main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "findings (1; pictures: replaykit report):" in out
    assert f"steps/probe/logits[1] is nan first at step {diagnostics.NAN_AT}" in out
    assert cli.main(["inspect", str(path), "--json"]) == 0
    (line,) = json.loads(capsys.readouterr().out)["findings"]
    assert line.startswith("steps/probe/logits[1] is nan")


def _drift(path: Path, gain: float) -> None:
    env = replaykit.RecordingWrapper(gym.make("replaykit/Drift-v0"), path, seed=0)
    env.reset()
    env.action_space.seed(0)
    for t in range(300):
        a = env.action_space.sample()
        if t >= 120:
            a = a * np.float32(gain)
        _, _, term, trunc, _ = env.step(a)
        if term or trunc:
            env.reset()
    env.close()


def test_diff_plot_draws_the_first_divergent_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from replaykit._analysis.compare import diff_recordings, divergence_values

    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    _drift(a, 1.0)
    _drift(b, 1.0000001)
    first = diff_recordings(a, b).first
    assert first is not None and (first.key, first.row) == ("action", 120)
    x, va, vb, element = divergence_values(a, b, first)
    assert element == "[0]" and x[0] == 0
    assert (va[:120] == vb[:120]).all() and va[120] != vb[120]
    png = tmp_path / "d.png"
    assert cli.main(["diff", str(a), str(b), "--plot", str(png)]) == 1
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "plot of action[0] written to" in capsys.readouterr().err
    # Not replaced without --force; a bad name is refused before anything is read.
    assert cli.main(["diff", str(a), str(b), "--plot", str(png)]) == 2
    assert cli.main(["diff", str(a), str(b), "--plot", str(tmp_path / "d.jpg")]) == 2
    assert cli.main(["diff", str(a), str(b), "--plot", str(png), "--force"]) == 1


def test_missing_matplotlib_is_one_line_with_the_pip_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _record(tmp_path, "random", steps=50)
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    capsys.readouterr()
    assert cli.main(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "replaykit[plot]"' in err
    assert not (tmp_path / "run-report").exists()
    assert cli.main(["diff", str(path), str(path), "--plot", str(tmp_path / "d.png")]) == 2
    assert 'pip install "replaykit[plot]"' in capsys.readouterr().err
    # The findings alone need no matplotlib.
    assert cli.main(["report", str(path), "--json"]) == 0


def test_vector_recording_is_reported_per_sub_env(tmp_path: Path) -> None:
    path = tmp_path / "vec.h5"
    venv = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1") for _ in range(3)])
    env = replaykit.VectorRecordingWrapper(venv, path, seed=0)
    env.reset()
    env.action_space.seed(0)
    for _ in range(200):
        env.step(env.action_space.sample())
    env.close()
    a = analyze(path)
    assert a.findings == []
    assert a.actions is not None and a.actions["hist"].sum() == 600  # 3 sub-envs x 200 steps
    assert int(a.episode_lengths.sum()) == 600
    assert a.obs_stats is not None and len(a.obs_stats["std"]) == 4


def test_constant_continuous_actions_are_a_collapse(tmp_path: Path) -> None:
    def run(path: Path, stuck_from: int | None) -> None:
        env = replaykit.RecordingWrapper(gym.make("Pendulum-v1"), path, seed=0)
        env.reset()
        env.action_space.seed(0)
        for t in range(400):
            a = env.action_space.sample()
            if stuck_from is not None and t >= stuck_from:
                a = np.float32([2.0])  # saturated at the bound
            env.step(a)
        env.close()

    run(tmp_path / "stuck.h5", stuck_from=250)
    (f,) = analyze(tmp_path / "stuck.h5").findings
    assert (f.kind, f.key, f.step) == ("collapse", "steps/action", 300)
    assert "the same action [2] in every one of the last 100 steps (steps 300-399)" in f.message
    run(tmp_path / "random.h5", stuck_from=None)
    assert analyze(tmp_path / "random.h5").findings == []


def test_failure_record_is_read_and_marked(tmp_path: Path) -> None:
    """A flight recording's failure record reaches the report (step and the user's reason)."""
    path = tmp_path / "failed.h5"
    env = replaykit.RecordingWrapper(gym.make("CartPole-v1"), path, seed=0)
    env.reset()
    for _ in range(40):
        _, _, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            env.reset()
    env.mark_failure("value head exploded")
    env.close()
    analysis = analyze(path)
    assert analysis.failure is not None
    assert analysis.failure["step"] == 40
    assert "value head exploded" in analysis.failure["message"]
