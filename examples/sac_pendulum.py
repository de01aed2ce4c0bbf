"""SAC on Pendulum (twin critics, target critics, learned temperature), recorded with replaykit.

The snapshot is taken mid-episode, after an update, with a partly filled replay buffer; a
fresh process restores it and verifies the next updates and the env steps between them
bit-exactly. With ``--localize-update N`` the update N also records a digest of every
module's output and gradient, so ``first_divergent_module`` can say e.g. that a change in
the ``critic.q2`` loss is where two runs part.

    python examples/sac_pendulum.py --out /tmp/sac.h5          # record (snapshot "mid")
    python examples/sac_pendulum.py --replay /tmp/sac.h5       # restore + verify, exit 0/1
"""

from __future__ import annotations

import argparse
import copy
import sys
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import replaykit
from replaykit import Counters, LayerTracer, params_digest
from replaykit.errors import StateMismatchError

ENV_ID = "Pendulum-v1"
OBS, ACT, MAX_ACTION = 3, 1, 2.0


class ReplayBuffer:
    """Fixed-capacity transition storage; snapshots hold only the filled part."""

    FIELDS = ("obs", "next_obs", "actions", "rewards", "dones")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.obs = np.zeros((capacity, OBS), np.float32)
        self.next_obs = np.zeros((capacity, OBS), np.float32)
        self.actions = np.zeros((capacity, ACT), np.float32)
        self.rewards = np.zeros(capacity, np.float32)
        self.dones = np.zeros(capacity, np.float32)
        self.pos, self.full = 0, False

    def __len__(self) -> int:
        return self.capacity if self.full else self.pos

    def add(self, obs: Any, action: Any, reward: float, next_obs: Any, done: bool) -> None:
        i = self.pos
        self.obs[i], self.actions[i], self.rewards[i] = obs, action, reward
        self.next_obs[i], self.dones[i] = next_obs, done
        self.pos = (i + 1) % self.capacity
        self.full = self.full or self.pos == 0

    def sample(self, n: int) -> tuple[torch.Tensor, ...]:
        idx = np.random.randint(0, len(self), size=n)  # global NumPy RNG: in every snapshot
        return tuple(torch.as_tensor(getattr(self, f)[idx]) for f in self.FIELDS)

    def __replaykit_state__(self) -> dict[str, Any]:
        n = len(self)
        return {
            "capacity": self.capacity,
            "pos": self.pos,
            "full": self.full,
            **{f: getattr(self, f)[:n] for f in self.FIELDS},
        }

    def __replaykit_restore__(self, tree: dict[str, Any]) -> None:
        if tree["capacity"] != self.capacity:
            raise StateMismatchError(
                "replay buffer", [f"capacity: snapshot {tree['capacity']}, live {self.capacity}"]
            )
        for f in self.FIELDS:
            getattr(self, f)[: len(tree[f])] = tree[f]
        self.pos, self.full = int(tree["pos"]), bool(tree["full"])


def mlp(inp: int, out: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inp, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, out),
    )


