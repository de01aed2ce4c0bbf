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

    for case in cases:
        algo, env_fn, *_ = CASES[case]
        done = resume(Path(folder) / f"{case}.h5", None, algo_class(algo), env_fn)
        row = {"case": case, "snapshot": done.snapshot, "steps": done.verified_steps}
        row.update(updates=done.verified_updates, **final_state(done.model))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    # Through the module, so classes defined here are sb3_cases.X as in the recording.
    import sb3_cases

    sb3_cases.main(sys.argv[1], sys.argv[2:])
