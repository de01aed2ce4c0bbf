"""Tests of training sessions: resumable loaders, envless recordings, layer localisation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

import replaykit
from replaykit import (
    Counters,
    LayerTracer,
    ResumableLoader,
    TrainingRecorder,
    first_divergent_module,
    first_update_divergence,
    params_digest,
    restore_training,
)
from replaykit._state.modelstate import capture_object, restore_object
from replaykit.errors import DivergenceError, ReplaykitWarning, StateMismatchError, UsageError


class NoisyIndexed(Dataset):
    """Returns (index, random noise): the noise comes from the RNG of whoever loads it."""

    def __init__(self, n: int = 40) -> None:
        self.n = n
        self.forbidden: set[int] = set()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        if i in self.forbidden:
            raise RuntimeError(f"index {i} was loaded again after the restore")
        return i, torch.randn(3)


def _loader(ds: Dataset, workers: int, seed: int = 7) -> ResumableLoader:
    return ResumableLoader(
        DataLoader(
            ds,
            batch_size=4,
            shuffle=True,
            num_workers=workers,
            generator=torch.Generator().manual_seed(seed),
        )
    )


def _same(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("workers", [2, 0])
def test_loader_resumes_mid_epoch_with_exactly_the_remaining_batches(
    tmp_path: Path, workers: int
) -> None:
    torch.manual_seed(0)
    ds = NoisyIndexed()
    loader = _loader(ds, workers)
    path = tmp_path / "loader.h5"
    seen: list[Any] = []
    with TrainingRecorder(path, track={"loader": loader}) as rec:
        while loader.epoch < 2:
            for batch in loader:
                seen.append(batch)
                rec.log_update(first=batch[0][0])
                if loader.epoch == 0 and loader.position == 3:
                    rec.snapshot("mid")
    assert len(seen) == 20
    # Fresh objects, a disturbed global RNG: only the snapshot can make them line up.
    torch.manual_seed(12345)
    ds2 = NoisyIndexed()
    ds2.forbidden = {int(i) for b in seen[:3] for i in b[0]}
    loader2 = _loader(ds2, workers, seed=99)
    with restore_training(path, "mid", track={"loader": loader2}) as rep:
        assert (loader2.epoch, rep.update_count) == (0, 3)
        rest = list(loader2)
        assert loader2.epoch == 1
        assert _same(seen[3:10], rest)  # the rest of epoch 0, in order, bit-identical
        ds2.forbidden = set()
        nxt = list(loader2)
        assert _same(seen[10:], nxt)  # and the next epoch too
        for b in rest + nxt:
            rep.log_update(first=b[0][0])
        assert rep.verified_updates == 17


def test_loader_snapshot_between_epochs_and_abandoned_epochs() -> None:
    ds = NoisyIndexed(12)
    loader = _loader(ds, 0)
    first = list(loader)
    state = capture_object(loader)
    second = list(loader)
    loader2 = _loader(NoisyIndexed(12), 0, seed=3)
    restore_object(loader2, state)
    a = list(loader2)
    assert loader2.epoch == 2
    assert [x[0].tolist() for x in a] == [x[0].tolist() for x in second]
    assert [x[0].tolist() for x in first] != [x[0].tolist() for x in second]
    # Breaking out of an epoch still counts it.
    it = iter(loader2)
    next(it)
    iter(loader2)
    assert loader2.epoch == 3


def test_loader_restore_checks_the_dataset_fits() -> None:
    state = capture_object(_loader(NoisyIndexed(40), 0))
    with pytest.raises(StateMismatchError, match="dataset length"):
        restore_object(_loader(NoisyIndexed(41), 0), state)


def test_loader_refuses_what_it_cannot_resume() -> None:
    with pytest.raises(UsageError, match="generator"):
        ResumableLoader(DataLoader(NoisyIndexed(), batch_size=4, shuffle=True))
    with pytest.raises(UsageError, match="automatic batching"):
        ResumableLoader(DataLoader(NoisyIndexed(), batch_size=None))

    class Stream(IterableDataset):
        def __iter__(self) -> Any:
            return iter(range(3))

    with pytest.raises(UsageError, match="map-style"):
        ResumableLoader(DataLoader(Stream(), batch_size=2))


def test_counters_capture_restore_and_refuse_unknown_names() -> None:
    c = Counters(update=3, epoch=1)
    c.update += 1
    state = capture_object(c)
    c2 = Counters(update=0, epoch=0)
    restore_object(c2, state)
    assert (c2.update, c2.epoch) == (4, 1)
    with pytest.raises(UsageError, match="not declared"):
        c2.step = 1
    with pytest.raises(StateMismatchError):
        restore_object(Counters(update=0), state)


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Dropout(0.2), nn.Linear(8, 1))


def _steps(
    net: nn.Module,
    opt: torch.optim.Optimizer,
    log: Any,
    n: int,
    lr_scale: float = 1.0,
) -> None:
    for _ in range(n):
        x = torch.randn(5, 3)
        loss = net(x).pow(2).mean() * lr_scale
        opt.zero_grad()
        loss.backward()
        opt.step()
        log(loss=loss.detach(), params=params_digest(net))


def test_training_recorder_restores_in_fresh_objects_and_verifies(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = _net()
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    path = tmp_path / "t.h5"
    with TrainingRecorder(path, track={"net": net, "opt": opt}, metadata={"run": 1}) as rec:
        _steps(net, opt, rec.log_update, 4)
        name = rec.snapshot(extra={"note": "mid"})
        _steps(net, opt, rec.log_update, 6)
    assert name == "update-000004"
    with replaykit.Recording(path) as r:
        assert r.meta["user"] == {"run": 1} and r.meta["update_probe_order"] == ["loss", "params"]
    torch.manual_seed(99)  # fresh objects, disturbed RNGs: only the snapshot lines them up
    net2 = _net()
    opt2 = torch.optim.Adam(net2.parameters(), lr=0.01)
    with restore_training(path, name, track={"net": net2, "opt": opt2}) as rep:
        assert rep.extra == {"note": "mid"} and rep.updates_left == 6
        _steps(net2, opt2, rep.log_update, 6)
        assert rep.verified_updates == 6
    # A changed loss is caught at the first update after the snapshot, naming the probe.
    net3 = _net()
    opt3 = torch.optim.Adam(net3.parameters(), lr=0.01)
    with (
        restore_training(path, name, track={"net": net3, "opt": opt3}) as rep,
        pytest.raises(DivergenceError) as exc,
    ):
        _steps(net3, opt3, rep.log_update, 6, lr_scale=1.5)
    report = exc.value.report
    assert (report.stream, report.row, report.key) == ("updates", 4, "update/loss")


def test_restore_training_refuses_missing_tracked_objects(tmp_path: Path) -> None:
    net = _net()
    path = tmp_path / "t.h5"
    with TrainingRecorder(path, track={"net": net}) as rec:
        rec.snapshot("s")
    with pytest.raises(StateMismatchError, match="'net'"):
        restore_training(path, "s", track={})


def test_nonfinite_updates_and_snapshots_are_reported(tmp_path: Path) -> None:
    net = nn.Linear(2, 1)
    path = tmp_path / "nan.h5"
    with TrainingRecorder(path, track={"net": net}) as rec:
        rec.log_update(loss=np.float32(1.0))
        rec.snapshot("ok")
        rec.log_update(loss=np.float32(2.0), vec=np.array([1.0, np.inf]))
        rec.log_update(loss=np.float32(np.nan), vec=np.array([1.0, 2.0]))
        with torch.no_grad():
            net.weight[0, 1] = float("nan")
        with pytest.warns(ReplaykitWarning, match="non-finite"):
            rec.snapshot("bad")
    with replaykit.Recording(path) as r:
        first = r.meta["first_nonfinite_update"]
        assert (first["update"], first["probe"], first["index"]) == (1, "vec", [1])
        bad = next(s for s in r.snapshots if s.name == "bad")
        assert bad.meta["nonfinite"]["index"] == [0, 1]
        assert next(s for s in r.snapshots if s.name == "ok").meta["nonfinite"] is None
    with restore_training(path, "ok", track={"net": nn.Linear(2, 1)}) as rep:
        rep.log_update(loss=np.float32(2.0), vec=np.array([1.0, np.inf]))
        assert rep.first_nonfinite == {"update": 1, "probe": "vec", "index": [1], "value": "inf"}
        with pytest.raises(DivergenceError) as exc:
            rep.log_update(loss=np.float32(3.0), vec=np.array([1.0, 2.0]))
    note = exc.value.report.note
    assert "update 1, probe 'vec', element [1]: inf" in note


def test_recording_wrapper_update_stream_and_metadata(tmp_path: Path) -> None:
    path = tmp_path / "env.h5"
    env = replaykit.RecordingWrapper(gym.make("CartPole-v1"), path, seed=0)
    env.reset()
    env.step(0)
    assert env.log_update(loss=1.5) == 0
    env.set_metadata("layer_note", [1, 2])
    env.step(1)
    env.log_update(loss=np.nan)
    env.close()
    with replaykit.Recording(path) as r:
        assert r.meta["user"]["layer_note"] == [1, 2]
        assert r.meta["first_nonfinite_update"]["update"] == 1
        assert r.stream("updates").read("step").tolist() == [1, 2]


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3, 4)
        self.q1, self.q2 = nn.Linear(4, 1), nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.body(x))
        return self.q1(h), self.q2(h)


def test_layer_tracer_records_outputs_then_gradients_in_execution_order() -> None:
    torch.manual_seed(0)
    m = TwoHeads()
    with LayerTracer({"m": m}) as tr:
        q1, q2 = m(torch.randn(2, 3))
        (q1.sum() + 2 * q2.sum()).backward()
    order = tr.order
    assert order[:4] == ["layer/m.body/out", "layer/m.q1/out", "layer/m.q2/out", "layer/m/out"]
    assert set(order[4:]) >= {"layer/m.body/grad", "layer/m.q1/grad", "layer/m.q2/grad"}
    assert order.index("layer/m.body/grad") == len(order) - 1  # backward reaches it last
    probes = tr.probes()
    assert [int(v[0]) for v in probes.values()] == list(range(len(order)))
    assert all(v.dtype == np.uint64 and v.shape == (2,) for v in probes.values())
    # The hooks are gone after the block, and a disabled tracer records nothing.
    m(torch.randn(2, 3))
    assert tr.order == order
    with LayerTracer({"m": m}, enabled=False) as off:
        m(torch.randn(2, 3))
    assert off.probes() == {}


def test_diff_names_first_update_probe_and_first_module(tmp_path: Path) -> None:
    # A one-line change (the q2 loss weight) from update 1 on.
    def record(path: Path, scale: float, localize: bool) -> None:
        torch.manual_seed(0)
        m = TwoHeads()
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        with TrainingRecorder(path) as rec:
            for u in range(3):
                w = 1.0 if u == 0 else scale
                with LayerTracer({"m": m}, enabled=localize and u == 1) as tr:
                    q1, q2 = m(torch.randn(4, 3))
                    q1_loss, q2_loss = q1.pow(2).mean(), w * q2.pow(2).mean()
                    opt.zero_grad()
                    (q1_loss + q2_loss).backward()
                opt.step()
                rec.log_update(q1_loss=q1_loss.detach(), q2_loss=q2_loss.detach(), **tr.probes())

    a, b, al, bl = (tmp_path / f"{n}.h5" for n in ("a", "b", "al", "bl"))
    record(a, 1.0, False)
    record(b, 1.1, False)
    res = replaykit.diff_recordings(a, b)
    first = first_update_divergence(res)
    assert first is not None and (first.row, first.key) == (1, "updates/probe/q2_loss")
    record(al, 1.0, True)
    record(bl, 1.1, True)
    layer = first_divergent_module(replaykit.diff_recordings(al, bl))
    assert layer is not None
    assert (layer.module, layer.kind, layer.update) == ("m.q2", "grad", 1)
    assert "'m.q2'" in layer.describe()
    assert first_divergent_module((al, al)) is None
    assert first_divergent_module((al, bl)) == layer
