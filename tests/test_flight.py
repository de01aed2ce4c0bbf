"""Flight mode: the failure record, snapshot retention, and cutting a test out of a failed run.

Real CartPole envs, real torch models and optimizers, real HDF5 files. A wrapper injects the
fault (a NaN reward at a chosen step, or an exception from user code); the recorder must
write the failure record with the newest snapshot before it, keep the file bounded, and
``replaykit extract`` must cut a small recording that restores and verifies like the source.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch

import replaykit
from replaykit import testing
from replaykit._analysis import render
from replaykit._analysis.inspection import summarize
from replaykit._format import layout as F
from replaykit._format.store import Recording
from replaykit.cli import main
from replaykit.errors import ChecksumError, DivergenceError, UsageError


class FaultAt(gym.Wrapper[Any, Any, Any, Any]):
    """Returns a NaN reward (or raises) at the ``at``-th step call since it was built.

    Stateless as far as replay is concerned: the count is not env state, so a restored
    replay meets the fault at the same global step only when the count is set to match
    (``start``); the tests do that.
    """

    def __init__(self, env: gym.Env[Any, Any], at: int, start: int = 0, what: str = "nan"):
        super().__init__(env)
        self.at, self.n, self.what = at, start, what

    def step(self, action: Any) -> Any:
        obs, r, term, trunc, info = self.env.step(action)
        self.n += 1
        if self.n == self.at and self.what == "nan":
            r = float("nan")
        return obs, r, term, trunc, info


replaykit.register_stateless_wrapper(FaultAt)


def _mlp() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2))
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def _act(model: torch.nn.Module, obs: Any) -> int:
    with torch.no_grad():
        return int(model(torch.as_tensor(obs)).argmax())


def _run(
    path: Path,
    steps: int,
    *,
    fault_at: int | None = None,
    every: int = 500,
    keep: int | None = 2,
    raise_at: int | None = None,
) -> tuple[Any, torch.nn.Module, torch.optim.Optimizer]:
    """A small training loop (act, step, an Adam update every 50 steps) in flight mode."""
    model, opt = _mlp()
    env: gym.Env[Any, Any] = gym.make("CartPole-v1")
    if fault_at is not None:
        env = FaultAt(env, fault_at)
    rec = replaykit.RecordingWrapper(
        env,
        path,
        seed=0,
        snapshot_every=every,
        keep_snapshots=keep,
        track={"model": model, "opt": opt},
    )
    with rec:
        obs, _ = rec.reset()
        for t in range(steps):
            if raise_at is not None and t == raise_at:
                raise RuntimeError("loss exploded\x1b[31m (user check)")
            obs, _reward, term, trunc, _ = rec.step(_act(model, obs))
            if (t + 1) % 50 == 0:
                loss = model(torch.as_tensor(obs)).pow(2).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
                rec.log_update(loss=loss.detach())
            if term or trunc:
                obs, _ = rec.reset()
    return rec, model, opt


# ----------------------------------------------------------------------------- failure record
def test_nan_reward_writes_failure_record_with_nearest_earlier_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    rec, _, _ = _run(path, 3000, fault_at=2345)  # step index 2344 holds the NaN
    with Recording(path) as r:
        failure = r.meta[F.META_FAILURE]
        names = [s.name for s in r.snapshots]
        steps = {s.name: s.step for s in r.snapshots}
        assert np.isnan(r.stream(F.STEPS).read(F.REWARD, 2344, 2345)[0])
    assert failure[F.FAILURE_KIND] == "nonfinite"
    assert failure[F.FAILURE_WHERE] == "reward" and failure[F.FAILURE_KEY] == "reward"
    assert failure[F.FAILURE_STEP] == 2344 and failure[F.FAILURE_VALUE] == "nan"
    assert failure[F.FAILURE_UPDATE] == 2344 // 50  # updates logged before that step
    assert failure[F.FAILURE_SNAPSHOT] == "step-002000"
    assert rec.failure == failure
    # No periodic snapshot after the failure; the ones before it were not dropped after it.
    assert max(steps.values()) <= 2344
    assert names == ["step-000500", "step-001500", "step-002000"]
    # inspect says it first.
    lines = [str(p) for p in render.inspection_renderables(summarize(path))]
    assert lines[0] == (
        "failed at step 2 344 (episode "
        f"{failure[F.FAILURE_EPISODE]}, update 46): reward NaN; nearest snapshot "
        "'step-002000' at step 2 000 (update 39)"
    )


def test_exception_escaping_the_loop_is_recorded_and_shown_escaped(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    with pytest.raises(RuntimeError, match="loss exploded"):
        _run(path, 3000, raise_at=1234)
    with Recording(path) as r:
        failure = r.meta[F.META_FAILURE]
        assert r.meta[F.META_CLOSED] is True
    assert failure[F.FAILURE_KIND] == "exception"
    assert failure[F.FAILURE_STEP] == 1234
    assert failure[F.FAILURE_EXC_TYPE] == "builtins.RuntimeError"
    assert failure[F.FAILURE_MESSAGE] == "loss exploded\x1b[31m (user check)"
    assert "test_flight.py" in failure[F.FAILURE_TRACEBACK]
    assert failure[F.FAILURE_SNAPSHOT] == "step-001000"
    out = [str(p) for p in render.inspection_renderables(summarize(path))]
    assert "\x1b" not in "".join(out)  # the terminal escape is shown as text
    assert "loss exploded\\x1b[31m" in out[0]


@pytest.mark.integration
def test_uncaught_exception_is_recorded_by_the_excepthook(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    script = tmp_path / "crash.py"
    script.write_text(
        "import gymnasium as gym, replaykit\n"
        f"env = replaykit.RecordingWrapper(gym.make('CartPole-v1'), {str(path)!r}, seed=1,\n"
        "    snapshot_every=100, keep_snapshots=2)\n"
        "env.reset()\n"
        "for t in range(1000):\n"
        "    if t == 321:\n"
        "        raise ValueError('bad batch')\n"
        "    _, _, te, tr, _ = env.step(env.action_space.sample())\n"
        "    if te or tr:\n"
        "        env.reset()\n"
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 1 and "ValueError: bad batch" in proc.stderr
    with Recording(path) as r:
        failure = r.meta[F.META_FAILURE]
    assert failure[F.FAILURE_KIND] == "exception" and failure[F.FAILURE_STEP] == 321
    assert failure[F.FAILURE_SNAPSHOT] == "step-000300"


def test_mark_failure_on_env_and_training_recorders(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    with replaykit.RecordingWrapper(gym.make("CartPole-v1"), path, seed=0, snapshot_at=[5]) as env:
        env.reset()
        for _ in range(9):
            env.step(0 if env.step_count % 2 else 1)
        env.mark_failure("pole angle\nout of range")
        env.mark_failure("second one is ignored")
        for _ in range(3):
            env.step(0)
    with Recording(path) as r:
        f = r.meta[F.META_FAILURE]
    assert (f[F.FAILURE_KIND], f[F.FAILURE_STEP], f[F.FAILURE_REASON]) == (
        "marked",
        9,
        "pole angle\nout of range",
    )
    assert f[F.FAILURE_SNAPSHOT] == "step-000005"
    assert "pole angle\\nout of range" in render.failure_line(f, None)

    tpath = tmp_path / "train.h5"
    model, _opt = _mlp()
    with replaykit.TrainingRecorder(tpath, track={"model": model}, keep_snapshots=2) as tr:
        for u in range(12):
            if u % 3 == 0:
                tr.snapshot()
            tr.log_update(loss=float("nan") if u == 7 else float(u))
    with Recording(tpath) as r:
        f = r.meta[F.META_FAILURE]
        names = [s.name for s in r.snapshots]
    assert (f[F.FAILURE_KIND], f[F.FAILURE_WHERE], f[F.FAILURE_KEY]) == (
        "nonfinite",
        "update",
        "loss",
    )
    assert f[F.FAILURE_UPDATE] == 7 and f[F.FAILURE_SNAPSHOT] == "update-000006"
    # Retention kept the first and the last two before the failure, then dropped nothing.
    assert names == ["update-000000", "update-000003", "update-000006", "update-000009"]


def test_flight_mode_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="keep_snapshots must be an int >= 1"):
        replaykit.RecordingWrapper(
            gym.make("CartPole-v1"), tmp_path / "b.h5", snapshot_every=5, keep_snapshots=0
        )


# ----------------------------------------------------------------------------- retention
def _big_run(path: Path, keep: int | None, steps: int = 6000) -> list[int]:
    model = torch.nn.Linear(256, 256)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 256)).sum().backward()
    opt.step()
    sizes = []
    with replaykit.RecordingWrapper(
        gym.make("CartPole-v1"),
        path,
        seed=0,
        snapshot_every=250,
        keep_snapshots=keep,
        track={"model": model, "opt": opt},
    ) as env:
        env.reset()
        for t in range(steps):
            with torch.no_grad():
                model.weight[0, 0] = float(t)  # every snapshot differs
            _, _, te, tr, _ = env.step(t % 2)
            if te or tr:
                env.reset()
            if t % 1000 == 999:
                sizes.append(os.path.getsize(path))
    return sizes


@pytest.mark.integration
def test_retention_keeps_the_file_bounded_and_snapshots_whole(tmp_path: Path) -> None:
    path = tmp_path / "flight.h5"
    sizes = _big_run(path, keep=2)
    with Recording(path) as r:
        names = [s.name for s in r.snapshots]
        snap_bytes = r.snapshot_storage_bytes(names[-1])
        assert r.meta[F.META_RETENTION] == {"every": 250, "keep": 2, "dropped": 21}
        for name in names:
            _, tree = r.load_snapshot(name)  # checksums verified
            step = int(name.split("-")[1])
            assert float(tree["tracked"]["model"]["state_dict"]["weight"][0, 0]) == step - 1
    assert names == ["step-000250", "step-005750", "step-006000"]
    # First, last two, one reusable slot and the streams: flat after the first few snapshots.
    assert sizes[-1] - sizes[1] < snap_bytes
    assert sizes[-1] < 5 * snap_bytes + 512 * 1024
    plain = tmp_path / "plain.h5"
    _big_run(plain, keep=None)
    assert os.path.getsize(plain) > 4 * os.path.getsize(path)
    assert main(["check", str(path), "--no-sandbox"]) == 0


# ----------------------------------------------------------------------------- extract
def _update(rep: Any, model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    loss = model(torch.as_tensor(rep.obs)).pow(2).sum()
    opt.zero_grad()
    loss.backward()
    opt.step()
    rep.log_update(loss=loss.detach())


def _iteration(model: torch.nn.Module, opt: torch.optim.Optimizer) -> Any:
    """One iteration of :func:`_run`'s loop on a replay (resuming mid-iteration at a snapshot)."""

    def body(rep: Any) -> None:
        if rep.update_count < rep.step_count // 50:
            _update(rep, model, opt)  # the snapshot was taken between the step and its update
            return
        if rep.needs_reset:
            rep.env.reset()
        rep.env.step(_act(model, rep.obs))
        if rep.step_count % 50 == 0:
            _update(rep, model, opt)

    return body


