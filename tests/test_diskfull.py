"""Disk full / file-size limit (issue 18): one clear error, earlier commits intact.

Each case records in a child process under ``RLIMIT_FSIZE`` (SIGXFSZ ignored, so a write
past the limit fails with EFBIG like a full disk fails with ENOSPC). Before the fix, 4 of 7
limits left a superblock naming an end past the data: the whole recording unreadable.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from replaykit._analysis.check import validate_file
from replaykit._format.store import Recording

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX rlimits")

_CHILD = textwrap.dedent(
    """
    import json, resource, signal, sys
    import numpy as np
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    path, limit, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    from replaykit._format.store import RecordingWriter
    from replaykit.errors import ReplaykitError
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    out = {"committed": 0, "snapshots": [], "error": None}
    w = None
    try:
        w = RecordingWriter(path, meta={"env_id": "X"}, provenance={}, commit_every_steps=500,
                            block_rows=500, compression=None if mode == "plain" else mode)
        s = w.stream("steps")
        c = s.column("obs", np.dtype("float64"), (64,))
        i = 0
        while i < 200_000:
            c.buf[s.pos] = np.arange(64) + i
            s.end_row()
            i += 1
            if i % 500 == 0:
                out["committed"] = s.committed_rows
            if i % 1500 == 0:
                name = f"s{i}"
                w.write_snapshot(name, {"a": np.full(100_000 + i, i, np.float64)}, {"step": i})
                out["snapshots"].append(name)
                out["committed"] = s.committed_rows
        w.close()
    except ReplaykitError as exc:
        out["error"] = [type(exc).__name__, str(exc)]
        if w is not None:
            w.close()  # a no-op after the failure
    print(json.dumps(out))
    """
)

LIMITS = [90_000, 400_000, 1_000_000, 1_300_000, 2_000_000, 3_100_000, 5_000_000]


def _run(tmp_path: Path, limit: int, mode: str) -> tuple[Path, dict]:
    path = tmp_path / f"full-{limit}-{mode}.h5"
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), str(limit), mode],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
    return path, json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("limit", "mode"),
    [(limit, "plain") for limit in LIMITS]
    # Deflate: chunks compressed on a worker thread and written with direct chunk writes.
    + [(limit, "gzip:1") for limit in (90_000, 400_000, 1_300_000, 3_100_000)],
)
@pytest.mark.integration
def test_file_size_limit_keeps_last_commit(tmp_path: Path, limit: int, mode: str) -> None:
    path, out = _run(tmp_path, limit, mode)
    assert out["error"] is not None, "the limit was never hit"
    name, message = out["error"]
    assert name == "RecordingWriteError"
    assert "file-size limit" in message and str(path) in message and "\n" not in message
    if not path.exists():  # nothing was ever committed: the writer removed its empty file
        assert out["committed"] == 0
        return
    validate_file(path)
    with Recording(path) as rec:
        names = [s.name for s in rec.snapshots]
        # Every snapshot listed was completely written, and none the child did not finish.
        assert set(names) <= set(out["snapshots"])
        if rec.stream_names:
            steps = rec.stream("steps")
            assert steps.rows >= out["committed"]
            obs = steps.read("obs")
            np.testing.assert_array_equal(obs, np.arange(64) + np.arange(steps.rows)[:, None])
        for n in names:
            _, tree = rec.load_snapshot(n)
            assert tree["a"][0] == int(n[1:])


@pytest.mark.slow
@pytest.mark.parametrize("limit", range(60_000, 6_000_000, 197_003))
@pytest.mark.parametrize("mode", ["plain", "gzip"])
@pytest.mark.integration
def test_file_size_limit_sweep(tmp_path: Path, limit: int, mode: str) -> None:
    path, _ = _run(tmp_path, limit, mode)
    if path.exists():
        validate_file(path)


_ENOSPC_CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from replaykit._format.store import RecordingWriter
    from replaykit.errors import ReplaykitError
    out = {"committed": 0, "snapshots": [], "error": None}
    w = None
    try:
        w = RecordingWriter(sys.argv[1], meta={"env_id": "X"}, provenance={},
                            commit_every_steps=500, block_rows=500)
        s = w.stream("steps")
        c = s.column("obs", np.dtype("float64"), (64,))
        i = 0
        while i < 200_000:
            c.buf[s.pos] = np.arange(64) + i
            s.end_row()
            i += 1
            if i % 1500 == 0:
                w.write_snapshot(f"s{i}", {"a": np.full(100_000 + i, i, np.float64)}, {"step": i})
                out["snapshots"].append(f"s{i}")
                out["committed"] = s.committed_rows
    except ReplaykitError as exc:
        out["error"] = [type(exc).__name__, str(exc)]
    if w is not None:
        w.close()
    print(json.dumps(out))
    """
)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Any:
    """Mount a small tmpfs (a full disk in seconds); skip where mounting is not allowed."""
    mounts: list[Path] = []

    def mount(size: str) -> Path:
        d = tmp_path / f"fs-{len(mounts)}"
        d.mkdir()
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()[:80]})")
        mounts.append(d)
        return d

    yield mount
    for d in mounts:
        subprocess.run(["umount", str(d)], capture_output=True)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tmpfs mount")
@pytest.mark.parametrize("size", ["1m", "3m", "5m"])
@pytest.mark.integration
def test_full_disk_keeps_last_commit(small_tmpfs: Any, size: str) -> None:
    path = small_tmpfs(size) / "r.h5"
    proc = subprocess.run(
        [sys.executable, "-c", _ENOSPC_CHILD, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    name, message = out["error"]
    assert name == "RecordingWriteError" and "disk is full" in message and str(path) in message
    validate_file(path)
    with Recording(path) as rec:
        assert {s.name for s in rec.snapshots} <= set(out["snapshots"])
        assert rec.stream("steps").rows >= out["committed"]
