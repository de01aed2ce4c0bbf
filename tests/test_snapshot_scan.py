"""The non-finite scan folded into the snapshot write: the same answer as a separate walk."""

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
