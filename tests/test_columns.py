"""What the recorder does with values that do not fit their column: never round, never lose.

Each test drives a :class:`RecordingWrapper` over CartPole whose reward or info a small
wrapper rewrites, then checks the error (one line: key, step, dtypes, how to fix) or what
the file holds, and that the closed file still passes :func:`replaykit.validate_file`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import replaykit
from replaykit._format import layout as F
from replaykit._format.store import Recording
from replaykit._session.record import RecordingWrapper
from replaykit._session.recorder import UpdateLog, exact_into, to_array
from replaykit.errors import CaptureError, UsageError

# The rewriting wrappers below hold no snapshot-relevant state in these tests (no snapshots
# are taken except where a stateless one is registered).
pytestmark = pytest.mark.filterwarnings("ignore:wrapper .* has no state adapter")


class _Rewrite(gym.Wrapper[Any, Any, Any, Any]):
    """Replaces step ``t``'s reward and info with ``fn(t)`` = ``(reward or None, info)``."""

    def __init__(self, env: gym.Env[Any, Any], fn: Callable[[int], tuple[Any, dict[str, Any]]]):
        super().__init__(env)
        self.fn = fn
        self.t = 0

    def step(self, action: Any) -> Any:
        obs, reward, term, trunc, _ = self.env.step(action)
        r, info = self.fn(self.t)
        self.t += 1
        return obs, reward if r is None else r, term, trunc, info


def _recorder(path: Path, fn: Callable[[int], tuple[Any, dict[str, Any]]]) -> RecordingWrapper:
    env = RecordingWrapper(_Rewrite(gym.make("CartPole-v1"), fn), path, seed=0)
    env.reset()
    return env


def _run(env: RecordingWrapper, n: int) -> None:
    for _ in range(n):
        _, _, term, trunc, _ = env.step(0)
        if term or trunc:
            env.reset()


def _closed_and_valid(env: RecordingWrapper) -> None:
    env.close()
    replaykit.validate_file(env.path)


# ------------------------------------------------------------------ item: dtype changes
def test_float32_reward_then_python_float_is_refused_not_rounded(tmp_path: Path) -> None:
    env = _recorder(tmp_path / "r.h5", lambda t: (np.float32(0.5) if t < 5 else 0.1, {}))
    _run(env, 5)
    with pytest.raises(CaptureError, match=r"reward changed from float32 to float64.*step 5"):
        env.step(0)
    _closed_and_valid(env)
    with Recording(env.path) as rec:
        assert rec.stream(F.STEPS).rows == 5


def test_reward_widening_that_is_exact_is_kept(tmp_path: Path) -> None:
    # A Python-number reward column is float64: float32 values and small ints fit exactly.
    values = [1.0, np.float32(0.1), 3, np.float64(0.25), 2**53]
    env = _recorder(tmp_path / "r.h5", lambda t: (values[t], {}))
    _run(env, len(values))
    _closed_and_valid(env)
    with Recording(env.path) as rec:
        got = rec.stream(F.STEPS).read(F.REWARD)
    assert got.dtype == np.float64
    assert got.tolist() == [float(v) for v in values]


@pytest.mark.parametrize("late", [2**53 + 1, -(2**60) - 1])
def test_int_reward_beyond_float64_is_refused(tmp_path: Path, late: int) -> None:
    """An int reward takes the per-row path, which refuses at its step what would round."""
    env = _recorder(tmp_path / "r.h5", lambda t: (late if t == 3 else 1, {}))
    _run(env, 3)
    with pytest.raises(CaptureError, match=rf"reward {late} at step 3 does not fit .* float64"):
        env.step(0)
    _closed_and_valid(env)


def test_string_reward_is_refused(tmp_path: Path) -> None:
    env = _recorder(tmp_path / "r.h5", lambda t: ("1.0" if t == 2 else 1.0, {}))
    _run(env, 2)
    with pytest.raises(CaptureError, match=r"reward is a str"):
        env.step(0)
    _closed_and_valid(env)


def test_string_reward_at_first_step_is_refused(tmp_path: Path) -> None:
    env = _recorder(tmp_path / "r.h5", lambda t: ("1.0", {}))
    with pytest.raises(CaptureError, match=r"reward is a str"):
        env.step(0)
    _closed_and_valid(env)


