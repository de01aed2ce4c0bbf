from __future__ import annotations

import copy
import json

import gymnasium as gym
import numpy as np
import pytest
import replaykit_envs  # noqa: F401  (registers the replaykit/* ids)
from gymnasium import spaces
from gymnasium.wrappers import (
    Autoreset,
    ClipAction,
    DelayObservation,
    FlattenObservation,
    FrameStackObservation,
    MaxAndSkipObservation,
    NormalizeObservation,
    NormalizeReward,
    RecordEpisodeStatistics,
    RepeatAction,
    RescaleAction,
    ReshapeObservation,
    StickyAction,
    TimeAwareObservation,
    TransformReward,
)

from replaykit._state.envs import (
    CAPTURE_UNKNOWN_WRAPPER,
    capture_chain,
    capture_wrappers_and_rngs,
    chain_layers,
    find_env_adapter,
    find_wrapper_adapter,
    register_wrapper_adapter,
    restore_chain,
    restore_wrappers_and_rngs,
)
from replaykit.errors import CaptureError, RestoreError, StateMismatchError

K = 100


# --------------------------------------------------------------------------- helpers


def sample_action(space, rng):
    """Draw an action from our own RNG so the env's action_space RNG stays untouched."""
    if isinstance(space, spaces.Discrete):
        return np.int64(space.start + rng.integers(space.n))
    if isinstance(space, spaces.MultiDiscrete):
        return (rng.integers(0, np.iinfo(np.int64).max, size=space.shape) % space.nvec).astype(
            space.dtype
        )
    if isinstance(space, spaces.Box):
        low = np.where(np.isfinite(space.low), space.low, -1.0)
        high = np.where(np.isfinite(space.high), space.high, 1.0)
        return rng.uniform(low, high).astype(space.dtype)
    raise TypeError(space)


def leaves(x):
    if isinstance(x, dict):
        for key in sorted(x):
            yield from leaves(x[key])
    elif isinstance(x, (tuple, list)):
        for item in x:
            yield from leaves(item)
    else:
        yield x


def assert_identical(a, b, where):
    la, lb = list(leaves(a)), list(leaves(b))
    assert len(la) == len(lb), where
    for x, y in zip(la, lb, strict=True):
        assert type(x) is type(y), (where, type(x), type(y))
        if isinstance(x, (np.ndarray, np.generic)):
            assert x.dtype == y.dtype, (where, x.dtype, y.dtype)
            assert np.shape(x) == np.shape(y), where
            assert np.asarray(x).tobytes() == np.asarray(y).tobytes(), (where, x, y)
        elif isinstance(x, float):
            assert np.float64(x).tobytes() == np.float64(y).tobytes(), (where, x, y)
        else:
            assert x == y, (where, x, y)


def run(env, actions, autoreset=False):
    """Step through ``actions``; reset without a seed at episode ends. Return everything seen."""
    out = []
    for i, action in enumerate(actions):
        obs, reward, terminated, truncated, _info = env.step(action)
        out.append((i, obs, reward, terminated, truncated))
        if (terminated or truncated) and not autoreset:
            obs, _ = env.reset()
            out.append((i, "reset", obs))
    return out


def check_roundtrip(make, n_pre=37, k=K, autoreset=False, seed=123):
    """Snapshot mid-run, keep going, then restore into a fresh env and compare bit for bit."""
    rng = np.random.default_rng(seed)
    env = make()
    env.reset(seed=seed)
    pre = [sample_action(env.action_space, rng) for _ in range(n_pre)]
    run(env, pre, autoreset)
    tree = copy.deepcopy(capture_chain(env))
    actions = [sample_action(env.action_space, rng) for _ in range(k)]
    expected = run(env, actions, autoreset)

    fresh = make()
    fresh.reset(seed=seed + 1000)  # different state everywhere
    run(fresh, [sample_action(fresh.action_space, rng) for _ in range(5)], autoreset)
    restore_chain(fresh, tree)
    got = run(fresh, actions, autoreset)
    assert len(got) == len(expected)
    for e, g in zip(expected, got, strict=True):
        assert_identical(e, g, f"step {e[0]}")
    # Restoring must not alias the tree: a second restore replays identically again.
    restore_chain(fresh, tree)
    assert_identical(run(fresh, actions, autoreset), expected, "second restore")
    return env, expected


