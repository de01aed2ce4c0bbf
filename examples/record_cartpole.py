"""Record a CartPole rollout around your own loop, then restore mid-episode in a fresh process.

Run from the repository root:  python examples/record_cartpole.py

1. Your loop, as you would write it: a small torch policy that samples its actions (so
   torch's RNG matters) and trains every 32 steps. Three additions record it:
   ``RecordingWrapper`` around the env, ``track`` for the model and optimizer, and
   ``probe``/``log_update`` for values worth checking, and ``snapshot()`` at the top of
   the loop at step 160, where the loop holds nothing but the observation (its batch is
   empty: 160 is a multiple of 32).
2. A fresh Python process builds the same objects from scratch, restores the snapshot
   into them and runs the same loop for 100 steps; every probe, action, observation,
   reward and training loss is checked bit-exactly against the recording.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch

import replaykit

SNAPSHOT_AT = 160  # a multiple of the batch size: the loop holds no half-filled batch here
STEPS = 300


def build() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2))
    return model, torch.optim.SGD(model.parameters(), lr=1e-2)


def train(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: list[Any]) -> torch.Tensor:
    obs = torch.stack([torch.as_tensor(o) for o, _, _ in batch])
    actions = torch.tensor([a for _, a, _ in batch])
    rewards = torch.tensor([r for _, _, r in batch], dtype=torch.float32)
    returns = rewards.flip(0).cumsum(0).flip(0)
    logp = torch.distributions.Categorical(logits=model(obs)).log_prob(actions)
    loss = -(logp * (returns - returns.mean())).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.detach()


def loop(env: gym.Env, obs: Any, steps: int, model, opt, rec) -> None:
    """The training loop. ``rec`` is the RecordingWrapper when recording, the Replay when
    replaying: both take the same ``probe``/``log_update`` calls."""
    batch: list[Any] = []
    for _ in range(steps):
        if isinstance(rec, replaykit.RecordingWrapper) and rec.step_count == SNAPSHOT_AT:
            rec.snapshot("mid")  # top of an iteration: obs is all the loop state there is
        with torch.no_grad():
            logits = model(torch.as_tensor(obs))
        action = int(torch.distributions.Categorical(logits=logits).sample())
        rec.probe("logits", logits)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        batch.append((obs, action, float(reward)))
        obs = next_obs
        if len(batch) == 32:
            rec.log_update(loss=train(model, opt, batch))
            batch = []
        if terminated or truncated:
            obs, _ = env.reset()


def record(path: Path) -> None:
    model, opt = build()
    env = replaykit.RecordingWrapper(gym.make("CartPole-v1"), path, seed=0)
    env.track("model", model)
    env.track("optimizer", opt)
    obs, _ = env.reset()
    loop(env, obs, STEPS, model, opt, env)
    env.close()
    print(f"recorded {STEPS} steps to {path} (snapshot at step {SNAPSHOT_AT})")


def replay(path: Path) -> None:
    """Runs in a fresh process: nothing is shared with the recording run but the file."""
    model, opt = build()  # fresh objects; restore overwrites their state
    rep = replaykit.restore(
        path, env=gym.make("CartPole-v1"), track={"model": model, "optimizer": opt}
    )
    obs = rep.obs
    if rep.needs_reset:
        obs, _ = rep.env.reset()
    loop(rep.env, obs, 100, model, opt, rep)  # raises DivergenceError at the first difference
    print(
        f"fresh process: restored step {rep.snapshot.step} (episode {rep.snapshot.episode}); "
        f"{rep.verified_steps} steps and {rep.verified_updates} training updates "
        "reproduced bit-exactly"
    )
    rep.close()


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--replay":
        replay(Path(sys.argv[2]))
        return 0
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "cartpole.h5"
        record(path)
        proc = subprocess.run([sys.executable, __file__, "--replay", str(path)], check=False)
        return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
