"""Two training loops nobody on the project wrote, as regression cases for their errors.

* An SB3-style loop whose env is wrapped in a stateful ``Monitor`` that has no state
  adapter: recording refuses to start (not at the first snapshot, steps later) and says
  how to register one; ``replaykit.integrations.sb3`` registers one, and SB3's PPO then
  records with snapshots.
* A CleanRL-style DQN with two nets of one class (``q``, ``target``) and a NumPy replay
  buffer tracked with :class:`replaykit.ArrayState`: a restore into differently built
  objects names the tracked object and says "recorded X, got Y".

Also: a restore in a process where the recording's adapter is not registered says to
register it, with the call.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import pytest
import torch

import replaykit
from replaykit import (
    ArrayState,
    CaptureError,
    RecordingWrapper,
    StateMismatchError,
)

# --------------------------------------------------------------------------------------------
# early capture check


class EpisodeMonitor(gym.Wrapper[Any, Any, Any, Any]):
    """The shape of SB3's Monitor: per-episode statistics kept between steps."""

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        super().__init__(env)
        self.rewards: list[float] = []
        self.episode_returns: list[float] = []

    def reset(self, **kwargs: Any) -> Any:
        self.rewards = []
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> Any:
        obs, r, term, trunc, info = self.env.step(action)
        self.rewards.append(float(r))
        if term or trunc:
            self.episode_returns.append(sum(self.rewards))
            info = {**info, "episode": {"r": sum(self.rewards), "l": len(self.rewards)}}
        return obs, r, term, trunc, info


FIX = (
    "replaykit.register_wrapper_adapter(EpisodeMonitor, adapter)",
    "replaykit.register_stateless_wrapper(EpisodeMonitor)",
)


@pytest.mark.parametrize(
    "options",
    [
        {"snapshot_at": [90_000]},
        {"snapshot_every": 1000},
        {"track": {"net": torch.nn.Linear(4, 2)}},
    ],
    ids=["snapshot_at", "snapshot_every", "track"],
)
def test_a_wrapper_without_adapter_fails_when_recording_starts(
    tmp_path: Path, options: dict[str, Any]
) -> None:
    path = tmp_path / "run.h5"
    with pytest.raises(CaptureError) as info:
        RecordingWrapper(EpisodeMonitor(gym.make("CartPole-v1")), path, seed=0, **options)
    msg = str(info.value)
    assert "\n" not in msg
    assert f"{__name__}.EpisodeMonitor has no state adapter" in msg
    assert all(fix in msg for fix in FIX), msg
    assert not path.exists()  # refused before the file was created


def test_without_snapshots_it_records_and_refuses_a_later_track_or_snapshot(
    tmp_path: Path,
) -> None:
    path = tmp_path / "run.h5"
    with RecordingWrapper(EpisodeMonitor(gym.make("CartPole-v1")), path, seed=0) as env:
        env.reset()
        for _ in range(30):
            *_, term, trunc, _ = env.step(env.action_space.sample())
            if term or trunc:
                env.reset()
        with pytest.raises(CaptureError, match=r"cannot track 'net'.*EpisodeMonitor"):
            env.track("net", torch.nn.Linear(4, 2))
        with pytest.raises(CaptureError, match="EpisodeMonitor has no state adapter"):
            env.snapshot()
    assert replaykit.Recording(path).meta["steps"] == 30


def test_an_env_without_adapter_and_an_unknown_wrapper_records_without_snapshots(
    tmp_path: Path,
) -> None:
    from noadapter_env import NoAdapterEnv  # replay-from-reset: no env adapter either

    with RecordingWrapper(EpisodeMonitor(NoAdapterEnv()), tmp_path / "r.h5", seed=0) as env:
        env.reset()
        env.step(env.action_space.sample())
        env.reset()


@pytest.mark.integration
def test_sb3_monitor_is_named_at_once_without_the_integration(tmp_path: Path) -> None:
    pytest.importorskip("stable_baselines3")
    # A fresh process: replaykit.integrations.sb3 (which registers Monitor) is not imported.
    code = (
        "import sys, gymnasium as gym, replaykit\n"
        "from stable_baselines3.common.monitor import Monitor\n"
        "try:\n"
        "    env = Monitor(gym.make('CartPole-v1'))\n"
        f"    replaykit.RecordingWrapper(env, {str(tmp_path / 'p.h5')!r}, snapshot_at=[9])\n"
        "except replaykit.CaptureError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    msg = out.stdout.strip()
    assert "stable_baselines3.common.monitor.Monitor has no state adapter" in msg
    assert "replaykit.register_wrapper_adapter(Monitor, adapter)" in msg
    assert not (tmp_path / "p.h5").exists()


def test_sb3_monitor_is_captured_once_the_integration_is_imported(tmp_path: Path) -> None:
    pytest.importorskip("stable_baselines3")
    from stable_baselines3 import PPO
    from stable_baselines3.common.monitor import Monitor

    import replaykit.integrations.sb3  # noqa: F401  (registers the Monitor adapter)

    path = tmp_path / "ppo.h5"
    env = RecordingWrapper(Monitor(gym.make("CartPole-v1")), path, seed=0, snapshot_at=[100])
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=1, seed=0, device="cpu")
    env.track("policy", model.policy)
    env.track("optimizer", model.policy.optimizer)
    model.learn(total_timesteps=128)
    env.close()
    assert env.snapshot_names == ["step-000100"]