def json_roundtrip(tree):
    """Serialize a state tree through JSON (arrays as tagged lists) and back, exactly."""

    def enc(x):
        if isinstance(x, np.ndarray):
            return {"__nd__": x.dtype.str, "shape": list(x.shape), "hex": x.tobytes().hex()}
        if isinstance(x, np.generic):
            return {"__np__": x.dtype.str, "hex": x.tobytes().hex()}
        if isinstance(x, tuple):
            return {"__tuple__": [enc(v) for v in x]}
        if isinstance(x, list):
            return [enc(v) for v in x]
        if isinstance(x, dict):
            return {"__dict__": [[k, enc(v)] for k, v in x.items()]}
        if isinstance(x, float):
            return {"__float__": x.hex()}
        return x

    def dec(x):
        if isinstance(x, list):
            return [dec(v) for v in x]
        if isinstance(x, dict):
            if "__nd__" in x:
                a = np.frombuffer(bytes.fromhex(x["hex"]), dtype=np.dtype(x["__nd__"]))
                return a.reshape(x["shape"]).copy()
            if "__np__" in x:
                return np.frombuffer(bytes.fromhex(x["hex"]), dtype=np.dtype(x["__np__"]))[0]
            if "__tuple__" in x:
                return tuple(dec(v) for v in x["__tuple__"])
            if "__float__" in x:
                return float.fromhex(x["__float__"])
            return {k: dec(v) for k, v in x["__dict__"]}
        return x

    return dec(json.loads(json.dumps(enc(tree))))


# --------------------------------------------------------------------------- envs

CLASSIC = [
    ("CartPole-v1", {}),
    ("Acrobot-v1", {}),
    ("MountainCar-v0", {}),
    ("MountainCarContinuous-v0", {}),
    ("Pendulum-v1", {}),
    ("FrozenLake-v1", {}),
    ("CliffWalkingSlippery-v1", {}),
    ("Taxi-v4", {"is_rainy": True, "fickle_passenger": True}),
    ("Blackjack-v1", {}),
]
OWN = [
    ("replaykit/SlipperyGrid-v0", {"max_episode_steps": 30}),
    ("replaykit/SlipperyGrid-v0", {"obs_type": "array", "size": 4}),
    ("replaykit/Drift-v0", {"max_episode_steps": 60}),
    ("replaykit/Drift-v0", {"action_dim": 1, "dtype": "float32"}),
    ("replaykit/NestedObs-v0", {"max_episode_steps": 45}),
]


@pytest.mark.parametrize(("env_id", "kwargs"), CLASSIC + OWN)
def test_env_roundtrip(env_id, kwargs):
    env, _seen = check_roundtrip(lambda: gym.make(env_id, **kwargs))
    assert find_env_adapter(env.unwrapped) is not None


@pytest.mark.parametrize(
    ("env_id", "kwargs"),
    [("replaykit/SlipperyGrid-v0", {"max_episode_steps": 30}), ("CartPole-v1", {})],
)
def test_episode_boundaries_are_crossed(env_id, kwargs):
    # Guards the roundtrip tests above: they must really cover resets after the snapshot.
    _, seen = check_roundtrip(lambda: gym.make(env_id, **kwargs))
    assert any(isinstance(item[1], str) for item in seen)


def test_tree_survives_json_roundtrip():
    make = lambda: gym.make("replaykit/NestedObs-v0")  # noqa: E731
    env = make()
    env.reset(seed=5)
    rng = np.random.default_rng(0)
    run(env, [sample_action(env.action_space, rng) for _ in range(20)])
    tree = json_roundtrip(capture_chain(env))
    actions = [sample_action(env.action_space, rng) for _ in range(K)]
    expected = run(env, actions)
    fresh = make()
    fresh.reset(seed=6)
    restore_chain(fresh, tree)
    assert_identical(run(fresh, actions), expected, "json")


