"""DQN on CartPole with a replay buffer and a target network, recorded with replaykit.

The snapshot is taken *between* the two gradient steps of one update round, with a
half-full replay buffer; a fresh process restores it and verifies that the next updates
(loss, Q values, gradient norm, parameter digest) and the env steps between them come out
bit-identical.

    python examples/dqn_cartpole.py --out /tmp/dqn.h5          # record (snapshot "mid")
    python examples/dqn_cartpole.py --replay /tmp/dqn.h5       # restore + verify, exit 0/1
    python examples/dqn_cartpole.py --out /tmp/b.h5 --localize-update 30   # layer digests
"""

from __future__ import annotations

import argparse
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

ENV_ID = "CartPole-v1"


class ReplayBuffer:
    """Fixed-capacity transition storage; snapshots hold only the filled part."""

    FIELDS = ("obs", "next_obs", "actions", "rewards", "dones")

    def __init__(self, capacity: int, obs_dim: int) -> None:
        self.capacity = capacity
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.actions = np.zeros(capacity, np.int64)
        self.rewards = np.zeros(capacity, np.float32)
        self.dones = np.zeros(capacity, np.float32)
        self.pos = 0
        self.full = False

    def __len__(self) -> int:
        return self.capacity if self.full else self.pos

    def add(self, obs: Any, action: int, reward: float, next_obs: Any, done: bool) -> None:
        i = self.pos
        self.obs[i], self.next_obs[i] = obs, next_obs
        self.actions[i], self.rewards[i], self.dones[i] = action, reward, done
        self.pos = (i + 1) % self.capacity
        self.full = self.full or self.pos == 0

    def sample(self, n: int) -> tuple[torch.Tensor, ...]:
        idx = np.random.randint(0, len(self), size=n)  # global NumPy RNG: in every snapshot
        return tuple(torch.as_tensor(getattr(self, f)[idx]) for f in self.FIELDS)

    def __replaykit_state__(self) -> dict[str, Any]:
        n = len(self)
        state: dict[str, Any] = {"capacity": self.capacity, "pos": self.pos, "full": self.full}
        state.update({f: getattr(self, f)[:n] for f in self.FIELDS})  # copied by replaykit
        return state

    def __replaykit_restore__(self, tree: dict[str, Any]) -> None:
        if tree["capacity"] != self.capacity:
            raise StateMismatchError(
                "replay buffer", [f"capacity: snapshot {tree['capacity']}, live {self.capacity}"]
            )
        for f in self.FIELDS:
            live = getattr(self, f)
            if tree[f].dtype != live.dtype or tree[f].shape[1:] != live.shape[1:]:
                raise StateMismatchError("replay buffer", [f"{f}: dtype or shape differs"])
            live[: len(tree[f])] = tree[f]
        self.pos, self.full = int(tree["pos"]), bool(tree["full"])


def qnet(hidden: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2)
    )


class DQN:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.q = qnet(args.hidden)
        self.target = qnet(args.hidden)
        self.target.load_state_dict(self.q.state_dict())
        self.opt = torch.optim.Adam(self.q.parameters(), lr=args.lr)
        self.buffer = ReplayBuffer(args.buffer_size, 4)
        # pending: gradient steps still due in the current update round (non-zero mid-round).
        self.c = Counters(step=0, update=0, pending=0)

    def tracked(self) -> dict[str, Any]:
        return {
            "q": self.q,
            "target": self.target,
            "optimizer": self.opt,
            "buffer": self.buffer,
            "counters": self.c,
        }

    def act(self, obs: Any, rk: Any) -> int:
        a = self.args
        eps = max(a.eps_end, 1.0 - self.c.step / a.eps_decay_steps)
        with torch.no_grad():
            q = self.q(torch.as_tensor(obs).unsqueeze(0))[0]
        rk.probe("q", q)
        if np.random.random() < eps:
            return int(np.random.randint(2))
        return int(q.argmax())

    def update(self) -> dict[str, Any]:
        a = self.args
        obs, next_obs, actions, rewards, dones = self.buffer.sample(a.batch_size)
        with LayerTracer(
            {"q": self.q, "target": self.target}, enabled=self.c.update == a.localize_update
        ) as tracer:
            with torch.no_grad():
                target = rewards + a.gamma * (1 - dones) * self.target(next_obs).max(1).values
            q = self.q(obs).gather(1, actions.unsqueeze(1)).squeeze(1)
            loss = F.smooth_l1_loss(q, target)
            self.opt.zero_grad()
            loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.q.parameters(), a.max_grad_norm)
        self.opt.step()
        self.c.update += 1
        if self.c.update % a.target_every == 0:
            self.target.load_state_dict(self.q.state_dict())
        return {
            "loss": loss.detach(),
            "q_mean": q.detach().mean(),
            "grad_norm": grad_norm,
            "params": params_digest(self.q),
            **tracer.probes(),
        }


def train(
    env: gym.Env[Any, Any],
    rk: Any,
    agent: DQN,
    *,
    obs: Any,
    needs_reset: bool,
    until_update: int,
    snapshot_update: int | None = None,
) -> None:
    """The one loop for record (``rk`` = RecordingWrapper) and replay (``rk`` = Replay)."""
    a, c, buf = agent.args, agent.c, agent.buffer
    while True:
        while c.pending > 0:  # the update round; a restore may land in its middle
            rk.log_update(**agent.update())
            c.pending -= 1
            if c.update == snapshot_update:
                rk.snapshot("mid")  # between two gradient steps of one round
            if c.update >= until_update:
                return
        if needs_reset:
            obs, _ = env.reset()
        action = agent.act(obs, rk)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        buf.add(obs, action, float(reward), next_obs, terminated)
        obs, needs_reset = next_obs, terminated or truncated
        c.step += 1
        if c.step >= a.learning_starts and c.step % a.train_freq == 0:
            c.pending = a.gradient_steps


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="dqn_cartpole.h5", help="recording to write")
    p.add_argument("--replay", metavar="FILE", help="restore FILE's snapshot and verify")
    p.add_argument("--verify-updates", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--updates", type=int, default=80, help="updates to record")
    p.add_argument("--snapshot-update", type=int, default=41, help="snapshot after this update")
    p.add_argument(
        "--localize-update",
        type=int,
        default=-1,
        help="record layer digests at this update (-1: off)",
    )
    p.add_argument("--buffer-size", type=int, default=10_000)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--gamma", type=float, default=0.99)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--learning-starts", type=int, default=200)
    p.add_argument("--train-freq", type=int, default=4)
    p.add_argument("--gradient-steps", type=int, default=2)
    p.add_argument("--target-every", type=int, default=20)
    p.add_argument("--eps-end", type=float, default=0.05)
    p.add_argument("--eps-decay-steps", type=int, default=1000)
    p.add_argument("--max-grad-norm", type=float, default=10.0)
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
    "batch_size",
    "learning_starts",
    "train_freq",
    "gradient_steps",
    "target_every",
    "eps_end",
    "eps_decay_steps",
    "max_grad_norm",
)


def record(args: argparse.Namespace) -> str:
    replaykit.enable_determinism()
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    agent = DQN(args)
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
    agent = DQN(args)
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
