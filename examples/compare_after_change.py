"""Did my change alter behaviour? Record before and after, and let ``replaykit diff`` say where.

Run from the repository root:  python examples/compare_after_change.py

Records the same seeded training run three times: the baseline, an identical rerun, and
a run with a deliberate one-line change (the rewards are scaled by 0.5 before training).
``replaykit diff`` finds the identical runs equal (exit 0) and names the first step, key
and element where the changed run departs (exit 1): the first training loss, then the
policy's logits right after that update.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import gymnasium as gym
import torch

import replaykit


def run(path: Path, reward_scale: float = 1.0, steps: int = 200) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    env = replaykit.RecordingWrapper(gym.make("CartPole-v1"), path, seed=0)
    obs, _ = env.reset()
    batch = []
    for _ in range(steps):
        logits = model(torch.as_tensor(obs))
        action = torch.distributions.Categorical(logits=logits).sample()
        env.probe("logits", logits.detach())
        obs, reward, terminated, truncated, _ = env.step(int(action))
        # The one line that changes between runs:
        reward = reward * reward_scale
        batch.append((logits, action, reward, terminated))
        if len(batch) == 32:
            returns, g = [], 0.0
            for _, _, r, done in reversed(batch):
                g = r + 0.99 * g * (not done)
                returns.insert(0, g)
            ret = torch.tensor(returns)
            logp = torch.stack([torch.log_softmax(lg, -1)[a] for lg, a, _, _ in batch])
            loss = -(logp * (ret - ret.mean())).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            env.log_update(loss=loss.detach())
            batch = []
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()


def diff(a: Path, b: Path) -> int:
    cmd = [
        sys.executable,
        "-m",
        "replaykit",
        "diff",
        str(a),
        str(b),
        "--key",
        "probe/*",
        "--key",
        "updates/*",
        "--key",
        "action",
    ]
    print("$ replaykit diff", a.name, b.name, " ".join(cmd[6:]))
    proc = subprocess.run(cmd, check=False)  # its exit status is the result
    print(f"(exit {proc.returncode})\n")
    return proc.returncode


def main() -> int:
    with tempfile.TemporaryDirectory() as d:
        base, same, changed = Path(d, "baseline.h5"), Path(d, "rerun.h5"), Path(d, "changed.h5")
        run(base)
        run(same)
        run(changed, reward_scale=0.5)
        ok_same = diff(base, same) == 0
        ok_changed = diff(base, changed) == 1
    if ok_same and ok_changed:
        print("identical runs match; the changed run is caught at its first divergence")
        return 0
    print("unexpected result")
    return 1


if __name__ == "__main__":
    sys.exit(main())
