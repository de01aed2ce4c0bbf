"""No writer opens an existing path for truncation (issue 18: a second writer destroyed a
live recording, and a file held open by a reader became 0 bytes)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from replaykit._analysis.check import validate_file
from replaykit._format.store import Recording, RecordingWriter
from replaykit.errors import UsageError


def _write(path: Path, rows: int, *, value: float = 1.0, **kw: object) -> RecordingWriter:
    w = RecordingWriter(path, meta={"env_id": "X"}, provenance={}, **kw)  # type: ignore[arg-type]
    s = w.stream("steps")
    col = s.column("reward", np.dtype("float64"), ())
    for _ in range(rows):
        col.buf[s.pos] = value
        s.end_row()
    w.commit()
    return w


def test_second_writer_on_live_recording_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "live.h5"
    first = _write(path, 10)
    size = path.stat().st_size
    with pytest.raises(UsageError, match="already exists; pass overwrite=True"):
        RecordingWriter(path, meta={}, provenance={})
    assert path.stat().st_size == size
    s = first.stream("steps")
    col = s.columns["reward"]
    for _ in range(5):
        col.buf[s.pos] = 2.0
        s.end_row()
    first.close()
    with Recording(path) as rec:
        np.testing.assert_array_equal(rec.stream("steps").read("reward"), [1.0] * 10 + [2.0] * 5)
    validate_file(path)


def test_file_held_by_plain_reader_is_not_truncated(tmp_path: Path) -> None:
    path = tmp_path / "held.h5"
    _write(path, 7).close()
    before = path.read_bytes()
    with h5py.File(path, "r") as reader:
        with pytest.raises(UsageError, match="already exists"):
            RecordingWriter(path, meta={}, provenance={})
        assert path.read_bytes() == before
        assert reader["streams/steps/reward"].shape[0] == 7


def test_overwrite_replaces_only_on_close(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    _write(path, 3).close()
    old = path.read_bytes()
    w = _write(path, 4, value=5.0, overwrite=True)
    # The old recording stays whole (and readable) until the new one is complete.
    assert w.write_path != path and w.write_path.parent == path.parent
    assert path.read_bytes() == old
    with Recording(path) as rec:
        assert rec.stream("steps").rows == 3
    w.close()
    assert not w.write_path.exists() or w.write_path == path
    with Recording(path) as rec:
        np.testing.assert_array_equal(rec.stream("steps").read("reward"), [5.0] * 4)
    assert [p.name for p in tmp_path.iterdir()] == ["run.h5"]


def test_overwrite_of_missing_path_writes_in_place(tmp_path: Path) -> None:
    path = tmp_path / "new.h5"
    w = _write(path, 2, overwrite=True)
    assert w.write_path == path
    w.close()
    with Recording(path) as rec:
        assert rec.stream("steps").rows == 2


def test_directory_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is a directory"):
        RecordingWriter(tmp_path, meta={}, provenance={})
