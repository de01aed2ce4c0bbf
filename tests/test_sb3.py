"""replaykit.integrations.sb3 with the real Stable-Baselines3.

Each case in ``sb3_cases.CASES`` is recorded here with ``ReplaykitCallback`` and a snapshot in
the middle of a rollout (off-policy: with a partly filled replay buffer), then resumed in ONE
fresh child process that verifies every later step and update bit-exactly on the CPU and
reports the final parameter digest (and VecNormalize statistics), compared here with the
recorded run's own final state.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import gymnasium
import pytest

pytest.importorskip("stable_baselines3")

import replaykit
from replaykit import CaptureError, DivergenceError, UsageError

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import sb3_cases as C  # noqa: E402

pytestmark = pytest.mark.integration

CASES: list[Any] = [c for c in C.CASES if c not in ("recurrent", "flight", "atari")]
try:
    import sb3_contrib  # noqa: F401

    CASES.append("recurrent")
except ImportError:  # sb3-contrib is optional
    pass
try:  # the atari extra: ALE and OpenCV (AtariPreprocessing resizes with cv2)
    import ale_py  # noqa: F401
    import cv2  # noqa: F401

    HAVE_ATARI = True
except ImportError:
    HAVE_ATARI = False
RESUMED = [*CASES, *(["atari"] if HAVE_ATARI else [])]
# Flight mode: the same run keeping 2 snapshots (resumed from its newest) and keeping all.
FLIGHT_KEEP = 2


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from replaykit.integrations.sb3 import ReplaykitCallback

    folder = tmp_path_factory.mktemp("sb3")
    recorded = {}
    for case in RESUMED:
        _, _, _, total, snap = C.CASES[case]
        model = C.build(case)
        cb = ReplaykitCallback(folder / f"{case}.h5", snapshot_at_steps=[snap])
        model.learn(total, callback=cb)
        recorded[case] = {"names": cb.snapshot_names, **C.final_state(model)}
        model.get_env().close()
    total = C.CASES["flight"][3]
    for name, keep in (("flight", FLIGHT_KEEP), ("flight_all", None)):
        model = C.build("flight")
        cb = ReplaykitCallback(
            folder / f"{name}.h5", snapshot_every=C.FLIGHT_EVERY, keep_snapshots=keep
        )
        model.learn(total, callback=cb)
        recorded[name] = {"names": cb.snapshot_names, "failure": cb.failure}
        recorded[name].update(C.final_state(model))
    newest = recorded["flight"]["names"][-1]
    out = subprocess.run(
        [sys.executable, str(HERE / "sb3_cases.py"), str(folder), *RESUMED, f"flight:{newest}"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    resumed = {row["case"]: row for row in map(json.loads, out.stdout.splitlines())}
    return {"folder": folder, "recorded": recorded, "resumed": resumed}


@pytest.mark.parametrize(
    "case",
    [
        *CASES,
        pytest.param(
            "atari",
            marks=[
                pytest.mark.atari,
                pytest.mark.skipif(not HAVE_ATARI, reason='needs "replaykit[atari]"'),
            ],
        ),
    ],
)
def test_a_mid_rollout_snapshot_resumes_bit_exactly_in_a_fresh_process(
    runs: dict[str, Any], case: str
) -> None:
    algo, _, kwargs, total, snap = C.CASES[case]
    recorded, resumed = runs["recorded"][case], runs["resumed"][case]
    assert recorded["names"] == [f"step-{snap:06d}"]
    with replaykit.Recording(runs["folder"] / f"{case}.h5") as rec:
        _, tree = rec.load_snapshot(0)
        position = tree["extra"]["sb3"]
        steps = rec.stream("steps").rows
        updates = rec.stream("updates").rows
    # The snapshot is in the middle of a rollout: steps collected, the rollout not done.
    assert position["rollout_steps"] > 0
    assert position["algo"] == algo
    if algo in ("DQN", "SAC", "TD3"):  # a partly filled replay buffer came back
        buf = tree["tracked"]["buffer"]
        assert 0 < buf["values"]["pos"] < kwargs["buffer_size"]
        assert buf["values"]["full"] is False
    # Every step and update after the snapshot was verified, up to the recorded end.
    assert resumed["updates"] >= 3
    assert resumed["steps"] == steps - tree["recorder"]["step"]
    assert resumed["updates"] == updates - tree["recorder"]["updates"]
    assert resumed["timesteps"] == recorded["timesteps"] == total
    assert resumed["params"] == recorded["params"]


def test_vecnormalize_statistics_are_restored_exactly(runs: dict[str, Any]) -> None:
    recorded, resumed = runs["recorded"]["vecnormalize"], runs["resumed"]["vecnormalize"]
    assert resumed["obs_rms"] == recorded["obs_rms"]
    assert resumed["ret_rms"] == recorded["ret_rms"]
    with replaykit.Recording(runs["folder"] / "vecnormalize.h5") as rec:
        _, tree = rec.load_snapshot(0)
    layers = tree["tracked"]["vec_env"]
    assert [layer["class"] for layer in layers] == ["VecNormalize", "DummyVecEnv"]
    assert layers[0]["state"]["obs_rms"]["count"] > 1  # statistics, not the initial ones


def _record_ppo(path: Path, **changes: Any) -> None:
    from stable_baselines3 import PPO

    from replaykit.integrations.sb3 import ReplaykitCallback

    kwargs: dict[str, Any] = {"n_steps": 32, "batch_size": 16, "n_epochs": 2, **changes}
    model = PPO(
        "MlpPolicy", "CartPole-v1", seed=0, device="cpu", policy_kwargs=dict(C.SMALL), **kwargs
    )
    model.learn(96, callback=ReplaykitCallback(path, snapshot_at_steps=[40]))


def test_a_changed_hyper_parameter_is_named_at_its_first_update(tmp_path: Path) -> None:
    _record_ppo(tmp_path / "a.h5")
    _record_ppo(tmp_path / "b.h5", learning_rate=1e-3)
    out = subprocess.run(
        [sys.executable, "-m", "replaykit", "diff", str(tmp_path / "a.h5"), str(tmp_path / "b.h5")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1, out.stderr
    assert (
        "first divergence at update 0 (logged after step 31), key "
        "'updates/probe/train/learning_rate'" in out.stdout
    )

    # Resuming with the change is a normal divergence report at the same update.
    from stable_baselines3 import PPO

    from replaykit.integrations.sb3 import resume

    with pytest.raises(DivergenceError) as info:
        resume(
            tmp_path / "a.h5", None, PPO, lambda: "CartPole-v1", overrides={"learning_rate": 1e-3}
        )
    report = info.value.report
    assert (report.stream, report.row, report.key) == ("updates", 1, "update/train/learning_rate")
    assert report.snapshot == "step-000040"


def test_a_plain_subproc_vec_env_is_refused_before_training(tmp_path: Path) -> None:
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import SubprocVecEnv

    from replaykit.integrations.sb3 import SUBPROC_REFUSED, ReplaykitCallback

    venv = SubprocVecEnv([C._cartpole] * 2)
    try:
        model = PPO("MlpPolicy", venv, n_steps=8, batch_size=16, seed=0, device="cpu")
        path = tmp_path / "run.h5"
        with pytest.raises(CaptureError) as info:
            model.learn(32, callback=ReplaykitCallback(path, snapshot_at_steps=[8]))
        assert str(info.value) == f"tracked 'vec_env': {SUBPROC_REFUSED}"
        assert "\n" not in SUBPROC_REFUSED
        assert not path.exists()
    finally:
        venv.close()


def test_an_existing_file_is_kept_unless_overwrite(tmp_path: Path) -> None:
    from replaykit.integrations.sb3 import ReplaykitCallback

    path = tmp_path / "run.h5"
    path.write_bytes(b"keep")
    with pytest.raises(UsageError, match="pass overwrite=True"):
        ReplaykitCallback(path)
    assert path.read_bytes() == b"keep"


def test_resume_refuses_another_algorithm(runs: dict[str, Any]) -> None:
    from stable_baselines3 import A2C

    from replaykit.integrations.sb3 import resume

    with pytest.raises(UsageError, match="the recording trained PPO, not A2C"):
        resume(runs["folder"] / "ppo.h5", None, A2C, lambda: "CartPole-v1")


def test_import_replaykit_stays_light_and_a_missing_extra_names_the_pip_command() -> None:
    code = (
        "import sys, replaykit\n"
        "assert 'stable_baselines3' not in sys.modules and 'minari' not in sys.modules\n"
        "sys.modules['stable_baselines3'] = None\n"
        "try:\n"
        "    import replaykit.integrations.sb3\n"
        "except replaykit.MissingExtraError as exc:\n"
        "    assert isinstance(exc, ImportError)\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines() == [
        "replaykit.integrations.sb3 needs Stable-Baselines3, which is not installed; "
        'install it with: pip install "replaykit[sb3]"'
    ]


def test_the_sb3_example_records_and_resumes_with_three_replaykit_lines() -> None:
    script = HERE.parent / "examples" / "sb3_ppo.py"
    marked = [line for line in script.read_text().splitlines() if line.endswith("# replaykit")]
    assert 0 < len(marked) <= 5
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resumed step-000100: 156 steps and 3 updates verified bit-exactly" in out.stdout


def test_cli_replay_of_an_sb3_recording_points_to_resume(runs: dict[str, Any]) -> None:
    path = runs["folder"] / "ppo.h5"
    out = subprocess.run(
        [sys.executable, "-m", "replaykit", "replay", str(path)], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"replaykit: error: {path} was recorded by Stable-Baselines3's ReplaykitCallback; "
        "resume it in Python with replaykit.integrations.sb3.resume(path, snapshot, "
        "AlgoClass, env_fn)"
    )


def test_snapshot_every_and_a_vec_env_of_another_size(tmp_path: Path) -> None:
    from stable_baselines3 import A2C
    from stable_baselines3.common.env_util import make_vec_env

    from replaykit import StateMismatchError
    from replaykit.integrations.sb3 import ReplaykitCallback, resume

    path = tmp_path / "a2c.h5"
    model = A2C("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2), n_steps=4, seed=0)
    cb = ReplaykitCallback(path, snapshot_every=10)
    model.learn(40, callback=cb)
    # 40 is the last step of the last rollout: taken at its end, before the last train().
    assert cb.snapshot_names == ["step-000010", "step-000020", "step-000030", "step-000040"]
    with pytest.raises(StateMismatchError, match="sub-envs: recorded 2, got 3"):
        resume(path, "step-000020", A2C, lambda: make_vec_env("CartPole-v1", n_envs=3))


def test_image_observations_go_through_vec_transpose_image_and_frame_stack(
    runs: dict[str, Any],
) -> None:
    with replaykit.Recording(runs["folder"] / "image.h5") as rec:
        _, tree = rec.load_snapshot(0)
    layers = [layer["class"] for layer in tree["tracked"]["vec_env"]]
    assert layers == ["VecTransposeImage", "VecFrameStack", "DummyVecEnv"]
    stacked = tree["tracked"]["vec_env"][1]["state"]["stacked"]
    assert stacked.shape == (2, 8, 8, 6) and stacked.dtype == "uint8" and stacked.any()
    assert runs["resumed"]["image"]["params"] == runs["recorded"]["image"]["params"]


@pytest.mark.parametrize(
    ("case", "rollout", "updates_before"), [("ppo_end", 32, 1), ("dqn_end", 4, 7)]
)
def test_a_snapshot_at_a_rollouts_last_step_is_taken_before_train(
    runs: dict[str, Any], case: str, rollout: int, updates_before: int
) -> None:
    with replaykit.Recording(runs["folder"] / f"{case}.h5") as rec:
        _, tree = rec.load_snapshot(0)
    assert tree["extra"]["sb3"]["rollout_steps"] == rollout  # the whole rollout collected
    assert tree["recorder"]["updates"] == updates_before  # its train() not yet run
    assert runs["resumed"][case]["params"] == runs["recorded"][case]["params"]


def test_flight_mode_keeps_the_first_and_last_snapshots_and_the_newest_resumes(
    runs: dict[str, Any],
) -> None:
    every, end = C.FLIGHT_EVERY, runs["recorded"]["flight"]["timesteps"]
    assert end == 352
    everything = [f"step-{t:06d}" for t in range(every, end + 1, every)]
    assert runs["recorded"]["flight_all"]["names"] == everything
    kept = runs["recorded"]["flight"]["names"]
    assert kept == [everything[0], *everything[-FLIGHT_KEEP:]]
    assert runs["recorded"]["flight"]["failure"] is None
    folder = runs["folder"]
    with replaykit.Recording(folder / "flight.h5") as rec:
        assert [s.name for s in rec.snapshots] == kept
        assert rec.meta["retention"] == {
            "every": every,
            "keep": FLIGHT_KEEP,
            "dropped": len(everything) - len(kept),
        }
        steps = rec.stream("steps").rows
        updates = rec.stream("updates").rows
        _, tree = rec.load_snapshot(kept[-1])
    # The same run, same steps and updates; the file holds 3 snapshots instead of 17.
    assert (folder / "flight.h5").stat().st_size < (folder / "flight_all.h5").stat().st_size
    resumed = runs["resumed"]["flight"]
    assert resumed["snapshot"] == kept[-1]
    assert resumed["steps"] == steps - tree["recorder"]["step"] > 0
    assert resumed["updates"] == updates - tree["recorder"]["updates"] == 1
    assert resumed["params"] == runs["recorded"]["flight"]["params"]
    assert resumed["params"] == runs["recorded"]["flight_all"]["params"]


class NanReward(gymnasium.Wrapper[Any, Any, Any, Any]):
    """Turns the reward of one step (counted from 1) into NaN."""

    def __init__(self, env: Any, at: int) -> None:
        super().__init__(env)
        self.at, self.t = at, 0

    def step(self, action: Any) -> Any:
        obs, reward, term, trunc, info = self.env.step(action)
        self.t += 1
        return obs, float("nan") if self.t == self.at else reward, term, trunc, info


class _NanRewardAdapter(replaykit.AttrAdapter):
    name = "tests.test_sb3.NanReward"
    attrs = ("t",)


replaykit.register_wrapper_adapter(NanReward, _NanRewardAdapter())


def test_flight_mode_records_a_nan_reward_and_stops_dropping_snapshots(tmp_path: Path) -> None:
    from stable_baselines3 import PPO

    from replaykit.integrations.sb3 import ReplaykitCallback

    env = NanReward(gymnasium.make("CartPole-v1"), at=45)
    model = PPO(
        "MlpPolicy", env, n_steps=16, batch_size=16, seed=0, device="cpu", policy_kwargs=C.SMALL
    )
    cb = ReplaykitCallback(tmp_path / "nan.h5", snapshot_every=10, keep_snapshots=1)
    # The NaN reaches the parameters in the next train(), whose error ends learn(); the
    # file is closed on the way out with the first NaN as its failure.
    with pytest.raises(ValueError, match="invalid values"):
        model.learn(96, callback=cb)
    failure = cb.failure
    assert failure is not None
    assert cb.snapshot_names == ["step-000010", "step-000040"]
    assert (failure["kind"], failure["key"], failure["step"]) == ("nonfinite", "reward", 44)
    # element [0]: the sub-env (the columns hold all sub-envs of a VecEnv step).
    assert (failure["reason"], failure["episode"]) == ("reward NaN at element [0]", -1)
    # No periodic snapshot after the failure; the ones before it were not dropped.
    with replaykit.Recording(tmp_path / "nan.h5") as rec:
        assert [s.name for s in rec.snapshots] == ["step-000010", "step-000040"]
        assert rec.meta["closed"] is True
        assert rec.meta["failure"] == failure
        assert failure["snapshot"] == "step-000040"


def test_mark_failure_is_reachable_from_the_callback(tmp_path: Path) -> None:
    from stable_baselines3 import A2C
    from stable_baselines3.common.callbacks import BaseCallback, CallbackList

    from replaykit.integrations.sb3 import ReplaykitCallback

    cb = ReplaykitCallback(tmp_path / "run.h5", snapshot_every=8, keep_snapshots=1)

    class Check(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps == 20:
                cb.mark_failure("episode return below the floor")
            return True

    with pytest.raises(UsageError, match="during learn"):
        cb.mark_failure("too early")
    model = A2C("MlpPolicy", "CartPole-v1", n_steps=4, seed=0, device="cpu")
    model.learn(40, callback=CallbackList([cb, Check()]))
    assert cb.failure is not None
    assert cb.failure["reason"] == "episode return below the floor"
    assert cb.failure["snapshot"] == "step-000016"
    assert cb.snapshot_names == ["step-000008", "step-000016"]
    with pytest.raises(UsageError, match="keep_snapshots must be an int >= 1"):
        ReplaykitCallback(tmp_path / "x.h5", snapshot_every=8, keep_snapshots=0)
    with pytest.raises(UsageError, match="pass snapshot_every=N with it"):
        ReplaykitCallback(tmp_path / "x.h5", keep_snapshots=2)