def test_info_dtype_change_is_refused_and_row_discarded(tmp_path: Path) -> None:
    """A refused step leaves no stale present flag for the next row to inherit."""

    def fn(t: int) -> tuple[Any, dict[str, Any]]:
        if t == 3:
            return None, {"a": 7.0, "b": np.float64(1.5)}  # 'b' was float32
        if t == 4:
            return None, {"b": np.float32(2.0)}
        return None, {"b": np.float32(t)}

    env = _recorder(tmp_path / "i.h5", fn)
    _run(env, 3)
    with pytest.raises(CaptureError, match=r"info 'b' changed from float32\[\] to float64\[\]"):
        env.step(0)
    _closed_and_valid(env)
    with Recording(env.path) as rec:
        st = rec.stream(F.STEPS)
        assert st.rows == 3
        assert "info/a" not in st.columns  # the refused step created nothing
        assert st.read("info/b").tolist() == [0.0, 1.0, 2.0]


def test_a_refused_step_stops_the_recording(tmp_path: Path) -> None:
    """The env moved past the refused step: a later row would be misaligned, so none is taken."""
    env = _recorder(tmp_path / "r.h5", lambda t: ("1.0" if t == 4 else 1.0, {}))
    _run(env, 4)
    with pytest.raises(CaptureError, match=r"reward is a str"):
        env.step(0)
    for call in (lambda: env.step(0), env.reset):
        with pytest.raises(UsageError, match=r"stopped at step 4, whose values were refused"):
            call()
    _closed_and_valid(env)
    with Recording(env.path) as rec:
        assert rec.stream(F.STEPS).rows == 4


def test_update_dtype_change_is_refused_before_writing(tmp_path: Path) -> None:
    env = _recorder(tmp_path / "u.h5", lambda t: (None, {}))
    env.log_update(loss=np.float32(1.0), norm=1.0)
    with pytest.raises(CaptureError, match=r"update value 'loss' changed from float32"):
        env.log_update(norm=2.0, loss=1.0)
    env.log_update(loss=np.float32(3.0))
    _closed_and_valid(env)
    with Recording(env.path) as rec:
        st = rec.stream(F.UPDATES)
        assert st.rows == 2
        assert st.present("probe/norm").tolist() == [True, False]


def test_update_log_refuses_column_like_names(tmp_path: Path) -> None:
    env = _recorder(tmp_path / "u.h5", lambda t: (None, {}))
    log: UpdateLog = env._update_log
    with pytest.raises(CaptureError, match=r"'x@present'.*ends with '@present'"):
        log.log(0, {"x@present": 1.0})
    log.log(0, {"layer/net.0/out": 1.0})  # layer digests nest their names
    with pytest.raises(
        CaptureError, match=r"'layer/net.0'.*collides with .*'probe/layer/net.0/out'"
    ):
        log.log(1, {"layer/net.0": 2.0})
    _closed_and_valid(env)


def test_exact_into_rules() -> None:
    f64, f32 = np.dtype(np.float64), np.dtype(np.float32)

    def ok(v: Any, dt: np.dtype) -> bool:
        return exact_into(v, to_array(v, "v")[0], dt)

    assert ok(np.float32(0.1), f64) and ok(np.int32(-5), f64) and ok(True, f32)
    assert not ok(0.1, f32) and not ok(np.int64(1), f64) and not ok(np.int32(1), f32)
    assert ok(2**53, f64) and not ok(2**53 + 1, f64) and ok(np.int16(7), f32)


# ------------------------------------------------------------------ item: key collisions
@pytest.mark.parametrize(
    ("info", "match"),
    [
        ({"a/b": 1.0, "a": {"b": 2.0}}, r"info key 'a/b'.*contains '/'"),
        ({"a": {"b": 2.0}, "a/b": 1.0}, r"info key 'a/b'.*contains '/'"),
        ({"x@present": 1.0}, r"info key 'x@present'.*ends with '@present'"),
        ({"a": {"x@present": 1.0}}, r"'x@present' ends with '@present'"),
        ({"": 1.0}, r"info key ''.*is empty"),
        ({1: 1.0, "1": 2.0}, r"is a int, not a str"),
    ],
)
def test_colliding_info_keys_are_refused_by_name(
    tmp_path: Path, info: dict[Any, Any], match: str
) -> None:
    env = _recorder(tmp_path / "k.h5", lambda t: (None, {"ok": float(t)} if t < 2 else info))
    _run(env, 2)
    with pytest.raises(CaptureError, match=match):
        env.step(0)
    _closed_and_valid(env)
    with Recording(env.path) as rec:
        st = rec.stream(F.STEPS)
        assert st.rows == 2
        assert all(c.startswith("info/ok") for c in st.columns if c.startswith("info/"))


