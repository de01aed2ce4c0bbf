"""Sweeps and folder verbs on the serial and process executors (Ray: tests/test_scale_ray.py).

Real recordings, real spawned workers (killed with SIGKILL mid-task), real sandboxed checks.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import pytest
import scale_helpers

import replaykit
from replaykit._format import manifest as M
from replaykit._scale import executor
from replaykit._scale.sweep import parse_seeds, seed_file_name
from replaykit.cli import main

STEPS = 60


def _plain(result: replaykit.FolderResult) -> list[tuple[Any, ...]]:
    """What must not depend on the executor: per file name, seed, status, detail, other."""
    return [(f.file, f.seed, f.status, f.detail, f.other) for f in result.files]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "runs"
    result = replaykit.record_sweep(
        "CartPole-v1", "random", "0-3,5", out, steps=STEPS, snapshot_at=[20, 40]
    )
    assert result.exit_code == 0, _plain(result)
    return out


# --------------------------------------------------------------------------- seeds, executor


def test_parse_seeds() -> None:
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("5, 0,3,5-7") == [0, 3, 5, 6, 7]
    assert parse_seeds([3, 1, 3]) == [1, 3]
    for bad, match in [
        ("1-0", "runs backwards"),
        ("a", "expected seeds like"),
        ("-1", "expected seeds like"),
        ("", "no seeds"),
        ("0-100000", "more than"),
        (str(1 << 63), "seed must be an integer"),
    ]:
        with pytest.raises(replaykit.UsageError, match=match):
            parse_seeds(bad)


def test_serial_executor_reports_a_raising_task_and_runs_the_others() -> None:
    payloads = [{"x": 2}, {"x": 3, "boom": True}, {"x": 4}]
    got = dict(executor.run_tasks(scale_helpers.boom, payloads))
    assert got[0] == {"ok": True, "value": {"x": 4, "pid": os.getpid()}}
    assert got[1] == {"ok": False, "error": "RuntimeError: boom second line"}
    assert got[2]["value"]["x"] == 16


def test_backend_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    assert executor.choose_backend(None, 1, None) == "serial"
    monkeypatch.setattr(executor, "ray_available", lambda: False)
    assert executor.choose_backend(None, 2, None) == "process"
    with pytest.raises(replaykit.MissingExtraError, match=r'pip install "replaykit\[ray\]"'):
        executor.choose_backend(None, 2, "auto")
    with pytest.raises(replaykit.MissingExtraError, match="process pool"):
        executor.choose_backend("ray", 2, None)
    monkeypatch.setattr(executor, "ray_available", lambda: True)
    assert executor.choose_backend(None, 2, None) == "ray"
    assert executor.choose_backend(None, 1, "auto") == "ray"
    with pytest.raises(replaykit.UsageError, match="needs the ray backend"):
        executor.choose_backend("process", 2, "auto")
    with pytest.raises(replaykit.UsageError, match="workers must be"):
        executor.choose_backend(None, 0, None)
    with pytest.raises(replaykit.UsageError, match="backend must be one of"):
        executor.choose_backend("threads", 2, None)
    with pytest.raises(replaykit.UsageError, match="must be auto or HOST:PORT"):
        executor.choose_backend(None, 2, "head-node")
    with pytest.raises(replaykit.UsageError, match=r"no Ray cluster answers at 127.0.0.1:1"):
        executor.choose_backend(None, 2, "127.0.0.1:1")


@pytest.mark.integration
def test_import_replaykit_and_the_scale_package_import_no_ray() -> None:
    import subprocess
    import sys

    code = (
        "import sys, replaykit; replaykit.record_sweep; import replaykit.cli; "
        "import replaykit._scale.executor; print('ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.integration
def test_process_pool_retries_a_killed_worker_and_reports_a_twice_killed_one(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "killed-once"
    payloads: list[dict[str, Any]] = [{"x": i} for i in range(6)]
    payloads[1]["marker"] = str(marker)
    got = dict(executor.run_tasks(scale_helpers.die_once, payloads, backend="process", workers=2))
    assert marker.exists()  # the first try really died
    assert {i: o["value"]["x"] for i, o in got.items()} == {i: i * i for i in range(6)}
    assert all(o["value"]["pid"] != os.getpid() for o in got.values())

    # A worker killed while idle, between two tasks, is replaced before the next one.
    import signal
    import time

    it = executor.run_tasks(scale_helpers.square, [{"x": 1}, {"x": 2}], backend="process")
    i, first = next(it)
    os.kill(first["value"]["pid"], signal.SIGKILL)
    time.sleep(0.5)
    j, second = next(it)
    assert (i, j, second["value"]["x"]) == (0, 1, 4)
    assert second["value"]["pid"] != first["value"]["pid"]
    assert list(it) == []

    payloads = [{"x": i, "die": i == 2} for i in range(5)]
    got = dict(executor.run_tasks(scale_helpers.die_always, payloads, backend="process", workers=2))
    assert got[2] == {
        "ok": False,
        "error": "the worker process died (killed by SIGKILL) in each of 2 tries",
    }
    assert {i: o["value"]["x"] for i, o in got.items() if i != 2} == {0: 0, 1: 1, 3: 9, 4: 16}


# --------------------------------------------------------------------------- sweeps


def test_sweep_writes_one_file_per_seed_and_a_manifest(sweep: Path) -> None:
    names = [seed_file_name(s) for s in (0, 1, 2, 3, 5)]
    assert sorted(os.listdir(sweep)) == sorted([*names, M.MANIFEST_NAME])
    m = replaykit.read_manifest(sweep)
    assert m.kind == "sweep" and m.info["env_id"] == "CartPole-v1" and m.info["steps"] == STEPS
    assert [e.file for e in m.entries] == names
    assert [e.seed for e in m.entries] == [0, 1, 2, 3, 5]
    for e in m.entries:
        assert e.status == "ok" and e.error is None
        assert e.rows["steps"] == STEPS
        assert e.snapshots == ["step-000020", "step-000040"]
        assert e.bytes == (sweep / e.file).stat().st_size
        with replaykit.Recording(sweep / e.file) as rec:
            assert rec.meta["user"]["cli_seed"] == e.seed
            assert M.provenance_digest(rec.provenance) == e.provenance
    # One setup, one digest (time, pid and command line are left out of it).
    assert len({e.provenance for e in m.entries}) == 1


def test_sweep_files_equal_single_records(sweep: Path, tmp_path: Path) -> None:
    one = tmp_path / "one.h5"
    assert (
        main(
            [
                "record",
                "CartPole-v1",
                "--seed",
                "3",
                "--steps",
                str(STEPS),
                "--snapshot-at",
                "20,40",
                "--out",
                str(one),
                "--no-progress",
            ]
        )
        == 0
    )
    assert replaykit.diff_recordings(one, sweep / seed_file_name(3)).match


def test_sweep_refuses_existing_files_before_recording(
    sweep: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in sweep.iterdir()}
    args = ["record", "CartPole-v1", "--seeds", "3-4", "--steps", "10", "--out", str(sweep)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "seed-000003.h5 already exists" in err and "--force" in err
    assert {p.name: p.stat().st_mtime_ns for p in sweep.iterdir()} == before
    assert main([*args[:-2], "--seed", "1", "--out", str(sweep)]) == 2
    assert "either --seed or --seeds" in capsys.readouterr().err


def test_a_failing_seed_is_reported_and_the_others_are_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fragile_policy.py").write_text(
        "class P:\n"
        "    def __init__(self, env, seed):\n"
        "        if seed == 2:\n"
        "            raise ValueError('seed 2 is cursed')\n"
        "        self.space = env.action_space\n"
        "        self.space.seed(seed)\n"
        "    def act(self, obs):\n"
        "        return self.space.sample()\n"
        "def make(env, seed):\n"
        "    return P(env, seed)\n"
    )
    args = ["record", "CartPole-v1", "--policy", "fragile_policy:make", "--seeds", "1-3"]
    args += ["--steps", "20", "--snapshot-at", "10", "--out", "runs", "--json", "--no-progress"]
    assert main(args) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["totals"] == {"ok": 2, "failed": 1} and doc["exit_code"] == 2
    failed = [f for f in doc["files"] if f["status"] == "failed"]
    assert failed[0]["seed"] == 2 and "ValueError: seed 2 is cursed" in failed[0]["detail"]
    m = replaykit.read_manifest("runs")
    assert [(e.seed, e.status) for e in m.entries] == [(1, "ok"), (2, "failed"), (3, "ok")]
    assert sorted(os.listdir("runs")) == [M.MANIFEST_NAME, "seed-000001.h5", "seed-000003.h5"]
    # Replaying the folder: the seed that was never recorded is a failure, the others replay.
    r = replaykit.replay_folder("runs", policy="fragile_policy:make")
    assert [(f.seed, f.status) for f in r.files] == [(1, "ok"), (2, "failed"), (3, "ok")]
    assert r.exit_code == 2


# --------------------------------------------------------------------------- folder verbs


def _damage(path: Path) -> None:
    with h5py.File(path, "r+") as f:
        f["streams/steps/reward"][5] = 7.0


@pytest.fixture
def mixed(sweep: Path, tmp_path: Path) -> Path:
    """A copy of the sweep without its manifest: one damaged file, one other run under the
    name of seed 1, a symlink out of the folder and a file that is not HDF5."""
    b = tmp_path / "b"
    shutil.copytree(sweep, b)
    (b / M.MANIFEST_NAME).unlink()
    _damage(b / seed_file_name(2))
    (b / seed_file_name(1)).unlink()
    replaykit.record_sweep("CartPole-v1", "random", [7], tmp_path, steps=STEPS, snapshot_at=[20])
    shutil.move(tmp_path / seed_file_name(7), b / seed_file_name(1))
    outside = tmp_path / "outside.h5"
    shutil.copyfile(sweep / seed_file_name(0), outside)
    (b / "evil.h5").symlink_to(outside)
    (b / "junk.h5").write_bytes(b"#!/bin/sh\nrm -rf /\n" * 50)
    return b


def test_replay_folder_reports_each_file(mixed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = replaykit.replay_folder(mixed)
    by = {f.file: f for f in r.files}
    assert by["evil.h5"].status == "bad" and "outside the folder" in by["evil.h5"].detail
    assert by["junk.h5"].status == "bad"
    assert by[seed_file_name(2)].status == "bad" and "checksum" in by[seed_file_name(2)].detail
    for s in (0, 1, 3, 5):
        assert by[seed_file_name(s)].status == "ok", by[seed_file_name(s)]
        assert by[seed_file_name(s)].detail == "40 steps verified after 1 snapshot(s)"
    assert r.exit_code == 2
    # --all replays both snapshots of each file; --json prints the same summary.
    assert main(["replay", str(mixed), "--all", "--json"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["totals"] == {"ok": 4, "bad": 3}
    ok = [f for f in doc["files"] if f["status"] == "ok"]
    assert {f["detail"] for f in ok} == {
        "60 steps verified after 2 snapshot(s)",
        "40 steps verified after 1 snapshot(s)",  # the seed-7 run has one snapshot
    }


def test_replay_folder_reports_a_divergence_with_where(
    sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    b = tmp_path / "edited"
    shutil.copytree(sweep, b)
    with h5py.File(b / seed_file_name(3), "r+") as f:
        f["streams/steps/reward"][45] = 2.0
    r = replaykit.replay_folder(b, verify=False)
    by = {f.file: f for f in r.files}
    assert by[seed_file_name(3)].status == "diverged"
    assert "step 45" in by[seed_file_name(3)].detail and "'reward'" in by[seed_file_name(3)].detail
    assert r.counts() == {"ok": 4, "diverged": 1} and r.exit_code == 1
    assert main(["replay", str(b), "--no-verify"]) == 1
    out = capsys.readouterr().out
    assert "DIVERGED" in out and "replay: 5 files: 4 ok, 1 diverged (serial" in out


@pytest.mark.integration
def test_check_folder_sandboxes_each_file_and_verifies_the_others(
    mixed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    r = replaykit.check_folder(mixed)
    by = {f.file: f.status for f in r.files}
    assert by == {
        "evil.h5": "bad",
        "junk.h5": "bad",
        seed_file_name(0): "ok",
        seed_file_name(1): "ok",
        seed_file_name(2): "bad",
        seed_file_name(3): "ok",
        seed_file_name(5): "ok",
    }
    # The same as checking the files one by one.
    for f in r.files:
        if f.status == "ok":
            report = replaykit.validate_file(mixed / f.file, sandbox=True)
            assert f.detail == f"{report.bytes_verified} bytes verified"
        elif f.file != "evil.h5":
            with pytest.raises(replaykit.FileFormatError):
                replaykit.validate_file(mixed / f.file, sandbox=True)
    assert main(["check", str(mixed)]) == 2
    out = capsys.readouterr().out
    assert "check: 7 files: 4 ok, 3 bad (serial, 1 worker" in out
    # The process pool gives the same results.
    pooled = replaykit.check_folder(mixed, workers=2, backend="process")
    assert _plain(pooled) == _plain(r) and pooled.backend == "process"


def test_diff_folders_pairs_by_name_and_reports_first_divergence(
    sweep: Path, mixed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    r = replaykit.diff_folders(sweep, mixed)
    by = {(f.file, f.other): f for f in r.files}
    assert by[(seed_file_name(0), seed_file_name(0))].status == "ok"
    diverged = by[(seed_file_name(1), seed_file_name(1))]
    assert diverged.status == "diverged"
    assert diverged.detail.startswith("reset 0 (before step 0), key 'resets/obs', element [")
    assert " vs " in diverged.detail
    assert diverged.data["first"]["key"]
    assert by[(seed_file_name(2), seed_file_name(2))].status == "bad"
    assert by[("", "evil.h5")].status == "unpaired"
    assert by[("", "junk.h5")].status == "unpaired"
    assert r.exit_code == 2
    # The diverging pair alone, as `replaykit diff A B` sees it.
    one = replaykit.diff_recordings(sweep / seed_file_name(1), mixed / seed_file_name(1))
    assert not one.match and diverged.data["first"] == one.first.to_json()
    assert main(["diff", str(sweep), str(sweep)]) == 0
    assert "diff: 5 pairs: 5 ok" in capsys.readouterr().out
    assert main(["diff", str(sweep), str(sweep / seed_file_name(0))]) == 2
    assert "a folder with a folder" in capsys.readouterr().err


def test_diff_folders_pairs_by_seed_when_both_have_manifests(sweep: Path, tmp_path: Path) -> None:
    b = tmp_path / "renamed"
    b.mkdir()
    for s in (0, 1, 2, 3, 5):
        shutil.copyfile(sweep / seed_file_name(s), b / f"run-{s}.h5")
    replaykit.gather_manifest(b)
    r = replaykit.diff_folders(sweep / M.MANIFEST_NAME, b)
    assert [(f.file, f.other, f.status) for f in r.files] == [
        (seed_file_name(s), f"run-{s}.h5", "ok") for s in (0, 1, 2, 3, 5)
    ]


def test_gather_manifest_lists_user_recordings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for seed in (4, 9):
        env = replaykit.RecordingWrapper(
            gym.make("CartPole-v1"), tmp_path / f"actor-{seed}.h5", seed=seed, snapshot_at=[5]
        )
        env.reset()
        for _ in range(12):
            _, _, term, trunc, _ = env.step(env.action_space.sample())
            if term or trunc:
                env.reset()
        env.close()
    assert main(["manifest", str(tmp_path)]) == 0
    assert "2 recording(s), 24 steps in all" in capsys.readouterr().out
    m = replaykit.read_manifest(tmp_path)
    assert m.kind == "gathered"
    assert [(e.file, e.seed, e.rows["steps"], e.snapshots) for e in m.entries] == [
        ("actor-4.h5", 4, 12, ["step-000005"]),
        ("actor-9.h5", 9, 12, ["step-000005"]),
    ]
    assert main(["manifest", str(tmp_path)]) == 2
    assert "--force" in capsys.readouterr().err
    (tmp_path / "junk.h5").write_bytes(b"not a recording")
    assert main(["manifest", str(tmp_path), "--force"]) == 2
    out = capsys.readouterr().out
    assert "1 file(s) are not sound recordings" in out and "junk.h5" in out
    assert replaykit.read_manifest(tmp_path).entries[2].status == "failed"


def test_folder_options_are_refused_on_one_file(
    sweep: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one = str(sweep / seed_file_name(0))
    for args in (["replay", one, "--workers", "2"], ["check", one, "--backend", "ray"]):
        assert main(args) == 2
        assert "apply to folders" in capsys.readouterr().err


def test_a_file_written_where_the_driver_cannot_see_it_is_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As when --out is a local folder on each machine of a cluster: the worker's copy lands
    # on its own disk. Here the copy into the folder is skipped.
    from replaykit._scale import tasks

    monkeypatch.setattr(tasks, "describe_recording", lambda path: {})
    monkeypatch.setattr(
        tasks, "publish", lambda src, out, overwrite: shutil.copyfile(src, tmp_path / "x.h5")
    )
    r = replaykit.record_sweep("CartPole-v1", "random", "0-1", tmp_path / "runs", steps=10)
    assert r.counts() == {"failed": 2}
    assert all("not visible here: --out must be a folder every" in f.detail for f in r.files)
    assert [e.status for e in replaykit.read_manifest(tmp_path / "runs").entries] == [
        "failed",
        "failed",
    ]


def test_force_replaces_existing_seeds_and_keeps_the_other_entries(
    sweep: Path, tmp_path: Path
) -> None:
    b = tmp_path / "b"
    shutil.copytree(sweep, b)
    args = ["record", "CartPole-v1", "--seeds", "3,9", "--steps", "10", "--out", str(b)]
    assert main([*args, "--force", "--no-progress"]) == 0
    m = replaykit.read_manifest(b)
    assert [(e.seed, e.rows["steps"]) for e in m.entries] == [
        (0, STEPS),
        (1, STEPS),
        (2, STEPS),
        (3, 10),
        (5, STEPS),
        (9, 10),
    ]
    assert not [p for p in os.listdir(b) if "partial" in p or p.startswith(".")]


def test_an_interrupted_sweep_leaves_a_manifest_of_what_finished(tmp_path: Path) -> None:
    seen: list[int] = []

    def stop_after_two(f: replaykit.FileResult) -> None:
        seen.append(f.seed or 0)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as info:
        replaykit.record_sweep(
            "CartPole-v1", "random", "0-5", tmp_path / "runs", steps=10, on_done=stop_after_two
        )
    assert "2 finished recording(s) are listed in" in " ".join(getattr(info.value, "__notes__", []))
    m = replaykit.read_manifest(tmp_path / "runs")
    assert [(e.seed, e.status) for e in m.entries] == [(0, "ok"), (1, "ok")]
