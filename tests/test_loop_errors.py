"""The errors a real training loop meets: each says what went wrong and what to do.

Covers the resumed loop that skips updates, one pair of counter names on recorders and
replays, and replaykit's frames hidden from pytest tracebacks.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import replaykit
from replaykit import DivergenceError, RecordingWrapper

pytest_plugins = ["pytester"]


def _loop(session: object, env: gym.Env, until: int, updates: list[int]) -> None:
    """A loop shared by recorder and replay: probes its update count, logs 3 updates at 12."""
    counts = session  # step_count and update_count on both: no isinstance
    while counts.step_count < until:  # type: ignore[attr-defined]
        if counts.step_count == 12:  # type: ignore[attr-defined]
            for _ in range(3):
                session.log_update(loss=np.float32(updates.append(1) or len(updates)))  # type: ignore[attr-defined]
        session.probe("updates", np.int64(counts.update_count))  # type: ignore[attr-defined]
        _, _, term, trunc, _ = env.step(0 if counts.step_count % 2 else 1)  # type: ignore[attr-defined]
        if term or trunc:
            env.reset()


@pytest.fixture(scope="module")
def loop_recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("loop") / "loop.h5"
    with RecordingWrapper(gym.make("CartPole-v1"), path, seed=0, snapshot_at=[10]) as env:
        env.reset()
        _loop(env, env, 20, [])
        assert (env.step_count, env.update_count) == (20, 3)
    return path


def test_replay_has_the_recorder_counter_names(loop_recording: Path) -> None:
    with replaykit.restore(loop_recording, env=gym.make("CartPole-v1")) as rep:
        assert (rep.step_count, rep.update_count) == (10, 0)
        _loop(rep, rep.env, 20, [])
        assert (rep.step_count, rep.update_count) == (20, 3)


def test_a_resume_that_skips_updates_is_named(loop_recording: Path) -> None:
    with replaykit.restore(loop_recording, env=gym.make("CartPole-v1")) as rep:
        for _ in range(2):
            rep.probe("updates", np.int64(rep.update_count))
            rep.env.step(rep.recorded_action(rep.step_count))
        rep.probe("updates", np.int64(rep.update_count))  # the 3 updates at step 12 skipped
        with pytest.raises(DivergenceError) as info:
            rep.env.step(rep.recorded_action(rep.step_count))
    msg = str(info.value)
    assert "probe/updates" in msg
    assert (
        "the recording logged 3 updates after the snapshot and before this step; this replay "
        "logged none — did the resumed loop skip an update?"
    ) in msg


def test_no_update_hint_when_the_counts_agree(loop_recording: Path) -> None:
    with replaykit.restore(loop_recording, env=gym.make("CartPole-v1")) as rep:
        rep.probe("updates", np.int64(7))
        with pytest.raises(DivergenceError) as info:
            rep.env.step(rep.recorded_action(rep.step_count))
    assert "skip an update" not in str(info.value)


HIDDEN_FRAMES_TEST = """
import gymnasium as gym
import numpy as np
import replaykit


def test_resumed(path):
    rep = replaykit.restore(path, env=gym.make("CartPole-v1"))
    for _ in range(2):
        rep.probe("updates", np.int64(rep.update_count))
        rep.env.step(rep.recorded_action(rep.step_count))
    rep.log_update(loss=np.float32(99))


def test_stepped(path):
    rep = replaykit.restore(path, env=gym.make("CartPole-v1"))
    rep.probe("updates", np.int64(5))
    rep.env.step(rep.recorded_action(rep.step_count))
"""


def test_pytest_tracebacks_show_no_replaykit_frame(
    pytester: pytest.Pytester, loop_recording: Path
) -> None:
    pytester.makeconftest(
        f"import pytest\n\n@pytest.fixture\ndef path():\n    return {str(loop_recording)!r}\n"
    )
    pytester.makepyfile(test_hidden=HIDDEN_FRAMES_TEST)
    result = pytester.runpytest("-p", "no:hypothesispytest", "--tb=long")
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    assert "DivergenceError" in out
    assert "rep.log_update(loss=np.float32(99))" in out
    assert "rep.env.step(rep.recorded_action" in out
    shown = [line for line in out.splitlines() if "/replaykit/" in line and ".py:" in line]
    assert not shown, shown


def test_digest_mismatch_prints_both_digests(tmp_path: Path) -> None:
    import torch

    path = tmp_path / "digest.h5"
    net = torch.nn.Linear(2, 2)
    with replaykit.TrainingRecorder(path, track={"net": net}) as rec:
        rec.snapshot("s")
        recorded = int(replaykit.params_digest(net))
        rec.log_update(params_digest=replaykit.params_digest(net))
    with replaykit.restore_training(path, "s", track={"net": net}) as rep:
        with torch.no_grad():
            net.weight.add_(1.0)
        replayed = int(replaykit.params_digest(net))
        with pytest.raises(DivergenceError) as info:
            rep.log_update(params_digest=replaykit.params_digest(net))
    msg = str(info.value)
    assert f"expected: digest {recorded:016x} [uint64]" in msg
    assert f"actual:   digest {replayed:016x} [uint64]" in msg
    assert "the digests differ" in msg and "abs " not in msg and "rel " not in msg


def test_cli_replay_of_a_python_loop_recording_says_how(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from replaykit.cli import main

    path = tmp_path / "loop.h5"
    net = torch.nn.Linear(4, 2)
    with RecordingWrapper(gym.make("CartPole-v1"), path, seed=0, track={"q": net}) as env:
        env.reset()
        env.step(0)
        env.snapshot("s")
        env.step(1)
    assert main(["replay", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    assert "recorded by a Python loop that tracks ['q']" in err
    assert "replaykit.restore(path, env=..., track={...})" in err and "--policy" in err
    assert "build the object exactly" not in err
