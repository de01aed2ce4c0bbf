"""Kill a flight-mode recorder (retention on) at random moments, including mid-deletion.

Each child (forked from a pre-imported fork server) records CartPole in flight mode with a
tracked ~1 MiB model whose first weight is set to the step count before every step, so
every snapshot's content says which step it belongs to. A NaN reward is injected late in
the run, so some kills land after the failure record. The child reports steps, snapshot
writes and retention drops on a pipe; the parent SIGKILLs it as soon as a random step is
reported, a random fraction of a snapshot write after it starts, or just as a drop starts.

Every file left behind must open with plain h5py and with :class:`replaykit.Recording`, every
listed snapshot must load with its checksums verified and hold its own step's weights, no
more than ``keep + 2`` snapshots may be listed, the first periodic snapshot stays once
published, and when a failure record exists a complete snapshot older than it exists too.
"""

from __future__ import annotations

import os
import signal
import struct
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch

import replaykit
from replaykit._analysis.inspection import nearest_snapshot
from replaykit._format import layout as F
from replaykit._format.store import Recording

STEPS = 900
EVERY = 60
KEEP = 2
NAN_AT = 700  # the 700th step call returns a NaN reward (row 699)
_MSG = struct.Struct("<ci")


class _NanReward(gym.Wrapper[Any, Any, Any, Any]):
    def __init__(self, env: gym.Env[Any, Any]) -> None:
        super().__init__(env)
        self.n = 0

    def step(self, action: Any) -> Any:
        obs, r, term, trunc, info = self.env.step(action)
        self.n += 1
        return obs, (float("nan") if self.n == NAN_AT else r), term, trunc, info


replaykit.register_stateless_wrapper(_NanReward)


def _record(path: Path, report: Any) -> None:
    torch.manual_seed(3)
    model = torch.nn.Linear(256, 1024)
    env = replaykit.RecordingWrapper(
        _NanReward(gym.make("CartPole-v1")),
        path,
        seed=3,
        snapshot_every=EVERY,
        keep_snapshots=KEEP,
        track={"model": model},
        commit_every_steps=32,
        commit_every_seconds=3600.0,
    )
    w: Any = env._writer
    write, drop = w.write_snapshot, w.drop_snapshot

    def write_reported(name: str, tree: Any, meta: dict[str, Any], **kw: Any) -> int:
        report(b"S", env.step_count)
        n = write(name, tree, meta, **kw)
        report(b"s", env.step_count)
        return int(n)

    def drop_reported(name: str) -> None:
        report(b"D", env.step_count)
        drop(name)
        report(b"d", env.step_count)

    w.write_snapshot, w.drop_snapshot = write_reported, drop_reported
    actions = np.random.default_rng(3).integers(0, 2, STEPS)
    env.reset()
    for i in range(STEPS):
        with torch.no_grad():
            model.weight[0, 0] = float(i)
        _, _, term, trunc, _ = env.step(int(actions[i]))
        report(b"T", i + 1)
        if term or trunc:
            env.reset()
    env.close()


def _child(path: Path, conn: Any) -> None:
    _record(path, lambda kind, step: conn.send_bytes(_MSG.pack(kind, step)))


