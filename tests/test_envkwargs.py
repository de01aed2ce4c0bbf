"""Env kwargs from a recording are used only when they are plain data.

A recording's env spec is untrusted input: a kwarg naming a file (MuJoCo's ``xml_file``),
a module or a display must not reach the env's constructor unless the caller allows it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from test_forged import forge_meta

import replaykit
from replaykit._session.envkwargs import vet_env_kwargs
from replaykit.errors import UnsafeFileError


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"xml_file": "hopper.xml"}, "names a file"),
        ({"model_path": None, "frame": "/etc/passwd"}, "looks like a file path"),
        ({"config": "..\\secrets.ini"}, "looks like a file path"),
        ({"home": "~/x"}, "looks like a file path"),
        ({"reward_fn": "os:system"}, "looks like a module or entry point"),
        ({"policy": "pkg.sub.mod"}, "looks like a module or entry point"),
        ({"render_mode": "human"}, "opens a display"),
        ({"render_mode": 3}, "opens a display or is unknown"),
        ({"opts": {"a": [{"b": "/dev/zero"}]}}, "looks like a file path"),
        ({"deep": [[[[[[[[[[1]]]]]]]]]]}, "nested more than"),
        ({"title": "a\x1b[2Jb"}, "control characters"),
        ({"blob": "x" * 300}, "at most 256"),
        ({"big": list(range(2000))}, "at most 1024"),
    ],
)
def test_refused_kwargs_name_the_kwarg_and_the_fix(kwargs: dict[str, Any], why: str) -> None:
    with pytest.raises(UnsafeFileError) as exc:
        vet_env_kwargs("Some-v0", kwargs)
    msg = str(exc.value)
    assert why in msg
    name = next(k for k in kwargs if kwargs[k] is not None)
    assert f"kwarg {name}=" in msg
    assert f"allow_kwargs=[{name!r}]" in msg
    assert f"--allow-env-kwarg {name}" in msg
    assert "\n" not in msg and "\x1b" not in msg


def test_plain_data_passes_unchanged() -> None:
    kwargs = {
        "render_mode": "rgb_array",
        "frameskip": 4,
        "repeat_action_probability": 0.25,
        "obs_type": "rgb",
        "full_action_space": False,
        "mode": None,
        "weights": [0.5, 1.0],
        "options": {"goal": [1, 2]},
        "version": "v1.2",
        "xml_file": None,
    }
    assert vet_env_kwargs("Some-v0", kwargs) == kwargs


def test_allowed_names_pass_as_recorded() -> None:
    out = vet_env_kwargs("Hopper-v5", {"xml_file": "/x/hopper.xml"}, allow=["xml_file"])
    assert out == {"xml_file": "/x/hopper.xml"}


def _record(env: gym.Env[Any, Any], path: Path, steps: int = 20) -> None:
    rec = replaykit.RecordingWrapper(env, path, seed=0)
    rec.reset()
    for _ in range(steps):
        _, _, term, trunc, _ = rec.step(rec.action_space.sample())
        if term or trunc:
            rec.reset()
    rec.close()


@pytest.mark.mujoco
def test_mujoco_xml_file_from_a_recording_is_refused_unless_allowed(tmp_path: Path) -> None:
    pytest.importorskip("mujoco")
    assets = Path(gym.__file__).parent / "envs" / "mujoco" / "assets" / "hopper.xml"
    xml = tmp_path / "my_hopper.xml"
    shutil.copyfile(assets, xml)
    path = tmp_path / "hopper.h5"
    _record(gym.make("Hopper-v5", xml_file=str(xml)), path)

    with pytest.raises(UnsafeFileError, match=r"kwarg xml_file=.*names a file"):
        replaykit.make_env(path)
    with pytest.raises(UnsafeFileError, match="xml_file"):
        replaykit.restore(path)  # builds the env from the file too

    allowed = replaykit.make_env(path, allow_kwargs=["xml_file"])
    given = replaykit.make_env(path, xml_file=str(xml))
    for env in (allowed, given):
        obs, _ = env.reset(seed=0)
        assert obs.shape == (11,)
        env.close()


def test_forged_file_kwarg_never_reaches_the_constructor(
    small_recording: Path, tmp_path: Path
) -> None:
    path = tmp_path / "forged.h5"
    shutil.copyfile(small_recording, path)

    def add_kwargs(meta: dict[str, Any]) -> None:
        meta["env_spec"]["kwargs"] = {"xml_file": "/etc/passwd", "render_mode": "human"}

    forge_meta(path, add_kwargs)
    with pytest.raises(UnsafeFileError, match="xml_file"):
        replaykit.make_env(path)
    # Allowing one still refuses the other: each kwarg is vetted on its own.
    with pytest.raises(UnsafeFileError, match="render mode 'human'"):
        replaykit.make_env(path, allow_kwargs=["xml_file"])


@pytest.mark.atari
def test_atari_kwargs_are_plain_data_and_replay(tmp_path: Path) -> None:
    ale_py = pytest.importorskip("ale_py")
    gym.register_envs(ale_py)
    path = tmp_path / "pong.h5"
    env = gym.make("ALE/Pong-v5", frameskip=3, repeat_action_probability=0.1, obs_type="ram")
    _record(env, path, steps=10)
    rebuilt = replaykit.make_env(path)
    assert rebuilt.spec is not None
    assert rebuilt.spec.kwargs["frameskip"] == 3
    obs, _ = rebuilt.reset(seed=0)
    assert np.asarray(obs).shape == (128,)
    rebuilt.close()


@pytest.mark.mujoco
@pytest.mark.integration
def test_cli_replay_refuses_a_file_kwarg_unless_allowed(tmp_path: Path) -> None:
    pytest.importorskip("mujoco")
    import subprocess
    import sys

    assets = Path(gym.__file__).parent / "envs" / "mujoco" / "assets" / "hopper.xml"
    xml = tmp_path / "my_hopper.xml"
    shutil.copyfile(assets, xml)
    path = tmp_path / "hopper.h5"
    env = replaykit.RecordingWrapper(
        gym.make("Hopper-v5", xml_file=str(xml)), path, seed=0, snapshot_at=[5]
    )
    env.reset()
    for _ in range(15):
        env.step(env.action_space.sample())
    env.close()
    cli = [sys.executable, "-m", "replaykit", "replay", str(path)]

    refused = subprocess.run(cli, capture_output=True, text=True, cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("replaykit: error:"), refused.stderr
    assert "xml_file" in lines[0] and "--allow-env-kwarg xml_file" in lines[0]

    allowed = subprocess.run(
        [*cli, "--allow-env-kwarg", "xml_file"], capture_output=True, text=True, cwd=tmp_path
    )
    assert allowed.returncode == 0, allowed.stderr + allowed.stdout
