"""The pytest plugin end to end with pytester: golden workflow, fixtures, xdist safety."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import h5py  # noqa: F401
import numpy  # noqa: F401
import pytest
import torch  # noqa: F401

from replaykit import RecordingWrapper
from replaykit._analysis.check import validate_file

pytest_plugins = ["pytester"]

# In-process pytester runs drop every module the inner session imported once it ends, so the
# next run imports it again. Extension modules such as torch's and h5py's cannot be imported
# twice in one process (torch raises, or the process crashes), so this process imports them
# first: then the inner sessions find them loaded and keep them.

# The inner sessions do not need hypothesis's plugin, and in-process runs re-import it every
# time (pytester restores sys.modules after each run): a second or more per run.
_QUIET_PLUGINS = ("-p", "no:hypothesispytest")


def _runpytest(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest(*_QUIET_PLUGINS, *args)


GOLDEN_TEST = """
import gymnasium as gym
from replaykit import RecordingWrapper


def record(path):
    env = RecordingWrapper(gym.make("CartPole-v1"), path, seed=0, snapshot_at=[20])
    obs, _ = env.reset()
    for _ in range(60):
        action = POLICY
        obs, reward, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()


def test_cartpole(replaykit_golden):
    replaykit_golden.check("golden/cartpole.h5", record)
"""

POLICY_A = "int(obs[2] > 0)"
POLICY_B = "int(obs[2] + 0.5 * obs[3] > 0)  # changed"


def _write_golden_test(pytester: pytest.Pytester, policy: str) -> None:
    pytester.makepyfile(test_golden=GOLDEN_TEST.replace("POLICY", policy))


@pytest.mark.integration
def test_golden_workflow(pytester: pytest.Pytester) -> None:
    _write_golden_test(pytester, POLICY_A)
    golden = pytester.path / "golden" / "cartpole.h5"

    res = _runpytest(
        pytester,
    )
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*golden recording*cartpole.h5 does not exist*"])
    res.stdout.fnmatch_lines(["*pytest --replaykit-update=missing*"])
    assert not golden.exists()

    res = _runpytest(pytester, "--replaykit-update=missing")
    res.assert_outcomes(passed=1)
    res.stdout.fnmatch_lines(["*replaykit golden recordings written*", "*cartpole.h5"])
    assert validate_file(golden).ok
    first_bytes = golden.read_bytes()

    res = _runpytest(
        pytester,
    )
    res.assert_outcomes(passed=1)
    assert golden.read_bytes() == first_bytes  # verification never rewrites

    _write_golden_test(pytester, POLICY_B)
    res = _runpytest(
        pytester,
    )
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(
        [
            "*recordings differ: golden=*",
            "*first divergence at step *, episode 0, step * of the episode, key 'action'*",
            "*golden: *int64*",
            "*fresh: *int64*",
            "*--replaykit-update=failing*",
        ]
    )
    assert "replaykit/testing.py" not in res.stdout.str()  # frames hidden
    assert golden.read_bytes() == first_bytes

    # "missing" does not touch an existing file that fails.
    _runpytest(pytester, "--replaykit-update=missing").assert_outcomes(failed=1)
    _runpytest(pytester, "--replaykit-update=failing").assert_outcomes(passed=1)
    assert golden.read_bytes() != first_bytes
    _runpytest(
        pytester,
    ).assert_outcomes(passed=1)
    assert not list(golden.parent.glob(".*.tmp"))


def test_update_mode_is_validated(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x():\n    pass\n")
    res = _runpytest(pytester, "--replaykit-update=sometimes")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*--replaykit-update*invalid choice*"])


XDIST_TEST = GOLDEN_TEST.replace("POLICY", POLICY_A)
XDIST_TEST = XDIST_TEST.replace(
    XDIST_TEST[XDIST_TEST.index("def test_cartpole") :],
    """import pytest


@pytest.mark.parametrize("i", range(8))
def test_same_file(replaykit_golden, i):
    replaykit_golden.check("golden/shared.h5", record)


