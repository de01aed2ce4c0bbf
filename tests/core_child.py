"""A user's own training loop, used by tests/test_core.py to record and to replay.

The replay runs in a fresh process.

Run as ``python tests/core_child.py replay FILE ENV_ID STEPS [--variant NAME]``; exit 0 when the
replay matched, 1 with the divergence report on stderr when it did not.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import replaykit

# Tests run the same loop on CUDA with `--device cuda` (after replaykit.enable_determinism()).
DEVICE = "cpu"
from replaykit.errors import DivergenceError, NondeterministicEnvError  # noqa: E402


class Policy(torch.nn.Module):
    """A stochastic MLP policy; ``variant`` changes its code for divergence tests."""

    def __init__(self, env: gym.Env[Any, Any], variant: str = "base") -> None:
        super().__init__()
        n_in = int(np.prod(env.observation_space.shape))
        self.discrete = isinstance(env.action_space, gym.spaces.Discrete)
        n_out = int(env.action_space.n) if self.discrete else int(np.prod(env.action_space.shape))
        self.net = torch.nn.Sequential(
            torch.nn.Linear(n_in, 16),
            torch.nn.Tanh(),
            torch.nn.Dropout(0.1),
            torch.nn.Linear(16, n_out),
        )
        self.log_std = torch.nn.Parameter(torch.zeros(n_out))
        self.variant = variant
        self.space = env.action_space

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if self.variant == "scaled":
            out = out * 1.0001
        return out

    def act(self, obs: np.ndarray) -> tuple[Any, torch.Tensor]:
        x = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=DEVICE).reshape(-1)
        out = self(x)
        if self.discrete:
            a = torch.distributions.Categorical(logits=out).sample()
            return int(a.item()), out
        a = torch.distributions.Normal(out, self.log_std.exp()).sample()
        lo, hi = self.space.low, self.space.high
        return np.clip(a.detach().cpu().numpy(), lo, hi).astype(self.space.dtype), out


def build(
    env_id: str, variant: str = "base"
) -> tuple[gym.Env[Any, Any], Policy, torch.optim.Optimizer]:
    env = gym.make(env_id)
    policy = Policy(env, variant).to(DEVICE)
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    return env, policy, opt


def record(path: str, env_id: str, steps: int, snapshot_at: int, seed: int = 0) -> None:
    """Record ``steps`` steps, snapshotting at the top of iteration ``snapshot_at``."""
    torch.manual_seed(seed)
    env, policy, opt = build(env_id)
    rec = replaykit.RecordingWrapper(
        env, path, seed=seed, track={"policy": policy, "optimizer": opt}
    )
    obs, _ = rec.reset()
    needs_reset = False
    for t in range(steps):
        if needs_reset:
            obs, _ = rec.reset()
            needs_reset = False
        if t == snapshot_at:
            rec.snapshot("mid")
        action, out = policy.act(obs)
        rec.probe("out", out.detach())
        rec.probe("zero", torch.tensor([0.0], device=DEVICE))
        obs, reward, term, trunc, _ = rec.step(action)
        if (t + 1) % 8 == 0:
            loss = -(
                policy(
                    torch.as_tensor(np.asarray(obs, np.float32), device=DEVICE).reshape(-1)
                ).sum()
                * float(reward)
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
        needs_reset = bool(term or trunc)
    rec.close()


def replay(path: str, env_id: str, steps: int, variant: str = "base", zero: float = 0.0) -> int:
    torch.manual_seed(12345)  # a different global state: restore must bring the recorded one back
    env, policy, opt = build(env_id, variant)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(1.0)  # different weights too
    try:
        rep = replaykit.restore(path, "mid", env=env, track={"policy": policy, "optimizer": opt})
        obs, needs_reset = rep.obs, rep.needs_reset
        t = rep.step_count
        for _ in range(steps):
            if needs_reset:
                obs, _ = rep.env.reset()
                needs_reset = False
            action, out = policy.act(obs)
            rep.probe("out", out.detach())
            rep.probe("zero", torch.tensor([zero], device=DEVICE))
            obs, reward, term, trunc, _ = rep.env.step(action)
            t += 1
            if t % 8 == 0:
                loss = -(
                    policy(
                        torch.as_tensor(np.asarray(obs, np.float32), device=DEVICE).reshape(-1)
                    ).sum()
                    * float(reward)
                )
                opt.zero_grad()
                loss.backward()
                opt.step()
            needs_reset = bool(term or trunc)
    except NondeterministicEnvError as exc:
        print(exc, file=sys.stderr)
        return 3
    except DivergenceError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(
        f"verified {rep.verified_steps} steps from snapshot {rep.snapshot.name} "
        f"at step {rep.snapshot.step}"
    )
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    variant = "base"
    zero = 0.0
    if "--variant" in args:
        i = args.index("--variant")
        variant = args[i + 1]
        del args[i : i + 2]
    if "--zero" in args:
        i = args.index("--zero")
        zero = float(args[i + 1])
        del args[i : i + 2]
    if "--device" in args:
        i = args.index("--device")
        DEVICE = args[i + 1]
        del args[i : i + 2]
        if DEVICE != "cpu":
            replaykit.enable_determinism()
    if "--register-noadapter" in args:
        args.remove("--register-noadapter")
        import noadapter_env  # noqa: F401
    cmd, path, env_id, steps = args[0], args[1], args[2], int(args[3])
    if cmd == "replay":
        sys.exit(replay(path, env_id, steps, variant, zero))
    if cmd == "record":
        record(path, env_id, steps, int(args[4]))
        sys.exit(0)
    sys.exit(2)
