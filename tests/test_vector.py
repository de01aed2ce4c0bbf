"""Vector env recording: Sync/Async, autoreset modes, snapshot, restore, batched verification."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

from replaykit._format import layout as F
from replaykit._format.store import Recording
from replaykit._session.vector import VectorRecordingWrapper, capturable, restore_vector
from replaykit.errors import CaptureError, DivergenceError, StateMismatchError, UsageError

ROOT = Path(__file__).resolve().parents[1]
N = 4


def build(kind: str, mode: AutoresetMode, n: int = N) -> gym.vector.VectorEnv:
    fns = capturable([lambda: gym.make("CartPole-v1")] * n)
    cls = AsyncVectorEnv if kind == "async" else SyncVectorEnv
    return cls(fns, autoreset_mode=mode)


def record(path: Path, kind: str, mode: AutoresetMode, steps: int = 260, at: int = 60) -> dict:
    """Record; snapshot at the first step >= ``at`` where some sub-env just ended."""
    vec = VectorRecordingWrapper(build(kind, mode), path, seed=3)
    info = {}
    try:
        vec.reset()
        for _ in range(steps):
            _, _, term, trunc, _ = vec.step(vec.action_space.sample())
            if "snap" not in info and vec.step_count >= at and np.any(term | trunc):
                info["snap"] = vec.snapshot()
                info["done"] = np.flatnonzero(term | trunc).tolist()
    finally:
        vec.close()
    return info


def replay(path: Path, kind: str, mode: AutoresetMode, steps: int = 100) -> int:
    vec = build(kind, mode)
    try:
        with restore_vector(path, 0, vec_env=vec) as rep:
            for _ in range(steps):
                rep.env.step(rep.env.action_space.sample())
            return rep.verified_steps
    finally:
        vec.close()


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
@pytest.mark.parametrize("kind", ["async", "sync"])
def test_snapshot_restore_verify_100_batched_steps(tmp_path, kind, mode):
    path = tmp_path / "vec.h5"
    info = record(path, kind, mode)
    with Recording(path) as rec:
        snap = rec.snapshots[0]
        cols = rec.stream(F.STEPS).columns
        assert rec.meta["vector"] == {"kind": kind, "num_envs": N, "autoreset_mode": mode.value}
        assert rec.stream(F.STEPS).read(F.OBS).shape[1:] == (N, 4)
        if mode == AutoresetMode.NEXT_STEP:
            # The snapshot sits right after an episode end: that sub-env's next step is a reset.
            assert snap.meta["pending_autoresets"] == info["done"]
            assert rec.stream(F.STEPS).read(F.AUTORESET).any()
        else:
            assert snap.meta["pending_autoresets"] == []
            final = F.column_path(F.INFO, F.FINAL_OBS)
            assert final in cols
            present = rec.stream(F.STEPS).present(final)
            mask = rec.stream(F.STEPS).read(F.column_path(F.INFO, "_final_obs"))
            rows = np.flatnonzero(present)
            fin = rec.stream(F.STEPS).read(final)
            # A final obs is a real CartPole state (nonzero) exactly where the mask says so.
            assert (np.abs(fin[rows]).sum(-1) > 0).tolist() == mask[rows].tolist()
    assert replay(path, kind, mode) == 100


@pytest.mark.integration
def test_async_restore_in_fresh_process(tmp_path):
    path = tmp_path / "vec.h5"
    record(path, "async", AutoresetMode.NEXT_STEP)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "vector_child.py"),
            str(path),
            "async",
            "NextStep",
            "100",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["verified"] == 100


def test_divergence_names_the_sub_env(tmp_path):
    path = tmp_path / "vec.h5"
    record(path, "sync", AutoresetMode.NEXT_STEP)
    vec = build("sync", AutoresetMode.NEXT_STEP)
    with restore_vector(path, 0, vec_env=vec) as rep:
        for _ in range(3):
            rep.env.step(rep.env.action_space.sample())
        # Nudge sub-env 2's physics: the next observation must differ there and only there.
        vec.envs[2].unwrapped.state = vec.envs[2].unwrapped.state + np.array([1e-3, 0, 0, 0])
        with pytest.raises(DivergenceError) as exc:
            for _ in range(3):
                rep.env.step(rep.env.action_space.sample())
    report = exc.value.report
    assert report.key == "obs"
    assert report.mismatch.index[0] == 2
    assert "sub-env index" in report.format()


@pytest.mark.integration
def test_wrong_action_is_reported_with_its_sub_env(tmp_path):
    path = tmp_path / "vec.h5"
    record(path, "async", AutoresetMode.SAME_STEP, steps=120)
    vec = build("async", AutoresetMode.SAME_STEP)
    try:
        with restore_vector(path, 0, vec_env=vec) as rep:
            actions = rep.recorded_action(rep.step_count)
            actions[1] = 1 - actions[1]
            with pytest.raises(DivergenceError) as exc:
                rep.env.step(actions)
        assert exc.value.report.key == "action"
        assert list(exc.value.report.mismatch.index) == [1]
    finally:
        vec.close()


def test_restore_refuses_a_different_vector_env(tmp_path):
    path = tmp_path / "vec.h5"
    record(path, "sync", AutoresetMode.NEXT_STEP, steps=80)
    vec = build("sync", AutoresetMode.NEXT_STEP, n=3)
    with pytest.raises(StateMismatchError, match="num_envs: recorded 4, got 3"):
        restore_vector(path, 0, vec_env=vec)
    vec = build("sync", AutoresetMode.SAME_STEP)
    with pytest.raises(StateMismatchError, match="autoreset_mode"):
        restore_vector(path, 0, vec_env=vec)


@pytest.mark.integration
def test_async_needs_capturable_sub_envs(tmp_path):
    vec = AsyncVectorEnv([lambda: gym.make("CartPole-v1")] * 2)
    try:
        with pytest.raises(CaptureError, match="capturable"):
            VectorRecordingWrapper(vec, tmp_path / "x.h5")
    finally:
        vec.close()


def test_sub_env_without_adapter_is_refused(tmp_path):
    pytest.importorskip("Box2D")
    vec = SyncVectorEnv([lambda: gym.make("LunarLander-v3")] * 2)
    with pytest.raises(CaptureError, match="no env adapter"):
        VectorRecordingWrapper(vec, tmp_path / "x.h5")
    vec.close()


def test_single_env_recording_is_refused(tmp_path):
    from replaykit._session.record import RecordingWrapper

    path = tmp_path / "single.h5"
    env = RecordingWrapper(gym.make("CartPole-v1"), path, seed=0, snapshot_at=[1])
    env.reset()
    env.step(0)
    env.close()
    with pytest.raises(UsageError, match="single-env recording"):
        restore_vector(path, 0, vec_env=build("sync", AutoresetMode.NEXT_STEP))


def test_vector_reset_is_verified(tmp_path):
    path = tmp_path / "vec.h5"
    vec = VectorRecordingWrapper(
        build("sync", AutoresetMode.DISABLED), path, seed=5, snapshot_at=[10]
    )
    vec.reset()
    for _ in range(20):
        _, _, term, trunc, _ = vec.step(vec.action_space.sample())
        done = term | trunc
        if done.any():
            vec.reset(options={"reset_mask": done})
    vec.reset(seed=11)
    vec.step(vec.action_space.sample())
    vec.close()
    fresh = build("sync", AutoresetMode.DISABLED)
    with restore_vector(path, 0, vec_env=fresh) as rep:
        while rep.steps_left > 1:
            _, _, term, trunc, _ = rep.env.step(rep.env.action_space.sample())
            done = term | trunc
            if done.any():
                rep.env.reset(options={"reset_mask": done})
        seeds, _ = rep.recorded_reset_args()
        assert seeds == [11, 12, 13, 14]
        with pytest.raises(DivergenceError, match="reset/seed"):
            rep.env.reset(seed=12)


class _Tally(gym.Wrapper):
    """A stateful wrapper with no state adapter (like SB3's Monitor)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.steps = 0

    def step(self, action):  # type: ignore[no-untyped-def]
        self.steps += 1
        return self.env.step(action)


def _tallied() -> gym.Env:
    return _Tally(gym.make("CartPole-v1"))


@pytest.mark.parametrize("kind", ["sync", pytest.param("async", marks=pytest.mark.integration)])
def test_uncapturable_sub_env_wrapper_is_refused_before_the_file_exists(
    tmp_path: Path, kind: str
) -> None:
    """Snapshots asked for: refused at construction, naming the sub-env and the fix."""
    fns = [_tallied] * 2
    vec = AsyncVectorEnv(capturable(fns)) if kind == "async" else SyncVectorEnv(fns)
    path = tmp_path / "v.h5"
    try:
        with pytest.raises(CaptureError, match=r"sub-env 0: wrapper .*_Tally has no state adapter"):
            VectorRecordingWrapper(vec, path, seed=0, snapshot_at=[50])
        assert not path.exists()
        # Without snapshots the steps are still recorded (enough to diff two runs).
        env = VectorRecordingWrapper(vec, path, seed=0)
        env.reset()
        env.step(env.action_space.sample())
        with pytest.raises(CaptureError, match="_Tally"):
            env.snapshot()
        env.close()
    finally:
        vec.close()
