"""Bit-exact snapshot/restore of Gymnasium's MuJoCo v5 envs through the env adapter."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

mujoco = pytest.importorskip("mujoco")
gym = pytest.importorskip("gymnasium")
pytest.importorskip("gymnasium.envs.mujoco.mujoco_env")

from replaykit._state.envs import mujoco as rk_mujoco  # noqa: E402
from replaykit._state.envs import registry as _registry  # noqa: E402
from replaykit.errors import StateMismatchError  # noqa: E402

pytestmark = pytest.mark.mujoco

rk_mujoco.register()

ENV_IDS = [
    "Ant-v5",
    "HalfCheetah-v5",
    "Hopper-v5",
    "Humanoid-v5",
    "HumanoidStandup-v5",
    "InvertedDoublePendulum-v5",
    "InvertedPendulum-v5",
    "Pusher-v5",
    "Reacher-v5",
    "Swimmer-v5",
    "Walker2d-v5",
]
WARMUP = 25
HORIZON = 120

Step = tuple[bytes, str, tuple[int, ...], bytes, bool, bool]


def _actions(env: Any, n: int, seed: int = 0) -> list[np.ndarray]:
    env.action_space.seed(seed)
    return [env.action_space.sample() for _ in range(n)]


def _rollout(env: Any, actions: list[np.ndarray]) -> list[Step]:
    out: list[Step] = []
    for action in actions:
        obs, reward, terminated, truncated, _ = env.step(action)
        # Compare rewards by their bytes too: -0.0 == 0.0 and NaN != NaN would hide divergence.
        out.append(
            (
                obs.tobytes(),
                obs.dtype.str,
                obs.shape,
                np.float64(reward).tobytes(),
                bool(terminated),
                bool(truncated),
            )
        )
    return out


def _first_divergence(expected: list[Step], got: list[Step]) -> int | None:
    assert len(expected) == len(got)
    for i, (a, b) in enumerate(zip(expected, got, strict=True)):
        if a != b:
            return i
    return None


def _set_elapsed_steps(env: Any, n: int) -> None:
    # The TimeLimit wrapper's counter is wrapper state, not env state; set it by hand
    # so truncation happens at the same step in both runs.
    layer = env
    while isinstance(layer, gym.Wrapper):
        if isinstance(layer, gym.wrappers.TimeLimit):
            layer._elapsed_steps = n
        layer = layer.env


def _snapshot(
    env_id: str, warmup: int = WARMUP
) -> tuple[Any, dict[str, Any], list[np.ndarray], list[Step]]:
    """Run ``warmup`` steps, capture, then HORIZON more steps as the reference."""
    env = gym.make(env_id)
    env.reset(seed=3)
    actions = _actions(env, warmup + HORIZON)
    for action in actions[:warmup]:
        env.step(action)
    adapter = _registry.find_env_adapter(env.unwrapped)
    assert adapter is not None
    state = adapter.capture(env.unwrapped)
    reference = _rollout(env, actions[warmup:])
    return env, state, actions[warmup:], reference


def _fresh(env_id: str, warmup: int = WARMUP) -> Any:
    env = gym.make(env_id)
    env.reset(seed=12345)
    _set_elapsed_steps(env, warmup)
    return env


def test_adapter_is_found_for_every_mujoco_env() -> None:
    env = gym.make("Hopper-v5")
    adapter = _registry.find_env_adapter(env.unwrapped)
    assert isinstance(adapter, rk_mujoco.MujocoEnvAdapter)
    assert adapter.name == "mujoco.MujocoEnv"
    assert isinstance(adapter, _registry.EnvAdapter)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_full_state_restore_is_bit_exact(env_id: str) -> None:
    env, state, actions, reference = _snapshot(env_id)
    fresh = _fresh(env_id)
    adapter = _registry.find_env_adapter(fresh.unwrapped)
    assert adapter is not None
    adapter.restore(fresh.unwrapped, copy.deepcopy(state))
    got = _rollout(fresh, actions)
    assert _first_divergence(reference, got) is None
    # np_random was restored too: the next reset draws the same initial noise.
    obs_a, _ = env.reset()
    obs_b, _ = fresh.reset()
    assert obs_a.tobytes() == obs_b.tobytes()


# Capture points around Hopper's first landing. Whether the solver's starting
# point changes its answer depends on the contact configuration at that moment,
# so several are tried; the full-state restore must be exact at all of them.
LANDING_WARMUPS = (6, 8, 10, 12, 14)


def test_qpos_qvel_restore_diverges_but_full_state_does_not() -> None:
    # The constraint solver warm-starts from qacc_warmstart, which
    # set_state(qpos, qvel) leaves at the fresh env's value.
    env_id = "Hopper-v5"
    diverged: dict[int, int | None] = {}
    for warmup in LANDING_WARMUPS:
        _env, state, actions, reference = _snapshot(env_id, warmup)
        full = _fresh(env_id, warmup)
        rk_mujoco.MujocoEnvAdapter().restore(full.unwrapped, copy.deepcopy(state))
        assert _first_divergence(reference, _rollout(full, actions)) is None

        qpos_qvel = _fresh(env_id, warmup)
        nq, nv = qpos_qvel.unwrapped.model.nq, qpos_qvel.unwrapped.model.nv
        # Layout of mjSTATE_INTEGRATION: time, then qpos, then qvel.
        qpos = state["integration"][1 : 1 + nq].copy()
        qvel = state["integration"][1 + nq : 1 + nq + nv].copy()
        qpos_qvel.unwrapped.set_state(qpos, qvel)
        qpos_qvel.unwrapped.np_random.bit_generator.state = copy.deepcopy(state["np_random"])
        diverged[warmup] = _first_divergence(reference, _rollout(qpos_qvel, actions))
    assert any(step is not None and step < 100 for step in diverged.values()), diverged


def test_warm_start_is_part_of_the_state() -> None:
    env_id = "Hopper-v5"
    diverged: dict[int, int | None] = {}
    for warmup in LANDING_WARMUPS:
        _, state, actions, reference = _snapshot(env_id, warmup)
        fresh = _fresh(env_id, warmup)
        rk_mujoco.MujocoEnvAdapter().restore(fresh.unwrapped, copy.deepcopy(state))
        fresh.unwrapped.data.qacc_warmstart[:] = 0.0
        diverged[warmup] = _first_divergence(reference, _rollout(fresh, actions))
    assert any(step is not None for step in diverged.values()), diverged


def test_stale_derived_arrays_are_restored_verbatim() -> None:
    # Ant's reward reads the torso xpos *before* mj_step; after a step that xpos
    # is from the start of the last substep. Integration state + mj_forward
    # recomputes it from the current qpos and changes the first reward.
    env_id = "Ant-v5"
    _, state, actions, reference = _snapshot(env_id)
    recomputed = _fresh(env_id)
    model, data = recomputed.unwrapped.model, recomputed.unwrapped.data
    mujoco.mj_setState(model, data, state["integration"], state["signature"])
    mujoco.mj_forward(model, data)
    recomputed.unwrapped.np_random.bit_generator.state = copy.deepcopy(state["np_random"])
    assert _first_divergence(reference, _rollout(recomputed, actions)) == 0

    exact = _fresh(env_id)
    rk_mujoco.MujocoEnvAdapter().restore(exact.unwrapped, copy.deepcopy(state))
    assert _first_divergence(reference, _rollout(exact, actions)) is None


def _leaves(tree: Any) -> list[Any]:
    if isinstance(tree, dict):
        assert all(isinstance(k, (str, int)) for k in tree)
        return [leaf for v in tree.values() for leaf in _leaves(v)]
    if isinstance(tree, (list, tuple)):
        return [leaf for v in tree for leaf in _leaves(v)]
    return [tree]


def test_capture_is_a_state_tree_sharing_no_memory() -> None:
    env = gym.make("Humanoid-v5")
    env.reset(seed=0)
    for action in _actions(env, 5):
        env.step(action)
    state = rk_mujoco.MujocoEnvAdapter().capture(env.unwrapped)
    data = env.unwrapped.data
    live_arrays = [getattr(data, name) for name in state["derived"]] + [data.qpos, data.qvel]
    for leaf in _leaves(state):
        assert isinstance(leaf, (np.ndarray, int, float, bool, str, type(None)))
        if isinstance(leaf, np.ndarray):
            assert leaf.dtype != object
            assert not any(np.shares_memory(leaf, live) for live in live_arrays)
    before = copy.deepcopy(state)
    env.step(env.action_space.sample())
    assert state["integration"].tobytes() == before["integration"].tobytes()
    assert state["derived"]["xpos"].tobytes() == before["derived"]["xpos"].tobytes()


def test_restore_into_another_model_is_refused() -> None:
    hopper = gym.make("Hopper-v5")
    hopper.reset(seed=0)
    state = rk_mujoco.MujocoEnvAdapter().capture(hopper.unwrapped)
    walker = gym.make("Walker2d-v5")
    walker.reset(seed=0)
    qpos_before = walker.unwrapped.data.qpos.copy()
    with pytest.raises(StateMismatchError, match=r"model\.nq: snapshot has 6, env has 9"):
        rk_mujoco.MujocoEnvAdapter().restore(walker.unwrapped, state)
    # Refused before touching anything.
    assert walker.unwrapped.data.qpos.tobytes() == qpos_before.tobytes()


def test_restore_rejects_a_foreign_state() -> None:
    env = gym.make("Hopper-v5")
    env.reset(seed=0)
    with pytest.raises(StateMismatchError, match="expected a MuJoCo env snapshot"):
        rk_mujoco.MujocoEnvAdapter().restore(env.unwrapped, {"ale_state": np.zeros(3)})