def test_value_then_dict_under_one_key_is_refused(tmp_path: Path) -> None:
    env = _recorder(tmp_path / "k.h5", lambda t: (None, {"a": 1.0} if t < 2 else {"a": {"b": 2}}))
    _run(env, 2)
    with pytest.raises(CaptureError, match=r"info key 'a/b'.*collides with .*'info/a'"):
        env.step(0)
    _closed_and_valid(env)


def test_ignored_odd_key_is_not_refused(tmp_path: Path) -> None:
    inner = _Rewrite(gym.make("CartPole-v1"), lambda t: (None, {"x@present": 1.0, "y": 2.0}))
    env = RecordingWrapper(inner, tmp_path / "k.h5", seed=0, ignore_info=["x@present"])
    env.reset()
    _run(env, 3)
    _closed_and_valid(env)


# ------------------------------------------------------------------ item: unrecordable values
@pytest.mark.parametrize("batched", [True, False])
def test_int_above_int64_is_skipped_at_its_row(tmp_path: Path, batched: bool) -> None:
    """Both the batched info path and the per-key path skip the row, and lose nothing else."""

    def fn(t: int) -> tuple[Any, dict[str, Any]]:
        info: dict[str, Any] = {"n": 2**64 + t if t in (5, 9) else t}
        if not batched:
            info["nest"] = {"m": t}
        return None, info

    env = _recorder(tmp_path / "big.h5", fn)
    _run(env, 40)
    _closed_and_valid(env)
    with Recording(env.path) as rec:
        st = rec.stream(F.STEPS)
        assert st.rows == 40
        present = st.present("info/n")
        assert np.flatnonzero(~present).tolist() == [5, 9]
        n = st.read("info/n")
        assert n.tolist() == [0 if t in (5, 9) else t for t in range(40)]
        assert rec.meta[F.META_SKIPPED_INFO] == ["n"]


@pytest.mark.parametrize("late", [None, "text", [1, "a"]])
def test_non_numeric_later_value_is_skipped_not_fatal(tmp_path: Path, late: Any) -> None:
    env = _recorder(tmp_path / "s.h5", lambda t: (None, {"v": late if t == 7 else 0.5 * t}))
    _run(env, 20)
    _closed_and_valid(env)
    with Recording(env.path) as rec:
        st = rec.stream(F.STEPS)
        assert st.rows == 20
        assert np.flatnonzero(~st.present("info/v")).tolist() == [7]
        assert rec.meta[F.META_SKIPPED_INFO] == ["v"]


class _EpisodeInfo(gym.Wrapper[Any, Any, Any, Any]):
    """Adds infos that depend only on the step within the episode (holds no state)."""

    def step(self, action: Any) -> Any:
        obs, reward, term, trunc, info = self.env.step(action)
        t = self.env._elapsed_steps  # type: ignore[attr-defined]  # the TimeLimit below
        info = {"v": None if t % 3 == 0 else t, "n": 2**70 if t == 4 else 1}
        return obs, reward, term, trunc, info


def test_skipped_rows_replay_cleanly(tmp_path: Path) -> None:
    """Replay sees the same unrecordable value where the recorder skipped one: no divergence."""
    from replaykit._session.replay import restore
    from replaykit._state.envs import register_stateless_wrapper

    register_stateless_wrapper(_EpisodeInfo)
    path = tmp_path / "rep.h5"
    env = RecordingWrapper(_EpisodeInfo(gym.make("CartPole-v1")), path, seed=0, snapshot_at=[0])
    env.reset()
    _run(env, 12)
    env.close()
    with Recording(path) as rec:
        assert rec.meta[F.META_SKIPPED_INFO] == ["n", "v"]
    rep = restore(path, 0, env=_EpisodeInfo(gym.make("CartPole-v1")))
    for i in range(12):
        _, _, term, trunc, _ = rep.env.step(rep.recorded_action(i))
        if term or trunc:
            rep.env.reset()
    assert rep.verified_steps == 12