class Actor(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.net = mlp(OBS, 2 * ACT, hidden)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        std = log_std.clamp(-5, 2).exp()
        u = mean + std * torch.randn_like(mean)  # global torch RNG: in every snapshot
        a = torch.tanh(u)
        logp = (-0.5 * ((u - mean) / std).pow(2) - std.log() - 0.5 * np.log(2 * np.pi)).sum(-1)
        logp = logp - torch.log(1 - a.pow(2) + 1e-6).sum(-1)
        return a * MAX_ACTION, logp


class Critic(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.q1, self.q2 = mlp(OBS + ACT, 1, hidden), mlp(OBS + ACT, 1, hidden)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([obs, act], dim=-1)
        return self.q1(x), self.q2(x)


class SAC:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.actor, self.critic = Actor(args.hidden), Critic(args.hidden)
        self.critic_target = copy.deepcopy(self.critic)
        self.log_alpha = torch.zeros(1, requires_grad=True)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=args.lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=args.lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=args.lr)
        self.buffer = ReplayBuffer(args.buffer_size)
        self.c = Counters(step=0, update=0)

    def tracked(self) -> dict[str, Any]:
        return {
            "actor": self.actor,
            "critic": self.critic,
            "critic_target": self.critic_target,
            "log_alpha": self.log_alpha,
            "actor_opt": self.actor_opt,
            "critic_opt": self.critic_opt,
            "alpha_opt": self.alpha_opt,
            "buffer": self.buffer,
            "counters": self.c,
        }

    def act(self, obs: Any) -> np.ndarray:
        if self.c.step < self.args.learning_starts:
            return np.random.uniform(-MAX_ACTION, MAX_ACTION, ACT).astype(np.float32)
        with torch.no_grad():
            a, _ = self.actor(torch.as_tensor(obs).unsqueeze(0))
        return a[0].numpy()

    def update(self) -> dict[str, Any]:
        a = self.args
        obs, next_obs, actions, rewards, dones = self.buffer.sample(a.batch_size)
        alpha = self.log_alpha.exp().detach()
        with LayerTracer(
            {"actor": self.actor, "critic": self.critic, "critic_target": self.critic_target},
            enabled=self.c.update == a.localize_update,
        ) as tracer:
            with torch.no_grad():
                next_a, next_logp = self.actor(next_obs)
                t1, t2 = self.critic_target(next_obs, next_a)
                target = rewards + a.gamma * (1 - dones) * (
                    torch.min(t1, t2).squeeze(-1) - alpha * next_logp
                )
            q1, q2 = self.critic(obs, actions)
            q1_loss = F.mse_loss(q1.squeeze(-1), target)
            q2_loss = F.mse_loss(q2.squeeze(-1), target)
            critic_loss = q1_loss + q2_loss
            self.critic_opt.zero_grad()
            critic_loss.backward()
            self.critic_opt.step()
            pi, logp = self.actor(obs)
            q_pi = torch.min(*self.critic(obs, pi)).squeeze(-1)
            actor_loss = (alpha * logp - q_pi).mean()
            self.actor_opt.zero_grad()
            actor_loss.backward()
            self.actor_opt.step()
        alpha_loss = -(self.log_alpha * (logp.detach() - ACT).mean())
        self.alpha_opt.zero_grad()
        alpha_loss.backward()
        self.alpha_opt.step()
        with torch.no_grad():
            for p, tp in zip(
                self.critic.parameters(), self.critic_target.parameters(), strict=True
            ):
                tp.mul_(1 - a.tau).add_(a.tau * p)
        self.c.update += 1
        return {
            "q1_loss": q1_loss.detach(),
            "q2_loss": q2_loss.detach(),
            "actor_loss": actor_loss.detach(),
            "alpha": alpha,
            "critic_params": params_digest(self.critic),
            **tracer.probes(),
        }


def train(
    env: gym.Env[Any, Any],
    rk: Any,
    agent: SAC,
    *,
    obs: Any,
    needs_reset: bool,
    until_update: int,
    snapshot_update: int | None = None,
) -> None:
    """The one loop for record (``rk`` = RecordingWrapper) and replay (``rk`` = Replay)."""
    c, buf = agent.c, agent.buffer
    while c.update < until_update:
        if needs_reset:
            obs, _ = env.reset()
        action = agent.act(obs)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        buf.add(obs, action, float(reward), next_obs, terminated)
        obs, needs_reset = next_obs, terminated or truncated
        c.step += 1
        if c.step >= agent.args.learning_starts:
            rk.log_update(**agent.update())
            if c.update == snapshot_update:
                rk.snapshot("mid")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="sac_pendulum.h5", help="recording to write")
    p.add_argument("--replay", metavar="FILE", help="restore FILE's snapshot and verify")
    p.add_argument("--verify-updates", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--updates", type=int, default=60)
    p.add_argument("--snapshot-update", type=int, default=30)
    p.add_argument("--localize-update", type=int, default=-1)
    p.add_argument("--buffer-size", type=int, default=10_000)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--gamma", type=float, default=0.99)
    p.add_argument("--tau", type=float, default=0.005)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--learning-starts", type=int, default=100)
    return p.parse_args(argv)


HYPER = (
    "seed",
    "updates",
    "snapshot_update",
    "localize_update",
    "buffer_size",
    "hidden",
    "lr",
    "gamma",
    "tau",
    "batch_size",
    "learning_starts",
)


def record(args: argparse.Namespace) -> str:
    replaykit.enable_determinism()
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    agent = SAC(args)
    env = replaykit.RecordingWrapper(
        gym.make(ENV_ID),
        args.out,
        seed=args.seed,
        track=agent.tracked(),
        metadata={k: getattr(args, k) for k in HYPER},
    )
    obs, _ = env.reset()
    train(
        env,
        env,
        agent,
        obs=obs,
        needs_reset=False,
        until_update=args.updates,
        snapshot_update=args.snapshot_update,
    )
    env.close()
    return str(env.path)


def replay(path: str, verify_updates: int) -> Any:
    replaykit.enable_determinism()
    with replaykit.Recording(path) as rec:
        args = argparse.Namespace(**rec.meta["user"])
    agent = SAC(args)
    rep = replaykit.restore(path, "mid", env=gym.make(ENV_ID), track=agent.tracked())
    with rep:
        train(
            rep.env,
            rep,
            agent,
            obs=rep.obs,
            needs_reset=rep.needs_reset,
            until_update=rep.update_count + verify_updates,
        )
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
