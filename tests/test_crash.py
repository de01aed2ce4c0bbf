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


def _record(
    path: Path,
    seed: int,
    report: Callable[[bytes, int], None] | None,
    compression: str | None = None,
) -> None:
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
        compression=compression,
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


def _child(path: Path, conn: Any, compression: str | None = None) -> None:
    _record(path, 7, lambda kind, step: conn.send_bytes(_MSG.pack(kind, step)), compression)


def _kill_one(
    ctx: Any,
    path: Path,
    rng: np.random.Generator,
    snapshot_seconds: float,
    mode: str,
    compression: str | None = None,
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
    proc = ctx.Process(target=_child, args=(path, w, compression), daemon=True)
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


def _campaign(
    ctx: Any,
    tmp_path: Path,
    ref: dict[str, Any],
    n: int,
    seed: int,
    compression: str | None = None,
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    errors: collections.Counter[str] = collections.Counter()
    lost: list[int] = []
    opened = killed = in_snap = 0
    failures: list[str] = []
    for i in range(n):
        mode = "snapshot" if i % 2 else "step"
        path = tmp_path / f"kill-{i:04d}.h5"
        res = _kill_one(ctx, path, rng, ref["snapshot_seconds"], mode, compression)
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


@pytest.mark.integration
def test_kills_leave_clean_prefix_deflate(
    tmp_path: Path, reference: dict[str, Any], record_property: Any, forkserver: Any
) -> None:
    """The same with deflate: chunks compressed on a worker thread, a kill at any moment."""
    stats = _campaign(forkserver, tmp_path, reference, 16, seed=77, compression="gzip:1")
    _report(stats, record_property, "kill x16, gzip:1")
    _assert_campaign(stats)


@pytest.mark.slow
@pytest.mark.integration
def test_kills_leave_clean_prefix_many(
    tmp_path: Path, reference: dict[str, Any], record_property: Any, forkserver: Any
) -> None:
    stats = _campaign(forkserver, tmp_path, reference, 220, seed=99)
    _report(stats, record_property, "kill x220")
    _assert_campaign(stats)


@pytest.mark.slow
@pytest.mark.integration
def test_kills_leave_clean_prefix_deflate_many(
    tmp_path: Path, reference: dict[str, Any], record_property: Any, forkserver: Any
) -> None:
    """The CLI's default compression (gzip:1) under the long campaign."""
    stats = _campaign(forkserver, tmp_path, reference, 220, seed=1999, compression="gzip:1")
    _report(stats, record_property, "kill x220, gzip:1")
    _assert_campaign(stats)


# ------------------------------------------------------------------ --policy mlp recordings
# The CLI's `record --policy mlp` loop (rollout.drive with the built-in MLP policy): a
# REINFORCE update every 32 steps, logged after the step that completes the batch. Commits
# happen inside step(), so a commit often holds that step but not its update: a killed file
# must still replay, from every snapshot, to the end of its committed prefix.
MLP_STEPS = 900
MLP_COMMIT_EVERY = 32  # = the policy's update_every: commits land on update-triggering steps
MLP_SNAPSHOT_EVERY = 150


def _record_mlp(path: Path, seed: int, report: Callable[[bytes, int], None] | None) -> None:
    """Record CartPole with the built-in MLP policy as `replaykit record --policy mlp` does."""
    from replaykit._session.policies import resolve_policy
    from replaykit._session.rollout import drive, seed_everything

    seed_everything(seed)
    rec = RecordingWrapper(
        gym.make("CartPole-v1"),
        path,
        seed=seed,
        metadata={"policy": "mlp", "cli_seed": seed},
        commit_every_steps=MLP_COMMIT_EVERY,
        commit_every_seconds=3600.0,
    )
    policy = resolve_policy("mlp", rec, seed)
    for name, obj in policy.state_objects().items():
        rec.track(name, obj)

    def at_top() -> None:
        if rec.step_count % MLP_SNAPSHOT_EVERY == 0:
            rec.snapshot()

    def on_step() -> None:
        if report is not None:
            report(b"T", rec.step_count)

    obs, _ = rec.reset()
    needs_reset = False
    while rec.step_count < MLP_STEPS:
        obs = drive(
            rec,
            policy,
            1,
            obs=obs,
            needs_reset=needs_reset,
            on_probe=rec.probe,
            on_update=rec.log_update,
            at_top=at_top,
            on_step=on_step,
        )
        needs_reset = rec.needs_reset
    rec.close()


def _mlp_child(path: Path, conn: Any) -> None:
    _record_mlp(path, 5, lambda kind, step: conn.send_bytes(_MSG.pack(kind, step)))


def _kill_mlp(ctx: Any, path: Path, target: int) -> dict[str, Any]:
    """Start an MLP recorder and SIGKILL it as soon as it reports step ``target``."""
    r, w = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_mlp_child, args=(path, w), daemon=True)
    proc.start()
    w.close()
    last, sent = 0, False
    give_up = time.monotonic() + 120.0
    while True:
        if time.monotonic() > give_up:
            proc.kill()
            raise AssertionError(f"recorder for {path.name} hung")
        try:
            msg = r.recv_bytes() if r.poll(0.05) else None
        except EOFError:
            break
        if msg is not None:
            last = _MSG.unpack(msg)[1]
            if last >= target and not sent:
                proc.kill()
                sent = True
    r.close()
    proc.join(10)
    return {"killed": proc.exitcode == -signal.SIGKILL, "last_step": last}


def _replay_all(path: Path) -> dict[str, Any]:
    """Replay every snapshot of ``path`` to its end, as `replaykit replay --all` does."""
    from replaykit._session.rollout import replay_snapshot

    with Recording(path) as rec:
        names = [s.name for s in rec.snapshots]
        steps = rec.stream(F.STEPS).rows
    ends, at_prefix_end = [], 0
    for name in names:
        summary = replay_snapshot(path, name)
        ends.append(summary.step + summary.verified_steps)
        at_prefix_end += summary.prefix_end
    return {"snapshots": len(names), "steps": steps, "ends": ends, "prefix_end": at_prefix_end}


def _mlp_campaign(ctx: Any, tmp_path: Path, targets: list[int]) -> dict[str, Any]:
    failures: list[str] = []
    killed = replayed = snapshots = prefix_end = 0
    for i, target in enumerate(targets):
        path = tmp_path / f"mlp-kill-{i:04d}.h5"
        res = _kill_mlp(ctx, path, target)
        killed += res["killed"]
        where = f"{path.name} (kill after step {target}, reported {res['last_step']})"
        try:
            out = _replay_all(path)
        except (ReplaykitError, OSError, AssertionError) as exc:
            failures.append(f"{where}: {type(exc).__name__}: {exc}")
            continue
        snapshots += out["snapshots"]
        prefix_end += out["prefix_end"]
        # Each replay reaches the committed end, or stops at most one update batch before
        # it (the step whose update the kill cut off).
        short = [e for e in out["ends"] if e < out["steps"] - MLP_COMMIT_EVERY]
        if short:
            failures.append(f"{where}: replays ended at {short}, {out['steps']} steps committed")
            continue
        replayed += 1
        path.unlink()
    return {
        "files": len(targets),
        "killed_by_sigkill": killed,
        "files_replayed_to_end": replayed,
        "snapshots_replayed": snapshots,
        # Replays that met an update or reset the kill cut off and stopped there.
        "replays_stopped_at_prefix_end": prefix_end,
        "failures": failures[:10],
    }


@pytest.mark.integration
def test_killed_mlp_prefix_replays_to_its_end(tmp_path: Path) -> None:
    """A commit that holds the step triggering an update but not the update replays cleanly.

    The file as it is on disk after 40 steps (a kill) holds 32 committed steps and no update;
    replay stops at the end of that prefix and says so (exit 0), instead of "update 0 was not
    recorded".
    """
    from typer.testing import CliRunner

    from replaykit.cli import app

    path = tmp_path / "mlp.h5"
    image = tmp_path / "killed.h5"

    def report(kind: bytes, step: int) -> None:
        if step == 40 and not image.exists():
            shutil.copyfile(path, image)

    _record_mlp(path, 5, report)
    with Recording(image) as rec:
        assert rec.stream(F.STEPS).rows == 32
        assert not rec.has_stream(F.UPDATES) or rec.stream(F.UPDATES).rows == 0
    out = _replay_all(image)
    assert out["ends"] == [32]
    res = CliRunner().invoke(app, ["replay", str(image), "--all"])
    assert res.exit_code == 0, res.output
    assert "replayed to the end of the committed prefix" in res.output


@pytest.mark.integration
def test_killed_mlp_recordings_replay(tmp_path: Path, forkserver: Any) -> None:
    """A few kills of an MLP recording, each file replayed from every snapshot to its end."""
    targets = [int(t) for t in np.random.default_rng(18).integers(40, MLP_STEPS, 4)]
    stats = _mlp_campaign(forkserver, tmp_path, targets)
    print("\n[mlp kill x4] " + ", ".join(f"{k}={v}" for k, v in stats.items()))
    assert not stats["failures"], stats["failures"]
    assert stats["files_replayed_to_end"] == stats["files"]


@pytest.mark.slow
@pytest.mark.integration
def test_killed_mlp_recordings_replay_many(
    tmp_path: Path, record_property: Any, forkserver: Any
) -> None:
    """The full run: 40 kills at seeded steps, every killed file replayed to its end."""
    targets = [int(t) for t in np.random.default_rng(1818).integers(1, MLP_STEPS, 40)]
    stats = _mlp_campaign(forkserver, tmp_path, targets)
    print("\n[mlp kill x40] " + ", ".join(f"{k}={v}" for k, v in stats.items()))
    for k, v in stats.items():
        record_property(k, v)
    assert not stats["failures"], stats["failures"]
    assert stats["files_replayed_to_end"] == stats["files"]


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
