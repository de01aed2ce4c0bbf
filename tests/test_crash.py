"""Kill a recording process at random (seeded) moments and check what it leaves behind.

Each child forks from a fork server (replaykit is already imported, so a child starts in
milliseconds), records CartPole with seeded actions and a tracked torch model, and reports
its progress on a pipe. The parent SIGKILLs it either as soon as it reports a random step or
at a random moment of a snapshot write. The kill moments follow the child's own progress,
so machine load changes where kills land, never whether the test passes. Every file left
behind must open with plain h5py and with :class:`replaykit.Recording`, hold a clean prefix
of the deterministic reference recording, lose at most one commit interval, and every
listed snapshot must load with its checksums verified.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import statistics
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch

from replaykit._format import layout as F
from replaykit._format.store import Recording
from replaykit._session.record import RecordingWrapper
from replaykit.errors import ReplaykitError

STEPS = 1200
COMMIT_EVERY = 64
SNAPSHOT_EVERY = 300
_MSG = struct.Struct("<ci")


def _record(path: Path, seed: int, report: Callable[[bytes, int], None] | None) -> None:
    """The recording run: deterministic given ``seed``; reports progress through ``report``."""
    torch.manual_seed(seed)
    # About 1 MiB of weights, so a snapshot write lasts long enough to be hit by a kill.
    model = torch.nn.Linear(256, 1024)
    env = RecordingWrapper(
        gym.make("CartPole-v1"),
        path,
        seed=seed,
        track={"model": model},
        commit_every_steps=COMMIT_EVERY,
        commit_every_seconds=3600.0,
    )
    actions = np.random.default_rng(seed).integers(0, 2, STEPS)
    env.reset()
    for i in range(STEPS):
        if i and i % SNAPSHOT_EVERY == 0:
            if report is not None:
                report(b"S", i)
            env.snapshot()
            if report is not None:
                report(b"s", i)
        _, _, term, trunc, _ = env.step(int(actions[i]))
        if report is not None:
            report(b"T", i + 1)
        if term or trunc:
            env.reset()
    env.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Columns and snapshots of the complete recording, and how long a snapshot write takes."""
    path = tmp_path_factory.mktemp("crash-ref") / "ref.h5"
    started: dict[int, float] = {}
    writes: list[float] = []

    def report(kind: bytes, step: int) -> None:
        if kind == b"S":
            started[step] = time.perf_counter()
        elif kind == b"s":
            writes.append(time.perf_counter() - started[step])

    _record(path, 7, report)
    with Recording(path) as rec:
        cols = {
            s: {c: rec.stream(s).read(c) for c in rec.stream(s).columns} for s in rec.stream_names
        }
        snaps = {s.name: rec.load_snapshot(s.name)[1] for s in rec.snapshots}
    return {"cols": cols, "snaps": snaps, "snapshot_seconds": max(writes)}


def _child(path: Path, conn: Any) -> None:
    _record(path, 7, lambda kind, step: conn.send_bytes(_MSG.pack(kind, step)))


