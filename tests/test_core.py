"""The snapshot contract end to end.

Record, snapshot mid-episode, restore in a fresh process, verify.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch

import replaykit
from replaykit.errors import (
    NotARecordingError,
    ReplaykitError,
    StateMismatchError,
    TruncatedFileError,
    UnsupportedVersionError,
)

HERE = Path(__file__).resolve().parent
CHILD = HERE / "core_child.py"


def run_child(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CHILD), *args], capture_output=True, text=True, timeout=600, cwd=HERE
    )


ENVS = ["CartPole-v1", "Acrobot-v1", "Pendulum-v1", "MountainCarContinuous-v0"]


def record_here(tmp_path: Path, env_id: str) -> Path:
    """Record in this process with the user loop of core_child (snapshot at step 152)."""
    import core_child

    path = tmp_path / (env_id.replace("/", "_") + ".h5")
    core_child.record(str(path), env_id, 300, 152)
    return path


@pytest.mark.parametrize("env_id", ENVS)
@pytest.mark.integration
def test_fresh_process_restore_is_bit_exact(tmp_path: Path, env_id: str) -> None:
    path = record_here(tmp_path, env_id)
    with replaykit.Recording(path) as rec:
        (snap,) = rec.snapshots
        assert snap.meta["env_state"] == "adapter"
        _, tree = rec.load_snapshot("mid")
        # The optimizer stepped during the rollout (every 8 steps), so its state is real.
        state = tree["tracked"]["optimizer"]["state_dict"]["state"]
        assert {int(s["step"]) for s in state.values()} == {152 // 8}
    res = run_child("replay", str(path), env_id, "120")
    assert res.returncode == 0, res.stderr
    assert "verified 120 steps from snapshot mid at step 152" in res.stdout


def test_snapshot_is_mid_episode(tmp_path: Path) -> None:
    path = record_here(tmp_path, "Pendulum-v1")
    with replaykit.Recording(path) as rec:
        assert rec.snapshots[0].meta["step_in_episode"] == 152


@pytest.mark.integration
def test_changed_policy_code_diverges_with_report(tmp_path: Path) -> None:
    path = record_here(tmp_path, "CartPole-v1")
    res = run_child("replay", str(path), "CartPole-v1", "50", "--variant", "scaled")
    assert res.returncode == 1
    first = res.stderr.splitlines()[0]
    assert "snapshot 'mid'" in first and "step 152" in first
    assert "key 'probe/out'" in first and "element [0]" in first
    assert "ULP" in res.stderr and "rule: bit-exact" in res.stderr


@pytest.mark.integration
def test_signed_zero_counts(tmp_path: Path) -> None:
    path = record_here(tmp_path, "Pendulum-v1")
    res = run_child("replay", str(path), "Pendulum-v1", "50", "--zero", "-0.0")
    assert res.returncode == 1
    assert "key 'probe/zero'" in res.stderr
    assert "bits 0x80000000" in res.stderr and "bits 0x00000000" in res.stderr


def _rewrite_value(
    path: Path, stream: str, column: str, row: int, index: tuple[int, ...], new: float
) -> float:
    """Change one stored value and re-seal the stream's checksums, as if another run wrote it."""
    import xxhash

    from replaykit._format import layout as F

    with h5py.File(path, "r+") as f:
        g = f[f"streams/{stream}"]
        ds = g[column]
        old = float(ds[(row, *index)])
        ds[(row, *index)] = new
        commit = F.loads(g.attrs["commit"])
        commit.pop("crc")
        commit["checksums"][column] = xxhash.xxh3_64_hexdigest(
            np.ascontiguousarray(ds[: commit["rows"]]).data
        )
        commit["crc"] = xxhash.xxh3_64_hexdigest(F.dumps(commit).encode())
        g.attrs["commit"] = F.dumps(commit)
    return old


@pytest.mark.integration
def test_one_ulp_change_in_recording_is_reported(tmp_path: Path) -> None:
    path = record_here(tmp_path, "Acrobot-v1")
    with replaykit.Recording(path) as rec:
        obs = rec.stream("steps").read("obs", 160, 161)[0]
    new = np.nextafter(obs[2], np.float32(np.inf), dtype=np.float32)
    _rewrite_value(path, "steps", "obs", 160, (2,), float(new))
    res = run_child("replay", str(path), "Acrobot-v1", "50")
    assert res.returncode == 1, res.stdout
    first = res.stderr.splitlines()[0]
    assert "step 160" in first and "key 'obs'" in first and "element [2]" in first
    assert "1 ULP" in res.stderr


@pytest.mark.integration
def test_replay_from_reset_fallback_fresh_process(tmp_path: Path) -> None:
    import noadapter_env  # noqa: F401

    path = record_here(tmp_path, "replaykit-test/NoAdapter-v0")
    with replaykit.Recording(path) as rec:
        snap = rec.snapshots[0]
        assert snap.meta["env_state"] == "replay-from-reset"
        assert snap.meta["step_in_episode"] > 0
    res = run_child(
        "--register-noadapter", "replay", str(path), "replaykit-test/NoAdapter-v0", "120"
    )
    assert res.returncode == 0, res.stderr
    assert "verified 120 steps" in res.stdout


