"""Repeated restores of one file reuse its verified structure (replaykit._format.known).

A test suite restores one golden file many times in a process; the second and later opens
of an unchanged file skip re-verifying its root, snapshot listing, snapshot attributes and
commit records, while every array read is still checksummed. Any change to the file (an
in-place edit with its mtime set back, a replacement, a live writer appending) is seen.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch
from conftest import tiny_model

import replaykit
from replaykit._format import known, safety
from replaykit._format import layout as F
from replaykit._format.store import Recording
from replaykit.errors import ChecksumError


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    known.clear()
    yield
    known.clear()


@pytest.fixture
def tiny(tiny_recording: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny recording (one snapshot, a tracked model)."""
    dst = tmp_path / "tiny.h5"
    shutil.copyfile(tiny_recording, dst)
    return dst


def _counting(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Count calls of ``Recording.<name>`` (the full, uncached verification steps)."""
    calls = [0]
    orig: Callable[..., Any] = getattr(Recording, name)

    def spy(self: Recording, *a: Any, **k: Any) -> Any:
        calls[0] += 1
        return orig(self, *a, **k)

    monkeypatch.setattr(Recording, name, spy)
    return calls


def _restore(path: Path) -> tuple[Any, list[torch.Tensor]]:
    model = tiny_model()
    rep = replaykit.restore(path, 0, env=gym.make("CartPole-v1"), track={"model": model})
    try:
        obs = np.array(rep.obs, copy=True)
        for _ in range(5):  # verified against the recording: raises on any difference
            rep.env.step(rep.recorded_action(rep.step_count))
    finally:
        rep.close()
    return obs, [p.detach().clone() for p in model.parameters()]


def _unique_offset(path: Path, needle: bytes) -> int:
    data = path.read_bytes()
    at = data.find(needle)
    assert at >= 0 and data.find(needle, at + 1) < 0, "needle must occur once in the file"
    return at


def _poke(path: Path, offset: int, keep_mtime: bool = True) -> None:
    """Change one byte at ``offset`` in place: same size, same inode, mtime set back."""
    before = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))
    if keep_mtime:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size)
    if keep_mtime:
        assert after.st_mtime_ns == before.st_mtime_ns


def _tree_text_offset(path: Path) -> int:
    """Where a digit of the snapshot's tree attribute text lies in the file."""
    with h5py.File(path, "r") as f:
        (name,) = [n for n in f[F.SNAPSHOTS_GROUP] if not n.startswith(F.TMP_PREFIX)]
        text = f[F.snapshot_path(name)].attrs[F.TREE_ATTR]
    text = text.decode() if isinstance(text, bytes) else str(text)
    # A window of the text long enough to be unique in the file.
    i = len(text) // 2
    needle = text[i : i + 48].encode()
    at = _unique_offset(path, needle)
    return at + next(j for j, c in enumerate(needle) if chr(c).isdigit())


def _pack_offset(path: Path) -> int:
    with h5py.File(path, "r") as f:
        (name,) = [n for n in f[F.SNAPSHOTS_GROUP] if not n.startswith(F.TMP_PREFIX)]
        off = f[F.snapshot_path(name)][F.PACK_DATASET].id.get_offset()
    assert off is not None
    return int(off) + 8


def test_second_restore_reuses_the_verified_structure(
    tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    obs1, params1 = _restore(tiny)
    assert known.stats()[0] == 1
    root = _counting(monkeypatch, "_read_root")
    listing = _counting(monkeypatch, "_list_snapshots")
    attrs = _counting(monkeypatch, "_read_snapshot_attrs")
    obs2, params2 = _restore(tiny)
    assert (root[0], listing[0], attrs[0]) == (0, 0, 0)
    assert obs1.tobytes() == obs2.tobytes()
    assert all(torch.equal(a, b) for a, b in zip(params1, params2, strict=True))


def test_each_open_owns_its_metadata(tiny: Path) -> None:
    with Recording(tiny) as a:
        a.meta["env_id"] = "changed"
        a.provenance.clear()
    with Recording(tiny) as b:
        assert b.meta["env_id"] == "CartPole-v1"
        assert b.provenance


def test_in_place_edit_with_mtime_set_back_is_verified_again(tiny: Path) -> None:
    _restore(tiny)
    before = os.stat(tiny)
    _poke(tiny, _tree_text_offset(tiny))
    after = os.stat(tiny)
    # Size, inode and mtime are as before: only the kernel-set ctime tells the edit.
    assert after.st_ctime_ns != before.st_ctime_ns
    with pytest.raises(ChecksumError, match="snapshot attributes do not match"):
        _restore(tiny)


def test_replaced_file_is_verified_again(tiny: Path, tmp_path: Path) -> None:
    _restore(tiny)
    other = tmp_path / "other.h5"
    shutil.copy2(tiny, other)  # same bytes, same size and mtime: only the inode differs
    _poke(other, _tree_text_offset(other))
    os.replace(other, tiny)
    with pytest.raises(ChecksumError, match="snapshot attributes do not match"):
        _restore(tiny)


def test_damaged_array_raises_on_every_restore(tiny: Path) -> None:
    _poke(tiny, _pack_offset(tiny))
    for _ in range(2):  # the second open reuses the structure the first verified
        with pytest.raises(ChecksumError, match="snapshot array does not match"):
            _restore(tiny)
    assert known.stats()[0] == 1


def test_array_data_is_checksummed_even_when_the_identity_is_unchanged(
    tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Were the identity ever to match after a change (coarse timestamps, a writer without a
    # lock), the snapshot's data and the stream columns read are still checksummed.
    _restore(tiny)
    with Recording(tiny) as rec:
        ident = safety.file_identity(rec._file)
    for offset, what in ((_pack_offset(tiny), "snapshot array"), (_obs_offset(tiny), "stored")):
        monkeypatch.setattr(safety, "file_identity", lambda f, ident=ident: ident)
        _poke(tiny, offset)
        with pytest.raises(ChecksumError, match=f"{what} data|{what} does not match"):
            _restore(tiny)
        _poke(tiny, offset)  # undo
        monkeypatch.undo()
        _restore(tiny)
        known.clear()
        _restore(tiny)
        with Recording(tiny) as rec:
            ident = safety.file_identity(rec._file)


def _obs_offset(path: Path) -> int:
    """A byte of the observation column's first chunk (the restore reads that column)."""
    with h5py.File(path, "r") as f:
        ds = f[F.stream_path(F.STEPS)][F.column_path(F.OBS, "")]
        info = ds.id.get_chunk_info(0)
    return int(info.byte_offset) + 4


_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from replaykit._format.store import RecordingWriter
    w = RecordingWriter(sys.argv[1], meta={"env_id": "X"}, provenance={}, commit_every_steps=10)
    s = w.stream("steps")
    c = s.column("obs", np.dtype("float64"), (3,))
    i = 0
    for name, step in (("a", 20), ("b", 40)):
        while i < step:
            c.buf[s.pos] = i
            s.end_row()
            i += 1
        w.write_snapshot(name, {"x": np.arange(step)}, {"step": step})
        w.commit()
        print(name, flush=True)
        sys.stdin.readline()
    w.close()
    print("closed", flush=True)
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="HDF5 file locks are POSIX flock here")
@pytest.mark.integration
def test_live_writer_file_is_never_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "live.h5"
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdin is not None and writer.stdout is not None
    root = _counting(monkeypatch, "_read_root")
    try:
        assert writer.stdout.readline().strip() == "a"
        for _ in range(2):
            with Recording(path) as rec:
                assert [x.name for x in rec.snapshots] == ["a"]
        assert root[0] == 2  # verified in full each time: a writer holds the file
        assert known.stats()[0] == 0
        writer.stdin.write("\n")
        writer.stdin.flush()
        assert writer.stdout.readline().strip() == "b"  # appended rows and a snapshot
        with Recording(path) as rec:
            assert [x.name for x in rec.snapshots] == ["a", "b"]
            assert rec.stream("steps").rows == 40
        writer.stdin.write("\n")
        writer.stdin.flush()
        assert writer.stdout.readline().strip() == "closed"
    finally:
        writer.stdin.close()
        writer.wait(timeout=60)
        writer.stdout.close()
    assert writer.returncode == 0
    for _ in range(2):  # closed: kept from now on
        with Recording(path) as rec:
            assert [x.name for x in rec.snapshots] == ["a", "b"]
    assert root[0] == 4
    assert known.stats()[0] == 1


def test_unverified_open_adds_nothing(tiny: Path) -> None:
    with Recording(tiny, verify=False) as rec:
        rec.load_snapshot(0, tensors=False)
        rec.stream(F.STEPS).read(F.REWARD)
    assert known.stats()[0] == 0


def test_bounded_in_files_and_bytes(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = []
    for i in range(known.MAX_FILES + 3):
        p = tmp_path / f"c{i}.h5"
        shutil.copyfile(tiny, p)
        paths.append(p)
        with Recording(p) as rec:
            rec.load_snapshot(0, tensors=False)
    files, nbytes = known.stats()
    assert files == known.MAX_FILES
    assert 0 < nbytes <= known.MAX_BYTES
    known.clear()
    # A file whose parsed text exceeds the budget is not kept (but opens as usual).
    monkeypatch.setattr(known, "MAX_BYTES", 100)
    with Recording(paths[0]) as rec:
        assert rec.snapshots
    assert known.stats() == (0, 0)


def test_check_verifies_in_full_even_after_a_restore(
    tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from replaykit._analysis.check import validate_file

    _restore(tiny)
    attrs = _counting(monkeypatch, "_read_snapshot_attrs")
    validate_file(tiny, sandbox=False)
    assert attrs[0] == 1


def test_each_open_owns_its_snapshot_listing(tiny: Path) -> None:
    with Recording(tiny) as a:
        a.snapshots[0].meta["step"] = -5
    with Recording(tiny) as b:
        assert b.snapshots[0].meta["step"] != -5


def test_small_column_reads_match_the_file(tiny: Path) -> None:
    # A column that fits one block is verified once and sliced from the verified bytes.
    col = F.column_path(F.OBS, "")
    with h5py.File(tiny, "r") as f:
        stored = f[F.stream_path(F.STEPS)][col][()]
    with Recording(tiny) as rec:
        st = rec.stream(F.STEPS)
        n = st.rows
        for lo, hi in ((0, n), (3, 7), (n - 2, n + 5), (5, 5)):
            got = st.read(col, lo, hi)
            assert got.dtype == stored.dtype
            assert got.tobytes() == stored[lo:hi].tobytes()
        a = st.read(col, 0, 2)
        a[...] = 0  # the caller's copy: later reads are unaffected
        assert st.read(col, 0, 2).tobytes() == stored[0:2].tobytes()
