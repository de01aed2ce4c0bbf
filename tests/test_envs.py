from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import replaykit_envs
from gymnasium.utils.env_checker import check_env

CONFIGS = [
    ("replaykit/SlipperyGrid-v0", {}),
    ("replaykit/SlipperyGrid-v0", {"obs_type": "array", "size": 5}),
    ("replaykit/Drift-v0", {}),
    ("replaykit/Drift-v0", {"action_dim": 1, "dtype": "float32"}),
    ("replaykit/NestedObs-v0", {}),
    ("replaykit/NestedObs-v0", {"render_mode": "rgb_array"}),
]


def leaves(obs):
    if isinstance(obs, dict):
        for key in sorted(obs):
            yield from leaves(obs[key])
    elif isinstance(obs, tuple):
        for item in obs:
            yield from leaves(item)
    else:
        yield np.asarray(obs)


def rollout(env_id, kwargs, seed, n=120, action_seed=0):
    env = gym.make(env_id, **kwargs)
    env.action_space.seed(action_seed)
    obs, _ = env.reset(seed=seed)
    out = [list(leaves(obs))]
    for _ in range(n):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        out.append((list(leaves(obs)), reward, terminated, truncated, sorted(info)))
        if terminated or truncated:
            obs, _ = env.reset()
            out.append(list(leaves(obs)))
    return out


def same(a, b):
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def test_ids_registered():
    assert set(replaykit_envs.ENV_IDS) == {
        "replaykit/SlipperyGrid-v0",
        "replaykit/Drift-v0",
        "replaykit/NestedObs-v0",
    }
    for env_id, steps in zip(replaykit_envs.ENV_IDS, (200, 500, 300), strict=True):
        assert gym.spec(env_id).max_episode_steps == steps


def test_register_envs_idempotent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        replaykit_envs.register_envs()
        replaykit_envs.register_envs()
    assert gym.make("replaykit/Drift-v0") is not None


@pytest.mark.parametrize(("env_id", "kwargs"), CONFIGS)
def test_check_env(env_id, kwargs):
    env = gym.make(env_id, **kwargs)
    check_env(env.unwrapped)


@pytest.mark.parametrize(("env_id", "kwargs"), CONFIGS)
def test_deterministic_given_seed_and_actions(env_id, kwargs):
    a = rollout(env_id, kwargs, seed=11)
    b = rollout(env_id, kwargs, seed=11)
    assert same(a, b)


@pytest.mark.parametrize(("env_id", "kwargs"), CONFIGS)
def test_different_seeds_differ(env_id, kwargs):
    assert not same(rollout(env_id, kwargs, seed=1), rollout(env_id, kwargs, seed=2))


@pytest.mark.parametrize(("env_id", "kwargs"), CONFIGS)
def test_rng_drawn_every_step(env_id, kwargs):
    # The env must consume its RNG on each step, so restoring without it would diverge.
    env = gym.make(env_id, **kwargs)
    env.reset(seed=0)
    before = env.unwrapped.np_random.bit_generator.state
    env.step(env.action_space.sample())
    assert env.unwrapped.np_random.bit_generator.state != before


def test_slippery_grid_reaches_goal():
    env = gym.make("replaykit/SlipperyGrid-v0", size=3, slip_prob=0.0)
    obs, _ = env.reset(seed=0)
    assert obs == 0
    rewards = [env.step(a)[1:3] for a in (1, 1, 2)]
    assert rewards[-1] == (0.0, False)
    obs, reward, terminated, _, _ = env.step(2)
    assert (obs, reward, terminated) == (8, 1.0, True)


def test_drift_dtypes():
    env64 = gym.make("replaykit/Drift-v0")
    env32 = gym.make("replaykit/Drift-v0", action_dim=1, dtype="float32")
    o64, _ = env64.reset(seed=0)
    o32, _ = env32.reset(seed=0)
    assert o64.dtype == o32.dtype == np.float32
    assert env64.unwrapped.x.dtype == np.float64
    assert env32.unwrapped.x.dtype == np.float32
    assert env32.action_space.shape == (1,)
    env32.step(np.array([0.5], dtype=np.float32))
    assert env32.unwrapped.x.dtype == np.float32
    assert isinstance(env32.unwrapped.gain, np.float32)


def test_nested_obs_ragged_infos():
    env = gym.make("replaykit/NestedObs-v0")
    env.reset(seed=3)
    env.action_space.seed(3)
    keysets = set()
    for _ in range(60):
        *_, terminated, truncated, info = env.step(env.action_space.sample())
        assert isinstance(info["collisions"], int)
        keysets.add(tuple(sorted(info)))
        if "contact" in info:
            assert info["contact"].dtype == np.float64 and info["contact"].shape == (3,)
        if terminated or truncated:
            env.reset()
    assert keysets == {("collisions",), ("collisions", "contact")}


def test_nested_obs_structure():
    env = gym.make("replaykit/NestedObs-v0")
    obs, _ = env.reset(seed=0)
    assert obs["image"].dtype == np.uint8 and obs["image"].shape == (16, 16, 3)
    assert obs["inner"]["vec"].dtype == np.float32
    assert isinstance(obs["pair"], tuple)
    assert obs in env.observation_space


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (replaykit_envs.SlipperyGridEnv, {"size": 1}),
        (replaykit_envs.SlipperyGridEnv, {"obs_type": "image"}),
        (replaykit_envs.SlipperyGridEnv, {"slip_prob": 1.5}),
        (replaykit_envs.DriftEnv, {"action_dim": 3}),
        (replaykit_envs.DriftEnv, {"dtype": "float16"}),
        (replaykit_envs.NestedObsEnv, {"render_mode": "ansi"}),
    ],
)
def test_bad_arguments(cls, kwargs):
    with pytest.raises(ValueError):
        cls(**kwargs)
