"""replaykit export --minari: a Minari dataset equal to the recording, bit for bit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

minari = pytest.importorskip("minari")

import replaykit  # noqa: E402
from replaykit import UsageError  # noqa: E402
from replaykit.integrations.minari import export_minari  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def datasets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "datasets"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(folder))
    return folder


def _record(path: Path, env: gym.Env[Any, Any], steps: int) -> None:
    with replaykit.RecordingWrapper(env, path, seed=3) as rec:
        rec.reset(seed=3)
        for _ in range(steps):
            *_, term, trunc, _ = rec.step(rec.action_space.sample())
            if term or trunc:
                rec.reset()


class Counter(gym.Env[Any, Any]):
    """Unregistered: Dict observations, an int and an array info at reset and every step."""

    observation_space = gym.spaces.Dict(
        {"pos": gym.spaces.Box(-10.0, 10.0, (2,), np.float32), "k": gym.spaces.Discrete(9)}
    )
    action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def reset(self, *, seed: int | None = None, options: Any = None) -> Any:
        super().reset(seed=seed)
        self.pos, self.k = self.np_random.normal(size=2).astype(np.float32), 0
        return self._obs(), {"k": self.k, "pos": self.pos.astype(np.float64)}

    def _obs(self) -> dict[str, Any]:
        return {"pos": self.pos.copy(), "k": self.k}

    def step(self, action: Any) -> Any:
        self.pos = self.pos + action
        self.k += 1
        info = {"k": self.k, "pos": self.pos.astype(np.float64)}
        return self._obs(), float(self.pos.sum()), self.k >= 7, False, info


def _episodes_of(path: Path) -> list[dict[str, Any]]:
    """The recording's episodes, split at its resets, as the test reads them itself."""
    with replaykit.Recording(path) as rec:
        st, rs = rec.stream("steps"), rec.stream("resets")
        cols = {c: st.read(c, 0, st.rows) for c in st.columns}
        rcols = {c: rs.read(c, 0, rs.rows) for c in rs.columns}
    bounds = [*map(int, rcols["step"]), len(cols["reward"])]
    out = []
    for e in range(len(bounds) - 1):
        lo, hi = bounds[e], bounds[e + 1]
        if hi > lo:
            out.append({"e": e, "lo": lo, "hi": hi, "cols": cols, "rcols": rcols})
    return out


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_a_cartpole_recording_round_trips_bit_exactly(tmp_path: Path) -> None:
    path = tmp_path / "cartpole.h5"
    _record(path, gym.make("CartPole-v1"), 80)
    export_minari(path, "cartpole/replaykit-v0")
    ds = minari.load_dataset("cartpole/replaykit-v0")
    recorded = _episodes_of(path)
    assert ds.total_episodes == len(recorded) >= 3 and ds.total_steps == 80
    for ep, r in zip(ds.iterate_episodes(), recorded, strict=True):
        lo, hi, e, c, rc = r["lo"], r["hi"], r["e"], r["cols"], r["rcols"]
        assert _same(ep.observations, np.concatenate([rc["obs"][e : e + 1], c["obs"][lo:hi]]))
        assert _same(ep.actions, c["action"][lo:hi])
        assert _same(ep.rewards, c["reward"][lo:hi])
        assert _same(ep.terminations, c["terminated"][lo:hi])
        assert _same(ep.truncations, c["truncated"][lo:hi])
    # The env spec written is gymnasium's registered one.
    assert ds.spec.env_spec.entry_point == gym.spec("CartPole-v1").entry_point


def test_an_unregistered_env_exports_with_no_entry_point_and_equal_infos(tmp_path: Path) -> None:
    path = tmp_path / "counter.h5"
    _record(path, Counter(), 20)
    export_minari(path, "counter-v0")
    ds = minari.load_dataset("counter-v0")
    assert ds.spec.env_spec is None  # nothing the loader could execute
    recorded = _episodes_of(path)
    assert ds.total_episodes == len(recorded) == 3
    for ep, r in zip(ds.iterate_episodes(), recorded, strict=True):
        lo, hi, e, c, rc = r["lo"], r["hi"], r["e"], r["cols"], r["rcols"]
        for key in ("pos", "k"):
            want = np.concatenate([rc[f"obs/{key}"][e : e + 1], c[f"obs/{key}"][lo:hi]])
            assert _same(ep.observations[key], want)
            want = np.concatenate([rc[f"info/{key}"][e : e + 1], c[f"info/{key}"][lo:hi]])
            assert _same(ep.infos[key], want)
        assert _same(ep.actions, c["action"][lo:hi])
        assert _same(ep.rewards, c["reward"][lo:hi])


def test_the_cli_refuses_an_existing_dataset_unless_forced(tmp_path: Path, datasets: Path) -> None:
    path = tmp_path / "cartpole.h5"
    _record(path, gym.make("CartPole-v1"), 30)
    env = {**os.environ, "MINARI_DATASETS_PATH": str(datasets)}
    cmd = [sys.executable, "-m", "replaykit", "export", str(path), "--minari", "cp-v0"]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr
    assert "wrote Minari dataset cp-v0" in first.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert again.returncode == 2
    assert "exists" in again.stderr and "--force" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    forced = subprocess.run([*cmd, "--force"], capture_output=True, text=True, env=env)
    assert forced.returncode == 0, forced.stderr
    assert minari.load_dataset("cp-v0").total_steps == 30


def test_a_vector_recording_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "vec.h5"
    fns = [lambda: gym.make("CartPole-v1")] * 2
    with replaykit.VectorRecordingWrapper(gym.vector.SyncVectorEnv(fns), path, seed=0) as vec:
        vec.reset(seed=0)
        vec.step(vec.action_space.sample())
    with pytest.raises(UsageError, match="not a single-env recording"):
        export_minari(path, "vec-v0")