# --------------------------------------------------------------------------- wrappers

WRAPPED = {
    "RecordEpisodeStatistics": (lambda: RecordEpisodeStatistics(gym.make("CartPole-v1")), False),
    "NormalizeObservation": (lambda: NormalizeObservation(gym.make("Pendulum-v1")), False),
    "NormalizeReward": (lambda: NormalizeReward(gym.make("Pendulum-v1"), gamma=0.9), False),
    "NormalizeObservation-f64obs": (
        lambda: NormalizeObservation(gym.make("replaykit/Drift-v0", max_episode_steps=50)),
        False,
    ),
    "FrameStack-reset": (
        lambda: FrameStackObservation(gym.make("CartPole-v1"), 4, padding_type="reset"),
        False,
    ),
    "FrameStack-nested": (
        lambda: FrameStackObservation(gym.make("replaykit/NestedObs-v0", max_episode_steps=40), 3),
        False,
    ),
    "StickyAction": (
        lambda: StickyAction(
            gym.make("replaykit/SlipperyGrid-v0", max_episode_steps=25),
            repeat_action_probability=0.5,
            repeat_action_duration=(1, 4),
        ),
        False,
    ),
    "DelayObservation": (lambda: DelayObservation(gym.make("CartPole-v1"), delay=3), False),
    "TimeAwareObservation": (lambda: TimeAwareObservation(gym.make("CartPole-v1")), False),
    "MaxAndSkipObservation": (
        lambda: MaxAndSkipObservation(gym.make("Acrobot-v1", max_episode_steps=40), skip=3),
        False,
    ),
    "RepeatAction": (lambda: RepeatAction(gym.make("CartPole-v1"), num_repeats=3), False),
    "Autoreset": (lambda: Autoreset(gym.make("CartPole-v1")), True),
    "stateless-chain": (
        lambda: TransformReward(
            ReshapeObservation(
                ClipAction(
                    RescaleAction(gym.make("replaykit/Drift-v0"), np.float32(-2), np.float32(2))
                ),
                (1, 3),
            ),
            lambda r: 2.0 * r,
        ),
        False,
    ),
    "FlattenObservation": (
        lambda: FlattenObservation(gym.make("replaykit/NestedObs-v0", max_episode_steps=30)),
        False,
    ),
    "everything": (
        lambda: NormalizeReward(
            RecordEpisodeStatistics(
                FrameStackObservation(
                    TimeAwareObservation(
                        DelayObservation(
                            NormalizeObservation(
                                StickyAction(gym.make("CartPole-v1"), 0.3, (1, 3))
                            ),
                            delay=2,
                        )
                    ),
                    3,
                )
            )
        ),
        False,
    ),
}


@pytest.mark.parametrize("name", list(WRAPPED))
def test_wrapper_roundtrip(name):
    make, autoreset = WRAPPED[name]
    env, _ = check_roundtrip(make, autoreset=autoreset)
    for layer in chain_layers(env)[:-1]:
        assert find_wrapper_adapter(layer) is not None


def test_sticky_action_state_matters():
    # Without the wrapper's last_action, the sticky repeat would replay a different action.
    make, _ = WRAPPED["StickyAction"]
    env = make()
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    run(env, [sample_action(env.action_space, rng) for _ in range(10)])
    tree = capture_chain(env)
    layer = tree["layers"][0]
    assert layer["class"] == "gymnasium.wrappers.stateful_action.StickyAction"
    assert set(layer["state"]["attrs"]) == {
        "last_action",
        "is_sticky_actions",
        "num_repeats",
        "repeats_taken",
    }


def test_record_episode_statistics_queues_restored():
    make, _ = WRAPPED["RecordEpisodeStatistics"]
    env = make()
    env.reset(seed=1)
    rng = np.random.default_rng(1)
    run(env, [sample_action(env.action_space, rng) for _ in range(80)])
    assert len(env.return_queue) > 0
    tree = copy.deepcopy(capture_chain(env))
    fresh = make()
    fresh.reset(seed=2)
    restore_chain(fresh, tree)
    assert list(fresh.return_queue) == list(env.return_queue)
    assert list(fresh.length_queue) == list(env.length_queue)
    assert fresh.return_queue.maxlen == env.return_queue.maxlen
    assert (fresh.episode_returns, fresh.episode_lengths) == (
        env.episode_returns,
        env.episode_lengths,
    )
    assert fresh.episode_count == env.episode_count