# ------------------------------------------------------------------ item: block buffers by bytes
def test_block_buffers_are_sized_by_bytes(tmp_path: Path) -> None:
    """A 1 MiB info array buffers a few rows, not 4,096 (4 GiB); every row still lands."""
    from replaykit._format.store import WRITE_BLOCK_MAX_BYTES

    big = 1 << 17  # float64 elements: 1 MiB a row

    def fn(t: int) -> tuple[Any, dict[str, Any]]:
        return None, {"arr": np.full(big, float(t))}

    env = _recorder(tmp_path / "big.h5", fn)
    _run(env, 3)
    s = env._steps
    col = s.columns["info/arr"]
    assert s.block == WRITE_BLOCK_MAX_BYTES // (big * 8) and col.buf.nbytes <= WRITE_BLOCK_MAX_BYTES
    _run(env, 20)
    _closed_and_valid(env)
    with Recording(env.path) as rec:
        arr = rec.stream(F.STEPS).read("info/arr")
    assert arr.shape == (23, big) and arr[:, 0].tolist() == [float(t) for t in range(23)]
    assert (arr == arr[:, :1]).all()


def test_large_column_arriving_mid_block(tmp_path: Path) -> None:
    """A large column first seen at row 100 ends that block early; rows stay in order."""
    big = 1 << 17

    def fn(t: int) -> tuple[Any, dict[str, Any]]:
        info: dict[str, Any] = {"small": t}
        if t >= 100:
            info["arr"] = np.full(big, float(t))
        return None, info

    env = _recorder(tmp_path / "mid.h5", fn)
    _run(env, 100)
    assert env._steps.block == 4096
    _run(env, 30)
    s = env._steps
    assert s.block == 8
    # The buffer that spans the first block holds 101 rows, but only the rows written
    # since were touched (zeroing at the block's end touched only the present row).
    _run(env, 10)
    _closed_and_valid(env)
    with Recording(env.path) as rec:
        st = rec.stream(F.STEPS)
        assert st.read("info/small").tolist() == list(range(140))
        present = st.present("info/arr")
        assert present is not None and np.flatnonzero(present).tolist() == list(range(100, 140))
        arr = st.read("info/arr")
        assert arr[:100].sum() == 0 and arr[100:, 0].tolist() == [float(t) for t in range(100, 140)]


# ------------------------------------------------------------------ vector recordings: same rules
def _vector(path: Path, fn: Callable[[int], dict[str, Any]]) -> Any:
    """Two CartPoles whose infos are ``fn(t)``; the vector env batches them per key."""
    from replaykit._session.vector import VectorRecordingWrapper, capturable

    def make() -> gym.Env[Any, Any]:
        return _Rewrite(gym.make("CartPole-v1"), lambda t: (None, fn(t)))

    vec = VectorRecordingWrapper(gym.vector.SyncVectorEnv(capturable([make] * 2)), path, seed=3)
    vec.reset()
    return vec


def test_vector_colliding_info_key_refused_before_writing(tmp_path: Path) -> None:
    two = np.zeros(2)
    vec = _vector(tmp_path / "v.h5", lambda t: {"ok": two} if t < 2 else {"new": two, "a/b": two})
    for _ in range(2):
        vec.step(np.zeros(2, np.int64))
    with pytest.raises(CaptureError, match=r"info key 'a/b'.*contains '/'"):
        vec.step(np.zeros(2, np.int64))
    vec.close()
    replaykit.validate_file(vec.path)
    with Recording(vec.path) as rec:
        cols = [c for c in rec.stream(F.STEPS).columns if c.startswith("info/")]
    assert cols == ["info/_ok", "info/ok"]  # the value and the vector env's mask


def test_vector_non_numeric_later_value_is_skipped(tmp_path: Path) -> None:
    vec = _vector(tmp_path / "v.h5", lambda t: {"v": None if t == 3 else np.full(2, t, np.int64)})
    for _ in range(6):
        vec.step(np.zeros(2, np.int64))
    vec.close()
    replaykit.validate_file(vec.path)
    with Recording(vec.path) as rec:
        present = rec.stream(F.STEPS).present("info/v")
        assert present is not None and np.flatnonzero(~present).tolist() == [3]
        assert rec.meta[F.META_SKIPPED_INFO] == ["v"]
