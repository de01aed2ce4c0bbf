"""``restore(..., mmap=True)``: arrays that do not land in live tensors are mapped, not read.

Opt-in only: the mapped arrays' checksums are not verified, and the model's own tensors
are still read into place and verified.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import pytest
import torch

import replaykit
from replaykit._format import known
from replaykit._format import layout as F
from replaykit.errors import ChecksumError, FileFormatError

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="maps need preadv/mmap here")

WIDTH = 200  # a 160 KB weight: stored as a dataset of its own, not in the pack


def _objects(seed: int | None = 0) -> tuple[Any, Any]:
    if seed is not None:
        torch.manual_seed(seed)
    model = torch.nn.Linear(WIDTH, WIDTH)
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


@pytest.fixture
def snap(tmp_path: Path) -> tuple[Path, Any, Any]:
    """A recording with one snapshot of a model and an Adam that has taken a step."""
    path = tmp_path / "m.h5"
    model, opt = _objects()
    model(torch.ones(WIDTH)).sum().backward()
    opt.step()
    model.zero_grad(set_to_none=True)
    rec = replaykit.RecordingWrapper(
        gym.make("CartPole-v1"), path, seed=0, track={"model": model, "optimizer": opt}
    )
    rec.reset()
    rec.step(0)
    rec.snapshot("s")
    rec.step(0)
    rec.close()
    known.clear()
    return path, model, opt


def _restore(path: Path, mmap: bool) -> tuple[Any, Any]:
    model, opt = _objects(seed=None)
    rep = replaykit.restore(
        path, "s", env=gym.make("CartPole-v1"), track={"model": model, "optimizer": opt}, mmap=mmap
    )
    rep.close()
    return model, opt


def _moments(opt: Any) -> list[torch.Tensor]:
    return [v for st in opt.state.values() for v in st.values() if v.numel() > 1]


def _mapped_from(path: Path) -> list[tuple[int, int]]:
    """Address ranges of this process mapped from ``path`` (Linux /proc)."""
    out = []
    name = os.path.realpath(path)
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and parts[5] == name:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                out.append((lo, hi))
    return out


def _dataset_offset(path: Path, what: str) -> int:
    """File offset of the snapshot dataset holding the tensor at tree path ``what``."""
    with h5py.File(path, "r") as f:
        g = f[F.snapshot_path("s")]
        weights = [
            n for n in g if n != F.PACK_DATASET and g[n].shape == (WIDTH, WIDTH)
        ]  # the weight and its two Adam moments
        assert len(weights) == 3
        offsets = sorted(int(g[n].id.get_offset()) for n in weights)
    # Datasets are written in tree order: model first, then the optimizer's moments.
    return offsets[0] if what == "model" else offsets[1]


def test_mapped_restore_is_bit_exact_and_maps_the_moments(snap: tuple[Path, Any, Any]) -> None:
    path, model0, opt0 = snap
    model, opt = _restore(path, mmap=True)
    for a, b in zip(model0.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(_moments(opt0), _moments(opt), strict=True):
        assert torch.equal(a, b)
    if sys.platform.startswith("linux"):
        spans = _mapped_from(path)
        big = [t for t in _moments(opt) if t.numel() == WIDTH * WIDTH]
        assert len(big) == 2
        for t in big:  # the moments' memory is the file's mapping
            assert any(lo <= t.data_ptr() < hi for lo, hi in spans)
        # The model's weight was read into its own tensor, not mapped.
        assert not any(lo <= model.weight.data_ptr() < hi for lo, hi in spans)


def test_writes_to_mapped_tensors_stay_private(snap: tuple[Path, Any, Any]) -> None:
    path, _, opt0 = snap
    before = path.read_bytes()
    model, opt = _restore(path, mmap=True)
    model(torch.ones(WIDTH)).sum().backward()
    opt.step()  # updates the mapped moments in place
    for m in _moments(opt):
        m.add_(1.0)
    assert path.read_bytes() == before
    _, again = _restore(path, mmap=False)  # verified: the file's checksums still hold
    for a, b in zip(_moments(opt0), _moments(again), strict=True):
        assert torch.equal(a, b)


def test_mapped_arrays_skip_verification_live_tensors_do_not(snap: tuple[Path, Any, Any]) -> None:
    path = snap[0]
    moment = _dataset_offset(path, "optimizer")
    with open(path, "r+b") as f:
        f.seek(moment + 100)
        b = f.read(1)
        f.seek(moment + 100)
        f.write(bytes([b[0] ^ 0x40]))
    with pytest.raises(ChecksumError, match="snapshot array does not match"):
        _restore(path, mmap=False)
    _restore(path, mmap=True)  # documented: a mapped array's checksum is not verified
    weight = _dataset_offset(path, "model")
    with open(path, "r+b") as f:
        f.seek(weight + 100)
        b = f.read(1)
        f.seek(weight + 100)
        f.write(bytes([b[0] ^ 0x40]))
    with pytest.raises(ChecksumError, match="undefined values"):
        _restore(path, mmap=True)  # read into the live model: verified


def test_truncated_file_is_refused_before_mapping(snap: tuple[Path, Any, Any]) -> None:
    path = snap[0]
    moment = _dataset_offset(path, "optimizer")
    with open(path, "r+b") as f:
        f.truncate(moment + 1000)  # cuts into a moment's bytes
    with pytest.raises(FileFormatError):
        _restore(path, mmap=True)
