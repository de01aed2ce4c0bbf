"""Snapshot hot paths: the non-finite scan folded into the write, reads into live memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from replaykit._format.store import Recording, RecordingWriter
from replaykit._state.modelstate import first_nonfinite


def _write(path: Path, tracked: Any, direct_io: bool | None = False) -> Any:
    with RecordingWriter(path, meta={}, provenance={}, direct_io=direct_io) as w:
        tree = {"tracked": tracked, "extra": {"nan_outside": np.array([np.nan])}}
        w.write_snapshot("s", tree, {"step": 0}, nonfinite_under="tracked")
        hit = w.last_nonfinite
    with Recording(path) as r:
        meta = r.snapshots[0].meta
    return hit, meta["nonfinite"]


@pytest.mark.parametrize("direct_io", [False, True])
def test_large_array_nonfinite_is_found_in_the_write_pass(tmp_path: Path, direct_io: bool) -> None:
    big = np.zeros((600, 1000), np.float32)  # 2.4 MB: written in several chunks
    big[431, 977] = -np.inf
    big[599, 999] = np.nan
    tracked = {"model": {"a": np.ones(3), "w": big}}
    hit, meta = _write(tmp_path / "s.h5", tracked, direct_io)
    assert hit[0] == "/model/w" and hit[1] == (431, 977) and hit[2] == -np.inf
    assert hit == first_nonfinite(tracked)
    assert meta == {"path": "/model/w", "index": [431, 977], "value": "-inf"}


def test_first_in_tree_order_across_floats_small_and_large_arrays(tmp_path: Path) -> None:
    big = np.zeros(100_000, np.float64)
    big[5] = np.nan
    tracked = {"m": {"big": big, "lr": float("inf"), "small": np.array([1.0, np.nan])}}
    hit, _ = _write(tmp_path / "a.h5", tracked)
    assert hit[:2] == first_nonfinite(tracked)[:2] == ("/m/big", (5,))
    tracked = {"m": {"lr": float("inf"), "big": big}}
    hit, _ = _write(tmp_path / "b.h5", tracked)
    assert hit == first_nonfinite(tracked) == ("/m/lr", (), float("inf"))
    tracked = {"m": {"ok": np.ones(5), "small": np.array([[1.0, 2.0], [np.inf, 0.0]])}}
    hit, _ = _write(tmp_path / "c.h5", tracked)
    assert hit == first_nonfinite(tracked) == ("/m/small", (1, 0), np.inf)


def test_only_the_scanned_part_of_the_tree_counts(tmp_path: Path) -> None:
    tracked = {"m": {"w": np.arange(100_000, dtype=np.float32), "n": np.arange(3)}}
    hit, meta = _write(tmp_path / "s.h5", tracked)
    assert hit is None and meta is None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_tensor_dtypes_including_bfloat16(tmp_path: Path, dtype: torch.dtype) -> None:
    t = torch.zeros(70_000, dtype=dtype)  # large enough to be written chunk-wise
    t[65_432] = float("nan")
    tracked = {"net": {"w": t}}
    hit, _ = _write(tmp_path / "s.h5", tracked)
    expected = first_nonfinite(tracked)
    assert expected is not None
    assert hit[:2] == expected[:2] == ("/net/w", (65_432,))
    assert np.isnan(hit[2])
    t[65_432] = 1.0
    t[7] = float("-inf")
    hit, _ = _write(tmp_path / "t.h5", tracked)
    assert hit == ("/net/w", (7,), float("-inf"))


def _recorded_mlp(path: Path) -> torch.nn.Module:
    import gymnasium as gym

    import replaykit

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.Linear(1024, 4))
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 512)).sum().backward()
    opt.step()
    rec = replaykit.RecordingWrapper(gym.make("CartPole-v1"), path, seed=0)
    rec.track("model", model)
    rec.track("optimizer", opt)
    rec.reset()
    rec.snapshot("s")
    rec.close()
    return model


def test_load_reads_large_arrays_straight_into_the_targets(tmp_path: Path) -> None:
    path = tmp_path / "m.h5"
    model = _recorded_mlp(path)
    dest = np.empty((1024, 512), np.float32)
    asked: list[Any] = []

    def targets(offered: Any) -> dict[str, np.ndarray]:
        asked.append(dict(offered))
        return {"/tracked/model/state_dict/0.weight": dest, "/no/such/path": np.empty(3)}

    with Recording(path) as r:
        _, tree = r.load_snapshot("s", targets=targets)
    (offered,) = asked
    assert offered["/tracked/model/state_dict/0.weight"] == (np.dtype("<f4"), (1024, 512))
    assert "/tracked/model/state_dict/0.bias" not in offered  # small: packed, not offered
    w = tree["tracked"]["model"]["state_dict"]["0.weight"]
    assert np.shares_memory(w.numpy(), dest)
    assert torch.equal(w, model.state_dict()["0.weight"])


def test_restore_fills_the_live_parameters_in_place(tmp_path: Path) -> None:
    import replaykit

    path = tmp_path / "m.h5"
    model = _recorded_mlp(path)
    torch.manual_seed(1)
    fresh = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.Linear(1024, 4))
    opt = torch.optim.Adam(fresh.parameters())
    ptrs = [p.data_ptr() for p in fresh.parameters()]
    with replaykit.restore(path, "s", track={"model": fresh, "optimizer": opt}):
        pass
    assert [p.data_ptr() for p in fresh.parameters()] == ptrs
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    state = opt.state_dict()["state"]
    assert set(state) == {0, 1, 2, 3} and state[0]["exp_avg"].shape == (1024, 512)


def test_damaged_array_read_into_live_memory_says_the_objects_are_undefined(
    tmp_path: Path,
) -> None:
    import h5py

    import replaykit
    from replaykit.errors import ChecksumError

    path = tmp_path / "m.h5"
    _recorded_mlp(path)
    with h5py.File(path, "r") as f:
        g = f["snapshots/s"]
        # The weight and both Adam moments: the weight (tracked first) is read first.
        offsets = [g[k].id.get_offset() for k in g if g[k].shape == (1024, 512)]
    with open(path, "r+b") as fh:
        for offset in offsets:
            fh.seek(offset + 1000)
            fh.write(b"\x7f\x7f\x7f\x7f")
    fresh = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.Linear(1024, 4))
    opt = torch.optim.Adam(fresh.parameters())
    with pytest.raises(ChecksumError, match="undefined values: build them again"):
        replaykit.restore(path, "s", track={"model": fresh, "optimizer": opt})


def test_mismatched_module_is_not_offered_and_fails_as_before(tmp_path: Path) -> None:
    import replaykit
    from replaykit.errors import StateMismatchError

    path = tmp_path / "m.h5"
    _recorded_mlp(path)
    other = torch.nn.Sequential(torch.nn.Linear(512, 2048), torch.nn.Linear(2048, 4))
    before = other[0].weight.detach().clone()
    with pytest.raises(StateMismatchError, match="shape"):
        replaykit.restore(
            path, "s", track={"model": other, "optimizer": torch.optim.Adam(other.parameters())}
        )
    assert torch.equal(other[0].weight, before)


def test_read_chunks_fills_in_order_hashes_and_refuses_a_short_file(tmp_path: Path) -> None:
    import os

    import xxhash

    from replaykit._format import rawio

    data = np.random.default_rng(0).integers(0, 255, 9_000_000, dtype=np.uint8)
    path = tmp_path / "raw.bin"
    path.write_bytes(b"x" * 100 + data.tobytes())
    out = np.empty_like(data)
    h = xxhash.xxh3_64()
    fd = os.open(path, os.O_RDONLY)
    try:
        rawio.read_chunks(fd, 100, out, h)
        assert np.array_equal(out, data)
        assert h.hexdigest() == xxhash.xxh3_64_hexdigest(data.tobytes())
        with pytest.raises(OSError, match="short"):
            rawio.read_chunks(fd, 200, np.empty_like(data))
    finally:
        os.close(fd)


def test_large_read_buffers_are_plain_writable_arrays() -> None:
    from replaykit._format import rawio

    big = rawio.empty((1024, 512), np.dtype("<f4"))
    small = rawio.empty((3,), np.dtype("<i8"))
    assert big.shape == (1024, 512) and big.dtype == np.float32 and big.flags.writeable
    assert big.flags.c_contiguous and small.shape == (3,)
    t = torch.from_numpy(big)  # shares: a restore hands these to the live objects
    t[0, 0] = 5.0
    assert big[0, 0] == 5.0


def test_forked_child_reads_and_writes_with_its_own_pool(tmp_path: Path) -> None:
    import os
    import sys

    import xxhash

    from replaykit._format import rawio

    if not hasattr(os, "fork") or sys.platform == "darwin":
        pytest.skip("needs fork")
    data = np.arange(3_000_000, dtype=np.float32)
    path = tmp_path / "raw.bin"
    path.write_bytes(data.tobytes())
    out = np.empty_like(data)
    fd = os.open(path, os.O_RDONLY)
    rawio.read_chunks(fd, 0, out)  # the parent's pool exists now
    pid = os.fork()
    if pid == 0:  # child: must not hang on the parent's thread-less pool copy
        ok = 1
        try:
            again = np.empty_like(data)
            rawio.read_chunks(fd, 0, again)
            wfd = os.open(tmp_path / "child.bin", os.O_WRONLY | os.O_CREAT)
            rawio.write_chunks(wfd, 0, again, xxhash.xxh3_64())
            os.close(wfd)
            ok = 0 if np.array_equal(again, data) else 1
        finally:
            os._exit(ok)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0
    assert (tmp_path / "child.bin").read_bytes() == data.tobytes()
