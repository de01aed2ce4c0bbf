"""One home for rendering: reports say where and why, from real recordings made with the API."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

import replaykit
from replaykit._analysis import render
from replaykit._analysis.layers import LAYER_KEY_PREFIX
from replaykit.cli import main
from replaykit.testing import assert_replay, describe_diff

FLIP_AT = 30
STEPS = 60


def policy(obs: Any) -> int:
    """Push the cart toward the side the pole leans to (deterministic)."""
    return int(obs[2] > 0)


def record(path: Path, *, flip_at: int | None = None, snapshot_at: tuple[int, ...] = ()) -> Path:
    """CartPole-v1 through RecordingWrapper; the action is flipped at step ``flip_at``."""
    env = replaykit.RecordingWrapper(gym.make("CartPole-v1"), path, seed=0, snapshot_at=snapshot_at)
    obs, _ = env.reset()
    for t in range(STEPS):
        action = policy(obs)
        if t == flip_at:
            action = 1 - action
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()
    return path


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("render")
    return record(d / "a.h5", snapshot_at=(FLIP_AT,)), record(d / "b.h5", flip_at=FLIP_AT)


def test_diff_text_names_step_episode_key_values_and_rule(pair: tuple[Path, Path]) -> None:
    a, b = pair
    res = replaykit.diff_recordings(a, b)
    first = res.first
    assert first is not None and (first.key, first.row) == ("action", FLIP_AT)
    m = first.mismatch
    text = render.diff_text(res, a_name="golden", b_name="fresh")
    lines = text.splitlines()
    assert lines[0] == f"recordings differ: golden={a} vs fresh={b} (bit-exact for every key)"
    assert lines[1] == (
        f"first divergence at step {FLIP_AT}, episode {first.episode}, "
        f"step {first.step_in_episode} of the episode, key 'action'"
    )
    # Both values with their dtype, labels aligned, the difference and the rule.
    assert lines[2] == f"  golden: {m.expected!r} [{m.expected_dtype}]"
    assert lines[3] == f"  fresh:  {m.actual!r} [{m.actual_dtype}]"
    assert {m.expected, m.actual} == {0, 1}
    assert lines[4] == "  difference: abs 1"
    assert lines[5] == "  rule: bit-exact"
    # The observation after the flipped action differs too, listed as another key.
    assert f"other keys that differ: obs (step {FLIP_AT})" in text
    assert describe_diff(res, a_name="golden", b_name="fresh") == text


def test_diff_text_float_element_abs_rel_ulp_and_named_rule(pair: tuple[Path, Path]) -> None:
    a, b = pair
    rules = replaykit.Rules({"action": replaykit.Rule(atol=1.0)})
    res = replaykit.diff_recordings(a, b, rules=rules)
    first = res.first
    assert first is not None and first.key == "obs" and first.row == FLIP_AT
    m = first.mismatch
    assert m.index and m.abs_diff and m.ulp
    text = render.diff_text(res)
    assert "(action: tolerance atol=1; other keys: bit-exact)" in text.splitlines()[0]
    assert f"step {FLIP_AT}," in text and f"key 'obs', element {list(m.index)}" in text
    # Floats show their bit patterns: equal-looking values that differ in bits stay visible.
    bits_a, bits_b = (f"{np.float32(v).view(np.uint32):08x}" for v in (m.expected, m.actual))
    assert f"  a: {m.expected!r} (bits 0x{bits_a}) [float32]" in text
    assert f"  b: {m.actual!r} (bits 0x{bits_b}) [float32]" in text
    assert f"difference: abs {m.abs_diff:.6g}, rel {m.rel_diff:.6g}, {m.ulp} ULP" in text
    assert "  rule: bit-exact" in text
    assert "action" not in text.split("rule: bit-exact")[1]  # within tolerance: not listed


def test_matching_recordings_render_one_line(pair: tuple[Path, Path]) -> None:
    a, _ = pair
    res = replaykit.diff_recordings(a, a)
    assert render.diff_text(res) == (
        f"recordings match ({res.compared_keys} keys compared, bit-exact for every key)"
    )


def test_replay_divergence_report_names_snapshot_step_key_values_rule(
    pair: tuple[Path, Path],
) -> None:
    a, _ = pair
    rep = replaykit.restore(a, f"step-{FLIP_AT:06d}", env=gym.make("CartPole-v1"))
    with pytest.raises(replaykit.DivergenceError) as ei:
        assert_replay(rep, lambda obs: 1 - policy(obs), steps=5)
    report = ei.value.report
    text = render.divergence_report(report)
    assert str(ei.value) == text == report.format()
    lines = text.splitlines()
    assert lines[0].startswith(
        f"diverged from {a} at snapshot 'step-{FLIP_AT:06d}', step {FLIP_AT}, episode "
    )
    assert lines[0].endswith("key 'action'")
    assert report.row == FLIP_AT and report.key == "action"
    m = report.mismatch
    assert lines[1] == f"  expected: {m.expected!r} [{m.expected_dtype}]"
    assert lines[2] == f"  actual:   {m.actual!r} [{m.actual_dtype}]"
    assert "  rule: bit-exact" in lines


def test_cli_diff_prints_provenance_section_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A setup difference both runs record: the cuBLAS workspace setting.
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    a = record(tmp_path / "a.h5")
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    b = record(tmp_path / "b.h5", flip_at=FLIP_AT)
    capsys.readouterr()
    assert main(["diff", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert out.count("setup (provenance) differences") == 1
    assert out.count("determinism.cublas_workspace_config") == 1
    assert "setup differences that may explain it" not in out
    assert out.count("first divergence at") == 1
    assert f"first divergence at step {FLIP_AT}" in out
    # The per-key table comes first and marks the earliest key.
    assert out.index("* action") < out.index("setup (provenance)") < out.index("recordings differ")
    # The assert helpers' text carries the same section once, as text.
    text = describe_diff(replaykit.diff_recordings(a, b))
    assert text.count("setup differences that may explain it:") == 1
    assert "  determinism.cublas_workspace_config: ':16:8' (a) vs ':4096:8' (b)" in text


# --------------------------------------------------------------------------- layer probes


def _record_two_layers(path: Path, bump: float) -> None:
    """Three SGD updates of a two-layer model, each traced; ``bump`` shifts layer 2's weights."""
    torch.manual_seed(0)
    second = nn.Linear(4, 2)
    net = nn.Sequential(nn.Linear(3, 4), second)
    with torch.no_grad():
        second.weight.add_(bump)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.randn(5, 3)
    with replaykit.TrainingRecorder(path) as rec:
        for _ in range(3):
            with replaykit.LayerTracer({"net": net}) as tr:
                loss = net(x).pow(2).mean()
                opt.zero_grad()
                loss.backward()
            opt.step()
            rec.log_update(**tr.probes(), loss=loss.detach())


