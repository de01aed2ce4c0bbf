"""REINFORCE on CartPole, recorded with replaykit.

The snapshot is taken between collecting an episode and the policy update that learns
from it: the episode sits in a tracked buffer, so a fresh process restores it, makes the
same update, and verifies that and the following updates and episodes bit-exactly.

    python examples/reinforce_cartpole.py --out /tmp/reinforce.h5     # record (snapshot "mid")
    python examples/reinforce_cartpole.py --replay /tmp/reinforce.h5  # restore + verify, exit 0/1
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical

import replaykit
from replaykit import Counters, LayerTracer, params_digest

ENV_ID = "CartPole-v1"


class EpisodeBuffer:
    """The current episode's observations, actions and rewards; snapshots hold the filled part."""

    def __init__(self, max_len: int = 500) -> None:
        self.obs = np.zeros((max_len, 4), np.float32)
        self.actions = np.zeros(max_len, np.int64)
        self.rewards = np.zeros(max_len, np.float32)
        self.n = 0

    def __replaykit_state__(self) -> dict[str, Any]:
        n = self.n
        return {
            "n": n,
            "obs": self.obs[:n],
            "actions": self.actions[:n],
            "rewards": self.rewards[:n],
        }

    def __replaykit_restore__(self, tree: dict[str, Any]) -> None:
        self.n = int(tree["n"])
        self.obs[: self.n], self.actions[: self.n] = tree["obs"], tree["actions"]
        self.rewards[: self.n] = tree["rewards"]


class Reinforce:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.policy = nn.Sequential(nn.Linear(4, args.hidden), nn.Tanh(), nn.Linear(args.hidden, 2))
        self.opt = torch.optim.Adam(self.policy.parameters(), lr=args.lr)
        self.buf = EpisodeBuffer()
        self.c = Counters(phase=0, update=0)  # phase 0: collect an episode; 1: update on it

    def tracked(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "optimizer": self.opt,
            "episode": self.buf,
            "counters": self.c,
        }

    def collect(self, env: gym.Env[Any, Any], rk: Any) -> None:
        b = self.buf
        obs, _ = env.reset()
        b.n, done = 0, False
        while not done:
            with torch.no_grad():
                logits = self.policy(torch.as_tensor(obs))
            rk.probe("logits", logits)
            action = int(Categorical(logits=logits).sample())  # global torch RNG
            next_obs, reward, terminated, truncated, _ = env.step(action)
            b.obs[b.n], b.actions[b.n], b.rewards[b.n] = obs, action, reward
            b.n += 1
            obs, done = next_obs, terminated or truncated

    def update(self) -> dict[str, Any]:
        a, b = self.args, self.buf
        returns = np.zeros(b.n, np.float32)
        g = 0.0
        for t in reversed(range(b.n)):
            g = float(b.rewards[t]) + a.gamma * g
            returns[t] = g
        ret = torch.as_tensor(returns)
        ret = (ret - ret.mean()) / (ret.std() + 1e-8)
        with LayerTracer({"policy": self.policy}, enabled=self.c.update == a.localize_update) as tr:
            logp = Categorical(logits=self.policy(torch.as_tensor(b.obs[: b.n]))).log_prob(
                torch.as_tensor(b.actions[: b.n])
            )
            loss = -(logp * ret).sum()
            self.opt.zero_grad()
            loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.policy.parameters(), 1e9)
        self.opt.step()
        return {
            "loss": loss.detach(),
            "grad_norm": grad_norm,
            "episode_len": b.n,
            "params": params_digest(self.policy),
            **tr.probes(),
        }


def train(
    env: gym.Env[Any, Any],
    rk: Any,
    agent: Reinforce,
    *,
    until_update: int,
    snapshot_update: int | None = None,
) -> None:
    """The one loop for record (``rk`` = RecordingWrapper) and replay (``rk`` = Replay)."""
    c = agent.c
    while c.update < until_update:
        if c.phase == 0:
            agent.collect(env, rk)
            c.phase = 1
            if c.update == snapshot_update:
                rk.snapshot("mid")  # between rollout collection and the update
        rk.log_update(**agent.update())
        c.phase, c.update = 0, c.update + 1


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="reinforce_cartpole.h5", help="recording to write")
    p.add_argument("--replay", metavar="FILE", help="restore FILE's snapshot and verify")
    p.add_argument("--verify-updates", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--updates", type=int, default=20)
    p.add_argument(
        "--snapshot-update",
        type=int,
        default=10,
        help="snapshot after collecting the episode for this update",
    )
    p.add_argument("--localize-update", type=int, default=-1)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--gamma", type=float, default=0.99)
    return p.parse_args(argv)


HYPER = ("seed", "updates", "snapshot_update", "localize_update", "hidden", "lr", "gamma")


def record(args: argparse.Namespace) -> str:
    replaykit.enable_determinism()
    torch.manual_seed(args.seed)
    agent = Reinforce(args)
    env = replaykit.RecordingWrapper(
        gym.make(ENV_ID),
        args.out,
        seed=args.seed,
        track=agent.tracked(),
        metadata={k: getattr(args, k) for k in HYPER},
    )
    train(env, env, agent, until_update=args.updates, snapshot_update=args.snapshot_update)
    env.close()
    return str(env.path)


def replay(path: str, verify_updates: int) -> Any:
    replaykit.enable_determinism()
    with replaykit.Recording(path) as rec:
        args = argparse.Namespace(**rec.meta["user"])
    agent = Reinforce(args)
    rep = replaykit.restore(path, "mid", env=gym.make(ENV_ID), track=agent.tracked())
    with rep:
        train(rep.env, rep, agent, until_update=rep.update_count + verify_updates)
    return rep


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(1)
    if args.replay:
        try:
            rep = replay(args.replay, args.verify_updates)
        except replaykit.DivergenceError as exc:
            print(exc.report.format())
            return 1
        print(
            f"verified {rep.verified_updates} updates and {rep.verified_steps} env steps "
            "after snapshot 'mid': bit-identical"
        )
        return 0
    print(f"recorded {record(args)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