def test_normalize_observation_dtypes_kept():
    make, _ = WRAPPED["NormalizeObservation"]
    env = make()
    env.reset(seed=1)
    env.step(np.zeros(1, dtype=np.float32))
    state = capture_chain(env)["layers"][0]["state"]["attrs"]
    assert state["obs_rms.mean"].dtype == env.obs_rms.mean.dtype
    assert type(state["obs_rms.count"]) is type(env.obs_rms.count)


# --------------------------------------------------------------------------- RNGs


def test_space_rngs_restored_including_nested():
    env = gym.make("replaykit/NestedObs-v0")
    env.reset(seed=0)
    env.action_space.seed(5)
    env.observation_space.seed(9)
    env.action_space.sample()
    env.observation_space.sample()
    tree = copy.deepcopy(capture_chain(env))
    obs_children = tree["spaces"]["observation"]["children"]
    assert [c["type"] for c in obs_children] == ["Box", "Dict", "Tuple"]
    assert obs_children[1]["children"][0]["rng"] is not None
    want = [(env.action_space.sample(), env.observation_space.sample()) for _ in range(5)]

    fresh = gym.make("replaykit/NestedObs-v0")
    fresh.reset(seed=1)
    fresh.action_space.seed(77)
    fresh.observation_space.seed(78)
    restore_chain(fresh, tree)
    got = [(fresh.action_space.sample(), fresh.observation_space.sample()) for _ in range(5)]
    assert_identical(got, want, "space samples")


def test_unseeded_space_recorded_as_none():
    env = gym.make("CartPole-v1")
    env.reset(seed=0)
    tree = capture_chain(env)
    assert tree["spaces"]["action"]["rng"] is None
    fresh = gym.make("CartPole-v1")
    fresh.reset(seed=3)
    fresh.action_space.seed(1)
    restore_chain(fresh, tree)
    assert fresh.action_space._np_random is None


def test_wrapper_owned_spaces_captured():
    env = FlattenObservation(gym.make("replaykit/NestedObs-v0"))
    env.reset(seed=0)
    env.unwrapped.observation_space.seed(4)
    tree = capture_chain(env)
    assert tree["spaces"]["unwrapped_observation"]["type"] == "Dict"
    assert tree["spaces"]["unwrapped_action"] is None  # shared with the outer layer


def test_other_bit_generator_restored():
    env = gym.make("Pendulum-v1")
    env.reset(seed=0)
    env.unwrapped.np_random = np.random.Generator(np.random.MT19937(42))
    env.step(np.array([0.1], dtype=np.float32))
    tree = copy.deepcopy(capture_chain(env))
    assert tree["env_rng"]["bit_generator"] == "MT19937"
    want = env.unwrapped.np_random.random(3)
    fresh = gym.make("Pendulum-v1")
    fresh.reset(seed=1)
    restore_chain(fresh, tree)
    assert isinstance(fresh.unwrapped.np_random.bit_generator, np.random.MT19937)
    assert np.array_equal(fresh.unwrapped.np_random.random(3), want)


def test_env_rng_restored_in_place():
    # Other holders of the same Generator object stay in step with the env.
    env = gym.make("CartPole-v1")
    env.reset(seed=0)
    tree = copy.deepcopy(capture_chain(env))
    fresh = gym.make("CartPole-v1")
    fresh.reset(seed=1)
    gen = fresh.unwrapped.np_random
    restore_chain(fresh, tree)
    assert fresh.unwrapped.np_random is gen


def test_never_reset_env_captures_none_rng():
    env = gym.make("CartPole-v1")
    tree = capture_chain(env)
    assert tree["env_rng"] is None
    assert tree["env"]["state"]["attrs"]["state"] is None
    fresh = gym.make("CartPole-v1")
    fresh.reset(seed=0)
    restore_chain(fresh, tree)
    assert fresh.unwrapped._np_random is None


