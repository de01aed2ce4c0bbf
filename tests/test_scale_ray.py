"""Sweeps and folder verbs on a real local Ray cluster (2 CPUs), started and stopped here.

Everything runs in ONE test function, so however pytest-xdist spreads the suite over its
workers, only one Ray cluster is ever started at a time. It covers: a sweep of 20 seeds
(one worker SIGKILLed mid-recording and retried, one seed whose worker dies in every try),
the manifest, and replay / check / diff over folders with a damaged file and a diverging
pair; every result is compared with the same work run file by file in this process. Last,
two rollout actors of the test's own record with ``RecordingWrapper`` and the folder they
wrote is gathered into a manifest and replayed.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import h5py
import pytest

import replaykit
from replaykit._format import manifest as M
from replaykit._scale.sweep import seed_file_name

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.integration, pytest.mark.ray]

STEPS = 60
SEEDS = range(20)
KILLED_ONCE = 7  # its worker is SIGKILLed mid-recording the first time; the retry records it
KILLED_ALWAYS = 13  # its worker dies in every try: that seed fails, the others do not

# A user policy module (found through the current directory, as `replaykit record --policy
# module:callable` finds it) that SIGKILLs its own worker process at step 30 while armed.
POLICY = f"""
import os, signal
from pathlib import Path

class Policy:
    def __init__(self, env, seed):
        self.seed, self.t = seed, 0
        self.space = env.action_space
        self.space.seed(seed)

    def act(self, obs):
        self.t += 1
        kill_dir = os.environ.get("REPLAYKIT_TEST_KILL_DIR")
        if kill_dir and self.t == 30 and (Path(kill_dir) / "armed").exists():
            marker = Path(kill_dir) / f"killed-{{self.seed}}-{{os.getpid()}}"
            done_once = list(Path(kill_dir).glob(f"killed-{KILLED_ONCE}-*"))
            once = self.seed == {KILLED_ONCE} and not done_once
            if once or self.seed == {KILLED_ALWAYS}:
                marker.write_text("")
                os.kill(os.getpid(), signal.SIGKILL)
        return self.space.sample()

def make(env, seed):
    return Policy(env, seed)
"""


@ray.remote(num_cpus=1)
class RolloutActor:
    """A user's own Ray rollout actor, recording its env with the normal RecordingWrapper."""

    def record(self, path: str, seed: int) -> int:
        import gymnasium as gym

        import replaykit

        with replaykit.RecordingWrapper(
            gym.make("CartPole-v1"), path, seed=seed, snapshot_at=[15]
        ) as env:
            env.reset()
            for _ in range(40):
                _, _, term, trunc, _ = env.step(env.action_space.sample())
                if term or trunc:
                    env.reset()
        return os.getpid()


def _plain(result: replaykit.FolderResult) -> list[tuple[object, ...]]:
    return [(f.file, f.seed, f.status, f.detail, f.other) for f in result.files]


def test_sweep_and_folder_verbs_on_a_local_ray_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "killer_policy.py").write_text(POLICY)
    kill_dir = tmp_path / "kills"
    kill_dir.mkdir()
    (kill_dir / "armed").write_text("")
    monkeypatch.setenv("REPLAYKIT_TEST_KILL_DIR", str(kill_dir))
    # Workers inherit this environment: they see the kill switch, the test process does not.
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=128 * 1024 * 1024,
    )
    monkeypatch.delenv("REPLAYKIT_TEST_KILL_DIR")
    try:
        _run_everything(tmp_path, kill_dir)
    finally:
        ray.shutdown()


