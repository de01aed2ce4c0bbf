"""diff_recordings streams each column once: verification fused with comparison, flat memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from replaykit import errors as E
from replaykit._analysis.compare import diff_recordings
from replaykit._format import layout as F
from replaykit._format import store
from replaykit._format.store import Recording, RecordingWriter

N = 3000


def _write(
    path: Path,
    n: int = N,
    *,
    change_at: int | None = None,
    episode_len: int = 100,
    compression: str | None = None,
) -> Path:
    """Steps with a reward, an episode and an optional column (present every third row)."""
    with RecordingWriter(
        path,
        meta={"env_id": "X"},
        provenance={},
        block_rows=256,
        commit_every_steps=256,
        compression=compression,
    ) as w:
        s = w.stream(F.STEPS)
        reward = s.column(F.REWARD, np.dtype("float64"), ())
        episode = s.column(F.EPISODE, np.dtype("int64"), ())
        extra = s.column("x", np.dtype("float32"), (2,), optional=True)
        assert extra.present is not None
        for i in range(n):
            reward.buf[s.pos] = -1.0 if i == change_at else i / 4
            episode.buf[s.pos] = i // episode_len
            if i % 3 == 0:
                extra.buf[s.pos] = (i, -i)
                extra.present[s.pos] = True
            s.end_row()
    return path


def _damage(path: Path, dataset: str, row: int) -> None:
    """Change one stored value without updating the commit record's checksum."""
    with h5py.File(path, "a") as f:
        ds = f[f"{F.stream_path(F.STEPS)}/{dataset}"]
        ds[row] = ~ds[row] if ds.dtype == bool else ds[row] + 1


def test_divergence_reported_with_episode(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.h5")
    b = _write(tmp_path / "b.h5", change_at=2345)
    res = diff_recordings(a, b, block_rows=64)
    first = res.first
    assert first is not None and (first.key, first.row) == (F.REWARD, 2345)
    assert (first.episode, first.step_in_episode) == (23, 45)
    assert [d.key for d in res.divergences] == [F.REWARD]
    assert diff_recordings(a, _write(tmp_path / "c.h5"), block_rows=64).match


@pytest.mark.parametrize("budget", [4096, 1 << 20])
def test_episode_start_found_across_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, budget: int
) -> None:
    monkeypatch.setattr(store, "BLOCK_BYTES", budget)
    a = _write(tmp_path / "a.h5", episode_len=2 * N)
    b = _write(tmp_path / "b.h5", change_at=N - 7, episode_len=2 * N)
    first = diff_recordings(a, b).first
    assert first is not None and (first.episode, first.step_in_episode) == (0, N - 7)


@pytest.mark.parametrize("block_rows", [64, None])
@pytest.mark.parametrize(
    ("dataset", "row"),
    [
        (F.REWARD, N - 2),  # same column, after the divergence
        (F.REWARD, 10),  # same column, before it
        (F.EPISODE, N - 1),  # a column compared after the diverged one
        ("x" + F.PRESENT_SUFFIX, N - 3),  # an optional column's presence mask
        ("x", N - 3),
    ],
)
def test_damage_anywhere_raises_even_after_a_divergence(
    tmp_path: Path, dataset: str, row: int, block_rows: int | None
) -> None:
    a = _write(tmp_path / "a.h5")
    b = _write(tmp_path / "b.h5", change_at=100)
    _damage(b, dataset, row)
    with pytest.raises(E.ChecksumError) as ei:
        diff_recordings(a, b, block_rows=block_rows)
    assert f"/streams/steps/{dataset}" in str(ei.value)
    # Without verification the divergence is reported (and the damage goes unseen).
    res = diff_recordings(a, b, block_rows=block_rows, verify=False)
    assert res.first is not None and res.first.row == min(100, row)


def test_damage_past_the_shorter_file_raises(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.h5", N - 500)
    b = _write(tmp_path / "b.h5")
    _damage(b, F.REWARD, N - 1)
    with pytest.raises(E.ChecksumError):
        diff_recordings(a, b, block_rows=64)
    res = diff_recordings(a, b, block_rows=64, verify=False)
    first = res.first
    assert first is not None and (first.row, first.mismatch.reason) == (N - 500, "extra")


def test_blocks_reuse_one_buffer(tmp_path: Path) -> None:
    p = _write(tmp_path / "a.h5")
    with Recording(p) as rec:
        s = rec.stream(F.STEPS)
        blocks = [(lo, x.base) for lo, x in s.blocks(F.REWARD, 100, reuse=True)]
        assert [lo for lo, _ in blocks] == list(range(0, N, 100))
        assert all(base is blocks[0][1] for _, base in blocks)
        # A caller's buffer serves column after column.
        scratch = np.empty(4096, np.uint8)
        for col in (F.REWARD, F.EPISODE):
            for _, x in s.blocks(col, 100, buffer=scratch):
                assert x.base is scratch
        # Without reuse every block is its own array, and the values are the stored ones.
        got = np.concatenate([x for _, x in s.blocks(F.REWARD, 100)])
        np.testing.assert_array_equal(got, np.arange(N) / 4)


def _reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, Any]]:
    """Record (bytes, buffer or None) of every read from a stream dataset.

    The buffer is the array a block is a view of (kept alive, so ids stay distinct);
    ``None`` for a read into a fresh array.
    """
    seen: list[tuple[int, Any]] = []
    block, sliced = store.StreamReader._read_block, store.StreamReader._slice

    def spy_block(self: Any, name: str, ds: Any, start: int, out: np.ndarray) -> None:
        seen.append((out.nbytes, out.base))
        block(self, name, ds, start, out)

    def spy_slice(self: Any, name: str, start: int | None, stop: int | None) -> np.ndarray:
        out = sliced(self, name, start, stop)
        seen.append((out.nbytes, None))
        return out

    monkeypatch.setattr(store.StreamReader, "_read_block", spy_block)
    monkeypatch.setattr(store.StreamReader, "_slice", spy_slice)
    return seen