# --------------------------------------------------------------------------- errors


class CountingWrapper(gym.Wrapper):
    def __init__(self, env):
        super().__init__(env)
        self.count = 0

    def step(self, action):
        self.count += 1
        return super().step(action)


class TransparentWrapper(gym.Wrapper):
    _replaykit_transparent = True

    def __init__(self, env):
        super().__init__(env)
        self.count = 0


def test_unknown_wrapper_raises_capture_error():
    env = CountingWrapper(gym.make("CartPole-v1"))
    env.reset(seed=0)
    with pytest.raises(CaptureError) as info:
        capture_chain(env)
    message = str(info.value)
    assert f"{__name__}.CountingWrapper" in message
    assert "register_wrapper_adapter" in message
    assert "register_stateless_wrapper" in message
    assert message == CAPTURE_UNKNOWN_WRAPPER.format(
        cls=f"{__name__}.CountingWrapper", name="CountingWrapper"
    )
    with pytest.raises(CaptureError):
        capture_wrappers_and_rngs(env)


def test_base_wrapper_classes_not_assumed_stateless():
    for base in (gym.ObservationWrapper, gym.ActionWrapper, gym.RewardWrapper, gym.Wrapper):
        layer = type("Sub", (base,), {})(gym.make("CartPole-v1"))
        assert find_wrapper_adapter(layer) is None


def test_transparent_wrapper_skipped():
    env = TransparentWrapper(gym.make("CartPole-v1"))
    env.reset(seed=0)
    tree = capture_chain(env)
    assert [x["class"] for x in tree["layers"]] == [
        "gymnasium.wrappers.common.TimeLimit",
        "gymnasium.wrappers.common.OrderEnforcing",
        "gymnasium.wrappers.env_checker.PassiveEnvChecker"
        if False
        else "gymnasium.wrappers.common.PassiveEnvChecker",
    ]
    # Restores into the chain without the transparent layer as well.
    plain = gym.make("CartPole-v1")
    plain.reset(seed=3)
    restore_chain(plain, copy.deepcopy(tree))
    assert np.array_equal(plain.unwrapped.state, env.unwrapped.state)


def test_registered_adapter_makes_wrapper_capturable():
    class Counter2(CountingWrapper):
        pass

    class CounterAdapter:
        name = "tests.Counter2"

        def capture(self, wrapper):
            return {"count": wrapper.count}

        def restore(self, wrapper, state):
            wrapper.count = state["count"]

    register_wrapper_adapter(Counter2, CounterAdapter())
    env = Counter2(gym.make("CartPole-v1"))
    env.reset(seed=0)
    env.step(0)
    env.step(1)
    tree = capture_chain(env)
    fresh = Counter2(gym.make("CartPole-v1"))
    fresh.reset(seed=1)
    restore_chain(fresh, tree)
    assert fresh.count == 2


def test_mismatched_chain_raises():
    env = gym.make("CartPole-v1")
    env.reset(seed=0)
    tree = capture_chain(env)
    other = RecordEpisodeStatistics(gym.make("CartPole-v1"))
    other.reset(seed=0)
    with pytest.raises(StateMismatchError) as info:
        restore_chain(other, tree)
    lines = info.value.mismatches
    assert lines[0] == (
        "layer 0: recorded gymnasium.wrappers.common.TimeLimit, "
        "got gymnasium.wrappers.common.RecordEpisodeStatistics"
    )
    assert "layer 3: recorded (no layer), got gymnasium.wrappers.common.PassiveEnvChecker" in (
        lines
    )


def test_mismatch_leaves_env_untouched():
    env = gym.make("CartPole-v1")
    env.reset(seed=0)
    tree = capture_chain(env)
    other = gym.make("CartPole-v1", disable_env_checker=True)
    other.reset(seed=9)
    before = other.unwrapped.state.copy()
    with pytest.raises(StateMismatchError):
        restore_chain(other, tree)
    assert np.array_equal(other.unwrapped.state, before)