def _verify_from(path: Path, snapshot: str | None, n: int) -> int:
    model, opt = _mlp()
    rep = replaykit.restore(
        path, snapshot, env=gym.make("CartPole-v1"), track={"model": model, "opt": opt}
    )
    body = _iteration(model, opt)
    with rep:
        while rep.verified_steps < n:
            body(rep)
        return int(rep.verified_steps)


def test_extract_is_small_self_contained_and_verifies_like_the_source(tmp_path: Path) -> None:
    src = tmp_path / "run.h5"
    _run(src, 3000, keep=None, every=1000)
    out = tmp_path / "fixture.h5"
    res = replaykit.extract(src, out, snapshot="step-002000", steps=200)
    assert (res.snapshot, res.first_step, res.steps, res.updates) == ("step-002000", 1999, 201, 5)
    assert res.bytes == out.stat().st_size <= 64 * 1024
    assert main(["check", str(out), "--no-sandbox"]) == 0
    with Recording(out) as r:
        assert r.format_version == F.FIRST_ROW_VERSION
        assert [s.name for s in r.snapshots] == ["step-002000"]
        st = r.stream(F.STEPS)
        assert (st.first, st.rows) == (1999, 2200)
        with Recording(src) as s:
            for col in st.columns:
                assert np.array_equal(
                    st.read(col, 2000, 2200), s.stream(F.STEPS).read(col, 2000, 2200)
                )
        with pytest.raises(UsageError, match="rows 0 to 1998 are in the recording it was cut"):
            st.read(F.REWARD, 0, 10)
        assert r.meta[F.META_EXTRACT][F.EXTRACT_SNAPSHOT] == "step-002000"
    # Restores and verifies exactly like the original, to its last step.
    assert _verify_from(out, None, 200) == 200
    assert _verify_from(src, "step-002000", 200) == 200