@pytest.mark.parametrize("verify", [True, False])
def test_diff_memory_does_not_grow_with_length(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, verify: bool
) -> None:
    per_length = []
    for n in (N, 4 * N):
        a = _write(tmp_path / f"a{n}.h5", n)
        b = _write(tmp_path / f"b{n}.h5", n, change_at=n - 1)
        with monkeypatch.context() as m:
            m.setattr(store, "BLOCK_BYTES", 4096)
            seen = _reads(m)
            res = diff_recordings(a, b, verify=verify)
        assert res.first is not None and (res.first.row, res.first.step_in_episode) == (n - 1, 99)
        # Every read fits the byte budget, and every block of every column is read into
        # one of four buffers (values and presence masks of two files) instead of fresh
        # arrays; the few fresh arrays are the episode lookup for the report.
        assert max(nbytes for nbytes, _ in seen) <= 4096
        assert len({id(buf) for _, buf in seen if buf is not None}) <= 4
        assert sum(buf is None for _, buf in seen) <= 4
        per_length.append((max(nbytes for nbytes, _ in seen), len(seen)))
    assert per_length[0][0] == per_length[1][0]
    assert per_length[1][1] > 2 * per_length[0][1]  # longer files: more blocks, not bigger


def test_block_rows_follow_the_byte_budget_in_whole_chunks(tmp_path: Path) -> None:
    p = _write(tmp_path / "a.h5")
    with Recording(p) as rec:
        s = rec.stream(F.STEPS)
        for name in (F.REWARD, "x", "x" + F.PRESENT_SUFFIX):
            rows = s.block_rows_for(name)
            ds = s._dataset(name)
            assert rows * ds.dtype.itemsize * int(np.prod(ds.shape[1:])) <= store.BLOCK_BYTES
            assert rows % s._chunk_rows[name] == 0 and s._chunk_rows[name] > 1


def test_bad_block_rows(tmp_path: Path) -> None:
    p = _write(tmp_path / "a.h5", 10)
    with pytest.raises(E.UsageError):
        diff_recordings(p, p, block_rows=0)


@pytest.mark.parametrize("compression", [None, "gzip:1"])
@pytest.mark.parametrize("block_rows", [None, 64, 7])
@pytest.mark.parametrize("row", [0, 1, 255, 256, 1000, N - 1])
def test_divergence_found_at_any_row(
    tmp_path: Path, compression: str | None, block_rows: int | None, row: int
) -> None:
    """The first row, the last row, chunk edges and inside a chunk (compressed or not)."""
    a = _write(tmp_path / "a.h5", compression=compression)
    b = _write(tmp_path / "b.h5", change_at=row, compression=compression)
    res = diff_recordings(a, b, block_rows=block_rows)
    assert res.first is not None and (res.first.key, res.first.row) == (F.REWARD, row)
    assert [d.key for d in res.divergences] == [F.REWARD]
    assert diff_recordings(a, _write(tmp_path / "c.h5", compression=compression)).match


def test_uncompressed_columns_are_read_by_chunk_address(tmp_path: Path) -> None:
    """Blocks of every size and offset read back what h5py reads, through the chunk map."""
    p = _write(tmp_path / "a.h5")
    with h5py.File(p, "r") as f:
        want = {k: f[f"{F.stream_path(F.STEPS)}/{k}"][()] for k in (F.REWARD, "x", "x@present")}
    with Recording(p) as rec:
        s = rec.stream(F.STEPS)
        for name in (F.REWARD, "x"):
            for rows in (1, 7, 256, 1000, N):
                got = np.concatenate([b.copy() for _, b in s.blocks(name, rows)])
                assert got.tobytes() == want[name][:N].tobytes(), (name, rows)
            assert s._maps[name] is not None  # the chunk map served those reads
            assert s.read(name, 250, 1300).tobytes() == want[name][250:1300].tobytes()
        assert s.present("x") is not None
        assert s.present("x").tobytes() == want["x@present"][:N].tobytes()


def test_equal_checksums_still_verify_both_files(tmp_path: Path) -> None:
    """Columns whose stored checksums agree are not compared, but both are still verified."""
    a = _write(tmp_path / "a.h5")
    b = _write(tmp_path / "b.h5")
    assert diff_recordings(a, b).match
    _damage(b, F.EPISODE, 1234)
    with pytest.raises(E.ChecksumError):
        diff_recordings(a, b)
    res = diff_recordings(a, b, verify=False)  # unverified: compared, so the change shows
    assert res.first is not None and (res.first.key, res.first.row) == (F.EPISODE, 1234)
