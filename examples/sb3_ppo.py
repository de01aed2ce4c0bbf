"""Stable-Baselines3 PPO on CartPole, recorded and resumed bit-exactly with replaykit.

replaykit's part is the three lines marked ``# replaykit``: one callback records every env
step, every update and a snapshot in the middle of the second rollout; ``resume`` rebuilds
PPO in a fresh process from the recorded hyper-parameters, restores the snapshot, finishes
the interrupted rollout and trains to the end, verifying every step and update.

    python examples/sb3_ppo.py                 # record to a temp file, resume in a child
    python examples/sb3_ppo.py --resume RUN.h5 # resume a recording (exit 1 on divergence)

A snapshot between two minibatches inside ``PPO.train()`` is not reachable through SB3's
callbacks; the nearest points are the end of the rollout (a snapshot asked for at its last
step is taken there, before ``train()``) and the first env step after ``train()``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from stable_baselines3 import PPO

from replaykit.integrations.sb3 import ReplaykitCallback, resume  # replaykit


def record(path: Path) -> None:
    model = PPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, n_epochs=2, seed=0,
                device="cpu", policy_kwargs={"net_arch": [32, 32]})  # fmt: skip
    model.learn(256, callback=ReplaykitCallback(path, snapshot_at_steps=[100]))  # replaykit


def check(path: Path) -> None:
    done = resume(path, "step-000100", PPO, lambda: "CartPole-v1")  # replaykit
    print(
        f"resumed {done.snapshot}: {done.verified_steps} steps and {done.verified_updates} "
        "updates verified bit-exactly"
    )


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--resume":
        check(Path(sys.argv[2]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ppo.h5"
        record(path)
        subprocess.run([sys.executable, __file__, "--resume", str(path)], check=True)


if __name__ == "__main__":
    main()