def _run_everything(tmp_path: Path, kill_dir: Path) -> None:
    policy = "killer_policy:make"
    seeds = ",".join(str(s) for s in SEEDS)

    # 1. The sweep on Ray: one file per seed, the killed task retried, the twice-killed failed.
    t0 = time.perf_counter()
    swept = replaykit.record_sweep(
        "CartPole-v1",
        policy,
        seeds,
        tmp_path / "ray",
        steps=STEPS,
        snapshot_at=[20, 40],
        backend="ray",
        workers=2,
    )
    ray_seconds = time.perf_counter() - t0
    (kill_dir / "armed").unlink()  # no more kills: the folder verbs below replay seed 13 too
    assert swept.backend == "ray"
    kills = sorted(int(p.name.split("-")[1]) for p in kill_dir.iterdir())
    assert kills == [KILLED_ONCE, KILLED_ALWAYS, KILLED_ALWAYS], kills
    status = {f.seed: f.status for f in swept.files}
    assert status == {s: "failed" if s == KILLED_ALWAYS else "ok" for s in SEEDS}
    failed = next(f for f in swept.files if f.seed == KILLED_ALWAYS)
    assert "failed in each of 2 tries" in failed.detail
    # Only finished files reached the output folder: nothing of the killed tries.
    names = [seed_file_name(s) for s in SEEDS if s != KILLED_ALWAYS]
    assert sorted(os.listdir(tmp_path / "ray")) == sorted([*names, M.MANIFEST_NAME])
    m = replaykit.read_manifest(tmp_path / "ray")
    assert [e.seed for e in m.entries] == list(SEEDS)
    by_seed = m.by_seed()
    assert by_seed[KILLED_ALWAYS].status == "failed" and by_seed[KILLED_ALWAYS].error
    for s in SEEDS:
        if s != KILLED_ALWAYS:
            e = by_seed[s]
            assert (e.status, e.rows["steps"], e.snapshots) == (
                "ok",
                STEPS,
                ["step-000020", "step-000040"],
            )
            assert e.bytes == (tmp_path / "ray" / e.file).stat().st_size

    # 2. The same seeds one by one in this process (no kill switch here): identical files.
    t0 = time.perf_counter()
    serial = replaykit.record_sweep(
        "CartPole-v1",
        policy,
        seeds,
        tmp_path / "serial",
        steps=STEPS,
        snapshot_at=[20, 40],
        backend="serial",
    )
    serial_seconds = time.perf_counter() - t0
    assert serial.exit_code == 0 and serial.backend == "serial"
    print(f"20 recordings: ray {ray_seconds:.1f} s, serial {serial_seconds:.1f} s")
    pairs = replaykit.diff_folders(tmp_path / "ray", tmp_path / "serial", backend="ray", workers=2)
    assert pairs.counts() == {"ok": 19, "failed": 1}, _plain(pairs)
    assert {f.seed for f in pairs.files if f.status == "failed"} == {KILLED_ALWAYS}

    # 3. A folder with one damaged file and one diverging pair.
    b = tmp_path / "b"
    shutil.copytree(tmp_path / "serial", b)
    with h5py.File(b / seed_file_name(4), "r+") as f:  # damaged: its checksum no longer fits
        f["streams/steps/reward"][10] = 5.0
    # Diverging: seed 9's file holds another run (seed 3's actions under seed 9's name).
    shutil.copyfile(tmp_path / "serial" / seed_file_name(3), b / seed_file_name(9))

    for verb, run in [
        ("replay", lambda **kw: replaykit.replay_folder(b, policy=policy, **kw)),
        ("check", lambda **kw: replaykit.check_folder(b, **kw)),
        ("diff", lambda **kw: replaykit.diff_folders(tmp_path / "serial", b, **kw)),
    ]:
        t0 = time.perf_counter()
        on_ray = run(backend="ray", workers=2)
        t1 = time.perf_counter()
        one_by_one = run(backend="serial")
        print(f"{verb}: ray {t1 - t0:.1f} s, serial {time.perf_counter() - t1:.1f} s")
        assert on_ray.backend == "ray" and one_by_one.backend == "serial"
        assert _plain(on_ray) == _plain(one_by_one), verb
        status = {f.seed: f.status for f in on_ray.files}
        assert status[4] == "bad", verb
        assert "checksum" in next(f.detail for f in on_ray.files if f.seed == 4)
        assert on_ray.exit_code == 2
        if verb == "diff":
            assert status[9] == "diverged"
            assert sum(s == "ok" for s in status.values()) == 18
            first = next(f for f in on_ray.files if f.seed == 9)
            assert first.data["first"] == (
                replaykit.diff_recordings(
                    tmp_path / "serial" / seed_file_name(9), b / seed_file_name(9)
                ).first.to_json()  # type: ignore[union-attr]
            )
        else:
            assert sum(s == "ok" for s in status.values()) == 19, (verb, status)

    # 4. Recordings written by a user's own Ray actors, gathered into a folder manifest.
    actors_dir = tmp_path / "actors"
    actors_dir.mkdir()
    actors = [RolloutActor.remote() for _ in range(2)]  # type: ignore[attr-defined]
    pids = ray.get(
        [
            a.record.remote(str(actors_dir / f"actor-{s}.h5"), s)
            for a, s in zip(actors, (4, 5), strict=True)
        ]
    )
    assert os.getpid() not in pids
    for a in actors:  # each holds one of the cluster's 2 CPUs
        ray.kill(a)
    m = replaykit.gather_manifest(actors_dir)
    assert [(e.file, e.seed, e.rows["steps"], e.snapshots) for e in m.entries] == [
        ("actor-4.h5", 4, 40, ["step-000015"]),
        ("actor-5.h5", 5, 40, ["step-000015"]),
    ]
    replayed = replaykit.replay_folder(actors_dir, backend="ray", workers=2)
    assert [(f.seed, f.status) for f in replayed.files] == [(4, "ok"), (5, "ok")]
