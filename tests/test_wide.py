"""Records that grow without bound stay crash-safe (issue 18): a stream of 1,000 info
columns (its commit record outgrows the 64 KiB an HDF5 attribute may hold) and reset
options of tens of KiB each episode (metadata that was written outside the commits).
Both spill into slot datasets (format version 3); a SIGKILL leaves the last commit."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from replaykit import RecordingWrapper
from replaykit._analysis.check import validate_file
from replaykit._format import layout as F
from replaykit._format.store import Recording, RecordingWriter

KEYS = 1000


class WideInfo(gym.Wrapper):  # type: ignore[type-arg]
    """Adds ``KEYS`` diagnostic floats to every info dict."""

    def step(self, action: Any) -> Any:
        obs, r, term, trunc, info = self.env.step(action)
        t = float(self.env.unwrapped.state[0])  # type: ignore[attr-defined]
        info.update({f"diag_{i:04d}": t + i for i in range(KEYS)})
        return obs, r, term, trunc, info


def _options(episode: int) -> dict[str, Any]:
    return {"note": f"episode {episode} " + "x" * 40_000, "weights": list(range(2000))}


def _record(path: Path, steps: int, report: Any = None) -> None:
    env = RecordingWrapper(
        WideInfo(gym.make("CartPole-v1")),
        path,
        seed=1,
        commit_every_steps=25,
        commit_every_seconds=3600.0,
    )
    episode = 0
    env.reset(options=_options(episode))
    for i in range(steps):
        _, _, term, trunc, _ = env.step(i % 2)
        if report is not None:
            report(i + 1)
        if term or trunc:
            episode += 1
            env.reset(options=_options(episode))
    env.close()


@pytest.mark.integration
def test_thousand_info_keys_and_large_options(tmp_path: Path) -> None:
    path = tmp_path / "wide.h5"
    _record(path, 60)
    report = validate_file(path)
    assert report.format_version == F.SPILL_VERSION
    assert report.columns[F.STEPS] >= KEYS
    with Recording(path) as rec:
        steps = rec.stream(F.STEPS)
        assert steps.rows == 60
        col = F.column_path(F.INFO, "diag_0999")
        first = steps.read(F.column_path(F.INFO, "diag_0000"))
        np.testing.assert_array_equal(steps.read(col), first + 999)
        options = rec.meta[F.META_RESET_OPTIONS]
        assert options and all(v["note"].startswith("episode") for v in options.values())


def test_small_files_stay_version_2(tmp_path: Path) -> None:
    path = tmp_path / "small.h5"
    with RecordingWriter(path, meta={"env_id": "X"}, provenance={}) as w:
        w.stream("steps").column("reward", np.dtype("float64"), ())
    with Recording(path) as rec:
        assert rec.format_version == F.BASE_VERSION


def test_spilled_record_shrinks_back_and_grows_again(tmp_path: Path) -> None:
    path = tmp_path / "grow.h5"
    w = RecordingWriter(path, meta={"env_id": "X"}, provenance={})
    for n in (10, 50_000, 100, 120_000, 70_000, 30):
        w.update_meta(user={"blob": "y" * n})
        w.commit()
    w.update_meta(user={"blob": "y" * 90_000})
    w.close()
    validate_file(path)
    with Recording(path) as rec:
        assert len(rec.meta[F.META_USER]["blob"]) == 90_000


def _writer_loop(path: Path, conn: Any) -> None:
    """Commit ever-larger metadata and wide rows until killed; report each commit."""
    w = RecordingWriter(path, meta={"env_id": "X"}, provenance={}, commit_every_steps=10**9)
    s = w.stream("steps")
    # 300 columns: a commit record of ~25 KiB, spilled like one of 1,000 columns.
    cols = [s.column(f"info/k{i:04d}", np.dtype("float64"), ()) for i in range(300)]
    i = 0
    while True:
        for c in cols:
            c.buf[s.pos] = i
        s.end_row()
        w.update_meta(reset_options={str(j): "z" * 3000 for j in range(i % 40)})
        w.commit()
        i += 1
        conn.send_bytes(i.to_bytes(4, "little"))


@pytest.mark.integration
def test_sigkill_leaves_last_commit(tmp_path: Path, forkserver: Any) -> None:
    """Kills at random moments while growing records spill: every file opens and checks."""
    rng = np.random.default_rng(0)
    kills = 0
    for k in range(4):
        path = tmp_path / f"kill{k}.h5"
        r, wconn = forkserver.Pipe(duplex=False)
        proc = forkserver.Process(target=_writer_loop, args=(path, wconn), daemon=True)
        proc.start()
        wconn.close()
        target = int(rng.integers(3, 40))
        last = 0
        give_up = time.monotonic() + 120
        while last < target:
            assert time.monotonic() < give_up, "writer hung"
            if r.poll(0.05):
                last = int.from_bytes(r.recv_bytes(), "little")
        time.sleep(float(rng.uniform(0, 0.02)))
        proc.kill()
        proc.join(10)
        while r.poll(0):
            try:
                last = int.from_bytes(r.recv_bytes(), "little")
            except EOFError:
                break
        r.close()
        kills += proc.exitcode == -signal.SIGKILL
        validate_file(path)
        with Recording(path) as rec:
            rows = rec.stream(F.STEPS).rows
            assert rows >= last, (rows, last)
            opts = rec.meta[F.META_RESET_OPTIONS]
            assert len(opts) == (rows - 1) % 40
    assert kills == 4
