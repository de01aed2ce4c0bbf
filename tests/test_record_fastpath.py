"""The recorder's batched fast paths store exactly what the slow path would, row for row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from replaykit._format.store import Recording
from replaykit._session.record import RecordingWrapper
from replaykit.errors import CaptureError


class InfoEnv(gym.Env[np.ndarray, np.ndarray]):
    """Box obs/action; the info of step ``k`` comes from ``infos(k)``."""

    def __init__(self, infos: Any) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float64)
        self.action_space = gym.spaces.Box(-1, 1, (2,), np.float32)
        self.infos = infos
        self.k = 0

    def reset(self, *, seed: int | None = None, options: Any = None) -> Any:
        super().reset(seed=seed)
        self.k = 0
        return np.zeros(3), {}

    def step(self, action: np.ndarray) -> Any:
        self.k += 1
        obs = np.full(3, self.k, dtype=np.float64)
        return obs, float(self.k), False, False, self.infos(self.k)


def _info(k: int) -> dict[str, Any]:
    """Stable keys and classes most steps; other orders, classes and keys now and then."""
    d: dict[str, Any] = {
        "x": 0.1 * k,
        "v": np.float64(-0.5 * k),
        "flag": k % 3 == 0,
        "n": np.int64(k),
        "count": k,
    }
    if k in (40, 41):
        d = dict(reversed(list(d.items())))  # same keys, another order
    if k == 50:
        d["v"] = np.float64(7.0)
        d["x"] = np.float64(0.1 * k)  # float column fed a NumPy float: exact, other class
    if k >= 60 and k % 10 == 0:
        d["late"] = np.float32(k)  # a key on some steps only
    if k == 70:
        del d["flag"]  # a key missing from one step
    return d


def _record(path: Path, steps: int) -> None:
    rec = RecordingWrapper(InfoEnv(_info), path, seed=0)
    rec.reset()
    a = np.zeros(2, np.float32)
    for _ in range(steps):
        rec.step(a)
    rec.close()


@pytest.mark.parametrize("steps", [100, 9000])  # within one block, and across blocks
def test_batched_info_rows_match_what_the_env_returned(tmp_path: Path, steps: int) -> None:
    p = tmp_path / "i.h5"
    _record(p, steps)
    with Recording(p) as rec:
        s = rec.stream("steps")
        assert s.rows == steps
        cols = {c: (s.read(c), s.present(c)) for c in s.columns if c.startswith("info/")}
    assert sorted(cols) == ["info/count", "info/flag", "info/late", "info/n", "info/v", "info/x"]
    for row in range(steps):
        want = _info(row + 1)
        for c, (values, present) in cols.items():
            key = c.removeprefix("info/")
            assert present is not None
            assert bool(present[row]) == (key in want), (row, key)
            if key in want:
                got = values[row]
                assert (got == want[key] and got.dtype == np.asarray(want[key]).dtype) or (
                    got.dtype == np.float64 and np.float64(want[key]) == got
                ), (row, key, got, want[key])
    assert cols["info/x"][0].dtype == np.float64 and cols["info/late"][0].dtype == np.float32
    assert cols["info/flag"][0].dtype == np.bool_ and cols["info/n"][0].dtype == np.int64


def test_batched_info_type_change_fails_at_that_step(tmp_path: Path) -> None:
    """A value whose class changes is caught at the step that returned it, not a block later."""

    def infos(k: int) -> dict[str, Any]:
        return {"x": 0.5, "y": np.float32(1.0) if k != 30 else np.float64(1.0)}

    rec = RecordingWrapper(InfoEnv(infos), tmp_path / "t.h5", seed=0)
    rec.reset()
    a = np.zeros(2, np.float32)
    for _ in range(29):
        rec.step(a)
    with pytest.raises(CaptureError, match=r"info 'y'.*float32.*float64"):
        rec.step(a)
    rec.close()


class _ScalarObsEnv(gym.Env[Any, int]):
    """Discrete observations as Python ints (like Taxi); ``obs_at(k)`` may return anything."""

    def __init__(self, obs_at: Any) -> None:
        self.observation_space = gym.spaces.Discrete(1000)
        self.action_space = gym.spaces.Discrete(2)
        self.obs_at = obs_at
        self.k = 0

    def reset(self, *, seed: int | None = None, options: Any = None) -> Any:
        super().reset(seed=seed)
        self.k = 0
        return 0, {}

    def step(self, action: int) -> Any:
        self.k += 1
        return self.obs_at(self.k), -1, False, False, {}


@pytest.mark.parametrize("env_id", ["CliffWalking-v1", "Taxi-v4", "FrozenLake-v1"])
def test_scalar_observations_are_batched_exactly(tmp_path: Path, env_id: str) -> None:
    """Discrete envs (Python int observations and rewards) take the batched path: every row
    holds what the env returned, across block boundaries."""
    path = tmp_path / "d.h5"
    rec = RecordingWrapper(gym.make(env_id), path, seed=0)
    obs, _ = rec.reset()
    seen_obs, seen_rew = [], []
    rec.action_space.seed(0)
    for _ in range(5000):
        obs, r, term, trunc, _ = rec.step(rec.action_space.sample())
        seen_obs.append(obs)
        seen_rew.append(r)
        if term or trunc:
            rec.reset()
    assert rec._fast is not None and rec._fast[7] is not None  # the scalar-obs batch ran
    rec.close()
    with Recording(path) as f:
        st = f.stream("steps")
        assert st.read("obs").tolist() == [int(o) for o in seen_obs]
        assert st.read("reward").tolist() == [float(r) for r in seen_rew]


def test_scalar_observation_beyond_int64_is_refused_at_its_step(tmp_path: Path) -> None:
    path = tmp_path / "big.h5"
    rec = RecordingWrapper(_ScalarObsEnv(lambda k: 2**63 if k == 6 else k), path, seed=0)
    rec.reset()
    for _ in range(5):
        rec.step(0)
    with pytest.raises(CaptureError, match="beyond int64"):
        rec.step(0)
    rec.close()
    with Recording(path) as f:
        assert f.stream("steps").read("obs").tolist() == [1, 2, 3, 4, 5]