# --------------------------------------------------------------------------------------------
# restore where the adapter is not registered


def _env_class() -> type[gym.Env[Any, Any]]:
    class CounterEnv(gym.Env[Any, Any]):
        observation_space = gym.spaces.Box(-1e9, 1e9, (1,), np.float64)
        action_space = gym.spaces.Discrete(2)

        def __init__(self) -> None:
            self.n = 0.0

        def reset(self, *, seed: int | None = None, options: Any = None) -> Any:
            super().reset(seed=seed)
            self.n = 0.0
            return np.array([self.n]), {}

        def step(self, action: Any) -> Any:
            self.n += float(action)
            return np.array([self.n]), 0.0, False, False, {}

    return CounterEnv


class CounterAdapter:
    name: ClassVar[str] = "tests.CounterEnv"

    def capture(self, env: Any) -> Any:
        return {"n": env.n}

    def restore(self, env: Any, state: Any) -> None:
        env.n = state["n"]


def test_restore_without_the_env_adapter_says_register_it(tmp_path: Path) -> None:
    recorded_cls = _env_class()  # same module and qualname as the one below, another class
    replaykit.register_env_adapter(recorded_cls, CounterAdapter())
    path = tmp_path / "counter.h5"
    with RecordingWrapper(recorded_cls(), path, seed=0, snapshot_at=[2]) as env:
        env.reset()
        for _ in range(4):
            env.step(1)
    with pytest.raises(StateMismatchError) as info:
        replaykit.restore(path, env=_env_class()())
    msg = str(info.value)
    assert "\n" not in msg
    assert "adapter 'tests.CounterEnv'" in msg
    assert "register it in this process before restoring" in msg
    assert "replaykit.register_env_adapter(CounterEnv, adapter)" in msg
    assert "build the object exactly" not in msg


def _wrapper_class() -> type[gym.Wrapper[Any, Any, Any, Any]]:
    class Scale(gym.Wrapper[Any, Any, Any, Any]):
        def __init__(self, env: gym.Env[Any, Any]) -> None:
            super().__init__(env)
            self.k = 1.0

    return Scale


class ScaleAdapter(replaykit.AttrAdapter):
    name = "tests.Scale"
    attrs = ("k",)


def test_restore_without_the_wrapper_adapter_says_register_it(tmp_path: Path) -> None:
    recorded_cls = _wrapper_class()
    replaykit.register_wrapper_adapter(recorded_cls, ScaleAdapter())
    path = tmp_path / "scale.h5"
    with RecordingWrapper(
        recorded_cls(gym.make("CartPole-v1")), path, seed=0, snapshot_at=[1]
    ) as env:
        env.reset()
        env.step(0)
        env.step(0)
    with pytest.raises(StateMismatchError) as info:
        replaykit.restore(path, env=_wrapper_class()(gym.make("CartPole-v1")))
    msg = str(info.value)
    assert "adapter 'tests.Scale'" in msg
    assert "replaykit.register_wrapper_adapter(Scale, adapter)" in msg
    assert "build the object exactly" not in msg


# --------------------------------------------------------------------------------------------
# a CleanRL-style DQN: two nets of one class and a NumPy replay buffer


class QNet(torch.nn.Module):
    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]


class ReplayBuffer:
    def __init__(self, capacity: int) -> None:
        self.obs = np.zeros((capacity, 4), np.float32)
        self.actions = np.zeros(capacity, np.int64)
        self.rewards = np.zeros(capacity, np.float32)
        self.size = 0

    def add(self, obs: np.ndarray, action: int, reward: float) -> None:
        i = self.size % len(self.obs)
        self.obs[i], self.actions[i], self.rewards[i] = obs, action, reward
        self.size = min(self.size + 1, len(self.obs))


def _tracked(q: QNet, target: QNet, opt: torch.optim.Optimizer, rb: ReplayBuffer) -> dict[str, Any]:
    return {
        "q": q,
        "target": target,
        "optimizer": opt,
        "buffer": ArrayState(rb, ["obs", "actions", "rewards"], filled="size"),
    }


