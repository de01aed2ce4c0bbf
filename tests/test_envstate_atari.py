"""Bit-exact snapshot/restore of ALE Atari envs through the env adapter."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

ale_py = pytest.importorskip("ale_py")
gym = pytest.importorskip("gymnasium")

from replaykit._state.envs import atari as rk_atari  # noqa: E402
from replaykit._state.envs import registry as _registry  # noqa: E402
from replaykit.errors import CaptureError, StateMismatchError  # noqa: E402

pytestmark = pytest.mark.atari

gym.register_envs(ale_py)
rk_atari.register()

WARMUP = 40
HORIZON = 200

Step = tuple[bytes, str, tuple[int, ...], float, bool, bool, int, int]


def _rollout(env: Any, actions: np.ndarray) -> list[Step]:
    out: list[Step] = []
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(int(action))
        out.append(
            (
                obs.tobytes(),
                obs.dtype.str,
                obs.shape,
                float(reward),
                bool(terminated),
                bool(truncated),
                int(info["lives"]),
                int(info["episode_frame_number"]),
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
    layer = env
    while isinstance(layer, gym.Wrapper):
        if isinstance(layer, gym.wrappers.TimeLimit):
            layer._elapsed_steps = n
        layer = layer.env


def _snapshot(
    env_id: str, capture: Any = None, **kwargs: Any
) -> tuple[Any, np.ndarray, list[Step]]:
    """Reset, take WARMUP random steps, capture, then HORIZON steps as the reference."""
    env = gym.make(env_id, **kwargs)
    env.reset(seed=5)
    actions = np.random.default_rng(11).integers(0, env.action_space.n, WARMUP + HORIZON)
    _rollout(env, actions[:WARMUP])
    adapter = _registry.find_env_adapter(env.unwrapped)
    assert adapter is not None
    state = (capture or adapter.capture)(env.unwrapped)
    reference = _rollout(env, actions[WARMUP:])
    return state, actions[WARMUP:], reference


def _fresh(env_id: str, **kwargs: Any) -> Any:
    env = gym.make(env_id, **kwargs)
    env.reset(seed=999)
    _set_elapsed_steps(env, WARMUP)
    return env


def test_adapter_is_found() -> None:
    env = gym.make("ALE/Pong-v5")
    adapter = _registry.find_env_adapter(env.unwrapped)
    assert isinstance(adapter, rk_atari.AtariEnvAdapter)
    assert isinstance(adapter, _registry.EnvAdapter)


@pytest.mark.parametrize("obs_type", ["rgb", "ram"])
@pytest.mark.parametrize("game", ["Pong", "Breakout", "SpaceInvaders", "Seaquest"])
def test_restore_is_bit_exact_with_sticky_actions(game: str, obs_type: str) -> None:
    env_id = f"ALE/{game}-v5"
    state, actions, reference = _snapshot(env_id, obs_type=obs_type)
    assert state["config"]["repeat_action_probability"] == pytest.approx(0.25)
    assert state["ale_state"].dtype == np.uint8
    fresh = _fresh(env_id, obs_type=obs_type)
    rk_atari.AtariEnvAdapter().restore(fresh.unwrapped, copy.deepcopy(state))
    got = _rollout(fresh, actions)
    assert got[0][1] == "|u1"
    assert _first_divergence(reference, got) is None
    # The game must actually be moving, or equality above would prove nothing.
    assert len({step[0] for step in got}) > 20


def test_sticky_action_rng_is_needed() -> None:
    # Without the RNG in the clone, the fresh env decides differently when an
    # action sticks and the frames drift apart.
    env_id = "ALE/Breakout-v5"
    env = gym.make(env_id)
    env.reset(seed=5)
    actions = np.random.default_rng(11).integers(0, env.action_space.n, WARMUP + HORIZON)
    _rollout(env, actions[:WARMUP])
    without_rng = env.unwrapped.ale.cloneState(include_rng=False)
    state = rk_atari.AtariEnvAdapter().capture(env.unwrapped)
    reference = _rollout(env, actions[WARMUP:])

    fresh = _fresh(env_id)
    fresh.unwrapped.ale.restoreState(without_rng)
    diverged_at = _first_divergence(reference, _rollout(fresh, actions[WARMUP:]))
    assert diverged_at is not None and diverged_at < HORIZON

    fresh.reset(seed=999)
    rk_atari.AtariEnvAdapter().restore(fresh.unwrapped, copy.deepcopy(state))
    assert _first_divergence(reference, _rollout(fresh, actions[WARMUP:])) is None


def test_last_action_is_in_the_state() -> None:
    # With sticky actions the previous action is repeated with p=0.25. Capture
    # after holding FIRE and restore into an env whose last action was NOOP;
    # then always send NOOP so any stuck FIRE would show up.
    env_id = "ALE/Breakout-v5"
    env = gym.make(env_id, obs_type="ram")
    env.reset(seed=2)
    for _ in range(30):
        env.step(1)  # FIRE launches the ball
    state = rk_atari.AtariEnvAdapter().capture(env.unwrapped)
    noops = np.zeros(HORIZON, dtype=np.int64)
    reference = _rollout(env, noops)
    fresh = _fresh(env_id, obs_type="ram")
    rk_atari.AtariEnvAdapter().restore(fresh.unwrapped, copy.deepcopy(state))
    assert _first_divergence(reference, _rollout(fresh, noops)) is None


@pytest.mark.integration
def test_hidden_sticky_action_is_reproduced() -> None:
    # ALE's clone leaves out the action a sticky frame repeats. At capture
    # points where the next frame sticks, restoring the bare clone into a fresh
    # env (whose remembered action is NOOP) diverges somewhere; the adapter,
    # which primes an equivalent action, is exact at every one of them.
    env_id = "ALE/Seaquest-v5"
    env = gym.make(env_id, obs_type="ram")
    bare = gym.make(env_id, obs_type="ram")
    exact = gym.make(env_id, obs_type="ram")
    actions = np.random.default_rng(11).integers(0, env.action_space.n, 400)
    env.reset(seed=5)
    # Past the first ~30 steps the submarine moves, so the repeated action shows.
    position = 30
    _rollout(env, actions[:position])
    bare_diverged: list[int | None] = []
    for _ in range(3):
        # Step on until the next frame will repeat the hidden action.
        while not rk_atari._sticky_frames(
            env.unwrapped.ale.cloneState(include_rng=True).serialize(), 0.25
        ):
            _rollout(env, actions[position : position + 1])
            position += 1
        state = rk_atari.AtariEnvAdapter().capture(env.unwrapped)
        assert state["sticky_frames"] >= 1 and state["sticky_action"] >= 0
        continuation = actions[position : position + 25]
        reference = _rollout(env, continuation)
        position += 25

        bare.reset(seed=999)
        bare.unwrapped.ale.restoreState(ale_py.ALEState(state["ale_state"].tobytes()))
        bare_diverged.append(_first_divergence(reference, _rollout(bare, continuation)))

        exact.reset(seed=999)
        rk_atari.AtariEnvAdapter().restore(exact.unwrapped, copy.deepcopy(state))
        assert _first_divergence(reference, _rollout(exact, continuation)) is None, position
    assert any(step is not None for step in bare_diverged), bare_diverged


def test_env_rng_drives_stochastic_frameskip() -> None:
    env_id = "ALE/Pong-v5"
    kwargs: dict[str, Any] = {"frameskip": (2, 6), "obs_type": "ram"}
    state, actions, reference = _snapshot(env_id, **kwargs)
    assert state["config"]["frameskip"] == [2, 6]

    ale_only = _fresh(env_id, **kwargs)
    ale_only.unwrapped.ale.restoreState(ale_py.ALEState(state["ale_state"].tobytes()))
    assert _first_divergence(reference, _rollout(ale_only, actions)) is not None

    full = _fresh(env_id, **kwargs)
    rk_atari.AtariEnvAdapter().restore(full.unwrapped, copy.deepcopy(state))
    assert _first_divergence(reference, _rollout(full, actions)) is None


def test_capture_shares_no_memory_and_is_a_state_tree() -> None:
    env = gym.make("ALE/Pong-v5")
    env.reset(seed=0)
    state = rk_atari.AtariEnvAdapter().capture(env.unwrapped)
    before = state["ale_state"].copy()
    for _ in range(10):
        env.step(2)
    assert state["ale_state"].tobytes() == before.tobytes()
    assert state["ale_state"].flags.owndata
    assert isinstance(state["config"]["game"], str)
    assert isinstance(state["np_random"]["state"]["state"], int)


def test_restore_into_another_game_is_refused() -> None:
    pong = gym.make("ALE/Pong-v5")
    pong.reset(seed=0)
    state = rk_atari.AtariEnvAdapter().capture(pong.unwrapped)
    breakout = gym.make("ALE/Breakout-v5")
    breakout.reset(seed=0)
    with pytest.raises(StateMismatchError, match="game: snapshot has 'pong', env has 'breakout'"):
        rk_atari.AtariEnvAdapter().restore(breakout.unwrapped, state)


def test_restore_with_other_sticky_probability_is_refused() -> None:
    env = gym.make("ALE/Pong-v5")
    env.reset(seed=0)
    state = rk_atari.AtariEnvAdapter().capture(env.unwrapped)
    other = gym.make("ALE/Pong-v5", repeat_action_probability=0.0)
    with pytest.raises(StateMismatchError, match="repeat_action_probability"):
        rk_atari.AtariEnvAdapter().restore(other.unwrapped, state)


def test_truncated_emulator_state_is_refused() -> None:
    env = gym.make("ALE/Pong-v5")
    env.reset(seed=0)
    state = rk_atari.AtariEnvAdapter().capture(env.unwrapped)
    state["ale_state"] = state["ale_state"][:100].copy()
    with pytest.raises(StateMismatchError, match="ALE cannot read these 100 bytes"):
        rk_atari.AtariEnvAdapter().restore(env.unwrapped, state)


def test_sound_observations_are_refused() -> None:
    env = gym.make("ALE/Pong-v5", sound_obs=True)
    env.reset(seed=0)
    with pytest.raises(CaptureError, match="sound_obs=True"):
        rk_atari.AtariEnvAdapter().capture(env.unwrapped)


def _preprocessed(game: str) -> Any:
    pytest.importorskip("cv2")  # AtariPreprocessing resizes with OpenCV
    env = gym.make(f"ALE/{game}-v5", frameskip=1)
    return gym.wrappers.AtariPreprocessing(env, frame_skip=4, terminal_on_life_loss=True)


def test_atari_preprocessing_chain_restores_bit_exactly() -> None:
    from replaykit._state import envs as envstate

    env = _preprocessed("Breakout")
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for action in rng.integers(0, 4, 30):
        env.step(int(action))
    state = envstate.capture_chain(env)
    layer = next(e for e in state["layers"] if e["class"].endswith("AtariPreprocessing"))
    kept = layer["state"]["attrs"]
    # The max-pool frame buffers, lives and the game-over flag are the wrapper's state.
    assert kept["obs_buffer"][0].shape == (210, 160) and kept["obs_buffer"][0].any()
    assert kept["lives"] == env.unwrapped.ale.lives() and kept["game_over"] is False
    actions = rng.integers(0, 4, 120)
    reference = _rollout(env, actions)
    fresh = _preprocessed("Breakout")
    fresh.reset(seed=1)
    envstate.restore_chain(fresh, copy.deepcopy(state))
    got = _rollout(fresh, actions)
    assert got[0][2] == (84, 84)
    assert _first_divergence(reference, got) is None
    assert len({step[0] for step in got}) > 20
    # A life lost (terminal_on_life_loss) ends an episode at the same step in both.
    assert any(step[4] for step in reference) == any(step[4] for step in got)
