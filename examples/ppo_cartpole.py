"""PPO on CartPole with minibatch epochs, recorded with replaykit.

The snapshot is taken in the middle of the update phase: between two minibatches of the
second epoch of the second rollout. Everything the loop needs to continue from there (the
rollout buffer with its advantages, this epoch's minibatch permutation, the loop counters)
is tracked state, so a fresh process resumes the very same loop at the next minibatch and
verifies the following updates and the next rollout's env steps bit-exactly.

    python examples/ppo_cartpole.py --out /tmp/ppo.h5          # record (snapshot "mid")
    python examples/ppo_cartpole.py --replay /tmp/ppo.h5       # restore + verify, exit 0/1
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
from replaykit.errors import StateMismatchError

ENV_ID = "CartPole-v1"


class RolloutBuffer:
    """One rollout plus this epoch's minibatch order (fixed-size arrays)."""

    FIELDS = (
        "obs",
        "actions",
        "logp",
        "values",
        "rewards",
        "dones",
        "advantages",
        "returns",
        "perm",
    )

    def __init__(self, n: int, obs_dim: int) -> None:
        self.obs = np.zeros((n, obs_dim), np.float32)
        self.actions = np.zeros(n, np.int64)
        self.logp, self.values, self.rewards, self.dones, self.advantages, self.returns = (
            np.zeros(n, np.float32) for _ in range(6)
        )
        self.perm = np.zeros(n, np.int64)

    def __replaykit_state__(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.FIELDS}  # replaykit copies the arrays

    def __replaykit_restore__(self, tree: dict[str, Any]) -> None:
        for f in self.FIELDS:
            live = getattr(self, f)
            if tree[f].shape != live.shape or tree[f].dtype != live.dtype:
                raise StateMismatchError("rollout buffer", [f"{f}: shape or dtype differs"])
            live[...] = tree[f]


def mlp(out: int, hidden: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(4, hidden),
        nn.Tanh(),
        nn.Linear(hidden, hidden),
        nn.Tanh(),
        nn.Linear(hidden, out),
    )


class PPO:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.actor, self.critic = mlp(2, args.hidden), mlp(1, args.hidden)
        params = list(self.actor.parameters()) + list(self.critic.parameters())
        self.opt = torch.optim.Adam(params, lr=args.lr, eps=1e-5)
        self.buf = RolloutBuffer(args.n_steps, 4)
        # phase 0: collect a rollout; phase 1: minibatch epochs over it.
        self.c = Counters(iteration=0, phase=0, epoch=0, minibatch=0, update=0)

    def tracked(self) -> dict[str, Any]:
        return {
            "actor": self.actor,
            "critic": self.critic,
            "optimizer": self.opt,
            "rollout": self.buf,
            "counters": self.c,
        }

    def collect(self, env: gym.Env[Any, Any], rk: Any, obs: Any, needs_reset: bool) -> Any:
        a, b = self.args, self.buf
        for t in range(a.n_steps):
            if needs_reset:
                obs, _ = env.reset()
            with torch.no_grad():
                x = torch.as_tensor(obs).unsqueeze(0)
                logits, value = self.actor(x)[0], self.critic(x)[0, 0]
            rk.probe("logits", logits)
            dist = Categorical(logits=logits)
            action = dist.sample()  # global torch RNG: in every snapshot
            next_obs, reward, terminated, truncated, _ = env.step(int(action))
            b.obs[t], b.actions[t], b.logp[t] = obs, int(action), float(dist.log_prob(action))
            b.values[t], b.rewards[t] = float(value), float(reward)
            needs_reset = terminated or truncated
            b.dones[t] = needs_reset
            obs = next_obs
        with torch.no_grad():
            last = 0.0 if needs_reset else float(self.critic(torch.as_tensor(obs).unsqueeze(0)))
        gae = 0.0
        for t in reversed(range(a.n_steps)):  # generalised advantage estimation
            next_v = last if t == a.n_steps - 1 else float(b.values[t + 1])
            nonterminal = 1.0 - float(b.dones[t])
            delta = float(b.rewards[t]) + a.gamma * next_v * nonterminal - float(b.values[t])
            gae = delta + a.gamma * a.lam * nonterminal * gae
            b.advantages[t] = gae
        b.returns[:] = b.advantages + b.values
        return obs, needs_reset

    def update(self, idx: np.ndarray) -> dict[str, Any]:
        a, b = self.args, self.buf
        obs, actions = torch.as_tensor(b.obs[idx]), torch.as_tensor(b.actions[idx])
        adv = torch.as_tensor(b.advantages[idx])
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        with LayerTracer(
            {"actor": self.actor, "critic": self.critic}, enabled=self.c.update == a.localize_update
        ) as tracer:
            dist = Categorical(logits=self.actor(obs))
            ratio = (dist.log_prob(actions) - torch.as_tensor(b.logp[idx])).exp()
            clipped = ratio.clamp(1 - a.clip, 1 + a.clip)
            pg_loss = -torch.min(ratio * adv, clipped * adv).mean()
            v_loss = (
                0.5 * (self.critic(obs).squeeze(1) - torch.as_tensor(b.returns[idx])).pow(2).mean()
            )
            entropy = dist.entropy().mean()
            loss = pg_loss + a.vf_coef * v_loss - a.ent_coef * entropy
            self.opt.zero_grad()
            loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(
            list(self.actor.parameters()) + list(self.critic.parameters()), a.max_grad_norm
        )
        self.opt.step()
        return {
            "loss": loss.detach(),
            "pg_loss": pg_loss.detach(),
            "v_loss": v_loss.detach(),
            "entropy": entropy.detach(),
            "grad_norm": grad_norm,
            "actor_params": params_digest(self.actor),
            **tracer.probes(),
        }