def test_env_class_mismatch_raises():
    env = gym.make("CartPole-v1")
    env.reset(seed=0)
    tree = capture_chain(env)
    other = gym.make("Acrobot-v1")
    other.reset(seed=0)
    with pytest.raises(StateMismatchError, match="env class: recorded"):
        restore_chain(other, tree)


def test_config_mismatch_raises():
    env = gym.make("CartPole-v1")
    env.reset(seed=0)
    tree = capture_chain(env)
    other = gym.make("CartPole-v1", max_episode_steps=77)
    other.reset(seed=0)
    with pytest.raises(StateMismatchError, match="_max_episode_steps"):
        restore_chain(other, tree)


def test_frame_stack_size_mismatch_raises():
    env = FrameStackObservation(gym.make("CartPole-v1"), 4)
    env.reset(seed=0)
    tree = capture_chain(env)
    other = FrameStackObservation(gym.make("CartPole-v1"), 3)
    other.reset(seed=0)
    with pytest.raises(StateMismatchError, match="stack_size"):
        restore_chain(other, tree)


def test_max_and_skip_buffer_shape_mismatch_raises():
    env = MaxAndSkipObservation(gym.make("CartPole-v1"))
    env.reset(seed=0)
    tree = capture_chain(env)
    tree["layers"][0]["state"]["attrs"]["_obs_buffer"] = np.zeros((2, 3), np.float32)
    other = MaxAndSkipObservation(gym.make("CartPole-v1"))
    other.reset(seed=0)
    with pytest.raises(StateMismatchError, match="_obs_buffer"):
        restore_chain(other, tree)


class NoAdapterEnv(gym.Env):
    def __init__(self):
        self.action_space = spaces.Discrete(2)
        self.observation_space = spaces.Box(-10, 10, (1,), np.float64)
        self.x = 0.0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = float(self.np_random.normal())
        return np.array([self.x]), {}

    def step(self, action):
        self.x = float(np.clip(self.x + self.np_random.normal() + action, -10, 10))
        return np.array([self.x]), 0.0, False, False, {}


def test_env_without_adapter_captures_none_and_refuses_restore():
    env = gym.wrappers.TimeLimit(NoAdapterEnv(), 50)
    env.reset(seed=0)
    env.step(1)
    tree = copy.deepcopy(capture_chain(env))
    assert tree["env"] is None
    assert tree["env_rng"] is not None
    fresh = gym.wrappers.TimeLimit(NoAdapterEnv(), 50)
    fresh.reset(seed=4)
    with pytest.raises(RestoreError, match="replay from reset"):
        restore_chain(fresh, tree)
    # The fallback path: re-run from reset, then restore wrappers and RNGs only.
    fresh.reset(seed=0)
    fresh.step(1)
    fresh.unwrapped.np_random.random()  # disturb the RNG
    fresh.step(0)  # and the time limit
    restore_wrappers_and_rngs(fresh, tree)
    assert fresh._elapsed_steps == 1
    assert (
        fresh.unwrapped.np_random.bit_generator.state == env.unwrapped.np_random.bit_generator.state
    )


def test_capture_wrappers_and_rngs_has_no_env_state():
    env = gym.make("CartPole-v1")
    env.reset(seed=0)
    tree = capture_wrappers_and_rngs(env)
    assert tree["env"] is None and len(tree["layers"]) == 3


def test_capture_does_not_share_memory():
    env = FrameStackObservation(gym.make("replaykit/NestedObs-v0"), 2)
    env.reset(seed=0)
    env.step(env.action_space.sample())
    tree = capture_chain(env)
    frozen = copy.deepcopy(tree)
    base = env.unwrapped
    base.canvas[...] = 7
    base.vec += 1
    base.phase[0] = 99.0
    env.obs_queue[-1]["image"][...] = 3
    env.unwrapped.np_random.random(10)
    for _ in range(5):
        env.step(env.action_space.sample())
    assert_identical(tree, frozen, "tree after mutating env")


