"""ArrayState: a replay buffer is one line to track; restores check shapes and dtypes."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import replaykit
from replaykit import ArrayState, StateMismatchError, UsageError


class Buffer:
    def __init__(self, capacity: int, dtype: type = np.float32) -> None:
        self.obs = np.zeros((capacity, 4), dtype)
        self.act = np.zeros(capacity, np.int64)
        self.capacity = capacity
        self.pos = 0
        self.full = False

    def add(self, obs: np.ndarray, act: int) -> None:
        self.obs[self.pos], self.act[self.pos] = obs, act
        self.pos = (self.pos + 1) % self.capacity
        self.full = self.full or self.pos == 0


def _filled(b: Buffer) -> int:
    return b.capacity if b.full else b.pos


def _state(b: Buffer) -> ArrayState:
    return ArrayState(b, ["obs", "act"], filled=_filled, values=["pos", "full"])


def test_only_filled_rows_are_stored_and_restored() -> None:
    buf = Buffer(100)
    for i in range(7):
        buf.add(np.full(4, i, np.float32), i)
    tree = _state(buf).__replaykit_state__()
    assert tree["arrays"]["obs"].shape == (7, 4)
    fresh = Buffer(100)
    _state(fresh).__replaykit_restore__(tree)
    assert np.array_equal(fresh.obs, buf.obs) and np.array_equal(fresh.act, buf.act)
    assert (fresh.pos, fresh.full) == (7, False)


def test_a_larger_buffer_into_a_smaller_one_is_a_clear_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "buf.h5"
    buf = Buffer(10_000)
    with replaykit.RecordingWrapper(
        gym.make("CartPole-v1"), path, seed=0, track={"buffer": _state(buf)}
    ) as env:
        obs, _ = env.reset()
        for _ in range(5):
            buf.add(obs, 1)
            obs, *_ = env.step(1)
        env.snapshot("s")
    small = Buffer(5_000)
    with pytest.raises(StateMismatchError) as info:
        replaykit.restore(path, "s", env=gym.make("CartPole-v1"), track={"buffer": _state(small)})
    msg = str(info.value)
    assert "\n" not in msg
    assert "obs: recorded ndarray float32 (10000, 4), got ndarray float32 (5000, 4)" in msg
    assert "act: recorded ndarray int64 (10000,), got ndarray int64 (5000,)" in msg
    assert small.pos == 0  # nothing written
    same = Buffer(10_000)
    replaykit.restore(
        path, "s", env=gym.make("CartPole-v1"), track={"buffer": _state(same)}
    ).close()
    assert np.array_equal(same.obs, buf.obs) and same.pos == 5


def test_dtype_mismatch_is_named() -> None:
    tree = _state(Buffer(10)).__replaykit_state__()
    with pytest.raises(
        StateMismatchError,
        match=r"obs: recorded ndarray float32 \(10, 4\), got "
        r"ndarray float64 \(10, 4\)",
    ):
        _state(Buffer(10, np.float64)).__replaykit_restore__(tree)


def test_torch_tensors_and_attribute_counter() -> None:
    class Storage:
        def __init__(self, n: int) -> None:
            self.values = torch.zeros(n, 3)
            self.size = 0

    s = Storage(8)
    s.values[:2] = torch.arange(6.0).reshape(2, 3)
    s.size = 2
    tree = ArrayState(s, ["values"], filled="size").__replaykit_state__()
    assert tuple(tree["arrays"]["values"].shape) == (2, 3)
    t = Storage(8)
    ArrayState(t, ["values"], filled="size").__replaykit_restore__(tree)
    assert torch.equal(t.values, s.values) and t.size == 2
    with pytest.raises(
        StateMismatchError,
        match=r"values: recorded tensor float32 \(8, 3\), "
        r"got tensor float32 \(4, 3\)",
    ):
        ArrayState(Storage(4), ["values"], filled="size").__replaykit_restore__(tree)


def test_bad_declarations_fail_at_construction() -> None:
    buf = Buffer(4)
    with pytest.raises(
        UsageError, match=r"Buffer\.capacity: expected a NumPy array or torch tensor, found a int"
    ):
        ArrayState(buf, ["obs", "capacity"])
    with pytest.raises(UsageError, match="no attribute 'size'"):
        ArrayState(buf, ["obs"], filled="size")
    with pytest.raises(UsageError, match="list of attribute names"):
        ArrayState(buf, "obs")
