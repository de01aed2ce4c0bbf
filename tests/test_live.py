"""Reading a recording that another process is still writing (issue 18: 5 of 25 reads
said "the file is damaged: re-record it"). A reader sees the last commit, or says plainly
that the file is being written; it never calls a live file damaged."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from replaykit._analysis.check import validate_file
from replaykit._format import safety
from replaykit._format.store import Recording
from replaykit.errors import FileFormatError

_WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from replaykit._format.store import RecordingWriter
    w = RecordingWriter(sys.argv[1], meta={"env_id": "X"}, provenance={},
                        commit_every_steps=100, block_rows=100)
    s = w.stream("steps")
    c = s.column("obs", np.dtype("float64"), (16,))
    i = 0
    end = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < end:
        c.buf[s.pos] = i
        s.end_row()
        i += 1
        if i == 200:  # the steps stream is in a commit: readers may start
            print("started", flush=True)
        if i % 2000 == 0:
            w.write_snapshot(f"s{i}", {"a": np.full(5000, i)}, {"step": i})
            w.update_meta(user={"rows": i})
    w.close()
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="HDF5 file locks are POSIX flock here")
@pytest.mark.integration
def test_reader_sees_last_commit_or_says_being_written(tmp_path: Path) -> None:
    path = tmp_path / "live.h5"
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), "3"], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout is not None
    assert writer.stdout.readline().strip() == "started"
    ok, live_errors, rows_seen = 0, 0, []
    try:
        assert safety.is_being_written(path)
        for i in range(20):
            try:
                if i % 2:
                    report = validate_file(path)
                    rows_seen.append(report.streams.get("steps", 0))
                else:
                    with Recording(path) as rec:
                        steps = rec.stream("steps")
                        steps.read("obs")
                        rows_seen.append(steps.rows)
                ok += 1
            except FileFormatError as exc:
                assert safety.BEING_WRITTEN in str(exc), str(exc)
                assert "re-record" not in str(exc), str(exc)
                live_errors += 1
            time.sleep(0.05)
    finally:
        writer.wait(timeout=120)
        assert writer.stdout is not None
        writer.stdout.close()
    assert writer.returncode == 0
    assert ok >= 12, (ok, live_errors)
    assert rows_seen == sorted(rows_seen)  # each read saw a commit no older than the last
    assert not safety.is_being_written(path)
    validate_file(path)
