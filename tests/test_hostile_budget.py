"""Work and memory per stored byte are bounded for the whole file (issue 18): small crafted
files that made readers outside the sandbox run for minutes or take gigabytes."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import xxhash

from replaykit._analysis.check import validate_file
from replaykit._format import layout as F
from replaykit._format import store as S
from replaykit._format.store import Recording
from replaykit.errors import FileFormatError, UnsafeFileError


@pytest.fixture
def rec(small_recording: Path, tmp_path: Path) -> Path:
    path = tmp_path / "hostile.h5"
    shutil.copy(small_recording, path)
    return path


def _commit_for(g: h5py.Group, stream: str, columns: dict[str, np.ndarray], rows: int) -> None:
    """Give a forged stream group a consistent commit record (FORMAT.md §4)."""
    body = {
        F.COMMIT_ROWS: rows,
        F.COMMIT_CHECKSUMS: {k: xxhash.xxh3_64_hexdigest(v.tobytes()) for k, v in columns.items()},
        F.COMMIT_COLUMNS: {
            k: {F.COLUMN_DTYPE: v.dtype.str, F.COLUMN_SHAPE: list(v.shape[1:]), "optional": False}
            for k, v in columns.items()
        },
        F.COMMIT_STREAM: stream,
    }
    text = S.F.dumps(body)
    S._set_fixed(
        g.attrs, F.COMMIT_ATTR, S.F.dumps({**body, F.COMMIT_CRC: S._digest(text.encode())})
    )


def test_single_huge_gzip_chunk_is_inflated_once(rec: Path) -> None:
    """One 48 MiB gzip chunk read in 64k-row blocks: once per chunk, not once per block."""
    rows = 6 << 20  # float64: 48 MiB in one chunk, ~50 KiB stored
    data = np.zeros((rows,), np.float64)
    with h5py.File(rec, "r+") as f:
        g = f.create_group(F.stream_path("extra"))
        g.create_dataset("x", data=data, chunks=(rows,), compression="gzip", compression_opts=1)
        _commit_for(g, "extra", {"x": data}, rows)
    assert rec.stat().st_size < 2 << 20
    with h5py.File(rec, "r") as f:
        t0 = time.perf_counter()
        f[F.stream_path("extra")]["x"][()]  # one inflation of the chunk
        once = time.perf_counter() - t0

    def read_column() -> None:
        with Recording(rec) as r:
            r.stream("extra").read("x")

    for read in (read_column, lambda: validate_file(rec)):
        t0 = time.perf_counter()
        read()  # Recording: 1 MiB blocks (48 of the chunk); check: 65,536-row blocks (96)
        # Before: the chunk was inflated once per block (2-4 s here, 50-100 times `once`).
        assert time.perf_counter() - t0 < 10 * once + 0.5


def test_oversized_gzip_chunk_is_refused(rec: Path) -> None:
    rows = 10 << 20  # 80 MiB chunk, over the 64 MiB cap for compressed chunks
    with h5py.File(rec, "r+") as f:
        g = f.create_group(F.stream_path("extra"))
        g.create_dataset(
            "x", data=np.zeros(rows), chunks=(rows,), compression="gzip", compression_opts=1
        )
    with pytest.raises(UnsafeFileError, match="compressed chunks"):
        Recording(rec)


def test_many_attributes_are_refused_fast(rec: Path) -> None:
    with h5py.File(rec, "r+") as f:
        ds = f[F.stream_path(F.STEPS)][F.REWARD]
        for i in range(3000):
            ds.attrs[f"a{i}"] = i
    t0 = time.perf_counter()
    with pytest.raises(UnsafeFileError, match="3000 attributes"):
        Recording(rec)
    assert time.perf_counter() - t0 < 5


def test_compressed_snapshot_array_is_refused(rec: Path) -> None:
    """Snapshot arrays are read whole; replaykit never compresses them."""
    with h5py.File(rec, "r+") as f:
        snap = f[F.SNAPSHOTS_GROUP][next(iter(f[F.SNAPSHOTS_GROUP]))]
        snap.create_dataset(
            "a999", data=np.zeros(16 << 20, np.uint8), compression="gzip", chunks=(16 << 20,)
        )
    with pytest.raises(UnsafeFileError, match="compressed dataset outside /streams"):
        Recording(rec)


def test_snapshot_bytes_budget_is_for_the_whole_file(rec: Path) -> None:
    """Each array fits in the file, all together do not: refused (a per-file budget)."""
    size = rec.stat().st_size
    with h5py.File(rec, "r+") as f:
        snap = f[F.SNAPSHOTS_GROUP][next(iter(f[F.SNAPSHOTS_GROUP]))]
        for i in range(4):
            # Unallocated contiguous datasets: declared, never stored.
            snap.create_dataset(f"b{i}", shape=(int(size * 0.6),), dtype=np.uint8)
    with pytest.raises(UnsafeFileError, match=r"declare .* bytes in all"):
        Recording(rec)


@pytest.mark.integration
def test_huge_json_attribute_is_refused_before_parsing(rec: Path) -> None:
    with h5py.File(rec, "r+") as f:
        prov = json.loads(S._text(f.attrs[F.PROVENANCE_ATTR]))
        prov["argv"] = ["x" * (F.MAX_JSON_BYTES + 10)]
        text = json.dumps(prov)
        f.attrs[F.PROVENANCE_ATTR] = text
        raw = {k: S._text(f.attrs[k]) for k in (F.FORMAT_ATTR, F.CREATED_ATTR, F.META_ATTR)}
        raw[F.PROVENANCE_ATTR] = text
        raw[F.VERSION_ATTR] = int(f.attrs[F.VERSION_ATTR])
        S._set_fixed(f.attrs, F.ROOT_CHECKSUM_ATTR, S._root_checksum(raw))
    with pytest.raises(FileFormatError, match=r"declares .* bytes, more than"):
        Recording(rec)


def _forge_provenance(path: Path, text: str) -> None:
    """Replace the provenance attribute and recompute the root checksum (FORMAT.md §2)."""
    with h5py.File(path, "r+") as f:
        f.attrs[F.PROVENANCE_ATTR] = text
        raw = {k: S._text(f.attrs[k]) for k in (F.FORMAT_ATTR, F.CREATED_ATTR, F.META_ATTR)}
        raw[F.PROVENANCE_ATTR] = text
        raw[F.VERSION_ATTR] = int(f.attrs[F.VERSION_ATTR])
        S._set_fixed(f.attrs, F.ROOT_CHECKSUM_ATTR, S._root_checksum(raw))


_PEAK_CHILD = """
import sys
def hwm():
    with open('/proc/self/status') as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith('VmHWM')) << 10
