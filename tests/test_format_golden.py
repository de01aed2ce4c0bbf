"""Pin the file format: versions 2 and 3 (written now) and version 1 (still read).

Each golden file reads back its known inputs, and its layout matches docs/FORMAT.md.

The names below are spelled from docs/FORMAT.md on purpose (not imported from
replaykit._format.layout), so a renamed attribute or group fails here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
import xxhash

from replaykit._format.store import Recording

DATA = Path(__file__).resolve().parent / "data"
GOLDEN_V1 = DATA / "golden_v1.h5"
GOLDEN = DATA / "golden_v2.h5"
GOLDEN_V3 = DATA / "golden_v3.h5"
sys.path.insert(0, str(DATA))

import make_golden as G  # noqa: E402


def layout(path: Path) -> dict[str, Any]:
    """Names, kinds, dtypes, shapes and attribute names of every object (not values)."""
    out: dict[str, Any] = {}
    with h5py.File(path, "r") as f:
        out["/"] = sorted(f.attrs)

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                out[name] = (
                    "dataset",
                    obj.dtype.str,
                    obj.shape[1:] if "streams" in name else obj.shape,
                    sorted(obj.attrs),
                )
            else:
                out[name] = ("group", sorted(obj.attrs))

        f.visititems(visit)
    return out


@pytest.mark.parametrize(("path", "version"), [(GOLDEN_V1, 1), (GOLDEN, 2), (GOLDEN_V3, 3)])
def test_golden_file_reads_back_its_inputs(path: Path, version: int) -> None:
    with Recording(path) as rec:
        assert rec.format_version == version
        assert rec.meta["env_id"] == "Golden-v0"
        s = rec.stream("steps")
        assert s.rows == 3
        assert np.array_equal(s.read("obs"), G.OBS) and s.read("obs").dtype == np.float32
        assert s.read("action").tobytes() == G.ACTION.tobytes()
        assert s.read("reward").tobytes() == G.REWARD.tobytes()  # -0.0 kept
        assert s.logical_dtype("probe/x") == "bfloat16"
        present = s.present("probe/x")
        assert present is not None and present.tolist() == [True, False, True]
        assert s.read("probe/x")[[0, 2]].tobytes() == G.PROBE_BF16_BITS[[0, 2]].tobytes()
        (snap,) = rec.snapshots
        assert snap.name == "s0" and snap.step == 3
        _, tree = rec.load_snapshot("s0")
    want = G.snapshot_tree()
    assert tree["w"].dtype == torch.bfloat16 and torch.equal(tree["w"], want["w"])
    assert list(tree["steps"]) == [3] and tree["steps"][3] == np.float32(0.25)
    assert isinstance(tree["pair"], tuple) and tree["pair"][0].shape == (0, 2)
    assert tree["pair"][1] == 2**70 and tree["flag"] is True and np.isnan(tree["nan"])


def _commit_and_root_match_the_spec(f: h5py.File, version: int) -> None:
    assert set(f.attrs) == {
        "replaykit_format",
        "replaykit_format_version",
        "created",
        "provenance",
        "meta",
        "root_checksum",
    }
    assert f.attrs["replaykit_format"] == "replaykit.recording"
    assert int(f.attrs["replaykit_format_version"]) == version
    steps = f["streams/steps"]
    raw = steps.attrs["commit"]
    commit = json.loads(raw.decode().rstrip(" ") if isinstance(raw, bytes) else raw)
    # Version 2 names the stream inside its checksummed commit record.
    extra = {"stream"} if version >= 2 else set()
    assert set(commit) == {"rows", "columns", "checksums", "crc"} | extra
    if version >= 2:
        assert commit["stream"] == "steps"
    assert commit["rows"] == 3
    assert commit["columns"]["probe/x"] == {"dtype": "bfloat16", "shape": [2], "optional": True}
    assert commit["columns"]["obs"] == {"dtype": "<f4", "shape": [4], "optional": False}
    # Every checksum is xxh3-64 over the committed rows' bytes, recomputed here independently.
    for name, digest in commit["checksums"].items():
        data = np.ascontiguousarray(steps[name][: commit["rows"]])
        assert xxhash.xxh3_64_hexdigest(data.tobytes()) == digest, name
    body = {k: v for k, v in commit.items() if k != "crc"}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"))
    assert xxhash.xxh3_64_hexdigest(canon.encode()) == commit["crc"]
    assert steps["probe/x@present"].dtype == np.bool_


def _canon(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _tree_matches_the_spec(snap: h5py.Group) -> None:
    tree = json.loads(snap.attrs["tree"])
    assert tree["D"]["w"] == {"t": 0, "dtype": "bfloat16", "device": "cpu", "grad": False}
    assert tree["D"]["steps"] == {"M": [[3, {"S": 1}]]}
    assert tree["D"]["nan"] == {"F": "nan"}


def test_golden_v1_layout_matches_the_spec() -> None:
    with h5py.File(GOLDEN_V1, "r") as f:
        _commit_and_root_match_the_spec(f, 1)
        snap = f["snapshots/s0"]
        assert set(snap.attrs) == {"snapshot", "tree", "checksums"}
        checks = json.loads(snap.attrs["checksums"])
        assert checks["@layout"] == {"a0": "<u2[1, 2]", "a1": "<f4[]", "a2": "<f8[0, 2]"}
        assert sorted(snap) == ["a0", "a1", "a2"]
        assert snap["a0"].attrs["logical_dtype"] == "bfloat16" and snap["a0"].dtype == np.uint16
        _tree_matches_the_spec(snap)


def test_golden_v2_layout_matches_the_spec() -> None:
    with h5py.File(GOLDEN, "r") as f:
        _commit_and_root_match_the_spec(f, 2)
        snap = f["snapshots/s0"]
        assert set(snap.attrs) == {"snapshot", "tree", "checksums"}
        checks = json.loads(snap.attrs["checksums"])
        layout = {"a0": "<u2[1, 2]", "a1": "<f4[]", "a2": "<f8[0, 2]"}
        assert checks["@layout"] == layout
        # Arrays of at most 64 KiB share the "pack" dataset at 64-byte aligned offsets.
        assert checks["@pack"] == {"a0": 0, "a1": 64, "a2": 128}
        assert checks["@logical"] == {"0": "bfloat16"}
        assert sorted(snap) == ["pack"]
        pack = snap["pack"][()]
        assert pack.dtype == np.uint8 and pack.shape == (128,)
        assert xxhash.xxh3_64_hexdigest(pack.tobytes()) == checks["pack"]
        assert pack[0:4].view("<u2").tolist() == [0x3F80, 0x4000]  # bfloat16 1.0, 2.0
        assert pack[64:68].view("<f4")[0] == np.float32(0.25)
        attrs = {"snapshot": snap.attrs["snapshot"], "tree": snap.attrs["tree"]}
        text = _canon(attrs) + _canon(checks["@logical"])
        text += _canon(checks["@layout"]) + _canon(checks["@pack"])
        assert xxhash.xxh3_64_hexdigest(text) == checks["@attrs"]
        _tree_matches_the_spec(snap)
        assert json.loads(snap.attrs["snapshot"])["name"] == "s0"


def test_current_writer_produces_the_golden_layout(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.h5"
    G.write(str(fresh))
    assert layout(fresh) == layout(GOLDEN)
    fresh3 = tmp_path / "fresh3.h5"
    G.write(str(fresh3), spill=True)
    assert layout(fresh3) == layout(GOLDEN_V3)


def _spilled(group: h5py.Group, attr: str) -> str:
    """Follow a version 3 spill pointer by hand (FORMAT.md §2.1) and check its digest."""
    raw = group.attrs[attr]
    ptr = json.loads(raw.decode().rstrip(" ") if isinstance(raw, bytes) else raw)
    assert set(ptr) == {"$spill", "bytes", "digest"}
    assert ptr["$spill"] in (f".{attr}-0", f".{attr}-1")
    slot = group[ptr["$spill"]]
    assert slot.dtype == np.uint8 and slot.ndim == 1 and slot.shape[0] >= ptr["bytes"]
    data = slot[: ptr["bytes"]].tobytes()
    assert xxhash.xxh3_64_hexdigest(data) == ptr["digest"]
    return data.decode()


def test_golden_v3_spilled_attributes_match_the_spec() -> None:
    with h5py.File(GOLDEN_V3, "r") as f:
        assert int(f.attrs["replaykit_format_version"]) == 3
        meta = json.loads(_spilled(f, "meta"))
        assert meta["user"]["blob"] == G.USER_BLOB and meta["env_id"] == "Golden-v0"
        # The root checksum covers the pointer (which covers the text by its digest).
        root = {
            k: (int(f.attrs[k]) if k == "replaykit_format_version" else f.attrs[k])
            for k in ("replaykit_format", "replaykit_format_version", "created", "provenance")
        }
        root = {k: v.decode() if isinstance(v, bytes) else v for k, v in root.items()}
        root["meta"] = f.attrs["meta"].decode()
        assert xxhash.xxh3_64_hexdigest(_canon(root)) == f.attrs["root_checksum"].decode().strip()
        wide = f["streams/wide"]
        commit = json.loads(_spilled(wide, "commit"))
        assert commit["rows"] == 1 and commit["stream"] == "wide"
        assert len(commit["columns"]) == G.WIDE_COLUMNS
        body = {k: v for k, v in commit.items() if k != "crc"}
        assert xxhash.xxh3_64_hexdigest(_canon(body)) == commit["crc"]
    with Recording(GOLDEN_V3) as rec:
        assert rec.meta["user"]["blob"] == G.USER_BLOB
        s = rec.stream("wide")
        assert s.read(G.wide_name(G.WIDE_COLUMNS - 1)).tolist() == [(G.WIDE_COLUMNS - 1) * 0.5]


def _write_snapshot(path: Path, tree: dict[str, Any]) -> None:
    from replaykit._format.store import RecordingWriter

    with RecordingWriter(path, meta={"env_id": "Pack-v0"}, provenance={}) as w:
        w.write_snapshot("s", tree, {"step": 0, "episode": 0})


def test_small_arrays_share_the_pack_and_large_ones_keep_a_dataset(tmp_path: Path) -> None:
    big = np.arange(20_000, dtype=np.float64)  # 160 KB: over the 64 KiB pack limit
    tree = {
        "small": np.arange(5, dtype=np.int16),
        "big": big,
        "t": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "b": np.array([True, False]),
        "be": np.arange(3, dtype=">f4"),
    }
    p = tmp_path / "s.h5"
    _write_snapshot(p, tree)
    with h5py.File(p, "r") as f:
        snap = f["snapshots/s"]
        assert sorted(snap) == ["a1", "pack"]
        assert snap["a1"].shape == (20_000,)
        offsets = json.loads(snap.attrs["checksums"])["@pack"]
        assert sorted(offsets) == ["a0", "a2", "a3", "a4"]
        assert all(off % 64 == 0 for off in offsets.values())
    with Recording(p) as rec:
        _, back = rec.load_snapshot("s")
    assert back["small"].tobytes() == tree["small"].tobytes() and back["small"].dtype == np.int16
    assert back["big"].tobytes() == big.tobytes()
    assert torch.equal(back["t"], tree["t"]) and back["t"].shape == (2, 3)
    assert back["b"].tolist() == [True, False]
    assert back["be"].dtype == np.dtype(">f4") and back["be"].tolist() == [0.0, 1.0, 2.0]
    # Unpacked arrays own their memory: a caller may resize or mutate one freely.
    assert back["small"].flags.owndata and back["small"].flags.writeable
    back["small"].resize(7, refcheck=False)