def _kill_one(ctx: Any, path: Path, rng: np.random.Generator, mode: str) -> dict[str, Any]:
    r, w = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(path, w), daemon=True)
    proc.start()
    w.close()
    target_step = int(rng.integers(1, STEPS)) if mode == "step" else None
    # Snapshots at EVERY, 2 EVERY, ...; drops follow each publish from the (KEEP + 2)-th on.
    # No snapshot (nor drop) is taken after the failure record (step NAN_AT - 1).
    target = int(rng.integers(1, (NAN_AT - 1) // EVERY + 1)) * EVERY
    if mode == "drop":
        target = max(target, (KEEP + 2) * EVERY)
    delay = rng.uniform(0.0, 0.02)
    published = 0
    deadline: float | None = None
    sent = False
    give_up = time.monotonic() + 120.0
    while True:
        if time.monotonic() > give_up:
            proc.kill()
            raise AssertionError(f"recorder for {path.name} hung")
        timeout = 0.05 if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            msg = r.recv_bytes() if r.poll(timeout) else None
        except EOFError:
            break
        if msg is not None:
            kind, val = _MSG.unpack(msg)
            if kind == b"s":
                published += 1
            if deadline is None and (
                (kind == b"T" and val == target_step)
                or (mode == "snapshot" and kind == b"S" and val == target)
                or (mode == "drop" and kind == b"D" and val >= target)
            ):
                deadline = time.monotonic() + (0.0 if mode == "drop" else delay)
        if deadline is not None and time.monotonic() >= deadline and not sent:
            proc.kill()
            sent = True
    r.close()
    proc.join(10)
    return {
        "killed": proc.exitcode == -signal.SIGKILL,
        "exitcode": proc.exitcode,
        "published": published,
    }


def _check(path: Path, published: int) -> dict[str, Any]:
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: obj[()] if isinstance(obj, h5py.Dataset) else None)
    with Recording(path) as rec:
        for sname in rec.stream_names:
            s = rec.stream(sname)
            for c in s.columns:
                s.read(c)  # checksums verified
        snaps = rec.snapshots
        assert len(snaps) <= KEEP + 2, [s.name for s in snaps]
        for info in snaps:
            _, tree = rec.load_snapshot(info.name)  # checksums verified
            weight = tree["tracked"]["model"]["state_dict"]["weight"]
            assert float(weight[0, 0]) == info.step - 1, (info.name, float(weight[0, 0]))
        if published:
            assert snaps and snaps[0].name == f"step-{EVERY:06d}", [s.name for s in snaps]
        failure = rec.meta.get(F.META_FAILURE)
        if failure is not None:
            assert failure[F.FAILURE_STEP] == NAN_AT - 1
            near = nearest_snapshot(rec, failure)
            assert near is not None and near["step"] <= NAN_AT - 1
            rec.load_snapshot(near["name"])
        return {"snapshots": len(snaps), "failure": failure is not None}


def _campaign(ctx: Any, tmp_path: Path, n: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    modes = ("step", "snapshot", "drop")
    stats = {"tried": 0, "killed": 0, "with_failure": 0, "failures": []}
    for i in range(n):
        mode = modes[i % 3]
        path = tmp_path / f"flight-kill-{i:04d}.h5"
        res = _kill_one(ctx, path, rng, mode)
        stats["tried"] += 1
        stats["killed"] += res["killed"]
        if res["exitcode"] not in (0, -signal.SIGKILL):
            # The recorder itself failed (an exception in the child): not a kill test at all.
            stats["failures"].append(f"{path.name} ({mode}): child exited {res['exitcode']}")
            continue
        if not path.exists():
            stats["failures"].append(f"{path.name} ({mode}): no file")
            continue
        try:
            out = _check(path, res["published"])
        except Exception as exc:  # every kind of failure is reported, not only ours
            stats["failures"].append(f"{path.name} ({mode}): {exc!r}")
            continue
        stats["with_failure"] += out["failure"]
        os.unlink(path)
    return stats


@pytest.mark.integration
def test_kills_during_retention_leave_complete_snapshots(
    tmp_path: Path, forkserver: Any, record_property: Any
) -> None:
    stats = _campaign(forkserver, tmp_path, 12, seed=13)
    print(f"\n[flight kill x12] {stats}")
    record_property("stats", stats)
    assert not stats["failures"], stats["failures"]
    assert stats["killed"] >= stats["tried"] // 2, stats  # the kills landed (not a crash)


@pytest.mark.slow
@pytest.mark.integration
def test_kills_during_retention_leave_complete_snapshots_many(
    tmp_path: Path, forkserver: Any, record_property: Any
) -> None:
    stats = _campaign(forkserver, tmp_path, 150, seed=14)
    print(f"\n[flight kill x150] {stats}")
    record_property("stats", stats)
    assert not stats["failures"], stats["failures"]
    assert stats["killed"] >= stats["tried"] * 0.8, stats  # the kills landed (not a crash)