def test_restore_does_not_alias_tree():
    env = MaxAndSkipObservation(gym.make("CartPole-v1"), skip=2)
    env.reset(seed=0)
    env.step(1)
    tree = capture_chain(env)
    frozen = copy.deepcopy(tree)
    restore_chain(env, tree)
    for _ in range(5):
        env.step(0)  # writes _obs_buffer and the env state in place
    assert_identical(tree, frozen, "tree after stepping a restored env")


def test_chain_layers_order():
    env = RecordEpisodeStatistics(gym.make("CartPole-v1"))
    names = [type(x).__name__ for x in chain_layers(env)]
    assert names == [
        "RecordEpisodeStatistics",
        "TimeLimit",
        "OrderEnforcing",
        "PassiveEnvChecker",
        "CartPoleEnv",
    ]
    assert chain_layers(env.unwrapped) == [env.unwrapped]


def test_uncapturable_value_raises():
    env = gym.make("CartPole-v1")
    env.reset(seed=0)
    env.unwrapped.state = object()
    with pytest.raises(CaptureError, match=r"CartPoleEnv\.state"):
        capture_chain(env)


# ------------------------------------------------------- state that only matters at edges


def snapshot_then_compare(make, prepare, actions, seed=0):
    """Prepare ``env`` to an edge case, snapshot, and check a fresh env replays identically."""
    env = make()
    env.reset(seed=seed)
    prepare(env)
    tree = copy.deepcopy(capture_chain(env))
    expected = [env.step(a)[:4] for a in actions]
    fresh = make()
    fresh.reset(seed=seed + 1)
    fresh.step(actions[0])
    restore_chain(fresh, tree)
    got = [fresh.step(a)[:4] for a in actions]
    assert_identical(got, expected, "edge case")


def test_cartpole_steps_beyond_terminated(recwarn):
    # After termination CartPole's reward depends on steps_beyond_terminated (1.0 once, then 0.0).
    def prepare(env):
        while not env.step(1)[2]:
            pass

    make = lambda: gym.make("CartPole-v1")  # noqa: E731
    env = make()
    env.reset(seed=0)
    prepare(env)
    assert env.unwrapped.steps_beyond_terminated == 0
    fresh = make()
    fresh.reset(seed=1)
    restore_chain(fresh, capture_chain(env))
    assert fresh.unwrapped.steps_beyond_terminated == 0
    snapshot_then_compare(make, prepare, [1, 1, 0])


def test_autoreset_flag_at_episode_end():
    def prepare(env):
        while not env.step(1)[2]:
            pass

    make = lambda: Autoreset(gym.make("CartPole-v1"))  # noqa: E731
    env = make()
    env.reset(seed=0)
    prepare(env)
    assert env.autoreset is True
    snapshot_then_compare(make, prepare, [0, 1, 0])


def test_max_and_skip_stale_buffer_on_early_truncation():
    # The first step after the snapshot truncates at inner step 0, so the returned
    # observation is the max of the two *stale* frames held in the buffer.
    def prepare(env):
        for _ in range(13):  # 39 of 40 inner steps
            env.step(0)

    make = lambda: MaxAndSkipObservation(  # noqa: E731
        gym.make("Acrobot-v1", max_episode_steps=40), skip=3
    )
    snapshot_then_compare(make, prepare, [1])


def test_passive_checker_snapshot_right_after_reset():
    # The checker holds the reset's (obs, info) to compare with the first step; restoring that
    # into an env that already stepped must re-arm the first-step checks without crashing.
    env = gym.make("replaykit/NestedObs-v0")
    env.reset(seed=0)
    tree = copy.deepcopy(capture_chain(env))
    action = np.array([1, 2], dtype=np.int64)
    expected = env.step(action)[:4]
    fresh = gym.make("replaykit/NestedObs-v0")
    fresh.reset(seed=1)
    fresh.step(action)
    fresh.step(action)
    restore_chain(fresh, tree)
    checker = chain_layers(fresh)[2]
    assert (checker.checked_step, checker.checked_data_reuse) == (False, False)
    assert_identical(fresh.step(action)[:4], expected, "first step after restore")
    assert checker.checked_step is True