@pytest.fixture(scope="module")
def layered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("layers")
    a, b = d / "a.h5", d / "b.h5"
    _record_two_layers(a, 0.0)
    _record_two_layers(b, 1e-3)
    return a, b


def test_headline_follows_execution_order_within_an_update(layered: tuple[Path, Path]) -> None:
    a, b = layered
    res = replaykit.diff_recordings(a, b)
    diverged = sorted(d.key for d in res.divergences if d.row == 0)
    # Layer 1's gradient (w.r.t. its output) depends on layer 2's weights: it differs, and
    # its key sorts first, but it is computed last; layer 2's output is the first to differ.
    alphabetical_first = f"{LAYER_KEY_PREFIX}net.0/grad"
    assert diverged[0] == alphabetical_first
    assert f"{LAYER_KEY_PREFIX}net.0/out" not in diverged
    first, module = res.first, res.first_module
    assert first is not None and module is not None
    assert first.key == module.key == f"{LAYER_KEY_PREFIX}net.1/out"
    assert (module.module, module.kind, module.update) == ("net.1", "out", 0)
    assert replaykit.first_update_divergence(res) is first
    assert (
        replaykit.first_divergent_module(res) == module == replaykit.first_divergent_module((a, b))
    )
    ordered = [d.key for d in res.ordered() if d.row == 0]
    assert ordered[0] == first.key and ordered.index(alphabetical_first) > ordered.index(
        f"{LAYER_KEY_PREFIX}net.1/grad"
    )
    text = render.diff_text(res)
    assert f"key '{LAYER_KEY_PREFIX}net.1/out'" in text.splitlines()[1]
    assert f"first divergent module: {render.layer_divergence(module)}" in text
    assert "module 'net.1'" in text


def test_cli_diff_headline_and_module_agree(
    layered: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = layered
    capsys.readouterr()
    assert main(["diff", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    key = f"{LAYER_KEY_PREFIX}net.1/out"
    assert f"first divergence at update 0, key '{key}', element [1]" in out
    assert out.count("first divergent module: ") == 1
    assert "the output of module 'net.1' is the first to differ" in out


def _imported_modules(*args: str) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "replaykit", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    return {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}


@pytest.mark.integration
def test_diff_never_imports_torch(pair: tuple[Path, Path], layered: tuple[Path, Path]) -> None:
    for a, b in (pair, layered):
        mods = _imported_modules("diff", str(a), str(b))
        assert "replaykit._analysis.render" in mods
        assert "torch" not in mods, f"diff {a.name} {b.name} imported torch"