def train(
    env: gym.Env[Any, Any],
    rk: Any,
    agent: PPO,
    *,
    obs: Any,
    needs_reset: bool,
    until_update: int,
    snapshot_at: tuple[int, int, int] | None = None,
) -> None:
    """The one loop for record (``rk`` = RecordingWrapper) and replay (``rk`` = Replay).

    Its position lives in ``agent.c``, so after a restore it picks up mid-epoch.
    """
    a, c, b = agent.args, agent.c, agent.buf
    mb_size = a.n_steps // a.minibatches
    while True:
        if c.phase == 0:
            obs, needs_reset = agent.collect(env, rk, obs, needs_reset)
            c.phase, c.epoch, c.minibatch = 1, 0, 0
        while c.epoch < a.epochs:
            if c.minibatch == 0:
                b.perm[:] = torch.randperm(a.n_steps).numpy()
            while c.minibatch < a.minibatches:
                m = c.minibatch
                rk.log_update(**agent.update(b.perm[m * mb_size : (m + 1) * mb_size]))
                c.minibatch += 1
                c.update += 1
                if (c.iteration, c.epoch, c.minibatch) == snapshot_at:
                    rk.snapshot("mid")
                if c.update >= until_update:
                    return
            c.epoch, c.minibatch = c.epoch + 1, 0
        c.phase, c.iteration = 0, c.iteration + 1


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="ppo_cartpole.h5", help="recording to write")
    p.add_argument("--replay", metavar="FILE", help="restore FILE's snapshot and verify")
    p.add_argument(
        "--verify-updates",
        type=int,
        default=14,
        help="updates to verify (the default crosses into the next rollout)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument(
        "--snapshot-at",
        type=int,
        nargs=3,
        default=[1, 1, 2],
        metavar=("ITER", "EPOCH", "MINIBATCH"),
        help="snapshot after this many minibatches of this epoch of this iteration",
    )
    p.add_argument("--localize-update", type=int, default=-1)
    p.add_argument("--n-steps", type=int, default=128)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--minibatches", type=int, default=4)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--lr", type=float, default=2.5e-4)
    p.add_argument("--gamma", type=float, default=0.99)
    p.add_argument("--lam", type=float, default=0.95)
    p.add_argument("--clip", type=float, default=0.2)
    p.add_argument("--vf-coef", type=float, default=0.5)
    p.add_argument("--ent-coef", type=float, default=0.01)
    p.add_argument("--max-grad-norm", type=float, default=0.5)
    return p.parse_args(argv)


HYPER = (
    "seed",
    "iterations",
    "snapshot_at",
    "localize_update",
    "n_steps",
    "epochs",
    "minibatches",
    "hidden",
    "lr",
    "gamma",
    "lam",
    "clip",
    "vf_coef",
    "ent_coef",
    "max_grad_norm",
)


def record(args: argparse.Namespace) -> str:
    replaykit.enable_determinism()
    torch.manual_seed(args.seed)
    agent = PPO(args)
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
        until_update=args.iterations * args.epochs * args.minibatches,
        snapshot_at=tuple(args.snapshot_at),
    )
    env.close()
    return str(env.path)


def replay(path: str, verify_updates: int) -> Any:
    replaykit.enable_determinism()
    with replaykit.Recording(path) as rec:
        args = argparse.Namespace(**rec.meta["user"])
    agent = PPO(args)
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
