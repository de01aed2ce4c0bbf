"""From a failure deep in a long run to a small committed pytest test, end to end.

A real training loop (``replaykit record`` with a policy module of the user's: a torch MLP
acting on CartPole, an Adam update every 1000 steps) runs in flight mode with retention,
once with a NaN injected into the reward well past step 50 000 and once with an exception
raised from the user's code. Each time: the file stays bounded (the first and the last two
periodic snapshots), ``replaykit extract`` cuts the nearest snapshot through the failure
into a small file plus a pytest test, and that test, run by a fresh pytest, fails with the
recorded failure while the fault is in the code and passes once it is removed.
"""

from __future__ import annotations

import glob
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch  # noqa: F401 - imported once, before pytester snapshots sys.modules

from replaykit._format import layout as F
from replaykit._format.store import Recording
from replaykit.cli import main

pytestmark = pytest.mark.integration

NAN_AT = 61_234  # the global step (0-based row) whose reward is NaN
EXC_AT = 52_345  # the step count at which the user's code raises
STEPS = 70_000

FAULTY = textwrap.dedent(
    """
    import gymnasium as gym
    import numpy as np
    import torch
    from gymnasium.envs.classic_control import CartPoleEnv

    import replaykit

    NAN_FAULT = {nan}  # the bug: a reward that goes NaN
    EXC_FAULT = {exc}  # the other bug: user code that raises


    class FaultyCartPole(CartPoleEnv):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.t = 0  # global step count

        def step(self, action):
            obs, reward, term, trunc, info = super().step(action)
            if NAN_FAULT and self.t == {nan_at}:
                reward = float("nan")
            self.t += 1
            return obs, reward, term, trunc, info


    class FaultyAdapter(replaykit.AttrAdapter):
        name = "faulty.FaultyCartPole"
        attrs = ("state", "steps_beyond_terminated", "t")


    replaykit.register_env_adapter(FaultyCartPole, FaultyAdapter())
    if "faulty/CartPole-v0" not in gym.registry:
        gym.register(
            "faulty/CartPole-v0", entry_point="faulty:FaultyCartPole", max_episode_steps=500
        )


    class Policy:
        def __init__(self, env, seed):
            torch.manual_seed(seed)
            self.env = env
            self.model = torch.nn.Sequential(
                torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)
            )
            self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)

        def act(self, obs):
            if EXC_FAULT and self.env.unwrapped.t == {exc_at}:
                raise RuntimeError("batch of size 0 in the user's update")
            with torch.no_grad():
                return int(self.model(torch.as_tensor(obs)).argmax())

        def probes(self):
            return {{}}

        def observe(self, obs, reward, terminated, truncated):
            if self.env.unwrapped.t % 1000:
                return None
            loss = self.model(torch.as_tensor(obs)).pow(2).sum()
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            return {{"loss": loss.detach()}}

        def state_objects(self):
            return {{"model": self.model, "opt": self.opt}}


    def make(env, seed):
        return Policy(env, seed)
    """
)


def _write_faulty(where: Path, *, nan: bool, exc: bool) -> None:
    text = FAULTY.format(nan=nan, exc=exc, nan_at=NAN_AT, exc_at=EXC_AT)
    (where / "faulty.py").write_text(text)
    for cache in where.glob("__pycache__/faulty*"):
        cache.unlink()


def _record(pytester: pytest.Pytester, out: Path) -> int:
    # In a fresh process, as a user runs it (torch is imported once per process, and
    # pytester drops the modules a test imported).
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "replaykit",
            "record",
            "faulty/CartPole-v0",
            "--policy",
            "faulty:make",
            "--seed",
            "5",
            "--steps",
            str(STEPS),
            "--snapshot-every",
            "10000",
            "--keep-snapshots",
            "2",
            "--no-progress",
            "--out",
            str(out),
        ],
        cwd=pytester.path,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    print(proc.stdout, proc.stderr)
    return proc.returncode


def _run_generated(pytester: pytest.Pytester, test: Path) -> pytest.RunResult:
    return pytester.runpytest_subprocess(str(test), "-p", "no:cacheprovider", "-q")


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PYTHONPATH", str(pytester.path))
    monkeypatch.syspath_prepend(str(pytester.path))
    # Each test writes its own faulty.py: import it afresh (the env id names it by string).
    monkeypatch.delitem(sys.modules, "faulty", raising=False)
    (pytester.path / "tests" / "data").mkdir(parents=True)
    return pytester.path


def test_nan_reward_past_50k_becomes_a_failing_then_passing_test(
    pytester: pytest.Pytester, project: Path
) -> None:
    _write_faulty(project, nan=True, exc=False)
    run = project / "run.h5"
    assert _record(pytester, run) == 0
    with Recording(run) as rec:
        failure = rec.meta[F.META_FAILURE]
        names = [s.name for s in rec.snapshots]
        assert rec.meta[F.META_RETENTION][F.RETENTION_DROPPED] == 3
        assert rec.stream(F.STEPS).rows == STEPS
    assert failure[F.FAILURE_KIND] == "nonfinite" and failure[F.FAILURE_STEP] == NAN_AT
    # Bounded: the first and the last two periodic snapshots, none after the failure.
    assert names == ["step-010000", "step-050000", "step-060000"]
    assert failure[F.FAILURE_SNAPSHOT] == "step-060000"

    fixture = project / "tests" / "data" / "bug_nan.h5"
    test = project / "tests" / "test_bug_nan.py"
    assert main(["extract", str(run), "--out", str(fixture), "--pytest", str(test)]) == 0
    assert fixture.stat().st_size < 200 * 1024
    assert main(["check", str(fixture)]) == 0
    assert "faulty:make" in test.read_text()

    result = _run_generated(pytester, test)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*FailureStillHappensError*the recorded failure still happens*"])
    assert "reward NaN" in result.stdout.str()

    _write_faulty(project, nan=False, exc=False)  # the fix
    _run_generated(pytester, test).assert_outcomes(passed=1)


def test_exception_from_user_code_becomes_a_failing_then_passing_test(
    pytester: pytest.Pytester, project: Path
) -> None:
    _write_faulty(project, nan=False, exc=True)
    run = project / "run.h5"
    assert _record(pytester, run) == 2  # the user's exception ends the run
    (partial,) = glob.glob(str(project / "run.h5.partial-*"))
    with Recording(partial) as rec:
        failure = rec.meta[F.META_FAILURE]
        names = [s.name for s in rec.snapshots]
    assert failure[F.FAILURE_KIND] == "exception" and failure[F.FAILURE_STEP] == EXC_AT
    assert failure[F.FAILURE_EXC_TYPE] == "builtins.RuntimeError"
    assert "batch of size 0" in failure[F.FAILURE_MESSAGE]
    assert names == ["step-010000", "step-040000", "step-050000"]

    fixture = project / "tests" / "data" / "bug_exc.h5"
    test = project / "tests" / "test_bug_exc.py"
    assert main(["extract", partial, "--out", str(fixture), "--pytest", str(test)]) == 0
    result = _run_generated(pytester, test)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*FailureStillHappensError*RuntimeError*"])

    _write_faulty(project, nan=False, exc=False)  # the fix
    _run_generated(pytester, test).assert_outcomes(passed=1)
