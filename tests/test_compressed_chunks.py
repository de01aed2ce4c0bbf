"""Deflate-compressed stream columns, compressed off the recording thread.

The writer compresses full chunks on a worker thread and stores them with HDF5's direct
chunk write, bypassing HDF5's filter pipeline on the way in. These tests check that the
result is exactly what HDF5's own shuffle + deflate filters would read back: plain h5py
(HDF5's standard deflate filter) reads every row byte-identical, each stored chunk
inflates to HDF5's shuffled layout of its rows, and commits at any row leave only rows
that read back.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from replaykit._format import chunks as C
from replaykit._format.store import Recording, RecordingWriter
from replaykit.errors import UsageError

N = 700


def _data(rng: np.random.Generator) -> dict[str, np.ndarray]:
    # Frames compress well (runs), floats do not (the shuffle filter matters for them).
    img = np.zeros((N, 21, 16, 3), np.uint8)
    img[:, 5:9] = rng.integers(0, 255, (N, 1, 16, 3), dtype=np.uint8)
    return {
        "img": img,
        "f": rng.normal(size=(N, 3)),
        "i": rng.integers(-(2**40), 2**40, (N,), dtype=np.int64),
        "b": rng.random(N) < 0.3,
    }


def _write(path: Path, compression: str, data: dict[str, np.ndarray], commits: set[int]) -> None:
    """Write ``data`` row by row; ``late`` appears at row 300; commit after rows in ``commits``."""
    with RecordingWriter(
        path, meta={"env_id": "X"}, provenance={}, compression=compression, block_rows=40
    ) as w:
        s = w.stream("steps")
        cols = {k: s.column(k, v.dtype, v.shape[1:]) for k, v in data.items()}
        late = None
        for row in range(N):
            if row == 300:
                late = s.column("late", np.dtype("<i4"), (2,))
            for k, v in data.items():
                cols[k].buf[s.pos] = v[row]
            if late is not None:
                late.buf[s.pos] = (row, -row)
            s.end_row()
            if row in commits:
                w.commit()


def _late() -> np.ndarray:
    want = np.zeros((N, 2), np.int32)
    want[300:, 0] = np.arange(300, N)
    want[300:, 1] = -np.arange(300, N)
    return want


@pytest.mark.parametrize("compression", ["gzip:1", "gzip", "gzip:9"])
def test_plain_h5py_reads_every_row_byte_identical(tmp_path: Path, compression: str) -> None:
    data = _data(np.random.default_rng(1))
    path = tmp_path / "c.h5"
    # Commits inside chunks: partly filled chunks are written, then rewritten once full.
    _write(path, compression, data, commits={0, 17, 18, 299, 301, 555})
    level = 4 if compression == "gzip" else int(compression.split(":")[1])
    with h5py.File(path, "r") as f:
        g = f["streams/steps"]
        for k, v in {**data, "late": _late()}.items():
            ds = g[k]
            assert (ds.compression, ds.compression_opts, ds.shuffle) == ("gzip", level, True)
            got = ds[()]
            assert got.dtype == v.dtype
            assert got.tobytes() == v.tobytes(), k
    with Recording(path) as r:
        for k, v in data.items():
            assert r.stream("steps").read(k).tobytes() == v.tobytes()


def test_stored_chunks_are_hdf5s_shuffle_and_deflate(tmp_path: Path) -> None:
    """Every chunk inflates (zlib) to HDF5's shuffled layout of its rows, zero-padded."""
    data = _data(np.random.default_rng(2))
    path = tmp_path / "c.h5"
    _write(path, "gzip:1", data, commits={99})
    with h5py.File(path, "r") as f:
        for k, v in data.items():
            ds = f["streams/steps"][k]
            rows = ds.chunks[0]
            item = v.dtype.itemsize
            for lo in range(0, N, rows):
                mask, payload = ds.id.read_direct_chunk((lo,) + (0,) * (v.ndim - 1))
                assert mask == 0  # every filter of the pipeline was applied
                chunk = np.zeros((rows, *v.shape[1:]), v.dtype)
                chunk[: min(rows, N - lo)] = v[lo : lo + rows]
                raw = chunk.reshape(-1).view(np.uint8)
                if item > 1:
                    raw = raw.reshape(-1, item).T
                assert zlib.decompress(payload) == raw.tobytes(), (k, lo)


def test_zlib_without_isal_reads_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback compressor (zlib, when the ``fast`` extra is not installed) reads back."""
    monkeypatch.setattr(C, "compressor", lambda level: zlib.compress)
    data = _data(np.random.default_rng(3))
    path = tmp_path / "c.h5"
    _write(path, "gzip:1", data, commits={250})
    with h5py.File(path, "r") as f:
        for k, v in data.items():
            assert f["streams/steps"][k][()].tobytes() == v.tobytes()


def test_isal_output_is_what_zlib_inflates() -> None:
    pytest.importorskip("isal")
    rng = np.random.default_rng(4)
    raw = np.repeat(rng.integers(0, 255, (64, 1), dtype=np.uint8), 500, axis=1)
    assert C.compressor(1) is not zlib.compress
    assert zlib.decompress(C.encode_chunk(raw, 1, 1)) == raw.tobytes()


def test_a_rewritten_partial_chunk_gets_a_different_size(tmp_path: Path) -> None:
    """A chunk written partly filled at a commit is never rewritten in place.

    libhdf5 reuses a filtered chunk's space when the new version has the same size; a
    kill during that write would tear rows the commit recorded. The writer re-encodes a
    full chunk whose size equals its partial version's at another level.
    """
    path = tmp_path / "c.h5"
    # All-zero rows: the partial chunk (8 rows, zero-padded) and the full one are the same
    # bytes, so they deflate to the same size at the same level.
    zero = np.zeros(1000, np.uint8)
    with RecordingWriter(path, meta={}, provenance={}, compression="gzip:1") as w:
        s = w.stream("steps")
        col = s.column("z", np.dtype(np.uint8), (1000,))
        for row in range(16):
            col.buf[s.pos] = zero
            s.end_row()
            if row == 7:
                w.commit()
                assert col.ds is not None
                info = col.ds.id.get_chunk_info_by_coord((0, 0))
                before = (info.byte_offset, info.size)
    with h5py.File(path, "r") as f:
        info = f["streams/steps/z"].id.get_chunk_info_by_coord((0, 0))
        assert info.size != before[1]
        assert info.byte_offset != before[0]
        assert not f["streams/steps/z"][()].any()


@pytest.mark.parametrize("bad", ["gzip:10", "gzip:x", "zstd", "gzip:-1"])
def test_bad_compression_is_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(UsageError, match="compression must be"):
        RecordingWriter(tmp_path / "c.h5", meta={}, provenance={}, compression=bad)
    assert not (tmp_path / "c.h5").exists()
