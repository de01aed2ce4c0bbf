"""Small Stable-Baselines3 runs recorded by tests/test_sb3.py and resumed in a child process.

Run as a script (``python sb3_cases.py DIR CASE...``) it resumes ``DIR/CASE.h5`` for each case
and prints one JSON line per case: verified counts and digests of the final state.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

SMALL = {"net_arch": [16, 16]}


def _cartpole() -> Any:
    import gymnasium as gym

    return gym.make("CartPole-v1")


class ImageEnv:
    """A tiny channel-last image env (SB3 wraps it in VecTransposeImage by itself)."""

    @staticmethod
    def make() -> Any:
        import gymnasium as gym

        import replaykit

        class Image(gym.Env[Any, Any]):
            observation_space = gym.spaces.Box(0, 255, (8, 8, 3), np.uint8)
            action_space = gym.spaces.Discrete(2)

            def reset(self, *, seed: int | None = None, options: Any = None) -> Any:
                super().reset(seed=seed)
                self.pos, self.t = int(self.np_random.integers(0, 8)), 0
                return self._obs(), {}

            def _obs(self) -> np.ndarray:
                img = np.zeros((8, 8, 3), np.uint8)
                img[self.pos, self.t % 8] = 255
                return img

            def step(self, action: Any) -> Any:
                self.pos = (self.pos + (1 if action else -1)) % 8
                self.t += 1
                return self._obs(), float(self.pos == 0), False, self.t >= 12, {}

        class ImageAdapter(replaykit.AttrAdapter):
            name = "tests.sb3_cases.Image"
            attrs = ("pos", "t")

        replaykit.register_env_adapter(Image, ImageAdapter())
        return gym.wrappers.TimeLimit(Image(), 12)


def _vec(env_id: str, n: int, wrap: str | None = None) -> Any:
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import SubprocVecEnv, VecFrameStack, VecNormalize

    from replaykit.integrations.sb3 import capturable

    if wrap == "image":
        from stable_baselines3.common.vec_env import DummyVecEnv

        return VecFrameStack(DummyVecEnv([ImageEnv.make] * n), n_stack=2)
    if wrap == "subproc":
        return SubprocVecEnv(capturable([_cartpole] * n))
    venv = make_vec_env(env_id, n_envs=n, seed=0)
    if wrap == "normalize":
        return VecNormalize(venv)
    if wrap == "framestack":
        return VecFrameStack(venv, n_stack=3)
    return venv


def _pong() -> Any:
    import ale_py
    import gymnasium as gym
    from gymnasium.wrappers import AtariPreprocessing
    from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack, VecTransposeImage

    gym.register_envs(ale_py)

    def make() -> Any:
        # frameskip=1: AtariPreprocessing skips (and max-pools) frames itself; sticky actions
        # stay on (v5's default), so the ALE's own generator is part of the state.
        env = gym.make("ALE/Pong-v5", frameskip=1)
        return AtariPreprocessing(env, frame_skip=4, screen_size=84, grayscale_newaxis=True)

    return VecTransposeImage(VecFrameStack(DummyVecEnv([make]), n_stack=4))


FLIGHT_EVERY = 20
# name: (algorithm, env builder, constructor kwargs, total timesteps, snapshot step)
CASES: dict[str, tuple[str, Any, dict[str, Any], int, int]] = {
    "ppo": (
        "PPO",
        lambda: "CartPole-v1",
        {"n_steps": 32, "batch_size": 16, "n_epochs": 2},
        160,
        40,
    ),
    "ppo4": ("PPO", lambda: _vec("CartPole-v1", 4), {"n_steps": 8, "batch_size": 16}, 160, 44),
    "a2c": ("A2C", lambda: "CartPole-v1", {"n_steps": 8}, 64, 12),
    "a2c4": ("A2C", lambda: _vec("CartPole-v1", 4), {"n_steps": 4}, 96, 40),
    "dqn": (
        "DQN",
        lambda: "CartPole-v1",
        {"learning_starts": 16, "buffer_size": 500, "batch_size": 16, "target_update_interval": 20},
        100,
        50,
    ),
    "sac": (
        "SAC",
        lambda: "Pendulum-v1",
        {"learning_starts": 16, "buffer_size": 500, "batch_size": 16, "train_freq": 4},
        60,
        30,
    ),
    "td3": (
        "TD3",
        lambda: "Pendulum-v1",
        {"learning_starts": 16, "buffer_size": 500, "batch_size": 16, "train_freq": 4},
        60,
        30,
    ),
    "vecnormalize": (
        "PPO",
        lambda: _vec("Pendulum-v1", 2, "normalize"),
        {"n_steps": 16, "batch_size": 16},
        128,
        42,
    ),
    "framestack": (
        "PPO",
        lambda: _vec("CartPole-v1", 2, "framestack"),
        {"n_steps": 16, "batch_size": 16},
        128,
        42,
    ),
    # Snapshots at a rollout's last step: taken at the rollout's end, before train().
    "ppo_end": ("PPO", lambda: "CartPole-v1", {"n_steps": 32, "batch_size": 16}, 160, 64),
    "dqn_end": (
        "DQN",
        lambda: "CartPole-v1",
        {"learning_starts": 16, "buffer_size": 500, "batch_size": 16, "target_update_interval": 20},
        100,
        48,
    ),
    "image": (
        "PPO",
        lambda: _vec("", 2, "image"),
        {"n_steps": 16, "batch_size": 16},
        128,
        42,
    ),
    "subproc": (
        "PPO",
        lambda: _vec("CartPole-v1", 2, "subproc"),
        {"n_steps": 16, "batch_size": 16},
        128,
        42,
    ),
    "recurrent": ("RecurrentPPO", lambda: "CartPole-v1", {"n_steps": 8, "batch_size": 8}, 40, 12),
    # Flight mode: snapshot_every=FLIGHT_EVERY, keep_snapshots=2; resumed from the newest.
    # learn(330) runs 11 rollouts of 32: the newest snapshot (340) is in the last one.
    "flight": ("PPO", lambda: "CartPole-v1", {"n_steps": 32, "batch_size": 16}, 330, 0),
    # gymnasium's AtariPreprocessing chain (84x84 grey, frame skip 4, stack of 4), CnnPolicy.
    "atari": ("PPO", _pong, {"n_steps": 8, "batch_size": 8, "n_epochs": 1}, 32, 12),
}


def algo_class(name: str) -> Any:
    import stable_baselines3

    if name == "RecurrentPPO":
        import sb3_contrib

        return sb3_contrib.RecurrentPPO
    return getattr(stable_baselines3, name)


def build(case: str) -> Any:
    algo, env_fn, kwargs, _, _ = CASES[case]
    policy, small = "MlpPolicy", dict(SMALL)
    if algo == "RecurrentPPO":
        policy, small["lstm_hidden_size"] = "MlpLstmPolicy", 8
    if case == "atari":
        policy, small["features_extractor_kwargs"] = "CnnPolicy", {"features_dim": 32}
    return algo_class(algo)(policy, env_fn(), seed=0, device="cpu", policy_kwargs=small, **kwargs)


def final_state(model: Any) -> dict[str, Any]:
    """Digests of what training ends with: parameters and VecNormalize statistics."""
    from stable_baselines3.common.vec_env import VecNormalize

    from replaykit import params_digest

    out: dict[str, Any] = {
        "timesteps": int(model.num_timesteps),
        "params": str(params_digest(model.policy)),
    }
    venv = model.get_env()
    if isinstance(venv, VecNormalize):
        rms = venv.obs_rms
        out["obs_rms"] = [rms.mean.tobytes().hex(), rms.var.tobytes().hex(), float(rms.count)]
        out["ret_rms"] = [venv.ret_rms.mean.tobytes().hex(), float(venv.ret_rms.count)]
    return out


def main(folder: str, cases: list[str]) -> None:
    from replaykit.integrations.sb3 import resume

    for arg in cases:  # CASE, or CASE:SNAPSHOT to resume another than the first
        case, _, snap = arg.partition(":")
        algo, env_fn, *_ = CASES[case]
        done = resume(Path(folder) / f"{case}.h5", snap or None, algo_class(algo), env_fn)
        row = {"case": case, "snapshot": done.snapshot, "steps": done.verified_steps}
        row.update(updates=done.verified_updates, **final_state(done.model))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    # Through the module, so classes defined here are sb3_cases.X as in the recording.
    import sb3_cases

    sb3_cases.main(sys.argv[1], sys.argv[2:])