@pytest.fixture(scope="module")
def dqn_recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    q, target, rb = QNet(), QNet(), ReplayBuffer(10_000)
    target.load_state_dict(q.state_dict())
    opt = torch.optim.Adam(q.parameters(), lr=1e-3)
    path = tmp_path_factory.mktemp("dqn") / "dqn.h5"
    with RecordingWrapper(
        gym.make("CartPole-v1"), path, seed=0, snapshot_at=[40], track=_tracked(q, target, opt, rb)
    ) as env:
        obs, _ = env.reset()
        while env.step_count < 60:
            with torch.no_grad():
                action = int(q(torch.as_tensor(obs)).argmax())
            nxt, r, term, trunc, _ = env.step(action)
            rb.add(obs, action, float(r))
            obs = nxt
            if rb.size >= 8:
                idx = np.arange(rb.size - 8, rb.size)
                x = torch.as_tensor(rb.obs[idx])
                loss = (q(x).max(1).values - torch.as_tensor(rb.rewards[idx])).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                env.log_update(loss=loss.detach())
            if term or trunc:
                obs, _ = env.reset()
    return path


def test_dqn_restores_bit_exactly(dqn_recording: Path) -> None:
    q, target, rb = QNet(), QNet(), ReplayBuffer(10_000)
    opt = torch.optim.Adam(q.parameters(), lr=1e-3)
    with replaykit.restore(dqn_recording, track=_tracked(q, target, opt, rb)) as rep:
        assert rb.size == 39 and rep.step_count == 40  # snapshot inside step 40, before add


def test_dqn_target_of_another_shape_is_named(dqn_recording: Path) -> None:
    q, target, rb = QNet(), QNet(hidden=32), ReplayBuffer(10_000)
    opt = torch.optim.Adam(q.parameters(), lr=1e-3)
    with pytest.raises(StateMismatchError) as info:
        replaykit.restore(dqn_recording, track=_tracked(q, target, opt, rb))
    msg = str(info.value)
    assert "\n" not in msg
    assert "target.net.0.weight: recorded shape (64, 4), got (32, 4)" in msg
    assert "q.net" not in msg  # the net that fits is not blamed


def test_dqn_q_of_another_dtype_and_its_optimizer_are_named(dqn_recording: Path) -> None:
    q, target, rb = QNet().double(), QNet(), ReplayBuffer(10_000)
    opt = torch.optim.Adam(q.parameters(), lr=1e-3)
    with pytest.raises(StateMismatchError) as info:
        replaykit.restore(dqn_recording, track=_tracked(q, target, opt, rb))
    msg = str(info.value)
    assert "q.net.0.weight: recorded dtype torch.float32, got torch.float64" in msg


def test_dqn_optimizer_state_mismatch_is_named(dqn_recording: Path) -> None:
    q, target, rb = QNet(), QNet(), ReplayBuffer(10_000)
    opt = torch.optim.Adam(QNet(hidden=32).parameters(), lr=1e-3)
    with pytest.raises(StateMismatchError) as info:
        replaykit.restore(dqn_recording, track=_tracked(q, target, opt, rb))
    msg = str(info.value)
    assert "optimizer" in msg and "recorded shape (64, 4), got (32, 4)" in msg


def test_dqn_buffer_of_another_capacity_is_caught(dqn_recording: Path) -> None:
    q, target, rb = QNet(), QNet(), ReplayBuffer(5_000)
    opt = torch.optim.Adam(q.parameters(), lr=1e-3)
    with warnings.catch_warnings(), pytest.raises(StateMismatchError) as info:
        replaykit.restore(dqn_recording, track=_tracked(q, target, opt, rb))
    msg = str(info.value)
    assert "buffer.obs: recorded ndarray float32 (10000, 4), got ndarray float32 (5000, 4)" in msg
    assert rb.size == 0


def _state_class() -> type:
    class Tally:
        def __init__(self) -> None:
            self.n = 0

    return Tally


def test_restore_without_the_state_type_says_register_it(tmp_path: Path) -> None:
    recorded_cls = _state_class()

    def restore_tally(obj: Any, tree: Any) -> None:
        obj.n = tree["n"]

    replaykit.register_state_type(recorded_cls, lambda t: {"n": t.n}, restore_tally)
    path = tmp_path / "tally.h5"
    with replaykit.TrainingRecorder(path, track={"tally": recorded_cls()}) as rec:
        rec.snapshot("s")
    with pytest.raises(CaptureError) as info:
        replaykit.restore_training(path, "s", track={"tally": _state_class()()})
    msg = str(info.value)
    assert "\n" not in msg
    assert "registered for it in this process" in msg
    assert "replaykit.register_state_type(Tally, capture, restore)" in msg
