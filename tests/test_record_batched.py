"""Batched recording paths write the same file, row for row, as the per-row paths.

Each test records the same run twice: once as users do (the batched paths on), once with
the batched path switched off (every row through the general, value-by-value writer), and
compares every column, dtype and presence flag of both files, row by row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import replaykit
from replaykit._format.store import Recording
from replaykit._session.record import RecordingWrapper
from replaykit._session.vector import VectorRecordingWrapper
from replaykit.errors import CaptureError


def _columns(path: Path) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray | None]]:
    out = {}
    with Recording(path) as rec:
        for stream in ("steps", "resets"):
            s = rec.stream(stream)
            for c in s.columns:
                out[(stream, c)] = (s.read(c), s.present(c))
    return out


def _same_rows(a: Path, b: Path) -> int:
    """Assert both files hold the same columns, dtypes, values and flags; return the rows."""
    ca, cb = _columns(a), _columns(b)
    with Recording(a) as ra, Recording(b) as rb:
        assert [i.meta for i in ra.snapshots] == [i.meta for i in rb.snapshots]
    assert sorted(ca) == sorted(cb)
    for key, (va, pa) in ca.items():
        vb, pb = cb[key]
        assert va.dtype == vb.dtype and va.shape == vb.shape, key
        for row in range(len(va)):
            assert va[row].tobytes() == vb[row].tobytes(), (key, row, va[row], vb[row])
        assert (pa is None) == (pb is None), key
        if pa is not None:
            assert pb is not None and np.array_equal(pa, pb), key
    return len(ca[("steps", "reward")][0])


# ----------------------------------------------------------------------------- vector envs
class _Countdown(gym.Env[np.ndarray, int]):
    """Ends its episodes every ``length`` steps; infos on some steps; ``bad`` at one step.

    ``clock`` is shared by the sub-envs of one vector env (one tick per vector step), so a
    value can change class at one vector step in every sub-env at once.
    """

    def __init__(self, length: int, clock: list[int], bad_at: int | None) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
        self.action_space = gym.spaces.Discrete(3)
        self.length, self.clock, self.bad_at = length, clock, bad_at
        self.k = 0

    def reset(self, *, seed: int | None = None, options: Any = None) -> Any:
        super().reset(seed=seed)
        self.k = 0
        return np.zeros(3, np.float32), {"start": 1}

    def step(self, action: int) -> Any:
        self.k += 1
        t = self.clock[0]
        obs = np.array([self.k, action, t], np.float32)
        info: dict[str, Any] = {}
        if t % 5 == 0:
            info["k"] = 0.5 if t == self.bad_at else self.k
        return obs, float(self.k * (action + 1)), self.k % self.length == 0, False, info


class _CountdownAdapter:
    name: ClassVar[str] = "tests.Countdown"

    def capture(self, env: Any) -> Any:
        return {"k": env.k}

    def restore(self, env: Any, state: Any) -> None:
        env.k = int(state["k"])


replaykit.register_env_adapter(_Countdown, _CountdownAdapter())


def _record_vector(
    path: Path,
    mode: AutoresetMode,
    steps: int,
    *,
    batched: bool,
    env: str = "countdown",
    bad_at: int | None = None,
) -> str | None:
    clock = [0]
    if env == "countdown":
        fns = [lambda n=n: _Countdown(n, clock, bad_at) for n in (3, 4, 7, 2)]
    else:
        fns = [lambda: gym.make("CartPole-v1")] * 4
    # Commits every 64 rows and a snapshot and a reset mid-block: each moves the batched
    # rows into the buffers (and brings the episode counters up to date) at another row.
    vec = VectorRecordingWrapper(
        SyncVectorEnv(fns, autoreset_mode=mode),
        path,
        seed=5,
        commit_every_steps=64,
        snapshot_at=[50],
    )
    if not batched:
        vec._start_batched = lambda: None  # type: ignore[method-assign]
    refused = None
    try:
        vec.reset()
        for _ in range(steps):
            clock[0] += 1
            try:
                vec.step(vec.action_space.sample())
            except CaptureError as exc:
                refused = str(exc)
                break
            if vec.step_count == 120:
                vec.reset(options={"reset_mask": np.array([True, False, True, False])})
    finally:
        vec.close()
    assert (vec._vfast is not None) == batched
    return refused


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_vector_batched_rows_match_the_general_path(tmp_path: Path, mode: AutoresetMode) -> None:
    """Sub-envs end episodes at different steps (mid-block), autoreset, infos come and go."""
    fast, slow = tmp_path / "fast.h5", tmp_path / "slow.h5"
    _record_vector(fast, mode, 300, batched=True)
    _record_vector(slow, mode, 300, batched=False)
    assert _same_rows(fast, slow) == 300
    with Recording(fast) as rec:
        s = rec.stream("steps")
        ends = s.read("terminated")
        episodes = s.read("episode")
    # Sub-env 3 ends every 2 steps, sub-env 2 every 7: rows where only some ended.
    assert ends[:, 3].sum() > ends[:, 2].sum() > 0
    if mode == AutoresetMode.NEXT_STEP:
        # The step after an end is the reset step: the episode counter moves there.
        assert episodes[2, 3] == episodes[1, 3] + 1 and episodes[1, 3] == episodes[0, 3]
    else:
        assert episodes[1, 3] == episodes[0, 3] + 1


def test_vector_batched_rows_match_across_blocks(tmp_path: Path) -> None:
    """CartPole sub-envs over more than one 4096-row block and several commits."""
    fast, slow = tmp_path / "fast.h5", tmp_path / "slow.h5"
    _record_vector(fast, AutoresetMode.NEXT_STEP, 4500, batched=True, env="cartpole")
    _record_vector(slow, AutoresetMode.NEXT_STEP, 4500, batched=False, env="cartpole")
    assert _same_rows(fast, slow) == 4500


def test_vector_refused_value_mid_block_stops_both_paths_at_that_step(tmp_path: Path) -> None:
    fast, slow = tmp_path / "fast.h5", tmp_path / "slow.h5"
    why_fast = _record_vector(fast, AutoresetMode.NEXT_STEP, 100, batched=True, bad_at=40)
    why_slow = _record_vector(slow, AutoresetMode.NEXT_STEP, 100, batched=False, bad_at=40)
    assert why_fast is not None and why_fast == why_slow
    assert "info/k" in why_fast and "int64" in why_fast and "float64" in why_fast
    assert _same_rows(fast, slow) == 39


# ----------------------------------------------------------------------------- single envs
class _BoxEnv(gym.Env[np.ndarray, np.ndarray]):
    """Box obs (float64) and actions (float32), an info dict every step; ends every 37 steps."""

    def __init__(self, one_key: bool = False) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (5,), np.float64)
        self.action_space = gym.spaces.Box(-1, 1, (2,), np.float32)
        self.k = 0
        self.t = 0
        self.one_key = one_key

    def reset(self, *, seed: int | None = None, options: Any = None) -> Any:
        super().reset(seed=seed)
        self.k = 0
        return np.zeros(5), {}

    def step(self, action: np.ndarray) -> Any:
        self.k += 1
        self.t += 1
        obs = np.linspace(0, self.t, 5)
        info: dict[str, Any] = {"x": np.float64(self.t), "ctrl": np.float32(-self.t)}
        if self.t % 50 == 0:
            info = {"ctrl": info["ctrl"], "x": info["x"]}  # another key order
        if self.one_key:
            info = {"x": np.float64(self.t) if self.t != 70 else float(self.t)}
        return obs, np.float64(0.5 * self.t), self.k % 37 == 0, False, info


def _probes(t: int, bad_at: int | None) -> dict[str, Any]:
    """The probes of step ``t``: logits every step; other names, orders and values at times."""
    base = np.arange(4, dtype=np.float32).reshape(2, 2) + t
    probes: dict[str, Any] = {"logits": base[:, 0]}  # a strided view: copied as its values
    if t % 4 == 0:
        probes["value"] = np.array(t * 0.25)  # a second name on some steps only
    if t in (40, 41):
        probes = dict(reversed(list(probes.items())))  # same names, another order
    if t == 33:
        probes["logits"] = np.array([np.nan, 1.0], np.float32)  # a failure to detect
    if 60 <= t < 66:
        probes = {}  # steps without probes
    if t == bad_at:
        probes["logits"] = base[:, 0].astype(np.float64)  # another dtype: refused
    return probes


def _record_single(
    path: Path,
    steps: int,
    mode: str,
    bad_at: int | None = None,
    one_key: bool = False,
    info_rows: list[int] | None = None,
) -> Any:
    """Record ``steps`` steps with probes; ``mode``: batched, probes per row, or all per row.

    ``info_rows`` collects the rows whose info the fast path wrote value by value.
    """
    rec = RecordingWrapper(_BoxEnv(one_key), path, seed=0, detect_failures=True)
    if info_rows is not None:
        row_info = rec._row_info

        def counted(info: Any, p: int) -> None:
            info_rows.append(rec.step_count)
            row_info(info, p)

        rec._row_info = counted  # type: ignore[method-assign]
    if mode != "batched":
        rec._probe_learned = True  # the batched probe spec stays empty
    refused = None
    rec.reset()
    a = np.zeros(2, np.float32)
    for t in range(1, steps + 1):
        for name, value in _probes(t, bad_at).items():
            rec.probe(name, value)
        try:
            _, _, term, trunc, _ = rec.step(a)
        except CaptureError as exc:
            refused = str(exc)
            break
        if mode == "per-row":
            rec._fast = None  # every later row through the value-by-value writer
        if term or trunc:
            rec.reset()
    batched = bool(rec._probe_spec)
    rec.close()  # checks the rows still buffered for NaN/infinity
    failure = rec.failure
    assert batched == (mode == "batched")
    return refused, failure


@pytest.mark.parametrize("steps", [150, 4500])  # within one block, and across blocks
def test_batched_probes_match_the_per_row_path(tmp_path: Path, steps: int) -> None:
    paths = {m: tmp_path / f"{m}.h5" for m in ("batched", "probes-per-row", "per-row")}
    results = {m: _record_single(p, steps, m) for m, p in paths.items()}
    assert results["batched"] == results["probes-per-row"] == results["per-row"]
    refused, failure = results["batched"]
    assert refused is None
    assert failure is not None and failure["step"] == 32 and failure["key"] == "probe/logits"
    assert _same_rows(paths["batched"], paths["per-row"]) == steps
    assert _same_rows(paths["batched"], paths["probes-per-row"]) == steps
    with Recording(paths["batched"]) as rec:
        s = rec.stream("steps")
        logits, value_present = s.read("probe/logits"), s.present("probe/value")
    assert logits[0].tolist() == [1.0, 3.0] and logits[99].tolist() == [100.0, 102.0]
    assert value_present is not None and value_present[3] and not value_present[4]
    assert not logits[60:65].any()  # no probes logged: zeros, absent


def test_refused_probe_mid_block_stops_both_paths_at_that_step(tmp_path: Path) -> None:
    paths = {m: tmp_path / f"{m}.h5" for m in ("batched", "per-row")}
    results = {m: _record_single(p, 150, m, bad_at=77) for m, p in paths.items()}
    assert results["batched"] == results["per-row"]
    refused = results["batched"][0]
    assert refused is not None and "probe 'logits'" in refused and "float64" in refused
    assert _same_rows(paths["batched"], paths["per-row"]) == 76


def test_single_key_info_batched_matches_the_per_row_path(tmp_path: Path) -> None:
    """One info key (the batched read returns it twice); a float for np.float64 at step 70."""
    paths = {m: tmp_path / f"{m}.h5" for m in ("batched", "per-row")}
    info_rows: list[int] = []
    results = {
        "batched": _record_single(
            paths["batched"], 150, "batched", one_key=True, info_rows=info_rows
        ),
        "per-row": _record_single(paths["per-row"], 150, "per-row", one_key=True),
    }
    assert results["batched"] == results["per-row"]
    assert info_rows == [1, 69]  # learned at the first fast step; the float at step 70
    assert _same_rows(paths["batched"], paths["per-row"]) == 150
    with Recording(paths["batched"]) as rec:
        x = rec.stream("steps").read("info/x")
    assert x.dtype == np.float64 and x.tolist() == [float(t) for t in range(1, 151)]