def test_extract_through_failure_and_its_guards(tmp_path: Path) -> None:
    src = tmp_path / "run.h5"
    _run(src, 3000, fault_at=2345)
    out = tmp_path / "bug.h5"
    res = replaykit.extract(src, out)
    assert res.snapshot == "step-002000" and res.first_step == 1999 and res.steps == 346
    assert res.failure is not None and res.failure[F.FAILURE_STEP] == 2344
    with Recording(out) as r:
        assert r.meta[F.META_FAILURE] == res.failure
    # Existing output is refused (nothing touched) unless forced.
    before = out.read_bytes()
    with pytest.raises(UsageError, match="already exists"):
        replaykit.extract(src, out)
    assert out.read_bytes() == before
    replaykit.extract(src, out, overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    # No periodic snapshot was taken after the failure, so none can be picked.
    with pytest.raises(UsageError, match="has no snapshot 'step-002500'"):
        replaykit.extract(src, tmp_path / "x.h5", snapshot="step-002500")
    # A damaged source is refused before anything is written.
    bad = tmp_path / "bad.h5"
    shutil.copy(src, bad)
    with h5py.File(bad, "r+") as f:
        ds = f["streams/steps/reward"]
        ds[2100] = 123.0
    with pytest.raises(ChecksumError):
        replaykit.extract(bad, tmp_path / "y.h5")
    assert not (tmp_path / "y.h5").exists()
    # CLI: exit 2 on a user mistake, one line.
    assert main(["extract", str(src), "--out", str(out)]) == 2
    assert (
        main(
            [
                "extract",
                str(src),
                "--out",
                str(tmp_path / "z.h5"),
                "--steps",
                "3",
                "--through-failure",
            ]
        )
        == 2
    )


@pytest.mark.integration
def test_assert_fixed_fails_while_the_bug_is_there_and_passes_once_fixed(tmp_path: Path) -> None:
    src = tmp_path / "run.h5"
    _run(src, 3000, fault_at=2345)
    out = tmp_path / "bug.h5"
    replaykit.extract(src, out)

    def replay(fault: bool) -> Any:
        model, opt = _mlp()
        # The same wrapper chain as recorded; "fixed" means the wrapper no longer injects.
        env = FaultAt(gym.make("CartPole-v1"), 2345, start=2000, what="nan" if fault else "")
        return replaykit.restore(out, env=env, track={"model": model, "opt": opt}), model, opt

    body_for = _iteration

    rep, model, opt = replay(fault=True)
    with pytest.raises(testing.FailureStillHappensError, match="reward NaN"):
        testing.assert_fixed(rep, body_for(model, opt))
    assert rep.verified_steps == 345  # bit-exact up to and including the failing step
    rep, model, opt = replay(fault=False)
    assert testing.assert_fixed(rep, body_for(model, opt)) == 344

    # A loop that diverges before the failure point is reported as a divergence.
    rep, model, opt = replay(fault=True)

    def wrong(rep: Any) -> None:
        rep.env.step(1)

    with pytest.raises(DivergenceError):
        testing.assert_fixed(rep, wrong)
    with pytest.raises(UsageError, match="holds no failure record"):
        clean = tmp_path / "clean.h5"
        _run(clean, 600, keep=None, every=300)
        rep2 = replaykit.restore(
            clean,
            env=gym.make("CartPole-v1"),
            track=dict(zip(("model", "opt"), _mlp(), strict=True)),
        )
        testing.assert_fixed(rep2, wrong)


def test_training_recording_failure_extract_and_assert_fixed(tmp_path: Path) -> None:
    def make() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        net = torch.nn.Linear(3, 1)
        return net, torch.optim.SGD(net.parameters(), lr=0.1)

    def body_for(net: torch.nn.Module, opt: torch.optim.Optimizer, fault: bool) -> Any:
        def body(rep: Any) -> None:
            u = rep.update_count
            loss = net(torch.ones(1, 3) * (u % 5)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            rep.log_update(loss=torch.tensor(float("nan")) if fault and u == 37 else loss.detach())

        return body

    src, out = tmp_path / "train.h5", tmp_path / "bug.h5"
    net, opt = make()
    with replaykit.TrainingRecorder(src, track={"net": net, "opt": opt}, keep_snapshots=2) as rec:
        body = body_for(net, opt, True)
        for u in range(60):
            if u % 10 == 0:
                rec.snapshot()
            body(rec)
    assert rec.failure is not None and rec.failure[F.FAILURE_UPDATE] == 37
    assert (
        render.failure_line(rec.failure, None)
        == "failed at update 37: update value 'loss' is nan; no snapshot precedes it"
    )
    res = replaykit.extract(src, out, pytest_path=tmp_path / "test_bug.py")
    assert (res.snapshot, res.updates) == ("update-000030", 8)
    assert "replaykit.restore_training(FIXTURE" in (tmp_path / "test_bug.py").read_text()
    net, opt = make()
    rep = replaykit.restore_training(out, track={"net": net, "opt": opt})
    with pytest.raises(testing.FailureStillHappensError, match="update 37"):
        testing.assert_fixed(rep, body_for(net, opt, True))
    net, opt = make()
    rep = replaykit.restore_training(out, track={"net": net, "opt": opt})
    assert testing.assert_fixed(rep, body_for(net, opt, False)) == 7


def test_extract_never_starts_from_a_snapshot_taken_after_the_failure(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    with replaykit.RecordingWrapper(gym.make("CartPole-v1"), path, seed=0, snapshot_at=[3]) as env:
        env.reset()
        for _ in range(6):
            env.step(1 if env.step_count % 2 else 0)
        env.mark_failure("checked by hand")
        env.step(0)
        env.snapshot("late")  # asked for explicitly: kept, but never picked for the failure
        env.step(1)
    res = replaykit.extract(path, tmp_path / "a.h5")
    assert res.snapshot == "step-000003" and res.failure is not None
    with pytest.raises(UsageError, match="was taken after the failure"):
        replaykit.extract(path, tmp_path / "b.h5", snapshot="late")
    assert not (tmp_path / "b.h5").exists()
    assert render.failure_line(res.failure, {"name": "step-000003", "step": 3}).endswith(
        "nearest snapshot 'step-000003' at step 3"
    )