from replaykit._format.store import Recording
from replaykit.errors import UnsafeFileError
base = hwm()
try:
    Recording(sys.argv[1])
except UnsafeFileError as exc:
    print('refused', str(exc).splitlines()[0])
print('grew', hwm() - base)
"""


@pytest.mark.integration
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_huge_text_attribute_is_refused_before_libhdf5_reads_it(rec: Path) -> None:
    """A 96 MiB provenance: its size is read from the object header, so the reader's peak
    memory grows by a few MiB, not by the ~5x libhdf5 takes to inflate the heap text."""
    import subprocess
    import sys

    with h5py.File(rec, "r") as f:
        prov = json.loads(S._text(f.attrs[F.PROVENANCE_ATTR]))
    size = 96 << 20
    prov["argv"] = ["x" * size]
    _forge_provenance(rec, json.dumps(prov))
    assert rec.stat().st_size > size
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_CHILD, str(rec)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert "refused" in out and "declares" in out, out
    grew = int(out.split("grew")[1])
    assert grew < 16 << 20, f"peak memory grew by {grew >> 20} MiB while refusing: {out}"


def test_text_attribute_outside_the_object_header_is_refused(rec: Path) -> None:
    """Dense attribute storage puts text where its size cannot be read first: never written."""
    with h5py.File(rec, "r") as f:
        prov = S._text(f.attrs[F.PROVENANCE_ATTR])
    dense = rec.with_name("dense.h5")
    with h5py.File(rec, "r") as src, h5py.File(dense, "w", libver="latest") as dst:
        for name in src:
            src.copy(src[name], dst, name)
        for i in range(12):  # more than 8 attributes: libhdf5 switches to dense storage
            dst.attrs[f"pad{i}"] = np.int64(i)
        for k in src.attrs:
            dst.attrs[k] = src.attrs[k]
    _forge_provenance(dense, prov)
    with pytest.raises(UnsafeFileError, match="not stored in its object header"):
        Recording(dense)
