"""A single-file CleanRL-style PPO (vectorised envs, GAE, minibatch epochs) with replaykit.

The algorithm follows CleanRL's ``ppo.py``: ``SyncVectorEnv`` of ``RecordEpisodeStatistics``
envs, fixed-size rollout storage tensors, GAE, shuffled minibatches over several epochs,
clipped surrogate and value losses, gradient clipping, learning-rate annealing. replaykit is
added in the lines marked ``# replaykit`` (9 of them): the storage tensors are tracked with
``replaykit.ArrayState``, the loop position with ``replaykit.Counters`` (so the loops are
written over it and can resume anywhere), a snapshot is taken in the middle of an update
epoch, and ``--replay`` resumes there in a fresh process, verifying every later update and
env step bit-exactly.

    python examples/cleanrl_ppo.py --out /tmp/cleanrl.h5     # record (snapshot "mid")
    python examples/cleanrl_ppo.py --replay /tmp/cleanrl.h5  # resume + verify, exit 0/1
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn, optim
from torch.distributions.categorical import Categorical

import replaykit  # replaykit

ENV_ID = "CartPole-v1"
SEED = 1
NUM_ENVS = 4
NUM_STEPS = 32
NUM_ITERATIONS = 4
UPDATE_EPOCHS = 2
NUM_MINIBATCHES = 4
LEARNING_RATE = 2.5e-4
GAMMA, GAE_LAMBDA = 0.99, 0.95
CLIP_COEF, ENT_COEF, VF_COEF, MAX_GRAD_NORM = 0.2, 0.01, 0.5, 0.5
BATCH_SIZE = NUM_ENVS * NUM_STEPS
MINIBATCH_SIZE = BATCH_SIZE // NUM_MINIBATCHES
# Where the snapshot is taken: iteration 2, epoch 1, after two of its four minibatches.
SNAPSHOT_AT = (2, 1, 2 * MINIBATCH_SIZE)


def make_env(env_id: str) -> Any:
    def thunk() -> gym.Env[Any, Any]:
        return gym.wrappers.RecordEpisodeStatistics(gym.make(env_id))

    return thunk


def layer_init(layer: nn.Linear, std: float = np.sqrt(2), bias_const: float = 0.0) -> nn.Linear:
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    def __init__(self, envs: gym.vector.VectorEnv[Any, Any, Any]) -> None:
        super().__init__()
        n_obs = int(np.prod(envs.single_observation_space.shape))
        n_act = int(envs.single_action_space.n)  # type: ignore[attr-defined]
        self.critic = nn.Sequential(
            layer_init(nn.Linear(n_obs, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 1), std=1.0),
        )
        self.actor = nn.Sequential(
            layer_init(nn.Linear(n_obs, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, 64)),
            nn.Tanh(),
            layer_init(nn.Linear(64, n_act), std=0.01),
        )

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x)  # type: ignore[no-any-return]

    def get_action_and_value(
        self, x: torch.Tensor, action: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.actor(x)
        probs = Categorical(logits=logits)
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy(), self.critic(x)


class Storage:
    """CleanRL's rollout tensors, plus the next observation and this epoch's permutation."""

    FIELDS = (
        "obs",
        "actions",
        "logprobs",
        "rewards",
        "dones",
        "values",
        "advantages",
        "returns",
        "next_obs",
        "next_done",
        "b_inds",
    )

    def __init__(self, envs: gym.vector.VectorEnv[Any, Any, Any]) -> None:
        shape = (NUM_STEPS, NUM_ENVS)
        self.obs = torch.zeros(shape + envs.single_observation_space.shape)  # type: ignore[operator]
        self.actions = torch.zeros(shape + envs.single_action_space.shape)  # type: ignore[operator]
        self.logprobs, self.rewards = torch.zeros(shape), torch.zeros(shape)
        self.dones, self.values = torch.zeros(shape), torch.zeros(shape)
        self.advantages, self.returns = torch.zeros(shape), torch.zeros(shape)
        self.next_obs = torch.zeros((NUM_ENVS, *envs.single_observation_space.shape))  # type: ignore[misc]
        self.next_done = torch.zeros(NUM_ENVS)
        self.b_inds = np.arange(BATCH_SIZE)


def collect(envs: Any, agent: Agent, s: Storage) -> None:
    """One rollout of NUM_STEPS vector steps, then GAE (CleanRL's collection phase)."""
    for step in range(NUM_STEPS):
        s.obs[step] = s.next_obs
        s.dones[step] = s.next_done
        with torch.no_grad():
            action, logprob, _, value = agent.get_action_and_value(s.next_obs)
            s.values[step] = value.flatten()
        s.actions[step] = action
        s.logprobs[step] = logprob
        next_obs, reward, terminations, truncations, _ = envs.step(action.cpu().numpy())
        s.rewards[step] = torch.tensor(reward).view(-1)
        s.next_obs[:] = torch.Tensor(next_obs)
        s.next_done[:] = torch.Tensor(np.logical_or(terminations, truncations))
    with torch.no_grad():
        next_value = agent.get_value(s.next_obs).reshape(1, -1)
        lastgaelam = torch.zeros(NUM_ENVS)
        for t in reversed(range(NUM_STEPS)):
            if t == NUM_STEPS - 1:
                nextnonterminal, nextvalues = 1.0 - s.next_done, next_value
            else:
                nextnonterminal, nextvalues = 1.0 - s.dones[t + 1], s.values[t + 1]
            delta = s.rewards[t] + GAMMA * nextvalues * nextnonterminal - s.values[t]
            s.advantages[t] = lastgaelam = (
                delta + GAMMA * GAE_LAMBDA * nextnonterminal * lastgaelam
            ).flatten()
        s.returns[:] = s.advantages + s.values


def minibatch_loss(agent: Agent, s: Storage, mb_inds: np.ndarray) -> torch.Tensor:
    """CleanRL's clipped PPO loss on one minibatch of the flattened batch."""
    b_obs = s.obs.reshape((-1, *s.obs.shape[2:]))
    _, newlogprob, entropy, newvalue = agent.get_action_and_value(
        b_obs[mb_inds], s.actions.reshape(-1).long()[mb_inds]
    )
    logratio = newlogprob - s.logprobs.reshape(-1)[mb_inds]
    ratio = logratio.exp()
    mb_advantages = s.advantages.reshape(-1)[mb_inds]
    mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)
    pg_loss = torch.max(
        -mb_advantages * ratio, -mb_advantages * torch.clamp(ratio, 1 - CLIP_COEF, 1 + CLIP_COEF)
    ).mean()
    newvalue = newvalue.view(-1)
    b_returns, b_values = s.returns.reshape(-1)[mb_inds], s.values.reshape(-1)[mb_inds]
    v_unclipped = (newvalue - b_returns) ** 2
    v_clipped = b_values + torch.clamp(newvalue - b_values, -CLIP_COEF, CLIP_COEF)
    v_loss = 0.5 * torch.max(v_unclipped, (v_clipped - b_returns) ** 2).mean()
    return pg_loss - ENT_COEF * entropy.mean() + v_loss * VF_COEF  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="cleanrl_ppo.h5")
    parser.add_argument("--replay", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    envs: Any = gym.vector.SyncVectorEnv([make_env(ENV_ID) for _ in range(NUM_ENVS)])
    agent = Agent(envs)
    optimizer = optim.Adam(agent.parameters(), lr=LEARNING_RATE, eps=1e-5)
    s = Storage(envs)
    pos = replaykit.Counters(iteration=1, epoch=0, start=0)  # replaykit
    track = {"agent": agent, "optimizer": optimizer, "pos": pos, "storage": replaykit.ArrayState(s, Storage.FIELDS)}  # replaykit  # fmt: skip  # noqa: E501
    if args.replay:  # replaykit
        rep = replaykit.restore_vector(args.replay, "mid", vec_env=envs, track=track); envs, log = rep.env, rep.log_update  # replaykit  # fmt: skip  # noqa: E501, E702
    else:  # replaykit
        envs = replaykit.VectorRecordingWrapper(envs, args.out, seed=SEED, track=track); log = envs.log_update  # replaykit  # fmt: skip  # noqa: E501, E702
        next_obs, _ = envs.reset(seed=SEED)
        s.next_obs[:] = torch.Tensor(next_obs)
    while pos.iteration <= NUM_ITERATIONS:
        if pos.epoch == 0 and pos.start == 0:  # a fresh iteration: anneal, then collect
            frac = 1.0 - (pos.iteration - 1.0) / NUM_ITERATIONS
            optimizer.param_groups[0]["lr"] = frac * LEARNING_RATE
            collect(envs, agent, s)
        while pos.epoch < UPDATE_EPOCHS:
            if pos.start == 0:
                np.random.shuffle(s.b_inds)
            while pos.start < BATCH_SIZE:
                loss = minibatch_loss(agent, s, s.b_inds[pos.start : pos.start + MINIBATCH_SIZE])
                optimizer.zero_grad()
                loss.backward()
                grad_norm = nn.utils.clip_grad_norm_(agent.parameters(), MAX_GRAD_NORM)
                optimizer.step()
                log(loss=loss.detach(), grad_norm=grad_norm, params=replaykit.params_digest(agent))  # replaykit  # fmt: skip  # noqa: E501
                pos.start += MINIBATCH_SIZE
                if (pos.iteration, pos.epoch, pos.start) == SNAPSHOT_AT and not args.replay:
                    envs.snapshot("mid")  # replaykit
            pos.epoch, pos.start = pos.epoch + 1, 0
        pos.iteration, pos.epoch = pos.iteration + 1, 0
    if args.replay:
        print(f"verified {rep.verified_updates} updates and {rep.verified_steps} steps")
        rep.close()
    else:
        envs.close()
        print(f"recorded {args.out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except replaykit.DivergenceError as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)