@pytest.mark.parametrize("i", range(4))
def test_own_file(replaykit_golden, i):
    replaykit_golden.check(f"golden/own-{i}.h5", record)""",
)


@pytest.mark.integration
def test_golden_updates_are_safe_under_xdist(pytester: pytest.Pytester) -> None:
    # Eight tests race to create the same missing golden file on two workers: the lock and
    # the re-check under it mean one writes it; os.replace means nobody sees half a file.
    pytester.makepyfile(test_many=XDIST_TEST)
    res = pytester.runpytest_subprocess(
        *_QUIET_PLUGINS, "-n", "2", "--replaykit-update=missing", "-p", "no:cacheprovider"
    )
    res.assert_outcomes(passed=12)
    gdir = pytester.path / "golden"
    expected = ["own-0.h5", "own-1.h5", "own-2.h5", "own-3.h5", "shared.h5"]
    assert sorted(p.name for p in gdir.iterdir()) == expected  # no temp files left behind
    for p in gdir.iterdir():
        assert validate_file(p).ok, p
    _runpytest(pytester, "--replaykit-update=all").assert_outcomes(passed=12)
    assert sorted(p.name for p in gdir.iterdir()) == expected
    _runpytest(
        pytester,
    ).assert_outcomes(passed=12)


def _record_hand_loop(path: Path) -> None:
    env = RecordingWrapper(gym.make("CartPole-v1"), path, seed=3, snapshot_at=[30])
    obs, _ = env.reset()
    for _ in range(120):
        obs, _, terminated, truncated, _ = env.step(int(obs[2] > 0))
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()


def test_restore_fixture_and_assert_replay(pytester: pytest.Pytester) -> None:
    _record_hand_loop(pytester.path / "run.h5")
    pytester.makepyfile(
        """
        import gymnasium as gym
        import pytest
        from replaykit.testing import assert_replay


        def test_recording_fixture(replaykit_recording):
            rec = replaykit_recording("run.h5")
            assert [s.step for s in rec.snapshots] == [30]
            assert rec.meta["env_id"] == "CartPole-v1"


        def test_same_policy_replays(replaykit_restore):
            rep = replaykit_restore("run.h5", env=gym.make("CartPole-v1"))
            assert rep.step_count == 30
            assert assert_replay(rep, lambda obs: int(obs[2] > 0)) == 90
            assert rep.verified_steps == 90


        def test_changed_policy_fails(replaykit_restore):
            rep = replaykit_restore("run.h5", 0, env=gym.make("CartPole-v1"))
            assert_replay(rep, lambda obs: int(obs[2] >= 0.01), steps=90)
        """
    )
    res = _runpytest(
        pytester,
    )
    res.assert_outcomes(passed=2, failed=1)
    res.stdout.fnmatch_lines(
        [
            "*DivergenceError: diverged from*run.h5 at snapshot *step-000030*, key *action*",
            "*expected: *int64*",
            "*rule: bit-exact*",
        ]
    )
    out = res.stdout.str()
    assert "replaykit/replay.py" not in out and "replaykit/testing.py" not in out


def test_missing_recording_is_a_clear_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_open(replaykit_recording):
            replaykit_recording("nothere.h5")
        """
    )
    res = _runpytest(
        pytester,
    )
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*nothere.h5*no such file*"])


USER_CONFTEST = """
import pytest


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False, help="our slow tests")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: this project's own slow tests")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="ours: pass --run-slow"))
"""

USER_TESTS = """
import pytest


@pytest.mark.slow
def test_slow():
    pass


def test_fast():
    pass
"""


def test_user_project_keeps_its_own_run_slow_and_slow_marker(pytester: pytest.Pytester) -> None:
    # A project with its own --run-slow option and slow marker starts fine with replaykit
    # installed (an option declared twice is a startup error), and its option decides.
    pytester.makeconftest(USER_CONFTEST)
    pytester.makepyfile(test_user=USER_TESTS)
    res = _runpytest(pytester, "--strict-markers", "-rs", "--replaykit-update=none")
    assert res.ret == pytest.ExitCode.OK, res.stderr.str()
    res.assert_outcomes(passed=1, skipped=1)
    res.stdout.fnmatch_lines(["*SKIPPED*ours: pass --run-slow*"])
    res = _runpytest(pytester, "--strict-markers", "--run-slow")
    res.assert_outcomes(passed=2)


def test_user_project_without_run_slow_keeps_slow_tests(pytester: pytest.Pytester) -> None:
    # The plugin skips nothing: a `slow` test of a project that has no such option runs.
    pytester.makeini("[pytest]\nmarkers =\n    slow: ours\n")
    pytester.makepyfile("import pytest\n\n\n@pytest.mark.slow\ndef test_slow():\n    pass\n")
    _runpytest(pytester, "--strict-markers").assert_outcomes(passed=1)
    assert _runpytest(pytester, "--run-slow").ret == pytest.ExitCode.USAGE_ERROR


_OPTION = re.compile(r"^\s+(--[a-z][\w-]*)", re.MULTILINE)


def test_plugin_adds_only_replaykit_options_and_no_markers(pytester: pytest.Pytester) -> None:
    with_plugin = _runpytest(pytester, "--help").stdout.str()
    without = _runpytest(pytester, "--help", "-p", "no:replaykit").stdout.str()
    added = set(_OPTION.findall(with_plugin)) - set(_OPTION.findall(without))
    assert added == {"--replaykit-update"}  # the plugin was loaded, and added only this
    assert all(opt.startswith("--replaykit-") for opt in added)
    markers = _runpytest(pytester, "--markers").stdout.str()
    assert markers == _runpytest(pytester, "--markers", "-p", "no:replaykit").stdout.str()


@pytest.mark.integration
def test_plugin_import_is_light() -> None:
    # pytest imports the plugin in every session of every project where replaykit is
    # installed: it must not pay for numpy, h5py, gymnasium or torch there.
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import replaykit.pytest_plugin"],
        capture_output=True,
        text=True,
        check=True,
    )
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()}
    assert "replaykit.pytest_plugin" in imported
    heavy = {"numpy", "h5py", "gymnasium", "torch"}
    assert sorted(m for m in imported if m.split(".")[0] in heavy) == []
