"""The pickle-free state-tree codec: exact round trips through a real HDF5 file."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from replaykit._format import tree as _tree
from replaykit._format.store import Recording, RecordingWriter
from replaykit.errors import CaptureError, FileFormatError


def roundtrip(tree: Any, tmp_path: Path) -> Any:
    path = tmp_path / "t.h5"
    with RecordingWriter(path, meta={}, provenance={}) as w:
        w.write_snapshot("s", tree, {"step": 0, "episode": 0})
    with Recording(path) as r:
        return r.load_snapshot("s")[1]


def same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, np.generic):
        return a.dtype == b.dtype and a.tobytes() == b.tobytes()
    if isinstance(a, torch.Tensor):
        ab = a.reshape(-1).view(torch.uint8) if a.numel() else a
        bb = b.reshape(-1).view(torch.uint8) if b.numel() else b
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(ab, bb)
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b and (not isinstance(a, float) or math.copysign(1, a) == math.copysign(1, b))


def test_every_node_type_round_trips_exactly(tmp_path: Path) -> None:
    nan_payload = np.array([0x7FC00001], dtype=np.uint32).view(np.float32)
    tree = {
        "ints": [0, -1, 2**100, True, False, None, "text"],
        "floats": [0.1, -0.0, float("inf"), float("-inf"), float("nan"), 1e-310],
        "tuple": (1, (2.5, "x")),
        "int_keys": {0: "a", 7: {"step": np.float32(3.0)}},
        "arrays": {
            "f16": np.arange(6, dtype=np.float16).reshape(2, 3),
            "f32": np.array([-0.0, 1.5], dtype=np.float32),
            "nan_payload": nan_payload,
            "f64": np.linspace(0, 1, 5),
            "bool": np.array([True, False]),
            "u8": np.arange(256, dtype=np.uint8),
            "i64": np.array(-5, dtype=np.int64),
            "empty": np.zeros((0, 3), dtype=np.float32),
            "c128": np.array([1 + 2j]),
            "big_endian": np.arange(3, dtype=">f4"),
        },
        "tensors": {
            "bf16": torch.tensor([1.0, -0.0, 3.140625], dtype=torch.bfloat16),
            "f32": torch.arange(4, dtype=torch.float32).reshape(2, 2),
            "scalar": torch.tensor(7, dtype=torch.int64),
            "empty": torch.zeros(0, 2),
            "f8": torch.tensor([0.5, 2.0]).to(torch.float8_e4m3fn),
        },
        "scalar": np.float64(2.5),
    }
    back = roundtrip(tree, tmp_path)
    assert same(tree, back)
    assert back["arrays"]["nan_payload"].view(np.uint32)[0] == 0x7FC00001
    assert back["tensors"]["bf16"].dtype == torch.bfloat16
    assert back["arrays"]["i64"].shape == ()


def test_decoded_tensors_do_not_share_memory_between_loads(tmp_path: Path) -> None:
    tree = {"w": torch.arange(4, dtype=torch.float32)}
    path = tmp_path / "t.h5"
    with RecordingWriter(path, meta={}, provenance={}) as w:
        w.write_snapshot("s", tree, {"step": 0, "episode": 0})
    with Recording(path) as r:
        first = r.load_snapshot("s")[1]["w"]
        first.add_(1)
        second = r.load_snapshot("s")[1]["w"]
    assert torch.equal(second, torch.arange(4, dtype=torch.float32))


@pytest.mark.parametrize(
    "bad",
    [np.array(["a", "b"]), np.array([object()], dtype=object), {"f": lambda: 0}, {1, 2}],
)
def test_unstorable_values_refused(bad: Any) -> None:
    with pytest.raises(CaptureError):
        _tree.encode({"x": bad})


@pytest.mark.parametrize(
    "doc",
    [
        {"A": 5},
        {"Z": 1},
        {"D": {"x": {"A": "0"}}},
        {"t": 0, "dtype": "os.system"},
        {"M": [[1]]},
        [1, 2],
    ],
)
def test_malformed_documents_refused(doc: Any) -> None:
    with pytest.raises(FileFormatError):
        _tree.decode(doc, [np.zeros(1)])


def test_deep_nesting_refused() -> None:
    doc: Any = 1
    for _ in range(300):
        doc = {"L": [doc]}
    with pytest.raises(FileFormatError, match="deeper"):
        _tree.decode(doc, [])
