"""Large snapshot arrays written with direct I/O read back bit-exactly, or fall back cleanly."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

from replaykit._format import rawio as _rawio
from replaykit._format.store import Recording, RecordingWriter


def _tree() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {
        # 1_200_004 bytes: over the 1 MiB threshold, and not a multiple of 4096 (a tail).
        "w": torch.from_numpy(rng.standard_normal(300_001).astype(np.float32)),
        "buf": rng.integers(0, 2**63, size=(1024, 160), dtype=np.int64),  # 4096-aligned size
        "mask": rng.random(2_000_000) < 0.5,  # bool, 2 MB
        "small": np.arange(7, dtype=np.float64),
    }


def _write(path: Path, direct: bool) -> None:
    with RecordingWriter(path, meta={}, provenance={}, direct_io=direct) as w:
        w.write_snapshot("s", _tree(), {"step": 0, "episode": 0})


def _check(path: Path) -> None:
    want = _tree()
    with Recording(path) as rec:
        _, got = rec.load_snapshot("s")
    assert got["w"].dtype == torch.float32 and torch.equal(got["w"], want["w"])
    assert got["buf"].tobytes() == want["buf"].tobytes() and got["buf"].shape == (1024, 160)
    assert got["mask"].dtype == np.bool_ and np.array_equal(got["mask"], want["mask"])
    assert got["small"].tolist() == want["small"].tolist()


def _direct_io_works(d: Path) -> bool:
    if not hasattr(os, "O_DIRECT"):
        return False
    probe = d / "probe"
    probe.write_bytes(b"")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_DIRECT))
    except OSError:
        return False
    return True


def test_direct_io_writes_large_arrays_bit_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not _direct_io_works(tmp_path):
        pytest.skip("this file system has no direct I/O")
    used: list[int] = []
    real = _rawio.DirectWriter.write

    def spy(self: _rawio.DirectWriter, offset: int, data: np.ndarray, hasher: Any = None) -> bool:
        ok = real(self, offset, data, hasher)
        used.append(int(ok) * data.nbytes)
        return ok

    monkeypatch.setattr(_rawio.DirectWriter, "write", spy)
    p = tmp_path / "d.h5"
    _write(p, direct=True)
    assert sorted(used) == [1_200_004, 1_310_720, 2_000_000]  # every large array, directly
    _check(p)
    with h5py.File(p, "r") as f:
        g = f["snapshots/s"]
        for name in g:
            if name != "pack":
                assert g[name].id.get_offset() % _rawio.ALIGN == 0
                assert g[name].chunks is None  # contiguous


def test_page_cache_writes_read_back_the_same(tmp_path: Path) -> None:
    p = tmp_path / "b.h5"
    _write(p, direct=False)
    _check(p)


def test_refused_direct_io_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system refusing O_DIRECT writes (EINVAL) mid-array: the bytes go through HDF5."""
    if not _direct_io_works(tmp_path):
        pytest.skip("this file system has no direct I/O")
    import fcntl

    calls = {"n": 0}
    real_pwrite = os.pwrite

    def flaky(fd: int, data: Any, offset: int) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            calls["n"] += 1
            if calls["n"] >= 2:  # the first chunk lands; the rest is refused
                raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(_rawio.os, "pwrite", flaky)
    p = tmp_path / "f.h5"
    _write(p, direct=True)
    _check(p)
    assert calls["n"] >= 2


def test_killed_direct_io_snapshot_is_never_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash while large arrays are written leaves the snapshot unpublished."""
    if not _direct_io_works(tmp_path):
        pytest.skip("this file system has no direct I/O")

    class BoomError(Exception):
        pass

    p = tmp_path / "k.h5"
    w = RecordingWriter(p, meta={}, provenance={}, direct_io=True)
    real = _rawio.DirectWriter.write

    def die(self: _rawio.DirectWriter, offset: int, data: np.ndarray, hasher: Any = None) -> bool:
        real(self, offset, data, hasher)
        raise BoomError

    monkeypatch.setattr(_rawio.DirectWriter, "write", die)
    with pytest.raises(BoomError):
        w.write_snapshot("s", _tree(), {"step": 0, "episode": 0})
    monkeypatch.undo()
    w.close()
    with Recording(p) as rec:
        assert rec.snapshots == []


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Paths a DirectWriter was opened for (one per snapshot that used direct I/O)."""
    paths: list[str] = []
    real_init = _rawio.DirectWriter.__init__

    def spy(self: _rawio.DirectWriter, path: Any) -> None:
        paths.append(str(path))
        real_init(self, path)

    monkeypatch.setattr(_rawio.DirectWriter, "__init__", spy)
    return paths


def test_default_picks_direct_io_only_when_the_page_cache_is_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opened: list[str]
) -> None:
    for room, want in ((True, 0), (False, 1)):
        opened.clear()
        monkeypatch.setattr(_rawio, "page_cache_has_room", lambda n, room=room: room)
        p = tmp_path / f"auto-{room}.h5"
        with RecordingWriter(p, meta={}, provenance={}) as w:
            w.write_snapshot("s", _tree(), {"step": 0, "episode": 0})
        assert len(opened) == want
        _check(p)


@pytest.mark.skipif(not Path("/proc/meminfo").exists(), reason="reads Linux /proc")
def test_page_cache_room_reads_the_kernel_limits() -> None:
    assert _rawio.page_cache_has_room(1 << 20)
    assert not _rawio.page_cache_has_room(1 << 50)  # a petabyte never fits


def test_recording_wrapper_passes_direct_io_on(tmp_path: Path, opened: list[str]) -> None:
    import gymnasium as gym

    from replaykit._session.record import RecordingWrapper

    big = torch.nn.Linear(1024, 512)  # 2 MiB of weights
    for direct, want in ((True, 1), (False, 0)):
        opened.clear()
        p = tmp_path / f"w-{direct}.h5"
        env = RecordingWrapper(
            gym.make("CartPole-v1"), p, seed=0, track={"model": big}, direct_io=direct
        )
        env.reset()
        env.snapshot()
        env.close()
        assert len(opened) == want
        with Recording(p) as rec:
            _, tree = rec.load_snapshot(0)
        assert any(torch.equal(t, big.weight.detach()) for t in _tensors(tree["tracked"]))


def _tensors(node: Any) -> list[torch.Tensor]:
    if isinstance(node, torch.Tensor):
        return [node]
    if isinstance(node, dict):
        return [t for v in node.values() for t in _tensors(v)]
    if isinstance(node, (list, tuple)):
        return [t for v in node for t in _tensors(v)]
    return []