def _kill_one(
    ctx: Any, path: Path, rng: np.random.Generator, snapshot_seconds: float, mode: str
) -> dict[str, Any]:
    """Start a recorder, SIGKILL it at a random moment, return what it had reported.

    Kill moments are drawn from the child's own progress, never from wall-clock guesses, so
    machine load changes how many kills land where, never whether the test passes:
    ``"step"`` kills as soon as the child reports a random step (it is then somewhere in the
    steps after it); ``"snapshot"`` kills a random fraction of a snapshot write's duration
    (measured in this process) after the child starts a random snapshot. Whether the child
    really died by the kill, and whether the kill landed inside the snapshot write, is read
    from its exit status and from every message it sent before it died.
    """
    r, w = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(path, w), daemon=True)
    proc.start()
    w.close()
    if mode == "step":
        target_step, target_snap = int(rng.integers(1, STEPS)), None
    else:
        target_step = None
        target_snap = int(rng.integers(1, STEPS // SNAPSHOT_EVERY)) * SNAPSHOT_EVERY
    delay = rng.uniform(0.0, snapshot_seconds)
    last_step, snap_done, deadline, sent_kill = 0, False, None, False
    give_up = time.monotonic() + 120.0
    while True:
        if time.monotonic() > give_up:
            proc.kill()
            raise AssertionError(f"recorder for {path.name} hung")
        timeout = 0.05 if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            msg = r.recv_bytes() if r.poll(timeout) else None
        except EOFError:
            break  # the child exited (by itself or by the kill) and every message was read
        if msg is not None:
            kind, val = _MSG.unpack(msg)
            if kind == b"T":
                last_step = val
                if val == target_step:
                    deadline = time.monotonic()
            elif kind == b"S" and val == target_snap and deadline is None:
                deadline = time.monotonic() + delay
            elif kind == b"s" and val == target_snap:
                snap_done = True
        if deadline is not None and time.monotonic() >= deadline and not sent_kill:
            proc.kill()
            sent_kill = True
    r.close()
    proc.join(10)
    killed = proc.exitcode == -signal.SIGKILL
    return {
        "killed": killed,
        "last_step": last_step,
        # The child announced the write and never announced its end: the kill landed inside.
        "in_snapshot": killed
        and target_snap is not None
        and deadline is not None
        and not snap_done,
    }


def _check_file(path: Path, ref: dict[str, Any], reported: int) -> dict[str, Any]:
    """Open a killed recording every way a user would; return rows kept and snapshots."""
    # Plain h5py must open it and read every object.
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: obj[()] if isinstance(obj, h5py.Dataset) else None)
    with Recording(path) as rec:
        rows = {}
        for sname in rec.stream_names:
            s = rec.stream(sname)
            rows[sname] = s.rows
            for c in s.columns:
                got = s.read(c)
                want = ref["cols"][sname][c][: s.rows]
                assert got.dtype == want.dtype and np.array_equal(got, want), (sname, c)
        snaps = rec.snapshots
        for info in snaps:
            _, tree = rec.load_snapshot(info.name)
            want_w = ref["snaps"][info.name]["tracked"]["model"]
            got_w = tree["tracked"]["model"]
            assert _tree_equal(got_w, want_w), info.name
    steps = rows.get(F.STEPS, 0)
    # Never more than was written, never a row from the future.
    assert steps <= reported + 1
    return {"steps": steps, "lost": max(0, reported - steps), "snapshots": len(snaps)}


def _tree_equal(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return (
            isinstance(b, dict) and a.keys() == b.keys() and all(_tree_equal(a[k], b[k]) for k in a)
        )
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_tree_equal, a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    return bool(a == b) and type(a) is type(b)


def _campaign(ctx: Any, tmp_path: Path, ref: dict[str, Any], n: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    errors: collections.Counter[str] = collections.Counter()
    lost: list[int] = []
    opened = killed = in_snap = 0
    failures: list[str] = []
    for i in range(n):
        mode = "snapshot" if i % 2 else "step"
        path = tmp_path / f"kill-{i:04d}.h5"
        res = _kill_one(ctx, path, rng, ref["snapshot_seconds"], mode)
        killed += res["killed"]
        in_snap += res["in_snapshot"]
        where = f"{path.name} ({mode}, step {res['last_step']})"
        if not path.exists():
            # Every kill comes after the child reported a step, so the file must exist.
            errors["no file"] += 1
            failures.append(f"{where}: no file left behind")
            continue
        try:
            out = _check_file(path, ref, res["last_step"])
        except ReplaykitError as exc:
            errors[type(exc).__name__] += 1
            failures.append(f"{where}: {exc}")
            continue
        except (OSError, AssertionError, KeyError, ValueError) as exc:
            errors[type(exc).__name__] += 1
            failures.append(f"{where}: {exc!r}")
            continue
        opened += 1
        lost.append(out["lost"])
        if out["lost"] > COMMIT_EVERY:
            failures.append(
                f"{where}: lost {out['lost']} steps (reported {res['last_step']}, "
                f"kept {out['steps']})"
            )
        path.unlink()
    return {
        "files_tried": n,
        "killed_by_sigkill": killed,
        "killed_inside_snapshot_write": in_snap,
        "opened": opened,
        "errors_by_class": dict(errors),
        "steps_lost_max": max(lost, default=0),
        "steps_lost_median": statistics.median(lost) if lost else 0,
        "failures": failures[:10],
    }


def _report(stats: dict[str, Any], record_property: Any, label: str) -> None:
    print(f"\n[{label}] " + ", ".join(f"{k}={v}" for k, v in stats.items() if k != "failures"))
    for line in stats["failures"]:
        print("   ", line)
    for k, v in stats.items():
        record_property(k, v)


def _assert_campaign(stats: dict[str, Any]) -> None:
    """Only safety properties: how many kills land where depends on the machine, not these."""
    assert not stats["failures"], stats["failures"]
    assert stats["opened"] == stats["files_tried"]  # every file opens, holding a clean prefix
    assert stats["steps_lost_max"] <= COMMIT_EVERY


@pytest.mark.integration
def test_kills_leave_clean_prefix(
    tmp_path: Path, reference: dict[str, Any], record_property: Any, forkserver: Any
) -> None:
    stats = _campaign(forkserver, tmp_path, reference, 32, seed=2024)
    _report(stats, record_property, "kill x32")
    _assert_campaign(stats)


@pytest.mark.slow
@pytest.mark.integration
def test_kills_leave_clean_prefix_many(
    tmp_path: Path, reference: dict[str, Any], record_property: Any, forkserver: Any
) -> None:
    stats = _campaign(forkserver, tmp_path, reference, 220, seed=99)
    _report(stats, record_property, "kill x220")
    _assert_campaign(stats)


def _committed_steps(path: Path, tmp_path: Path) -> int:
    """Rows a reader sees in the file as it is on disk now (as if the writer were killed)."""
    image = tmp_path / "image.h5"
    shutil.copyfile(path, image)
    with Recording(image) as rec:
        return rec.stream(F.STEPS).rows


def _steps(env: Any, n: int) -> None:
    for i in range(n):
        _, _, te, tr, _ = env.step(i % 2)
        if te or tr:
            env.reset()


@pytest.mark.parametrize("seconds, committed", [(0.05, 128), (1e9, 0)])
def test_time_based_commit_for_slow_env(tmp_path: Path, seconds: float, committed: int) -> None:
    """A slow env (few steps per second) still commits on time, without a clock read per step."""
    path = tmp_path / "slow.h5"
    env = RecordingWrapper(
        gym.make("CartPole-v1"),
        path,
        seed=0,
        commit_every_steps=100_000,
        commit_every_seconds=seconds,
    )
    env.reset()
    _steps(env, 64)
    time.sleep(0.06)
    _steps(env, 64)  # the 128th row checks the clock: past the deadline, so it commits
    if committed:
        assert _committed_steps(path, tmp_path) == committed
    else:
        with pytest.raises(ReplaykitError, match="commit"):
            _committed_steps(path, tmp_path)  # no stream committed yet
    env.close()


def test_step_based_commit(tmp_path: Path) -> None:
    """commit_every_steps is honoured even when the clock deadline is far away."""
    path = tmp_path / "steps.h5"
    env = RecordingWrapper(
        gym.make("CartPole-v1"), path, seed=0, commit_every_steps=50, commit_every_seconds=1e9
    )
    env.reset()
    _steps(env, 120)
    assert _committed_steps(path, tmp_path) == 100
    env.close()


def test_stray_temp_snapshot_is_ignored(tmp_path: Path, reference: dict[str, Any]) -> None:
    """A half-written snapshot (temp group) left by a kill is invisible to readers."""
    path = tmp_path / "stray.h5"
    _record(path, 7, None)
    with h5py.File(path, "a") as f:
        g = f[F.SNAPSHOTS_GROUP].create_group(F.TMP_PREFIX + "half")
        g.create_dataset("a0", data=np.zeros(3))
    with Recording(path) as rec:
        names = [s.name for s in rec.snapshots]
        assert names == list(reference["snaps"])
        assert not any(n.startswith(F.TMP_PREFIX) for n in names)


def test_fsync_commits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fsync=True calls os.fsync on every commit (durability across power loss)."""
    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    path = tmp_path / "fsync.h5"
    env = RecordingWrapper(gym.make("CartPole-v1"), path, seed=0, commit_every_steps=10, fsync=True)
    env.reset()
    _steps(env, 30)
    n = len(calls)
    assert n >= 3
    env.close()
    assert len(calls) > n