@pytest.mark.integration
def test_fallback_names_first_nondeterministic_step(tmp_path: Path) -> None:
    import noadapter_env  # noqa: F401

    path = record_here(tmp_path, "replaykit-test/Flaky-v0")
    res = run_child("--register-noadapter", "replay", str(path), "replaykit-test/Flaky-v0", "50")
    assert res.returncode == 3, res.stdout + res.stderr
    assert "not deterministic" in res.stderr
    assert "key 'obs'" in res.stderr.splitlines()[0] or "key 'reset/obs'" in res.stderr


# ------------------------------------------------------------------ clear errors, in process


def _small_recording(path: Path) -> torch.nn.Module:
    model = torch.nn.Linear(4, 2)
    env = replaykit.RecordingWrapper(gym.make("CartPole-v1"), path, seed=0, track={"model": model})
    env.reset()
    for _ in range(10):
        env.step(env.action_space.sample())
    env.snapshot("s")
    env.close()
    return model


def test_model_shape_mismatch_is_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "r.h5"
    _small_recording(path)
    with pytest.raises(StateMismatchError) as info:
        replaykit.restore(
            path, "s", env=gym.make("CartPole-v1"), track={"model": torch.nn.Linear(4, 3)}
        )
    msg = str(info.value)
    assert "\n" not in msg
    assert "weight" in msg and "(2, 4)" in msg.replace("[2, 4]", "(2, 4)")


def test_optimizer_mismatch_is_error(tmp_path: Path) -> None:
    path = tmp_path / "r.h5"
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(4)).sum().backward()
    opt.step()
    env = replaykit.RecordingWrapper(gym.make("CartPole-v1"), path, seed=0, track={"opt": opt})
    env.reset()
    env.snapshot("s")
    env.close()
    other = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.Linear(2, 2))
    with pytest.raises(StateMismatchError) as info:
        replaykit.restore(
            path,
            "s",
            env=gym.make("CartPole-v1"),
            track={"opt": torch.optim.Adam(other.parameters())},
        )
    assert "\n" not in str(info.value)


def test_newer_format_version_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.h5"
    _small_recording(path)
    with h5py.File(path, "r+") as f:
        f.attrs["replaykit_format_version"] = 99
    with pytest.raises(UnsupportedVersionError) as info:
        replaykit.Recording(path)
    assert "99" in str(info.value) and "upgrade replaykit" in str(info.value)
    assert "\n" not in str(info.value)


def test_non_replaykit_hdf5_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(NotARecordingError, match="not written by replaykit"):
        replaykit.Recording(path)


def test_truncated_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.h5"
    _small_recording(path)
    data = path.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(ReplaykitError) as info:
        rec = replaykit.Recording(cut)
        rec.load_snapshot("s")
    assert isinstance(info.value, (TruncatedFileError, replaykit.FileFormatError))
    assert "\n" not in str(info.value)
    assert str(cut) in str(info.value)


def test_spaces_and_env_id_checked(tmp_path: Path) -> None:
    path = tmp_path / "r.h5"
    _small_recording(path)
    with pytest.raises(StateMismatchError, match="env id"):
        replaykit.restore(
            path, "s", env=gym.make("Acrobot-v1"), track={"model": torch.nn.Linear(4, 2)}
        )


def test_nested_obs_and_ragged_infos_record_and_verify(tmp_path: Path) -> None:
    from replaykit._session.rollout import record_rollout, replay_snapshot

    path = tmp_path / "nested.h5"
    record_rollout(
        "replaykit/NestedObs-v0", "random", seed=3, steps=300, out=path, snapshot_at=[120]
    )
    with replaykit.Recording(path) as rec:
        steps = rec.stream("steps")
        assert {"obs/image", "info/collisions"} <= set(steps.columns)
        present = steps.present("info/contact")
        # A key present on some steps only: recorded with a presence mask.
        assert present is not None and 0 < int(present.sum()) < steps.rows
    summary = replay_snapshot(path, 0, steps=150)
    assert summary.verified_steps == 150


def test_nested_info_dicts_are_verified(tmp_path: Path) -> None:
    path = tmp_path / "stats.h5"
    env = gym.wrappers.RecordEpisodeStatistics(gym.make("CartPole-v1"))
    rec = replaykit.RecordingWrapper(env, path, seed=0)
    rec.reset()
    for t in range(200):
        if t == 60:
            rec.snapshot("s")
        _, _, term, trunc, _ = rec.step(rec.action_space.sample())
        if term or trunc:
            rec.reset()
    rec.close()
    with replaykit.Recording(path) as r:
        assert "info/episode/r" in r.stream("steps").columns
    fresh = gym.wrappers.RecordEpisodeStatistics(gym.make("CartPole-v1"))
    rep = replaykit.restore(path, "s", env=fresh)
    for _ in range(100):
        if rep.needs_reset:
            rep.env.reset()
        rep.env.step(rep.recorded_action(rep.step_count))
    assert rep.verified_steps == 100
